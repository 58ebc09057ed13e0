package systemtest

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"gorm.io/gorm"
	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/fixture"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/testdb"
)

// closeOps are the calls TestCloseUnderLoad makes, each with the
// errors it may return besides nil and ErrBackendClosed.
var closeOps = []func(ctx context.Context, r *sqlitemeta.Repository, g, i int) error{
	func(ctx context.Context, r *sqlitemeta.Repository, g, i int) error {
		id := fmt.Sprintf("c%d-%d", g, i)
		return r.StoreMeta(ctx, id, fixture.Sample(id, metastorage.StateIncoming, i))
	},
	func(ctx context.Context, r *sqlitemeta.Repository, g, i int) error {
		_, err := r.GetMeta(ctx, fmt.Sprintf("seed-%03d", i%100))
		return err
	},
	func(ctx context.Context, r *sqlitemeta.Repository, g, i int) error {
		id := fmt.Sprintf("c%d-%d", g, i-1)
		md := fixture.Sample(id, metastorage.StateDeferred, i)
		return r.UpdateMeta(ctx, id, md)
	},
	func(ctx context.Context, r *sqlitemeta.Repository, g, i int) error {
		return r.MoveToState(ctx, fmt.Sprintf("seed-%03d", i%100), metastorage.StateIncoming, metastorage.StateActive)
	},
	func(ctx context.Context, r *sqlitemeta.Repository, g, i int) error {
		return r.DeleteMeta(ctx, fmt.Sprintf("c%d-%d", g, i-3))
	},
	func(ctx context.Context, r *sqlitemeta.Repository, g, i int) error {
		_, err := r.ListMessages(ctx, metastorage.StateIncoming, metastorage.MessageListOptions{Limit: 20, SortBy: "priority"})
		return err
	},
	func(ctx context.Context, r *sqlitemeta.Repository, g, i int) error {
		it, err := r.NewMessageIterator(ctx, metastorage.StateIncoming, 7)
		if err != nil {
			return err
		}
		defer it.Close()
		for k := 0; k < 20; k++ {
			md, _, err := it.Next(ctx)
			if err != nil || md.ID == "" {
				return err
			}
		}
		return nil
	},
	func(ctx context.Context, r *sqlitemeta.Repository, g, i int) error {
		_ = r.GetStateCount(metastorage.StateActive) // no error to report; must not block
		_, err := r.StateCount(ctx, metastorage.StateIncoming)
		return err
	},
	func(ctx context.Context, r *sqlitemeta.Repository, g, i int) error {
		batch := []metastorage.MessageMetadata{
			fixture.Sample(fmt.Sprintf("b%d-%d-a", g, i), metastorage.StateIncoming, i),
			fixture.Sample(fmt.Sprintf("b%d-%d-b", g, i), metastorage.StateDeferred, i),
		}
		return r.StoreMetaBatch(ctx, batch)
	},
	func(ctx context.Context, r *sqlitemeta.Repository, g, i int) error {
		_, err := r.ClaimMessages(ctx, metastorage.StateIncoming, metastorage.StateActive, 3)
		return err
	},
	func(ctx context.Context, r *sqlitemeta.Repository, g, i int) error {
		_, err := r.ClaimDue(ctx, time.Now(), 3)
		return err
	},
	func(ctx context.Context, r *sqlitemeta.Repository, g, i int) error {
		_, err := r.DueMessages(ctx, time.Now(), 5)
		return err
	},
	func(ctx context.Context, r *sqlitemeta.Repository, g, i int) error {
		return r.Transaction(ctx, func(tx *gorm.DB) error {
			id := fmt.Sprintf("t%d-%d", g, i)
			return r.WithTx(tx).StoreMeta(ctx, id, fixture.Sample(id, metastorage.StateHold, i))
		})
	},
}

// closeAllowed reports whether err is an outcome a caller may see while
// the backend closes.
func closeAllowed(err error) bool {
	return err == nil ||
		errors.Is(err, metastorage.ErrBackendClosed) ||
		errors.Is(err, metastorage.ErrMessageNotFound) ||
		errors.Is(err, metastorage.ErrStateConflict)
}

// TestCloseUnderLoad closes a SQLite backend while 32 goroutines call
// every operation. It is not parallel, so that the goroutine check sees
// only this test's goroutines.
func TestCloseUnderLoad(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	for round := 0; round < 3; round++ {
		path := filepath.Join(t.TempDir(), "close.db")
		closeUnderLoad(t, func() *sqlitemeta.Repository {
			r, err := sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(path)).Open(context.Background())
			require.NoError(t, err)
			return r
		})
		r := openFile(t, path)
		fixture.RequireIntegrity(t, r.DB())
		require.NoError(t, r.Close())
	}
	goleak.VerifyNone(t, ignore)
}

// TestCloseUnderLoadServerEngines closes backends on an application's
// *gorm.DB (WithDB) under load: Close leaves that database open, and calls
// in flight end with ErrBackendClosed just the same.
func TestCloseUnderLoadServerEngines(t *testing.T) {
	t.Parallel()
	for _, e := range testdb.Servers() { // SQLite: TestCloseUnderLoad
		t.Run(e.Name, func(t *testing.T) {
			if e.Skip != "" {
				t.Skip(e.Skip)
			}
			t.Parallel()
			db := e.Open(t)
			table := e.Table(t, db)
			closeUnderLoad(t, func() *sqlitemeta.Repository {
				r, err := sqlitemeta.NewFactory(sqlitemeta.WithDB(db), sqlitemeta.WithTableName(table)).Open(context.Background())
				require.NoError(t, err)
				return r
			})
			require.NoError(t, db.Exec("SELECT 1").Error, "Close must leave the application's database open")
		})
	}
}

// closeUnderLoad runs every operation from 32 goroutines on a backend
// from open, closes it in the middle, and checks what the callers saw and
// that the data is consistent afterwards.
func closeUnderLoad(t *testing.T, open func() *sqlitemeta.Repository) {
	ctx := context.Background()
	r := open()
	var seed []metastorage.MessageMetadata
	for i := 0; i < 100; i++ {
		md := fixture.Sample(fmt.Sprintf("seed-%03d", i), metastorage.StateIncoming, i)
		md.NextRetry = time.Time{}
		seed = append(seed, md)
	}
	require.NoError(t, r.StoreMetaBatch(ctx, seed))

	const goroutines = 32
	var (
		wg       sync.WaitGroup
		calls    atomic.Int64
		closed   atomic.Bool // set once Close has returned
		mu       sync.Mutex
		bad      []string
		sawClose atomic.Int64
	)
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			afterClose := 0
			for i := 0; afterClose < 3; i++ {
				done := closed.Load()
				err := closeOps[(g+i)%len(closeOps)](ctx, r, g, i)
				calls.Add(1)
				switch {
				case !closeAllowed(err):
					mu.Lock()
					bad = append(bad, fmt.Sprintf("op %d: %v", (g+i)%len(closeOps), err))
					mu.Unlock()
				case done && !errors.Is(err, metastorage.ErrBackendClosed):
					mu.Lock()
					bad = append(bad, fmt.Sprintf("op %d after Close returned: %v", (g+i)%len(closeOps), err))
					mu.Unlock()
				}
				if errors.Is(err, metastorage.ErrBackendClosed) {
					sawClose.Add(1)
					if !done {
						time.Sleep(time.Millisecond) // Close is waiting for the calls in flight
					}
				}
				if done {
					afterClose++
				}
			}
		}()
	}
	// Let the load build up, then close in the middle of it.
	deadline := time.Now().Add(fixture.Wait)
	for calls.Load() < 400 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	require.NoError(t, r.Close())
	closed.Store(true)
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(fixture.Wait):
		t.Fatalf("calls still running %s after Close", fixture.Wait)
	}
	require.Empty(t, bad)
	require.GreaterOrEqual(t, sawClose.Load(), int64(goroutines*3))
	require.NoError(t, r.Close(), "Close twice")
	t.Logf("%d calls, %d of them answered ErrBackendClosed", calls.Load(), sawClose.Load())

	// Everything the load wrote is consistent.
	r2 := open()
	fixture.RequireCounts(t, r2)
	require.NoError(t, r2.Close())
}
