package sqlite_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/testdb"
	"schneider.vip/retryspool/storage/meta/sqlite/metatest"
	"schneider.vip/retryspool/storage/meta/sqlite/repository"
)

// TestConformance runs the conformance suites on every engine: a fresh
// SQLite file per subtest, and a fresh table per subtest on PostgreSQL and
// MariaDB/MySQL when their DSN is set.
func TestConformance(t *testing.T) {
	confEngines(t, func(t *testing.T, e testdb.Engine) {
		newRepo := confRepoMaker(t, e)
		t.Run("Contract", func(t *testing.T) { metatest.Run(t, confBackend(newRepo)) })
		t.Run("Strict", func(t *testing.T) { metatest.RunStrict(t, confBackend(newRepo)) })
		t.Run("Repository", func(t *testing.T) {
			metatest.RunRepository(t, func(t *testing.T) *repository.Repository { return newRepo(t) })
		})
	})
}

// TestConformanceTwoFactoriesOneFile has two backends, each with its own
// connection pools and group writer, race over one SQLite file.
func TestConformanceTwoFactoriesOneFile(t *testing.T) {
	t.Parallel()
	st := newConfShared(t, testdb.Engines()[0])
	a, b := st.open(t), st.open(t)
	ids := raceIDs(t, a, 1000)
	ctx := context.Background()
	var wonA, wonB []string
	var errA, errB error
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); wonA, _, errA = raceMoves(ctx, a, ids, 12, 3) }()
	go func() { defer wg.Done(); wonB, _, errB = raceMoves(ctx, b, ids, 12, 3) }()
	wg.Wait()
	require.NoError(t, errA)
	require.NoError(t, errB)
	requireClaimedOnce(t, a, ids, wonA, wonB)
	requireClaimedOnce(t, b, ids, wonA, wonB)
	t.Logf("first backend won %d, second %d", len(wonA), len(wonB))
}

// TestConformanceSQLiteReadsDuringWrite reads through new connections of
// the read pool while an application transaction on the same file holds
// the write lock: in WAL mode readers never wait for the writer, so no read
// may fail with ErrBusy, however short the busy timeout.
func TestConformanceSQLiteReadsDuringWrite(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := confOpen(t, sqlitemeta.WithDatabasePath(testdb.SQLitePath(t)), sqlitemeta.WithBusyTimeout(50), sqlitemeta.WithMaxIdleConns(0))
	t.Cleanup(func() { require.NoError(t, r.Close()) })
	ids := raceIDs(t, r, 10)
	tx := r.DB().Begin()
	require.NoError(t, tx.Error)
	defer tx.Rollback()
	require.NoError(t, r.WithTx(tx).MoveToState(ctx, ids[0], metastorage.StateIncoming, metastorage.StateHold))

	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			md, err := r.GetMeta(ctx, ids[i])
			if err == nil && md.State != metastorage.StateIncoming {
				err = fmt.Errorf("%s is %s before the commit", md.ID, md.State)
			}
			if err == nil {
				_, err = r.ListMessages(ctx, metastorage.StateIncoming, metastorage.MessageListOptions{})
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.NoError(t, tx.Commit().Error)
	require.Equal(t, int64(1), r.GetStateCount(metastorage.StateHold))
}
