package repository_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"gorm.io/gorm"
	metastorage "schneider.vip/retryspool/storage/meta"

	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/testdb"
	"schneider.vip/retryspool/storage/meta/sqlite/repository"
)

// Two applications (two pools, as two processes would have) hand the same
// SQLite file to the repository with WithDB, with whatever driver and DSN
// they chose, and claim from it with 8 goroutines each. The repository
// takes the write lock itself at BEGIN and waits for it, so no claim fails
// with "database is locked", and no message is claimed twice.
func TestWithDBSQLiteDriversClaimWithoutBusy(t *testing.T) {
	t.Parallel()
	for _, drv := range []struct {
		name string
		skip string
		open func(testing.TB, string) *gorm.DB
	}{
		{"glebarez", "", testdb.OpenSQLite},
		{"cgo", testdb.CgoSkip, testdb.OpenSQLiteCgo},
	} {
		t.Run(drv.name, func(t *testing.T) {
			if drv.skip != "" {
				t.Skip(drv.skip)
			}
			t.Parallel()
			ctx := context.Background()
			path := testdb.SQLitePath(t)
			var repos []*repository.Repository
			for range 2 {
				r, err := repository.New(ctx, drv.open(t, path), repository.Config{})
				require.NoError(t, err)
				t.Cleanup(func() { require.NoError(t, r.Close()) })
				repos = append(repos, r)
			}
			const n = 400
			seed := make([]metastorage.MessageMetadata, n)
			for i := range seed {
				id := fmt.Sprintf("m%04d", i)
				seed[i] = metastorage.MessageMetadata{ID: id, State: metastorage.StateIncoming, Created: time.Unix(int64(i), 0)}
			}
			require.NoError(t, repos[0].StoreMetaBatch(ctx, seed))

			var mu sync.Mutex
			claimed := map[string]int{}
			var errs []error
			var wg sync.WaitGroup
			for _, r := range repos {
				for range 8 {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for {
							got, err := r.ClaimMessages(ctx, metastorage.StateIncoming, metastorage.StateActive, 7)
							mu.Lock()
							if err != nil {
								errs = append(errs, err)
							}
							for _, md := range got {
								claimed[md.ID]++
							}
							mu.Unlock()
							if err != nil || len(got) == 0 {
								return
							}
						}
					}()
				}
			}
			wg.Wait()
			require.Empty(t, errs, "no claim fails while another connection holds the lock")
			require.Len(t, claimed, n, "every message claimed")
			for id, k := range claimed {
				require.Equal(t, 1, k, "message %s claimed once", id)
			}
			require.Equal(t, int64(n), repos[1].GetStateCount(metastorage.StateActive))
		})
	}
}
