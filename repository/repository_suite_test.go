package repository_test

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"gorm.io/gorm"
	metastorage "schneider.vip/retryspool/storage/meta"

	"schneider.vip/retryspool/storage/meta/sqlite/repository"
)

// runRepository checks the API of *repository.Repository beyond the
// contract: StoreMetaBatch, ClaimMessages, ClaimDue, DueMessages,
// StateCount, WithTx and Transaction. Each subtest gets a fresh, empty
// repository from newRepo and closes it when it ends.
func runRepository(t *testing.T, newRepo func(t *testing.T) *repository.Repository) {
	rs := &repoSuite{newRepo: newRepo}
	run(t, []subtest{
		{Name: "StoreMetaBatch", Fn: rs.testBatch},
		{Name: "StoreMetaBatchAllOrNothing", Fn: rs.testBatchAllOrNothing},
		{Name: "ClaimMessages", Fn: rs.testClaim},
		{Name: "ClaimMessagesBadInput", Fn: rs.testClaimBadInput},
		{Name: "DueMessagesAndClaimDue", Fn: rs.testDue},
		{Name: "ClaimRace", Fn: rs.testClaimRace},
		{Name: "ClaimDueRace", Fn: rs.testClaimDueRace},
		{Name: "SchedulerChurn", Fn: rs.testSchedulerChurn},
		{Name: "StateCount", Fn: rs.testStateCount},
		{Name: "WithTxCommit", Fn: rs.testWithTxCommit},
		{Name: "WithTxRollback", Fn: rs.testWithTxRollback},
		{Name: "WithTxFailedCallKeepsTx", Fn: rs.testWithTxFailedCall},
		{Name: "Transaction", Fn: rs.testTransaction},
		{Name: "Closed", Fn: rs.testRepoClosed},
	})
}

type repoSuite struct {
	newRepo func(t *testing.T) *repository.Repository
}

func (rs *repoSuite) repo(t *testing.T) *repository.Repository {
	t.Helper()
	r := rs.newRepo(t)
	require.NotNil(t, r, "newRepo returned nil")
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return r
}

// batchRecords returns n records spread over the six states.
func batchRecords(prefix string, n int) []metastorage.MessageMetadata {
	out := make([]metastorage.MessageMetadata, n)
	for i := range n {
		md := Message(seqID(prefix, i), States[i%len(States)], at(i))
		md.Attempts = i
		if i%5 == 0 {
			md.Headers = nil
		}
		out[i] = md
	}
	return out
}

// requireStored compares every record of want with what the repository
// holds, reading each state with an iterator, and checks the counts.
func (rs *repoSuite) requireStored(t *testing.T, r *repository.Repository, want []metastorage.MessageMetadata) {
	t.Helper()
	byID := map[string]metastorage.MessageMetadata{}
	c := counts{}
	for _, md := range want {
		byID[md.ID] = md
		c[md.State]++
	}
	var seen []string
	for _, st := range States {
		it, err := r.NewMessageIterator(context.Background(), st, 500)
		require.NoError(t, err)
		for _, md := range drain(t, it, nil) {
			w, ok := byID[md.ID]
			require.True(t, ok, "unexpected message %q", md.ID)
			requireSameMeta(t, w, md)
			seen = append(seen, md.ID)
		}
		require.NoError(t, it.Close())
	}
	requireOnce(t, ids(want), seen)
	requireCounts(t, r, c)
}

func (rs *repoSuite) testBatch(t *testing.T) {
	r := rs.repo(t)
	ctx := ctxT(t)
	require.NoError(t, r.StoreMetaBatch(ctx, nil))
	require.NoError(t, r.StoreMetaBatch(ctx, []metastorage.MessageMetadata{}))
	requireCounts(t, r, counts{})

	// More records than one multi-row INSERT takes.
	recs := batchRecords("b", 1234)
	require.NoError(t, r.StoreMetaBatch(ctx, recs))
	rs.requireStored(t, r, recs)

	// A batch replaces existing records whole, in new states, and adds new
	// ones.
	var next []metastorage.MessageMetadata
	for i := 0; i < len(recs); i += 3 {
		md := recs[i]
		md.State = States[(i/3)%len(States)]
		md.Attempts = -i
		md.Headers = map[string]string{"replaced": "yes"}
		next = append(next, md)
		recs[i] = md
	}
	extra := batchRecords("x", 7)
	next = append(next, extra...)
	require.NoError(t, r.StoreMetaBatch(ctx, next))
	rs.requireStored(t, r, append(recs, extra...))
}

func (rs *repoSuite) testBatchAllOrNothing(t *testing.T) {
	r := rs.repo(t)
	ctx := ctxT(t)
	existing := batchRecords("e", 10)
	require.NoError(t, r.StoreMetaBatch(ctx, existing))
	mutate := func(at int, f func(md *metastorage.MessageMetadata)) []metastorage.MessageMetadata {
		recs := batchRecords("n", 800)
		// The batch would also replace an existing record.
		changed := existing[3]
		changed.Attempts = 1000
		recs = append(recs, changed)
		f(&recs[at])
		return recs
	}
	cases := []struct {
		name string
		recs []metastorage.MessageMetadata
		is   error
	}{
		{"invalid state", mutate(700, func(md *metastorage.MessageMetadata) { md.State = 9 }), metastorage.ErrInvalidState},
		{"empty ID", mutate(799, func(md *metastorage.MessageMetadata) { md.ID = "" }), repository.ErrInvalidInput},
		{"duplicate ID", mutate(600, func(md *metastorage.MessageMetadata) { md.ID = seqID("n", 2) }), repository.ErrInvalidInput},
		{"bad header", mutate(0, func(md *metastorage.MessageMetadata) { md.Headers = map[string]string{"k": "\xff"} }), repository.ErrInvalidInput},
		{"bad time", mutate(800, func(md *metastorage.MessageMetadata) { md.Created = time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC) }), repository.ErrInvalidInput},
	}
	for _, tc := range cases {
		err := r.StoreMetaBatch(ctx, tc.recs)
		require.ErrorIs(t, err, tc.is, tc.name)
		rs.requireStored(t, r, existing)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	require.Error(t, r.StoreMetaBatch(cancelled, batchRecords("c", 3)))
	rs.requireStored(t, r, existing)
}

// claimFixture stores n incoming messages whose Created order is neither
// their ID order nor their insertion order, plus messages in other states,
// and returns the incoming ones oldest first.
func claimFixture(t *testing.T, r *repository.Repository, n int) []metastorage.MessageMetadata {
	t.Helper()
	mds := iteratorFixture(t, r, n)
	sort.Slice(mds, func(i, j int) bool {
		if !mds[i].Created.Equal(mds[j].Created) {
			return mds[i].Created.Before(mds[j].Created)
		}
		return mds[i].ID < mds[j].ID
	})
	return mds
}

func (rs *repoSuite) testClaim(t *testing.T) {
	r := rs.repo(t)
	ctx := ctxT(t)
	mds := claimFixture(t, r, 10) // plus 4 active ones
	var claimed []metastorage.MessageMetadata
	for _, limit := range []int{3, 1, 4, 5} {
		got, err := r.ClaimMessages(ctx, metastorage.StateIncoming, metastorage.StateActive, limit)
		require.NoError(t, err)
		want := mds[len(claimed):min(len(mds), len(claimed)+limit)]
		require.Equal(t, ids(want), ids(got), "claim of %d: oldest first, ties by ID", limit)
		for i, md := range got {
			// The records come back as they are after the move.
			require.Equal(t, metastorage.StateActive, md.State)
			w := want[i]
			w.State = metastorage.StateActive
			w.Updated = md.Updated
			requireSameMeta(t, w, md)
			requireSameMeta(t, md, get(t, r, md.ID))
		}
		claimed = append(claimed, got...)
		requireCounts(t, r, counts{metastorage.StateIncoming: len(mds) - len(claimed), metastorage.StateActive: 4 + len(claimed)})
	}
	got, err := r.ClaimMessages(ctx, metastorage.StateIncoming, metastorage.StateActive, 10)
	require.NoError(t, err)
	require.Empty(t, got, "nothing left to claim")

	// Any pair of states: move the claimed ones on.
	got, err = r.ClaimMessages(ctx, metastorage.StateActive, metastorage.StateArchived, 100)
	require.NoError(t, err)
	require.Len(t, got, 14)
	requireCounts(t, r, counts{metastorage.StateArchived: 14})
}

func (rs *repoSuite) testClaimBadInput(t *testing.T) {
	r := rs.repo(t)
	ctx := ctxT(t)
	store(t, r, Message("m", metastorage.StateIncoming, base))
	for _, limit := range []int{0, -1, repository.MaxClaim + 1} {
		_, err := r.ClaimMessages(ctx, metastorage.StateIncoming, metastorage.StateActive, limit)
		require.ErrorIs(t, err, repository.ErrInvalidInput, "ClaimMessages limit %d", limit)
		_, err = r.ClaimDue(ctx, base, limit)
		require.ErrorIs(t, err, repository.ErrInvalidInput, "ClaimDue limit %d", limit)
		_, err = r.DueMessages(ctx, base, limit)
		require.ErrorIs(t, err, repository.ErrInvalidInput, "DueMessages limit %d", limit)
	}
	_, err := r.ClaimMessages(ctx, metastorage.StateIncoming, metastorage.StateIncoming, 1)
	require.ErrorIs(t, err, repository.ErrInvalidInput, "from == to")
	for _, bad := range badStates {
		_, err = r.ClaimMessages(ctx, bad, metastorage.StateActive, 1)
		require.ErrorIs(t, err, metastorage.ErrInvalidState)
		_, err = r.ClaimMessages(ctx, metastorage.StateIncoming, bad, 1)
		require.ErrorIs(t, err, metastorage.ErrInvalidState)
	}
	_, err = r.ClaimDue(ctx, time.Date(1000, 1, 1, 0, 0, 0, 0, time.UTC), 1)
	require.ErrorIs(t, err, repository.ErrInvalidInput, "time out of range")
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	_, err = r.ClaimMessages(cancelled, metastorage.StateIncoming, metastorage.StateActive, 1)
	require.ErrorIs(t, err, context.Canceled)
	requireCounts(t, r, counts{metastorage.StateIncoming: 1})
}

func (rs *repoSuite) testDue(t *testing.T) {
	r := rs.repo(t)
	ctx := ctxT(t)
	now := base
	deferred := func(id string, next time.Time) metastorage.MessageMetadata {
		md := Message(id, metastorage.StateDeferred, at(0))
		md.NextRetry = next
		return md
	}
	due := []metastorage.MessageMetadata{ // in the order they are due
		deferred("d-zero", time.Time{}),
		deferred("d-old", now.Add(-48*time.Hour)),
		deferred("d-tie-a", now.Add(-time.Hour)),
		deferred("d-tie-b", now.Add(-time.Hour)),
		deferred("d-1ns", now.Add(-time.Nanosecond)),
		deferred("d-now", now.In(time.UTC)),
	}
	notDue := []metastorage.MessageMetadata{
		deferred("d-later", now.Add(time.Nanosecond)),
		deferred("d-future", now.Add(time.Hour)),
	}
	others := []metastorage.MessageMetadata{
		Message("incoming-past", metastorage.StateIncoming, at(0)),
		Message("hold-past", metastorage.StateHold, at(0)),
		Message("bounce-past", metastorage.StateBounce, at(0)),
	}
	for i := range others {
		others[i].NextRetry = time.Time{}
	}
	// Stored in an order that is not the due order.
	for _, i := range []int{3, 0, 5, 1, 4, 2} {
		store(t, r, due[i])
	}
	store(t, r, notDue...)
	store(t, r, others...)

	got, err := r.DueMessages(ctx, now, 100)
	require.NoError(t, err)
	require.Equal(t, ids(due), ids(got), "DueMessages: due ones only, earliest NextRetry first, ties by ID")
	for i := range got {
		requireSameMeta(t, due[i], got[i])
	}
	got, err = r.DueMessages(ctx, now, 2)
	require.NoError(t, err)
	require.Equal(t, ids(due[:2]), ids(got))
	requireCounts(t, r, counts{metastorage.StateDeferred: 8, metastorage.StateIncoming: 1, metastorage.StateHold: 1, metastorage.StateBounce: 1})

	got, err = r.ClaimDue(ctx, now, 4)
	require.NoError(t, err)
	require.Equal(t, ids(due[:4]), ids(got), "ClaimDue: earliest first")
	for _, md := range got {
		require.Equal(t, metastorage.StateActive, md.State)
		requireSameMeta(t, md, get(t, r, md.ID))
	}
	got, err = r.ClaimDue(ctx, now, 100)
	require.NoError(t, err)
	require.Equal(t, ids(due[4:]), ids(got))
	got, err = r.ClaimDue(ctx, now, 100)
	require.NoError(t, err)
	require.Empty(t, got)
	got, err = r.DueMessages(ctx, now, 100)
	require.NoError(t, err)
	require.Empty(t, got)
	requireCounts(t, r, counts{metastorage.StateDeferred: 2, metastorage.StateActive: 6, metastorage.StateIncoming: 1, metastorage.StateHold: 1, metastorage.StateBounce: 1})

	// Later, the rest is due.
	got, err = r.ClaimDue(ctx, now.Add(2*time.Hour), 100)
	require.NoError(t, err)
	require.Equal(t, ids(notDue), ids(got))
	for _, md := range others {
		requireSameMeta(t, md, get(t, r, md.ID))
	}
}

// claimRace has workers claim batches with claim until it returns nothing,
// and checks that every message was claimed exactly once.
func claimRace(t *testing.T, r *repository.Repository, want []string, claim func() ([]metastorage.MessageMetadata, error)) {
	t.Helper()
	const workers = 8
	var mu sync.Mutex
	var got []string
	var firstErr error
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for {
				mds, err := claim()
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
				got = append(got, ids(mds)...)
				mu.Unlock()
				if err != nil || len(mds) == 0 {
					return
				}
				for _, md := range mds {
					if md.State != metastorage.StateActive {
						mu.Lock()
						firstErr = errors.New("claimed record " + md.ID + " is not active")
						mu.Unlock()
						return
					}
				}
			}
		}()
	}
	close(start)
	wg.Wait()
	require.NoError(t, firstErr)
	requireOnce(t, want, got)
}

func (rs *repoSuite) testClaimRace(t *testing.T) {
	r := rs.repo(t)
	ctx := ctxT(t)
	recs := make([]metastorage.MessageMetadata, 1000)
	for i := range recs {
		recs[i] = Message(seqID("r", i), metastorage.StateIncoming, at(i%97))
	}
	require.NoError(t, r.StoreMetaBatch(ctx, recs))
	claimRace(t, r, ids(recs), func() ([]metastorage.MessageMetadata, error) {
		return r.ClaimMessages(ctx, metastorage.StateIncoming, metastorage.StateActive, 7)
	})
	requireCounts(t, r, counts{metastorage.StateActive: len(recs)})
}

func (rs *repoSuite) testClaimDueRace(t *testing.T) {
	r := rs.repo(t)
	ctx := ctxT(t)
	var recs, due []metastorage.MessageMetadata
	for i := range 400 {
		md := Message(seqID("r", i), metastorage.StateDeferred, at(0))
		md.NextRetry = at(i % 40) // due at at(29) and before: 300 of 400
		recs = append(recs, md)
		if i%40 < 30 {
			due = append(due, md)
		}
	}
	require.NoError(t, r.StoreMetaBatch(ctx, recs))
	claimRace(t, r, ids(due), func() ([]metastorage.MessageMetadata, error) {
		return r.ClaimDue(ctx, at(29), 5)
	})
	requireCounts(t, r, counts{metastorage.StateActive: len(due), metastorage.StateDeferred: len(recs) - len(due)})
}

// testSchedulerChurn runs what a scheduler pool does all day: workers claim
// due messages, put most of them back as deferred with a later (still due)
// retry, and archive them after their last attempt. Claims, updates and
// moves then walk the same index ranges at once, which is where engines
// that lock ranges deadlock. No message may be held by two workers at
// once, every one must end archived after exactly maxTries claims, and no
// call may fail.
func (rs *repoSuite) testSchedulerChurn(t *testing.T) {
	r := rs.repo(t)
	ctx := ctxT(t)
	const (
		messages = 1000
		workers  = 64
		maxTries = 3
	)
	recs := make([]metastorage.MessageMetadata, messages)
	index := make(map[string]int, messages)
	for i := range recs {
		recs[i] = Message(seqID("s", i), metastorage.StateDeferred, at(0))
		recs[i].Attempts = 0
		recs[i].NextRetry = at(i % 10)
		index[recs[i].ID] = i
	}
	require.NoError(t, r.StoreMetaBatch(ctx, recs))

	held := make([]atomic.Bool, messages)
	claims := make([]atomic.Int32, messages)
	var archived atomic.Int32
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	var (
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := func() error {
				for archived.Load() < messages {
					mds, err := r.ClaimDue(ctx, at(100), 5)
					if err != nil {
						return fmt.Errorf("ClaimDue: %w", err)
					}
					if len(mds) == 0 {
						time.Sleep(time.Millisecond)
						continue
					}
					for _, md := range mds {
						i, ok := index[md.ID]
						if !ok {
							return fmt.Errorf("claimed unknown message %q", md.ID)
						}
						if !held[i].CompareAndSwap(false, true) {
							return fmt.Errorf("message %s claimed while another worker holds it", md.ID)
						}
						claims[i].Add(1)
						if md.Attempts+1 >= maxTries {
							held[i].Store(false)
							if err := r.MoveToState(ctx, md.ID, metastorage.StateActive, metastorage.StateArchived); err != nil {
								return fmt.Errorf("archive %s: %w", md.ID, err)
							}
							archived.Add(1)
							continue
						}
						md.State = metastorage.StateDeferred
						md.Attempts++
						md.NextRetry = at(10 + md.Attempts*10 + i%10)
						held[i].Store(false)
						if err := r.UpdateMeta(ctx, md.ID, md); err != nil {
							return fmt.Errorf("defer %s: %w", md.ID, err)
						}
					}
				}
				return nil
			}()
			if err != nil {
				mu.Lock()
				if firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
				stop() // the first failure ends the run
			}
		}()
	}
	wg.Wait()
	require.NoError(t, firstErr)
	for i := range claims {
		require.Equal(t, int32(maxTries), claims[i].Load(), "claims of %s", recs[i].ID)
	}
	requireCounts(t, r, counts{metastorage.StateArchived: messages})
}

func (rs *repoSuite) testStateCount(t *testing.T) {
	r := rs.repo(t)
	ctx := ctxT(t)
	require.NoError(t, r.StoreMetaBatch(ctx, batchRecords("c", 60)))
	for _, st := range States {
		n, err := r.StateCount(ctx, st)
		require.NoError(t, err)
		require.Equal(t, int64(10), n, "%s", st)
		require.Equal(t, n, r.GetStateCount(st))
	}
	for _, bad := range badStates {
		_, err := r.StateCount(ctx, bad)
		require.ErrorIs(t, err, metastorage.ErrInvalidState)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	_, err := r.StateCount(cancelled, metastorage.StateIncoming)
	require.ErrorIs(t, err, context.Canceled)
}

// appTx begins a transaction of the application on the repository's
// database, as a GORM application would on its own *gorm.DB.
func appTx(t *testing.T, r *repository.Repository) *gorm.DB {
	t.Helper()
	tx := r.DB().WithContext(ctxT(t)).Begin()
	require.NoError(t, tx.Error)
	t.Cleanup(func() { tx.Rollback() })
	return tx
}

func (rs *repoSuite) testWithTxCommit(t *testing.T) {
	r := rs.repo(t)
	ctx := ctxT(t)
	pre := Message("pre", metastorage.StateIncoming, base)
	store(t, r, pre)

	tx := appTx(t, r)
	v := r.WithTx(tx)
	in := Message("in-tx", metastorage.StateIncoming, at(1))
	require.NoError(t, v.StoreMeta(ctx, in.ID, in))
	require.NoError(t, v.MoveToState(ctx, "pre", metastorage.StateIncoming, metastorage.StateActive))
	requireIdentical(t, metastorage.ErrStateConflict, v.MoveToState(ctx, "pre", metastorage.StateIncoming, metastorage.StateActive))
	// The transaction sees its own writes ...
	requireSameMeta(t, in, get(t, v, in.ID))
	n, err := v.StateCount(ctx, metastorage.StateIncoming)
	require.NoError(t, err)
	require.Equal(t, int64(1), n)
	// ... nobody else does before the commit.
	requireAbsent(t, r, in.ID)
	requireCounts(t, r, counts{metastorage.StateIncoming: 1})
	require.NoError(t, v.Close(), "Close of a view does nothing")

	require.NoError(t, tx.Commit().Error)
	requireSameMeta(t, in, get(t, r, in.ID))
	require.Equal(t, metastorage.StateActive, get(t, r, "pre").State)
	requireCounts(t, r, counts{metastorage.StateIncoming: 1, metastorage.StateActive: 1})
}

func (rs *repoSuite) testWithTxRollback(t *testing.T) {
	r := rs.repo(t)
	ctx := ctxT(t)
	pre := Message("pre", metastorage.StateIncoming, base)
	store(t, r, pre)

	tx := appTx(t, r)
	v := r.WithTx(tx)
	require.NoError(t, v.StoreMeta(ctx, "in-tx", Message("in-tx", metastorage.StateHold, at(1))))
	require.NoError(t, v.StoreMetaBatch(ctx, batchRecords("batch", 12)))
	changed := pre
	changed.State = metastorage.StateDeferred
	changed.Attempts = 77
	require.NoError(t, v.UpdateMeta(ctx, "pre", changed))
	claimed, err := v.ClaimMessages(ctx, metastorage.StateIncoming, metastorage.StateBounce, 100)
	require.NoError(t, err)
	require.Len(t, claimed, 2) // batch-0000 and batch-0006
	require.NoError(t, tx.Rollback().Error)

	requireAbsent(t, r, "in-tx")
	requireAbsent(t, r, seqID("batch", 0))
	requireSameMeta(t, pre, get(t, r, "pre"))
	requireCounts(t, r, counts{metastorage.StateIncoming: 1})
}

func (rs *repoSuite) testWithTxFailedCall(t *testing.T) {
	r := rs.repo(t)
	ctx := ctxT(t)
	tx := appTx(t, r)
	v := r.WithTx(tx)
	require.NoError(t, v.StoreMeta(ctx, "a", Message("a", metastorage.StateIncoming, base)))
	require.ErrorIs(t, v.UpdateMeta(ctx, "missing", Message("missing", metastorage.StateIncoming, base)), metastorage.ErrMessageNotFound)
	requireIdentical(t, metastorage.ErrMessageNotFound, v.MoveToState(ctx, "missing", metastorage.StateIncoming, metastorage.StateActive))
	require.ErrorIs(t, v.DeleteMeta(ctx, "missing"), metastorage.ErrMessageNotFound)
	// The transaction is still usable after the failed calls.
	require.NoError(t, v.StoreMeta(ctx, "b", Message("b", metastorage.StateIncoming, at(1))))
	require.NoError(t, tx.Commit().Error)
	requireOnce(t, []string{"a", "b"}, listAll(t, r, metastorage.StateIncoming))
	requireCounts(t, r, counts{metastorage.StateIncoming: 2})
}

func (rs *repoSuite) testTransaction(t *testing.T) {
	r := rs.repo(t)
	ctx := ctxT(t)
	store(t, r, Message("pre", metastorage.StateIncoming, base))

	err := r.Transaction(ctx, func(tx *gorm.DB) error {
		v := r.WithTx(tx)
		if err := v.StoreMeta(ctx, "a", Message("a", metastorage.StateDeferred, at(1))); err != nil {
			return err
		}
		return v.MoveToState(ctx, "pre", metastorage.StateIncoming, metastorage.StateActive)
	})
	require.NoError(t, err)
	require.Equal(t, metastorage.StateDeferred, get(t, r, "a").State)
	requireCounts(t, r, counts{metastorage.StateActive: 1, metastorage.StateDeferred: 1})

	errApp := errors.New("application failure")
	err = r.Transaction(ctx, func(tx *gorm.DB) error {
		v := r.WithTx(tx)
		if err := v.StoreMeta(ctx, "b", Message("b", metastorage.StateIncoming, at(2))); err != nil {
			return err
		}
		if err := v.DeleteMeta(ctx, "a"); err != nil {
			return err
		}
		if err := v.MoveToState(ctx, "pre", metastorage.StateActive, metastorage.StateArchived); err != nil {
			return err
		}
		return errApp
	})
	require.ErrorIs(t, err, errApp)
	requireAbsent(t, r, "b")
	require.Equal(t, metastorage.StateDeferred, get(t, r, "a").State)
	require.Equal(t, metastorage.StateActive, get(t, r, "pre").State)
	requireCounts(t, r, counts{metastorage.StateActive: 1, metastorage.StateDeferred: 1})

	// A conflict inside rolls back what came before it when fn returns it.
	err = r.Transaction(ctx, func(tx *gorm.DB) error {
		v := r.WithTx(tx)
		if err := v.StoreMeta(ctx, "c", Message("c", metastorage.StateIncoming, at(3))); err != nil {
			return err
		}
		return v.MoveToState(ctx, "pre", metastorage.StateIncoming, metastorage.StateActive)
	})
	require.ErrorIs(t, err, metastorage.ErrStateConflict)
	requireAbsent(t, r, "c")
	requireCounts(t, r, counts{metastorage.StateActive: 1, metastorage.StateDeferred: 1})
}

func (rs *repoSuite) testRepoClosed(t *testing.T) {
	r := rs.newRepo(t)
	ctx := ctxT(t)
	store(t, r, Message("m", metastorage.StateDeferred, base))
	require.NoError(t, r.Close())
	closed := func(what string, err error) {
		t.Helper()
		require.ErrorIs(t, err, metastorage.ErrBackendClosed, what)
	}
	closed("StoreMetaBatch", r.StoreMetaBatch(ctx, batchRecords("x", 2)))
	_, err := r.ClaimMessages(ctx, metastorage.StateDeferred, metastorage.StateActive, 1)
	closed("ClaimMessages", err)
	_, err = r.ClaimDue(ctx, base, 1)
	closed("ClaimDue", err)
	_, err = r.DueMessages(ctx, base, 1)
	closed("DueMessages", err)
	_, err = r.StateCount(ctx, metastorage.StateDeferred)
	closed("StateCount", err)
	closed("Transaction", r.Transaction(ctx, func(*gorm.DB) error { return nil }))
	require.NoError(t, r.Close())
}
