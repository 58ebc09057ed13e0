package repository_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/testdb"
	"schneider.vip/retryspool/storage/meta/sqlite/metatest"
	"schneider.vip/retryspool/storage/meta/sqlite/model"
	"schneider.vip/retryspool/storage/meta/sqlite/repository"
)

// limits are the library's promises beyond the contract, for
// metatest.RunStrict.
var limits = metatest.Limits{
	InvalidInput:        repository.ErrInvalidInput,
	IteratorClosed:      repository.ErrIteratorClosed,
	MaxIDLength:         model.MaxIDLength,
	MaxPolicyNameLength: 255,
	MaxListLimit:        repository.MaxListLimit,
	MinTime:             time.Unix(0, math.MinInt64+1), // just after the smallest int64 nanoseconds
	MaxTime:             time.Unix(0, math.MaxInt64),   // the largest
}

// newRepoIn returns a maker of fresh, empty repositories in a column; the
// suites close them.
func newRepoIn(newEnv func(t *testing.T) *dbEnv) func(t *testing.T) *repository.Repository {
	return func(t *testing.T) *repository.Repository { return newEnv(t).openUnclosed(t) }
}

// TestConformance runs the conformance suites in every column of the
// matrix: a fresh SQLite file per subtest, and a fresh table per subtest
// on PostgreSQL and MariaDB/MySQL when their DSN is set.
func TestConformance(t *testing.T) {
	forColumns(t, false, func(t *testing.T, _ column, newEnv func(t *testing.T) *dbEnv) {
		newRepo := newRepoIn(newEnv)
		backend := func(t *testing.T) metastorage.Backend { return newRepo(t) }
		t.Run("Contract", func(t *testing.T) { metatest.Run(t, backend) })
		t.Run("Strict", func(t *testing.T) { metatest.RunStrict(t, backend, limits) })
		t.Run("Repository", func(t *testing.T) { runRepository(t, newRepo) })
	})
}

// TestQueueOps runs the queue operations suite in every column of the
// matrix.
func TestQueueOps(t *testing.T) {
	forColumns(t, false, func(t *testing.T, _ column, newEnv func(t *testing.T) *dbEnv) {
		runQueueOps(t, func(t *testing.T) *repository.Repository {
			r := newEnv(t).openUnclosed(t)
			t.Cleanup(func() { _ = r.Close() })
			return r
		})
	})
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
	env := &dbEnv{where: []sqlitemeta.Option{sqlitemeta.WithDatabasePath(testdb.SQLitePath(t))}}
	r := env.openUnclosed(t, sqlitemeta.WithTransitionHook(hook), sqlitemeta.WithStrictTransitions())
	t.Cleanup(func() { _ = r.Close() })
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
