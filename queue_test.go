package sqlite_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/testdb"
	"schneider.vip/retryspool/storage/meta/sqlite/metatest"
	"schneider.vip/retryspool/storage/meta/sqlite/repository"
)

// TestQueueOps runs the queue operations suite on a SQLite file opened by
// the factory (group commit), and on PostgreSQL and MySQL/MariaDB when
// their DSNs are set.
func TestQueueOps(t *testing.T) {
	for _, e := range testdb.Engines() {
		t.Run(e.Name, func(t *testing.T) {
			if e.Skip != "" {
				t.Skip(e.Skip)
			}
			metatest.RunQueueOps(t, queueRepoMaker(t, e))
		})
	}
}

// queueRepoMaker returns a maker of empty repositories on engine e.
func queueRepoMaker(t *testing.T, e testdb.Engine) func(t *testing.T) *repository.Repository {
	if e.Name == "sqlite" {
		return func(t *testing.T) *repository.Repository {
			return openQueueFile(t, testdb.SQLitePath(t))
		}
	}
	db := e.Open(t)
	return func(t *testing.T) *repository.Repository {
		r, err := sqlitemeta.NewFactory(sqlitemeta.WithDB(db), sqlitemeta.WithTableName(e.Table(t, db))).Open(context.Background())
		require.NoError(t, err)
		t.Cleanup(func() { _ = r.Close() })
		return r
	}
}

func openQueueFile(t *testing.T, path string, opts ...sqlitemeta.Option) *sqlitemeta.Repository {
	t.Helper()
	r, err := sqlitemeta.NewFactory(append([]sqlitemeta.Option{sqlitemeta.WithDatabasePath(path)}, opts...)...).Open(context.Background())
	require.NoError(t, err)
	t.Cleanup(func() { _ = r.Close() })
	return r
}

var errQueueHook = errors.New("refused by hook")

// TestQueueOpsGroupCommitHooks runs the operations with hooks given to the
// factory, so that on a SQLite file they run in the group-committing
// writer, side by side with concurrent single writes.
func TestQueueOpsGroupCommitHooks(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var mu sync.Mutex
	seen := map[string]int{}
	hook := func(_ context.Context, tr sqlitemeta.Transition) error {
		if tr.Created {
			return nil
		}
		if tr.MessageID == "refuse" {
			return errQueueHook
		}
		mu.Lock()
		seen[fmt.Sprintf("%s>%s", tr.From, tr.To)]++
		mu.Unlock()
		return nil
	}
	r := openQueueFile(t, testdb.SQLitePath(t), sqlitemeta.WithTransitionHook(hook), sqlitemeta.WithStrictTransitions())
	base := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	const n = 300
	var seed []metastorage.MessageMetadata
	for i := 0; i < n; i++ {
		seed = append(seed, metastorage.MessageMetadata{
			ID: fmt.Sprintf("m%03d", i), State: metastorage.StateActive,
			Created: base.Add(time.Duration(i) * time.Second), Updated: base,
		})
	}
	require.NoError(t, r.StoreMetaBatch(ctx, seed))

	// Single writes of other messages share commits with the batches.
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 25; i++ {
				id := fmt.Sprintf("w%d-%02d", w, i)
				if err := r.StoreMeta(ctx, id, metastorage.MessageMetadata{ID: id, Created: time.Now(), Updated: time.Now()}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	moved, err := r.RequeueStale(ctx, base.Add(time.Second), 7)
	wg.Wait()
	require.NoError(t, err)
	require.EqualValues(t, n, moved)
	require.Equal(t, n, seen["active>incoming"])
	require.EqualValues(t, n+100, r.GetStateCount(metastorage.StateIncoming))
	require.Zero(t, r.GetStateCount(metastorage.StateActive))

	// The strict policy refuses incoming to bounce: the first batch fails
	// whole.
	got, err := r.BulkMove(ctx, repository.Filter{State: metastorage.StateIncoming}, metastorage.StateBounce, repository.MoveOptions{BatchSize: 50})
	require.ErrorIs(t, err, metastorage.ErrInvalidState)
	require.Zero(t, got)
	require.EqualValues(t, n+100, r.GetStateCount(metastorage.StateIncoming))

	// A hook error in the third batch keeps the first two.
	require.NoError(t, r.StoreMeta(ctx, "refuse", metastorage.MessageMetadata{
		ID: "refuse", State: metastorage.StateIncoming, Created: base.Add(25 * time.Second), Updated: base,
	}))
	got, err = r.BulkMove(ctx, repository.Filter{State: metastorage.StateIncoming, OlderThan: base.Add(time.Hour)},
		metastorage.StateHold, repository.MoveOptions{BatchSize: 10})
	require.ErrorIs(t, err, errQueueHook)
	require.EqualValues(t, 20, got)
	require.EqualValues(t, 20, r.GetStateCount(metastorage.StateHold))
	// Hooks ran for the two committed batches and for the six messages
	// of the third batch before the refused one, whose moves rolled back.
	require.Equal(t, 26, seen["incoming>hold"])
	stats, err := r.Stats(ctx)
	require.NoError(t, err)
	require.Equal(t, "m020", stats[metastorage.StateIncoming].OldestID)
	require.Equal(t, "m000", stats[metastorage.StateHold].OldestID)
	require.Equal(t, "m019", stats[metastorage.StateHold].NewestID)
}
