package repository_test

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"gorm.io/gorm"
	metastorage "schneider.vip/retryspool/storage/meta"

	"schneider.vip/retryspool/storage/meta/sqlite/repository"
)

// runQueueOps checks the queue operations beyond the contract (Stats,
// RequeueStale, Purge, BulkMove) on repositories made by newRepo, which
// must return an empty repository of its own for every call. Subtests run
// in parallel. Hooks are checked on a second repository over the same
// database and table, built with repository.New and the hooks under test.
func runQueueOps(t *testing.T, newRepo func(t *testing.T) *repository.Repository) {
	t.Helper()
	open := func(t *testing.T) *repository.Repository {
		t.Helper()
		r := newRepo(t)
		t.Cleanup(func() { _ = r.Close() })
		return r
	}
	t.Run("Stats", func(t *testing.T) { t.Parallel(); qoStats(t, open(t)) })
	t.Run("StatsEmpty", func(t *testing.T) { t.Parallel(); qoStatsEmpty(t, open(t)) })
	t.Run("RequeueStale", func(t *testing.T) { t.Parallel(); qoRequeueStale(t, open(t)) })
	t.Run("RequeueStaleConcurrent", func(t *testing.T) { t.Parallel(); qoRequeueStaleConcurrent(t, open(t)) })
	t.Run("PurgeDelete", func(t *testing.T) { t.Parallel(); qoPurgeDelete(t, open(t)) })
	t.Run("PurgeArchive", func(t *testing.T) { t.Parallel(); qoPurgeArchive(t, open(t)) })
	t.Run("BulkMoveHeaders", func(t *testing.T) { t.Parallel(); qoBulkMoveHeaders(t, open(t)) })
	t.Run("BulkMoveAgeAndAll", func(t *testing.T) { t.Parallel(); qoBulkMoveAge(t, open(t)) })
	t.Run("InvalidInput", func(t *testing.T) { t.Parallel(); qoInvalid(t, open(t)) })
	t.Run("Hooks", func(t *testing.T) { t.Parallel(); qoHooks(t, open(t)) })
	t.Run("HookErrorRollsBackBatch", func(t *testing.T) { t.Parallel(); qoHookError(t, open(t)) })
	t.Run("WithTx", func(t *testing.T) { t.Parallel(); qoWithTx(t, open(t)) })
	t.Run("Closed", func(t *testing.T) { t.Parallel(); qoClosed(t, open(t)) })
}

// qoBase is the time every seeded message is dated from.
var qoBase = time.Date(2024, 3, 1, 12, 0, 0, 0, time.UTC)

// qoAt is qoBase plus s seconds.
func qoAt(s int) time.Time { return qoBase.Add(time.Duration(s) * time.Second) }

// qoMsg is a record in state, created and updated at the given seconds
// after qoBase.
func qoMsg(id string, state metastorage.QueueState, created, updated int, headers map[string]string) metastorage.MessageMetadata {
	return metastorage.MessageMetadata{
		ID: id, State: state, MaxAttempts: 5,
		Created: qoAt(created), Updated: qoAt(updated),
		Headers: headers, Size: 10,
	}
}

func qoSeed(t *testing.T, r *repository.Repository, mds ...metastorage.MessageMetadata) {
	t.Helper()
	require.NoError(t, r.StoreMetaBatch(context.Background(), mds))
}

// qoIDsIn returns the sorted IDs in state.
func qoIDsIn(t *testing.T, r *repository.Repository, state metastorage.QueueState) []string {
	t.Helper()
	res, err := r.ListMessages(context.Background(), state, metastorage.MessageListOptions{Limit: repository.MaxListLimit})
	require.NoError(t, err)
	ids := append([]string{}, res.MessageIDs...)
	sort.Strings(ids)
	return ids
}

// qoCounts returns the counter of every state, and checks each against the
// rows really in that state.
func qoCounts(t *testing.T, r *repository.Repository) map[metastorage.QueueState]int64 {
	t.Helper()
	out := map[metastorage.QueueState]int64{}
	for s := metastorage.StateIncoming; s <= metastorage.StateArchived; s++ {
		n, err := r.StateCount(context.Background(), s)
		require.NoError(t, err)
		require.Len(t, qoIDsIn(t, r, s), int(n), "counter of %s differs from its rows", s)
		out[s] = n
	}
	return out
}

func qoSorted(ids ...string) []string {
	out := append([]string{}, ids...)
	sort.Strings(out)
	return out
}

func qoRange(prefix string, from, to int) []string {
	var out []string
	for i := from; i < to; i++ {
		out = append(out, fmt.Sprintf("%s%02d", prefix, i))
	}
	sort.Strings(out)
	return out
}

func qoStatsEmpty(t *testing.T, r *repository.Repository) {
	stats, err := r.Stats(context.Background())
	require.NoError(t, err)
	require.Len(t, stats, 6)
	for i, s := range stats {
		require.Equal(t, metastorage.QueueState(i), s.State)
		require.Zero(t, s.Count)
		require.Empty(t, s.OldestID)
		require.Empty(t, s.NewestID)
		require.True(t, s.Oldest.IsZero())
		require.True(t, s.Newest.IsZero())
	}
}

func qoStats(t *testing.T, r *repository.Repository) {
	ctx := context.Background()
	qoSeed(t, r,
		qoMsg("in-b", metastorage.StateIncoming, 30, 30, nil),
		qoMsg("in-a", metastorage.StateIncoming, 10, 10, nil),
		qoMsg("in-c", metastorage.StateIncoming, 20, 20, nil),
		qoMsg("def-1", metastorage.StateDeferred, 5, 5, nil),
		// Equal Created: the ID breaks the tie.
		qoMsg("hold-y", metastorage.StateHold, 7, 7, nil),
		qoMsg("hold-x", metastorage.StateHold, 7, 7, nil),
		qoMsg("hold-z", metastorage.StateHold, 7, 7, nil),
	)
	stats, err := r.Stats(ctx)
	require.NoError(t, err)
	require.Len(t, stats, 6)
	want := []repository.StateStats{
		{State: metastorage.StateIncoming, Count: 3, OldestID: "in-a", Oldest: qoAt(10), NewestID: "in-b", Newest: qoAt(30)},
		{State: metastorage.StateActive},
		{State: metastorage.StateDeferred, Count: 1, OldestID: "def-1", Oldest: qoAt(5), NewestID: "def-1", Newest: qoAt(5)},
		{State: metastorage.StateHold, Count: 3, OldestID: "hold-x", Oldest: qoAt(7), NewestID: "hold-z", Newest: qoAt(7)},
		{State: metastorage.StateBounce},
		{State: metastorage.StateArchived},
	}
	require.Equal(t, want, stats)

	// Stats follow moves and deletes.
	require.NoError(t, r.MoveToState(ctx, "in-a", metastorage.StateIncoming, metastorage.StateActive))
	require.NoError(t, r.DeleteMeta(ctx, "in-b"))
	stats, err = r.Stats(ctx)
	require.NoError(t, err)
	require.Equal(t, repository.StateStats{State: metastorage.StateIncoming, Count: 1,
		OldestID: "in-c", Oldest: qoAt(20), NewestID: "in-c", Newest: qoAt(20)}, stats[metastorage.StateIncoming])
	require.Equal(t, repository.StateStats{State: metastorage.StateActive, Count: 1,
		OldestID: "in-a", Oldest: qoAt(10), NewestID: "in-a", Newest: qoAt(10)}, stats[metastorage.StateActive])
}

func qoRequeueStale(t *testing.T, r *repository.Repository) {
	ctx := context.Background()
	var seed []metastorage.MessageMetadata
	for i := 0; i < 10; i++ {
		// Created runs against Updated, so the walk order (created) is
		// not the staleness order.
		seed = append(seed, qoMsg(fmt.Sprintf("act%02d", i), metastorage.StateActive, 100-i, i, nil))
	}
	seed = append(seed,
		qoMsg("act-at-cutoff", metastorage.StateActive, 1, 5, nil),
		qoMsg("deferred-old", metastorage.StateDeferred, 0, 0, nil),
		qoMsg("hold-old", metastorage.StateHold, 0, 0, nil),
	)
	qoSeed(t, r, seed...)

	// Cutoff at 5s: act00..act04 are strictly older; act-at-cutoff is not.
	n, err := r.RequeueStale(ctx, qoAt(5), 2)
	require.NoError(t, err)
	require.EqualValues(t, 5, n)
	require.Equal(t, qoRange("act", 0, 5), qoIDsIn(t, r, metastorage.StateIncoming))
	require.Equal(t, qoSorted(append(qoRange("act", 5, 10), "act-at-cutoff")...), qoIDsIn(t, r, metastorage.StateActive))
	require.Equal(t, map[metastorage.QueueState]int64{
		metastorage.StateIncoming: 5, metastorage.StateActive: 6, metastorage.StateDeferred: 1,
		metastorage.StateHold: 1, metastorage.StateBounce: 0, metastorage.StateArchived: 0,
	}, qoCounts(t, r))
	for _, id := range qoRange("act", 0, 5) {
		md, err := r.GetMeta(ctx, id)
		require.NoError(t, err)
		require.True(t, md.Updated.After(qoAt(100)), "Updated of %s is the time of the move", id)
	}
	md, err := r.GetMeta(ctx, "deferred-old")
	require.NoError(t, err)
	require.Equal(t, qoAt(0), md.Updated, "messages of other states are untouched")

	// Nothing is left to requeue at that cutoff; a later one takes the rest.
	n, err = r.RequeueStale(ctx, qoAt(5), 2)
	require.NoError(t, err)
	require.Zero(t, n)
	n, err = r.RequeueStale(ctx, qoAt(50), 0)
	require.NoError(t, err)
	require.EqualValues(t, 6, n)
	require.Empty(t, qoIDsIn(t, r, metastorage.StateActive))
	require.EqualValues(t, 11, qoCounts(t, r)[metastorage.StateIncoming])
}

// qoRequeueStaleConcurrent runs several RequeueStale calls at once: every
// stale message moves exactly once in total.
func qoRequeueStaleConcurrent(t *testing.T, r *repository.Repository) {
	ctx := context.Background()
	const stale, fresh, callers = 60, 7, 4
	var seed []metastorage.MessageMetadata
	for i := 0; i < stale; i++ {
		seed = append(seed, qoMsg(fmt.Sprintf("stale%02d", i), metastorage.StateActive, i, i, nil))
	}
	for i := 0; i < fresh; i++ {
		seed = append(seed, qoMsg(fmt.Sprintf("fresh%02d", i), metastorage.StateActive, i, 1000+i, nil))
	}
	qoSeed(t, r, seed...)

	var wg sync.WaitGroup
	moved := make([]int64, callers)
	errs := make([]error, callers)
	for c := 0; c < callers; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			moved[c], errs[c] = r.RequeueStale(ctx, qoAt(500), 3)
		}()
	}
	wg.Wait()
	var total int64
	for c := 0; c < callers; c++ {
		require.NoError(t, errs[c])
		total += moved[c]
	}
	require.EqualValues(t, stale, total, "every stale message moved exactly once")
	require.Equal(t, qoRange("stale", 0, stale), qoIDsIn(t, r, metastorage.StateIncoming))
	counts := qoCounts(t, r)
	require.EqualValues(t, stale, counts[metastorage.StateIncoming])
	require.EqualValues(t, fresh, counts[metastorage.StateActive])
}

func qoPurgeDelete(t *testing.T, r *repository.Repository) {
	ctx := context.Background()
	var seed []metastorage.MessageMetadata
	for i := 0; i < 9; i++ {
		seed = append(seed, qoMsg(fmt.Sprintf("b%02d", i), metastorage.StateBounce, i, 0, nil))
	}
	seed = append(seed,
		qoMsg("deferred-old", metastorage.StateDeferred, 0, 0, nil),
		qoMsg("archived-old", metastorage.StateArchived, 0, 0, nil),
	)
	qoSeed(t, r, seed...)
	before := qoCounts(t, r)

	// Created strictly before 7s: b00..b06.
	n, err := r.Purge(ctx, metastorage.StateBounce, qoAt(7), repository.PurgeOptions{DryRun: true})
	require.NoError(t, err)
	require.EqualValues(t, 7, n)
	n, err = r.Purge(ctx, metastorage.StateBounce, qoAt(7), repository.PurgeOptions{DryRun: true, Archive: true, BatchSize: 2})
	require.NoError(t, err)
	require.EqualValues(t, 7, n)
	require.Equal(t, before, qoCounts(t, r), "a dry run changes nothing")
	require.Equal(t, qoRange("b", 0, 9), qoIDsIn(t, r, metastorage.StateBounce))

	var progress []int64
	n, err = r.Purge(ctx, metastorage.StateBounce, qoAt(7), repository.PurgeOptions{
		BatchSize: 3, Progress: func(done int64) { progress = append(progress, done) },
	})
	require.NoError(t, err)
	require.EqualValues(t, 7, n)
	require.Equal(t, []int64{3, 6, 7}, progress, "one call per committed batch")
	require.Equal(t, qoRange("b", 7, 9), qoIDsIn(t, r, metastorage.StateBounce))
	for _, id := range qoRange("b", 0, 7) {
		_, err := r.GetMeta(ctx, id)
		require.ErrorIs(t, err, metastorage.ErrMessageNotFound)
	}
	require.Equal(t, map[metastorage.QueueState]int64{
		metastorage.StateIncoming: 0, metastorage.StateActive: 0, metastorage.StateDeferred: 1,
		metastorage.StateHold: 0, metastorage.StateBounce: 2, metastorage.StateArchived: 1,
	}, qoCounts(t, r))

	// A batch size that divides the count exactly still ends.
	n, err = r.Purge(ctx, metastorage.StateBounce, qoAt(100), repository.PurgeOptions{BatchSize: 1})
	require.NoError(t, err)
	require.EqualValues(t, 2, n)
	n, err = r.Purge(ctx, metastorage.StateBounce, qoAt(100), repository.PurgeOptions{})
	require.NoError(t, err)
	require.Zero(t, n)
}

func qoPurgeArchive(t *testing.T, r *repository.Repository) {
	ctx := context.Background()
	var seed []metastorage.MessageMetadata
	for i := 0; i < 12; i++ {
		seed = append(seed, qoMsg(fmt.Sprintf("d%02d", i), metastorage.StateDeferred, i, 0, nil))
	}
	seed = append(seed, qoMsg("archived-old", metastorage.StateArchived, 0, 0, nil))
	qoSeed(t, r, seed...)

	n, err := r.Purge(ctx, metastorage.StateDeferred, qoAt(10), repository.PurgeOptions{Archive: true, BatchSize: 4})
	require.NoError(t, err)
	require.EqualValues(t, 10, n)
	require.Equal(t, qoSorted(append(qoRange("d", 0, 10), "archived-old")...), qoIDsIn(t, r, metastorage.StateArchived))
	require.Equal(t, qoRange("d", 10, 12), qoIDsIn(t, r, metastorage.StateDeferred))
	counts := qoCounts(t, r)
	require.EqualValues(t, 11, counts[metastorage.StateArchived])
	require.EqualValues(t, 2, counts[metastorage.StateDeferred])
	md, err := r.GetMeta(ctx, "d03")
	require.NoError(t, err)
	require.Equal(t, qoAt(3), md.Created, "archiving keeps the record")
	require.True(t, md.Updated.After(qoAt(100)), "Updated is the time of the move")
}

func qoBulkMoveHeaders(t *testing.T, r *repository.Repository) {
	ctx := context.Background()
	tenant := func(v string) map[string]string { return map[string]string{"tenant": v, "x": "y"} }
	// In created order: three that never match come first, so that whole
	// batches of size 2 hold no match and the walk must go on past them.
	qoSeed(t, r,
		qoMsg("h00-none", metastorage.StateHold, 0, 0, nil),
		qoMsg("h01-other", metastorage.StateHold, 1, 0, map[string]string{"x": "a"}),
		qoMsg("h02-b", metastorage.StateHold, 2, 0, tenant("b")),
		qoMsg("h03-a", metastorage.StateHold, 3, 0, tenant("a")),
		qoMsg("h04-b", metastorage.StateHold, 4, 0, tenant("b")),
		qoMsg("h05-a", metastorage.StateHold, 5, 0, tenant("a")),
		qoMsg("h06-empty", metastorage.StateHold, 6, 0, tenant("")),
		qoMsg("h07-A", metastorage.StateHold, 7, 0, tenant("A")),
		qoMsg("h08-a", metastorage.StateHold, 8, 0, tenant("a")),
		qoMsg("d09-a", metastorage.StateDeferred, 9, 0, tenant("a")),
	)
	before := qoCounts(t, r)
	byA := repository.Filter{State: metastorage.StateHold, HeaderKey: "tenant", HeaderValue: "a"}

	n, err := r.BulkMove(ctx, byA, metastorage.StateIncoming, repository.MoveOptions{BatchSize: 2, DryRun: true})
	require.NoError(t, err)
	require.EqualValues(t, 3, n)
	n, err = r.BulkMove(ctx, repository.Filter{State: metastorage.StateHold, HeaderKey: "tenant"},
		metastorage.StateIncoming, repository.MoveOptions{DryRun: true})
	require.NoError(t, err)
	require.EqualValues(t, 7, n, "a key without a value matches any value, the empty one included")
	require.Equal(t, before, qoCounts(t, r), "a dry run changes nothing")

	// Exact, case-sensitive value match.
	n, err = r.BulkMove(ctx, byA, metastorage.StateIncoming, repository.MoveOptions{BatchSize: 2})
	require.NoError(t, err)
	require.EqualValues(t, 3, n)
	require.Equal(t, []string{"h03-a", "h05-a", "h08-a"}, qoIDsIn(t, r, metastorage.StateIncoming))
	md, err := r.GetMeta(ctx, "h05-a")
	require.NoError(t, err)
	require.Equal(t, tenant("a"), md.Headers, "moving keeps the headers")

	// Key only: any value, the empty value included; none without the key.
	n, err = r.BulkMove(ctx, repository.Filter{State: metastorage.StateHold, HeaderKey: "tenant"},
		metastorage.StateBounce, repository.MoveOptions{BatchSize: 1})
	require.NoError(t, err)
	require.EqualValues(t, 4, n)
	require.Equal(t, []string{"h02-b", "h04-b", "h06-empty", "h07-A"}, qoIDsIn(t, r, metastorage.StateBounce))
	require.Equal(t, []string{"h00-none", "h01-other"}, qoIDsIn(t, r, metastorage.StateHold))
	require.Equal(t, []string{"d09-a"}, qoIDsIn(t, r, metastorage.StateDeferred), "other states are untouched")
	require.Equal(t, map[metastorage.QueueState]int64{
		metastorage.StateIncoming: 3, metastorage.StateActive: 0, metastorage.StateDeferred: 1,
		metastorage.StateHold: 2, metastorage.StateBounce: 4, metastorage.StateArchived: 0,
	}, qoCounts(t, r))
}

func qoBulkMoveAge(t *testing.T, r *repository.Repository) {
	ctx := context.Background()
	var seed []metastorage.MessageMetadata
	for i := 0; i < 11; i++ {
		seed = append(seed, qoMsg(fmt.Sprintf("i%02d", i), metastorage.StateIncoming, i, 0, nil))
	}
	qoSeed(t, r, seed...)

	// Created strictly before 4s.
	older := repository.Filter{State: metastorage.StateIncoming, OlderThan: qoAt(4)}
	n, err := r.BulkMove(ctx, older, metastorage.StateHold, repository.MoveOptions{DryRun: true})
	require.NoError(t, err)
	require.EqualValues(t, 4, n)
	require.Empty(t, qoIDsIn(t, r, metastorage.StateHold))
	n, err = r.BulkMove(ctx, older, metastorage.StateHold, repository.MoveOptions{BatchSize: 2})
	require.NoError(t, err)
	require.EqualValues(t, 4, n)
	require.Equal(t, qoRange("i", 0, 4), qoIDsIn(t, r, metastorage.StateHold))

	// No filter beyond the state: everything moves.
	var progress []int64
	n, err = r.BulkMove(ctx, repository.Filter{State: metastorage.StateIncoming}, metastorage.StateArchived, repository.MoveOptions{
		BatchSize: 3, Progress: func(done int64) { progress = append(progress, done) },
	})
	require.NoError(t, err)
	require.EqualValues(t, 7, n)
	require.Equal(t, []int64{3, 6, 7}, progress)
	require.Equal(t, qoRange("i", 4, 11), qoIDsIn(t, r, metastorage.StateArchived))
	counts := qoCounts(t, r)
	require.Zero(t, counts[metastorage.StateIncoming])
	require.EqualValues(t, 4, counts[metastorage.StateHold])
	require.EqualValues(t, 7, counts[metastorage.StateArchived])
}

func qoInvalid(t *testing.T, r *repository.Repository) {
	ctx := context.Background()
	qoSeed(t, r, qoMsg("m", metastorage.StateActive, 0, 0, nil))
	bad := metastorage.QueueState(6)

	_, err := r.RequeueStale(ctx, time.Time{}, 0)
	require.ErrorIs(t, err, repository.ErrInvalidInput, "zero cutoff")
	_, err = r.RequeueStale(ctx, qoAt(1), -1)
	require.ErrorIs(t, err, repository.ErrInvalidInput, "negative batch")
	_, err = r.RequeueStale(ctx, qoAt(1), repository.MaxClaim+1)
	require.ErrorIs(t, err, repository.ErrInvalidInput, "batch over the maximum")

	_, err = r.Purge(ctx, bad, qoAt(1), repository.PurgeOptions{})
	require.ErrorIs(t, err, metastorage.ErrInvalidState)
	_, err = r.Purge(ctx, metastorage.StateArchived, qoAt(1), repository.PurgeOptions{Archive: true})
	require.ErrorIs(t, err, repository.ErrInvalidInput, "archiving archived messages")
	_, err = r.Purge(ctx, metastorage.StateActive, time.Time{}, repository.PurgeOptions{})
	require.ErrorIs(t, err, repository.ErrInvalidInput, "zero cutoff")
	_, err = r.Purge(ctx, metastorage.StateActive, qoAt(1), repository.PurgeOptions{BatchSize: -5})
	require.ErrorIs(t, err, repository.ErrInvalidInput)

	_, err = r.BulkMove(ctx, repository.Filter{State: metastorage.StateActive}, metastorage.StateActive, repository.MoveOptions{})
	require.ErrorIs(t, err, repository.ErrInvalidInput, "from equals to")
	_, err = r.BulkMove(ctx, repository.Filter{State: bad}, metastorage.StateActive, repository.MoveOptions{})
	require.ErrorIs(t, err, metastorage.ErrInvalidState)
	_, err = r.BulkMove(ctx, repository.Filter{State: metastorage.StateActive}, bad, repository.MoveOptions{})
	require.ErrorIs(t, err, metastorage.ErrInvalidState)
	_, err = r.BulkMove(ctx, repository.Filter{State: metastorage.StateActive, HeaderValue: "v"}, metastorage.StateHold, repository.MoveOptions{})
	require.ErrorIs(t, err, repository.ErrInvalidInput, "value without key")
	_, err = r.BulkMove(ctx, repository.Filter{State: metastorage.StateActive, HeaderKey: "k\xff"}, metastorage.StateHold, repository.MoveOptions{})
	require.ErrorIs(t, err, repository.ErrInvalidInput, "key not UTF-8")
	_, err = r.BulkMove(ctx, repository.Filter{State: metastorage.StateActive}, metastorage.StateHold, repository.MoveOptions{BatchSize: repository.MaxClaim + 1})
	require.ErrorIs(t, err, repository.ErrInvalidInput)

	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	_, err = r.RequeueStale(cancelled, qoAt(1), 0)
	require.ErrorIs(t, err, context.Canceled)
	_, err = r.Stats(cancelled)
	require.ErrorIs(t, err, context.Canceled)

	// Nothing of the above changed the message.
	md, err := r.GetMeta(ctx, "m")
	require.NoError(t, err)
	require.Equal(t, metastorage.StateActive, md.State)
}

// qoHooked returns a second repository on base's database and table that
// runs hooks.
func qoHooked(t *testing.T, base *repository.Repository, hooks ...repository.Hook) *repository.Repository {
	t.Helper()
	r, err := repository.New(context.Background(), base.DB(), repository.Config{
		TableName: base.TableName(), Hooks: hooks,
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// qoRecorder records the transitions hooks see, with the state each
// message has inside the hook's transaction.
type qoRecorder struct {
	mu   sync.Mutex
	seen []string
	r    *repository.Repository
}

func (rec *qoRecorder) hook(ctx context.Context, tr repository.Transition) error {
	if tr.Tx == nil {
		return errors.New("transition without a transaction")
	}
	md, err := rec.r.WithTx(tr.Tx).GetMeta(ctx, tr.MessageID)
	if err != nil {
		return err
	}
	if md.State != tr.To {
		return fmt.Errorf("inside the hook %s is %s, want %s", tr.MessageID, md.State, tr.To)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	rec.seen = append(rec.seen, fmt.Sprintf("%s:%s>%s", tr.MessageID, tr.From, tr.To))
	return nil
}

func (rec *qoRecorder) take() []string {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	out := rec.seen
	rec.seen = nil
	sort.Strings(out)
	return out
}

func qoHooks(t *testing.T, base *repository.Repository) {
	ctx := context.Background()
	rec := &qoRecorder{}
	r := qoHooked(t, base, rec.hook)
	rec.r = r
	qoSeed(t, base,
		qoMsg("a1", metastorage.StateActive, 0, 0, nil),
		qoMsg("a2", metastorage.StateActive, 1, 1, nil),
		qoMsg("a3", metastorage.StateActive, 2, 50, nil),
		qoMsg("b1", metastorage.StateBounce, 0, 0, nil),
		qoMsg("b2", metastorage.StateBounce, 1, 0, nil),
		qoMsg("b3", metastorage.StateBounce, 60, 0, nil),
		qoMsg("h1", metastorage.StateHold, 0, 0, map[string]string{"k": "v"}),
		qoMsg("h2", metastorage.StateHold, 1, 0, map[string]string{"k": "w"}),
		qoMsg("h3", metastorage.StateHold, 2, 0, map[string]string{"k": "v"}),
		qoMsg("d1", metastorage.StateDeferred, 0, 0, nil),
	)

	n, err := r.RequeueStale(ctx, qoAt(10), 1)
	require.NoError(t, err)
	require.EqualValues(t, 2, n)
	require.Equal(t, []string{"a1:active>incoming", "a2:active>incoming"}, rec.take())

	n, err = r.Purge(ctx, metastorage.StateBounce, qoAt(10), repository.PurgeOptions{Archive: true, DryRun: true})
	require.NoError(t, err)
	require.EqualValues(t, 2, n)
	require.Empty(t, rec.take(), "a dry run runs no hook")
	n, err = r.Purge(ctx, metastorage.StateBounce, qoAt(10), repository.PurgeOptions{Archive: true})
	require.NoError(t, err)
	require.EqualValues(t, 2, n)
	require.Equal(t, []string{"b1:bounce>archived", "b2:bounce>archived"}, rec.take())

	n, err = r.BulkMove(ctx, repository.Filter{State: metastorage.StateHold, HeaderKey: "k", HeaderValue: "v"},
		metastorage.StateDeferred, repository.MoveOptions{BatchSize: 2})
	require.NoError(t, err)
	require.EqualValues(t, 2, n)
	require.Equal(t, []string{"h1:hold>deferred", "h3:hold>deferred"}, rec.take())

	// Deleting is not a state change: no hook, as with DeleteMeta.
	n, err = r.Purge(ctx, metastorage.StateDeferred, qoAt(10), repository.PurgeOptions{})
	require.NoError(t, err)
	require.EqualValues(t, 3, n)
	require.Empty(t, rec.take())
	require.Equal(t, map[metastorage.QueueState]int64{
		metastorage.StateIncoming: 2, metastorage.StateActive: 1, metastorage.StateDeferred: 0,
		metastorage.StateHold: 1, metastorage.StateBounce: 1, metastorage.StateArchived: 2,
	}, qoCounts(t, r))
}

var errQoHook = errors.New("hook refuses")

// qoHookError fails a hook on one message of the second batch: the first
// batch stays committed, the failing batch is rolled back as a whole, and
// no later batch runs.
func qoHookError(t *testing.T, base *repository.Repository) {
	ctx := context.Background()
	var mu sync.Mutex
	calls := 0
	r := qoHooked(t, base, func(_ context.Context, tr repository.Transition) error {
		mu.Lock()
		calls++
		mu.Unlock()
		if tr.MessageID == "m03" {
			return errQoHook
		}
		return nil
	})
	var seed []metastorage.MessageMetadata
	for i := 0; i < 6; i++ {
		seed = append(seed, qoMsg(fmt.Sprintf("m%02d", i), metastorage.StateHold, i, 0, nil))
	}
	qoSeed(t, base, seed...)

	n, err := r.BulkMove(ctx, repository.Filter{State: metastorage.StateHold}, metastorage.StateIncoming, repository.MoveOptions{BatchSize: 2})
	require.ErrorIs(t, err, errQoHook)
	require.EqualValues(t, 2, n, "the count is what committed")
	require.Equal(t, qoRange("m", 0, 2), qoIDsIn(t, r, metastorage.StateIncoming))
	require.Equal(t, qoRange("m", 2, 6), qoIDsIn(t, r, metastorage.StateHold), "m02, in the failing batch before m03, is rolled back too")
	mu.Lock()
	require.Equal(t, 4, calls, "two hooks in the first batch, two in the failing one, none after")
	mu.Unlock()
	counts := qoCounts(t, r)
	require.EqualValues(t, 2, counts[metastorage.StateIncoming])
	require.EqualValues(t, 4, counts[metastorage.StateHold])
	md, err := r.GetMeta(ctx, "m02")
	require.NoError(t, err)
	require.Equal(t, qoAt(0), md.Updated, "a rolled back move leaves Updated as it was")

	// The same on RequeueStale and on archiving.
	require.NoError(t, r.MoveToState(ctx, "m00", metastorage.StateIncoming, metastorage.StateHold))
	for _, id := range []string{"m02", "m03"} {
		require.NoError(t, base.MoveToState(ctx, id, metastorage.StateHold, metastorage.StateActive))
	}
	require.NoError(t, base.UpdateMeta(ctx, "m03", qoMsg("m03", metastorage.StateActive, 3, 0, nil)))
	require.NoError(t, base.UpdateMeta(ctx, "m02", qoMsg("m02", metastorage.StateActive, 2, 0, nil)))
	n, err = r.RequeueStale(ctx, qoAt(1), 0)
	require.ErrorIs(t, err, errQoHook)
	require.Zero(t, n)
	require.Equal(t, []string{"m02", "m03"}, qoIDsIn(t, r, metastorage.StateActive))
	n, err = r.Purge(ctx, metastorage.StateHold, qoAt(100), repository.PurgeOptions{Archive: true, BatchSize: 10})
	require.NoError(t, err)
	require.EqualValues(t, 3, n)
	require.Equal(t, []string{"m00", "m04", "m05"}, qoIDsIn(t, r, metastorage.StateArchived))
}

var errQoRollback = errors.New("roll back")

// qoWithTx runs the operations inside a caller's transaction: they commit
// or roll back with it.
func qoWithTx(t *testing.T, r *repository.Repository) {
	ctx := context.Background()
	var seed []metastorage.MessageMetadata
	for i := 0; i < 5; i++ {
		seed = append(seed, qoMsg(fmt.Sprintf("x%02d", i), metastorage.StateActive, i, i, nil))
	}
	qoSeed(t, r, seed...)

	err := r.Transaction(ctx, func(tx *gorm.DB) error {
		v := r.WithTx(tx)
		n, err := v.RequeueStale(ctx, qoAt(3), 2)
		if err != nil {
			return err
		}
		if n != 3 {
			return fmt.Errorf("requeued %d, want 3", n)
		}
		stats, err := v.Stats(ctx)
		if err != nil {
			return err
		}
		if stats[metastorage.StateIncoming].Count != 3 {
			return fmt.Errorf("inside the transaction incoming is %d, want 3", stats[metastorage.StateIncoming].Count)
		}
		return errQoRollback
	})
	require.ErrorIs(t, err, errQoRollback)
	require.Equal(t, qoRange("x", 0, 5), qoIDsIn(t, r, metastorage.StateActive), "rolled back with the caller")
	require.EqualValues(t, 5, qoCounts(t, r)[metastorage.StateActive])

	err = r.Transaction(ctx, func(tx *gorm.DB) error {
		v := r.WithTx(tx)
		if _, err := v.Purge(ctx, metastorage.StateActive, qoAt(1), repository.PurgeOptions{}); err != nil {
			return err
		}
		_, err := v.BulkMove(ctx, repository.Filter{State: metastorage.StateActive}, metastorage.StateHold, repository.MoveOptions{BatchSize: 3})
		return err
	})
	require.NoError(t, err)
	require.Equal(t, qoRange("x", 1, 5), qoIDsIn(t, r, metastorage.StateHold))
	counts := qoCounts(t, r)
	require.Zero(t, counts[metastorage.StateActive])
	require.EqualValues(t, 4, counts[metastorage.StateHold])
}

func qoClosed(t *testing.T, r *repository.Repository) {
	ctx := context.Background()
	require.NoError(t, r.Close())
	_, err := r.Stats(ctx)
	require.ErrorIs(t, err, metastorage.ErrBackendClosed)
	_, err = r.RequeueStale(ctx, qoAt(1), 0)
	require.ErrorIs(t, err, metastorage.ErrBackendClosed)
	_, err = r.Purge(ctx, metastorage.StateBounce, qoAt(1), repository.PurgeOptions{})
	require.ErrorIs(t, err, metastorage.ErrBackendClosed)
	_, err = r.Purge(ctx, metastorage.StateBounce, qoAt(1), repository.PurgeOptions{DryRun: true})
	require.ErrorIs(t, err, metastorage.ErrBackendClosed)
	_, err = r.BulkMove(ctx, repository.Filter{State: metastorage.StateHold}, metastorage.StateIncoming, repository.MoveOptions{})
	require.ErrorIs(t, err, metastorage.ErrBackendClosed)
}
