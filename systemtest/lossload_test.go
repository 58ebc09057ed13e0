package systemtest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
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

// lossWorkload is the queue workload of the connection-loss and restart
// suites: 16 workers store new messages, claim messages (stored before or
// during the faults) and finish what they claimed, while faults strike.
// It records every acknowledged outcome so that verify can hold the store
// to it.
type lossWorkload struct {
	t      *testing.T
	r      *repository.Repository
	ack    func(kind, id string) // when set, told each acknowledged store (S), claim (C) and finish (F)
	prefix string                // of the IDs the workers store

	mu            sync.Mutex
	ids           []string        // acknowledged messages, for moves on random IDs
	stored        map[string]bool // acknowledged stores
	failedStores  []string        // stores that failed with a plain error: they did not land
	unknownStores []string        // stores whose outcome is unknown
	claimedBy     map[string]int  // acknowledged claims per message
	ownMoveMet    []string        // a finish that met its own earlier move
	stolen        []string        // a finish that found the message taken by someone else
	unknownMoves  []string        // random moves whose outcome is unknown

	stores, storeErrs, claimCalls, claimErrs, claimUnknown   atomic.Int64
	moves, moveConflicts, moveErrs                           atomic.Int64
	finishMoves, finishUpdates, finishRetries, finishUnknown atomic.Int64
	overdue                                                  atomic.Int64 // calls that outlived their context by 5 s
	callTimeout                                              time.Duration
}

func newLossWorkload(t *testing.T, r *repository.Repository) *lossWorkload {
	return &lossWorkload{t: t, r: r, stored: map[string]bool{}, claimedBy: map[string]int{}, callTimeout: time.Minute}
}

// seed stores n incoming messages, older than any stored later.
func (w *lossWorkload) seed(n int) {
	seed := make([]metastorage.MessageMetadata, n)
	for i := range seed {
		seed[i] = metastorage.MessageMetadata{ID: fmt.Sprintf("s%05d", i), State: metastorage.StateIncoming, Created: time.Unix(int64(i), 0)}
		w.ids = append(w.ids, seed[i].ID)
		w.stored[seed[i].ID] = true
	}
	require.NoError(w.t, w.r.StoreMetaBatch(context.Background(), seed))
}

// run runs the workers for d while faults strikes (it returns what it
// counted when stop closes), and returns that count.
func (w *lossWorkload) run(d time.Duration, faults func(stop <-chan struct{}) int64) int64 {
	stop := make(chan struct{})
	var struck int64
	faultsDone := make(chan struct{})
	go func() {
		defer close(faultsDone)
		struck = faults(stop)
	}()
	var workers sync.WaitGroup
	for n := range 16 {
		workers.Add(1)
		go func() {
			defer workers.Done()
			w.worker(n, stop)
		}()
	}
	time.Sleep(d)
	close(stop)
	<-faultsDone
	workers.Wait()
	return struck
}

func (w *lossWorkload) acked(kind, id string) {
	if w.ack != nil {
		w.ack(kind, id)
	}
}

// call returns the context of one call and the function that ends it,
// which counts a call that outlived its context by five seconds (a hang).
func (w *lossWorkload) call() (context.Context, func()) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), w.callTimeout)
	return ctx, func() {
		cancel()
		if time.Since(start) > w.callTimeout+5*time.Second {
			w.overdue.Add(1)
		}
	}
}

func (w *lossWorkload) worker(n int, stop <-chan struct{}) {
	viaUpdate := n%2 == 1
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		var got []string
		switch k := rand.IntN(10); {
		case k < 3:
			w.store(fmt.Sprintf("%sn%02d-%06d", w.prefix, n, i))
		case k < 8:
			got = w.claim()
		default:
			got = w.moveRandom()
		}
		for _, id := range got {
			w.finish(id, viaUpdate)
		}
		if len(got) == 0 && i%8 == 0 {
			time.Sleep(time.Millisecond)
		}
	}
}

func (w *lossWorkload) store(id string) {
	ctx, cancel := w.call()
	defer cancel()
	err := w.r.StoreMeta(ctx, id, metastorage.MessageMetadata{ID: id, State: metastorage.StateIncoming, Created: time.Now()})
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case err == nil:
		w.stores.Add(1)
		w.stored[id] = true
		w.ids = append(w.ids, id)
		w.acked("S", id)
	case errors.Is(err, repository.ErrOutcomeUnknown):
		w.unknownStores = append(w.unknownStores, id)
	default:
		w.storeErrs.Add(1)
		w.failedStores = append(w.failedStores, id)
	}
}

func (w *lossWorkload) claim() []string {
	ctx, cancel := w.call()
	defer cancel()
	got, err := w.r.ClaimMessages(ctx, metastorage.StateIncoming, metastorage.StateActive, 5)
	w.claimCalls.Add(1)
	switch {
	case errors.Is(err, repository.ErrOutcomeUnknown):
		w.claimUnknown.Add(1)
		return nil
	case err != nil:
		w.claimErrs.Add(1)
		return nil
	}
	ids := make([]string, len(got))
	w.mu.Lock()
	defer w.mu.Unlock()
	for i, md := range got {
		ids[i] = md.ID
		w.claimedBy[md.ID]++
		w.acked("C", md.ID)
	}
	return ids
}

func (w *lossWorkload) moveRandom() []string {
	w.mu.Lock()
	id := w.ids[rand.IntN(len(w.ids))]
	w.mu.Unlock()
	ctx, cancel := w.call()
	defer cancel()
	err := w.r.MoveToState(ctx, id, metastorage.StateIncoming, metastorage.StateActive)
	w.moves.Add(1)
	switch {
	case err == nil:
		w.mu.Lock()
		w.claimedBy[id]++
		w.acked("C", id)
		w.mu.Unlock()
		return []string{id}
	case errors.Is(err, metastorage.ErrStateConflict):
		w.moveConflicts.Add(1)
	case errors.Is(err, repository.ErrOutcomeUnknown):
		w.mu.Lock()
		w.unknownMoves = append(w.unknownMoves, id)
		w.mu.Unlock()
	default:
		w.moveErrs.Add(1)
	}
	return nil
}

// finish moves a claimed message to archived, or rewrites its record with
// State archived, retrying until the outcome is known.
func (w *lossWorkload) finish(id string, viaUpdate bool) {
	failed := false
	for {
		ctx, cancel := w.call()
		var err error
		if viaUpdate {
			err = w.r.UpdateMeta(ctx, id, metastorage.MessageMetadata{ID: id, State: metastorage.StateArchived, Attempts: 1, Created: time.Now()})
		} else {
			err = w.r.MoveToState(ctx, id, metastorage.StateActive, metastorage.StateArchived)
		}
		cancel()
		switch {
		case err == nil:
			if viaUpdate {
				w.finishUpdates.Add(1)
			} else {
				w.finishMoves.Add(1)
			}
			w.acked("F", id)
			return
		case errors.Is(err, repository.ErrOutcomeUnknown):
			w.finishUnknown.Add(1)
			if md, gerr := w.r.GetMeta(context.Background(), id); gerr == nil && md.State == metastorage.StateArchived {
				w.acked("F", id)
				return
			}
		case errors.Is(err, metastorage.ErrStateConflict) && failed:
			w.mu.Lock()
			w.ownMoveMet = append(w.ownMoveMet, id)
			w.mu.Unlock()
			return
		case errors.Is(err, metastorage.ErrStateConflict), errors.Is(err, metastorage.ErrMessageNotFound):
			w.mu.Lock()
			w.stolen = append(w.stolen, id)
			w.mu.Unlock()
			return
		}
		failed = true
		w.finishRetries.Add(1)
		time.Sleep(time.Millisecond)
	}
}

// verify holds the store to every acknowledged outcome, prints the
// figures (after what, the fault's own), and fails on any breach.
func (w *lossWorkload) verify(t *testing.T, admin *gorm.DB, table, what string, settled map[string]int64) {
	t.Helper()
	type rowState struct {
		ID    string
		State int
	}
	var rows []rowState
	require.NoError(t, admin.Table(table).Select("id, state").Find(&rows).Error)
	state := make(map[string]metastorage.QueueState, len(rows))
	recount := map[metastorage.QueueState]int64{}
	for _, rw := range rows {
		state[rw.ID] = metastorage.QueueState(rw.State)
		recount[metastorage.QueueState(rw.State)]++
	}
	var doubles, lost, undone, failedLanded, orphans []string
	for id, n := range w.claimedBy {
		if n > 1 {
			doubles = append(doubles, id)
		}
		if s, ok := state[id]; ok && s != metastorage.StateArchived {
			undone = append(undone, fmt.Sprintf("%s(%s)", id, s))
		}
	}
	for id := range w.stored {
		if _, ok := state[id]; !ok {
			lost = append(lost, id)
		}
	}
	for _, id := range w.failedStores {
		if _, ok := state[id]; ok {
			failedLanded = append(failedLanded, id)
		}
	}
	for id, s := range state {
		if s == metastorage.StateActive {
			orphans = append(orphans, id)
		}
	}
	for _, l := range [][]string{doubles, lost, undone, failedLanded, orphans} {
		sort.Strings(l)
	}
	claimedMsgs := 0
	for _, n := range w.claimedBy {
		claimedMsgs += n
	}
	t.Logf("%s; stores %d acknowledged, %d failed, %d unknown; claims %d calls (%d failed, %d unknown), %d messages claimed; "+
		"random moves %d (%d conflicts, %d failed, %d unknown); finishes %d by MoveToState, %d by UpdateMeta, %d retried, %d unknown; "+
		"settled: %d landed, %d not landed, %d unknown; %d double claims, %d lost, %d undone, %d orphans",
		what, w.stores.Load(), w.storeErrs.Load(), len(w.unknownStores), w.claimCalls.Load(), w.claimErrs.Load(), w.claimUnknown.Load(),
		claimedMsgs, w.moves.Load(), w.moveConflicts.Load(), w.moveErrs.Load(), len(w.unknownMoves),
		w.finishMoves.Load(), w.finishUpdates.Load(), w.finishRetries.Load(), w.finishUnknown.Load(),
		settled["landed"], settled["not_landed"], settled["unknown"], len(doubles), len(lost), len(undone), len(orphans))

	require.Empty(t, doubles, "messages acknowledged as claimed to two workers")
	require.Empty(t, w.stolen, "a finish found its claimed message taken by someone else")
	require.Empty(t, w.ownMoveMet, "a finish that reported an error had in fact moved the message")
	require.Empty(t, lost, "acknowledged messages missing")
	require.Empty(t, undone, "claimed messages not archived: a later write undid the finish or the claim")
	require.Empty(t, failedLanded, "stores that failed with a plain error had landed")
	// Every outcome the store could not learn is accounted for: only a
	// claim or move whose outcome is unknown may have left a message in
	// active without an owner, and none is one that a worker was told it
	// had claimed.
	unknown := settled["unknown"]
	require.EqualValues(t, unknown, int64(len(w.unknownStores))+w.claimUnknown.Load()+int64(len(w.unknownMoves))+w.finishUnknown.Load(),
		"every unknown outcome the store counted reached a caller as ErrOutcomeUnknown")
	require.LessOrEqual(t, int64(len(orphans)), 5*w.claimUnknown.Load()+int64(len(w.unknownMoves)), "orphans in active: %v", orphans)
	for _, id := range orphans {
		require.Zero(t, w.claimedBy[id], "orphan %s was acknowledged as claimed", id)
	}
	for _, s := range []metastorage.QueueState{metastorage.StateIncoming, metastorage.StateActive, metastorage.StateArchived} {
		n, err := w.r.StateCount(context.Background(), s)
		require.NoError(t, err)
		require.Equal(t, recount[s], n, "the %s counter agrees with a recount", s)
	}
	require.Zero(t, recount[metastorage.StateDeferred]+recount[metastorage.StateHold]+recount[metastorage.StateBounce])
}
