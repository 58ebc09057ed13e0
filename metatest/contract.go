package metatest

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	metastorage "schneider.vip/retryspool/storage/meta"
)

// Run runs the contract's conformance suite: each subtest gets a fresh,
// empty backend from newBackend and closes it when it ends. tolerate names
// the backend's known departures from the contract (none for a conforming
// backend).
func Run(t *testing.T, newBackend func(t *testing.T) metastorage.Backend, tolerate ...Deviation) {
	s := newSuite(newBackend, tolerate)
	run(t, []subtest{
		{Name: "StoreGetRoundTrip", Fn: s.testRoundTrip},
		{Name: "ZeroTimesAndNilHeaders", Fn: s.testZeroValues},
		{Name: "HeaderStrings", Fn: s.testHeaderStrings},
		{Name: "LargeHeaders", Fn: s.testLargeHeaders},
		{Name: "IDsAreExactBytes", Fn: s.testExactIDs},
		{Name: "StoreReplaces", Fn: s.testStoreReplaces},
		{Name: "StoreReplacesAcrossStates", Fn: s.testStoreAcrossStates},
		{Name: "UpdateMeta", Fn: s.testUpdate},
		{Name: "UpdateMetaUnknownID", Fn: s.testUpdateUnknown},
		{Name: "DeleteMeta", Fn: s.testDelete},
		{Name: "MoveToState", Fn: s.testMove},
		{Name: "MoveToStateSameState", Fn: s.testMoveSameState},
		{Name: "MoveToStateInvalidState", Fn: s.testMoveInvalidState},
		{Name: "MoveToStateRace", Fn: s.testMoveRace},
		{Name: "Iterator", Fn: s.testIterator},
		{Name: "IteratorEmptyState", Fn: s.testIteratorEmpty},
		{Name: "IteratorWhileMoving", Fn: s.testIteratorWhileMoving},
		{Name: "ListMessagesSort", Fn: s.testListSort},
		{Name: "ListMessagesDefaults", Fn: s.testListDefaults},
		{Name: "ListMessagesPaging", Fn: s.testListPaging},
		{Name: "ListMessagesSince", Fn: s.testListSince},
		{Name: "ListMessagesBadInput", Fn: s.testListBadInput},
		{Name: "StateCounts", Fn: s.testStateCounts},
		{Name: "BadInputLeavesData", Fn: s.testBadInput},
		{Name: "CancelledContext", Fn: s.testCancelled},
		{Name: "Closed", Fn: s.testClosed},
		{Name: "CloseWhileBusy", Fn: s.testCloseWhileBusy},
	})
}

func (s *suite) testRoundTrip(t *testing.T) {
	b := s.backend(t)
	ctx := ctxT(t)
	far := metastorage.MessageMetadata{
		ID:              "far",
		State:           metastorage.StateBounce,
		Attempts:        1 << 30,
		MaxAttempts:     -1,
		NextRetry:       time.Date(2261, time.December, 31, 23, 59, 59, 999999999, zone),
		Created:         time.Date(1901, time.December, 13, 20, 45, 52, 1, zone), // before 1970
		Updated:         time.Date(1970, time.January, 1, 0, 0, 0, 1, time.UTC),
		LastError:       strings.Repeat("é\n\t", 3000),
		Size:            1<<62 + 7,
		Priority:        1 << 20,
		Headers:         map[string]string{"k": "v"},
		RetryPolicyName: "p",
	}
	mds := []metastorage.MessageMetadata{Message("full", metastorage.StateDeferred, base), far}
	for _, st := range States {
		mds = append(mds, Message("in-"+st.String(), st, at(int(st))))
	}
	store(t, b, mds...)
	for _, want := range mds {
		got, err := b.GetMeta(ctx, want.ID)
		require.NoError(t, err)
		s.requireSameMeta(t, want, got)
	}
	requireAbsent(t, b, "never-stored")
}

func (s *suite) testZeroValues(t *testing.T) {
	b := s.backend(t)
	zero := metastorage.MessageMetadata{ID: "zero", Created: base, Updated: base}
	empty := Message("empty", metastorage.StateIncoming, base)
	empty.Headers = map[string]string{}
	empty.NextRetry = time.Time{}
	empty.LastError = ""
	store(t, b, zero, empty)
	got := get(t, b, "zero")
	s.requireSameMeta(t, zero, got)
	require.Nil(t, got.Headers, "nil headers must come back nil")
	require.True(t, got.NextRetry.IsZero(), "zero NextRetry must come back zero")
	got = get(t, b, "empty")
	s.requireSameMeta(t, empty, got)
	require.NotNil(t, got.Headers, "empty headers must come back non-nil")
	require.Empty(t, got.Headers)

	if !s.tolerate[BackendSetsTimestamps] {
		allZero := metastorage.MessageMetadata{ID: "all-zero"}
		store(t, b, allZero)
		got = get(t, b, "all-zero")
		s.requireSameMeta(t, allZero, got)
		require.True(t, got.Created.IsZero() && got.Updated.IsZero(), "zero times must come back zero")
	}
}

func (s *suite) testHeaderStrings(t *testing.T) {
	b := s.backend(t)
	h := map[string]string{
		"Subject":             "Grüße, 你好, مرحبا, 🙂 and a ZWJ 👩‍💻",
		"Quotes":              `"double" 'single' ` + "`back`" + ` \backslash\ \" \\`,
		"Markup":              `<a href="x?y=1&z=2">&amp;</a> <script>`,
		"Separators":          "line\u2028para\u2029end\r\n\t\v\f",
		"Nul":                 "before\x00after",
		"Json":                `{"a":[1,2],"b":null}`,
		"Sql":                 "'); DROP TABLE messages; --",
		"":                    "empty key",
		"empty value":         "",
		"Ünïcödé-Key <&>\"'":  "v",
		"Trailing space ":     " leading and trailing ",
		"Control\x01\x1f\x7f": "\x01\x1f\x7f",
		"Percent":             "100% %s %d %%",
	}
	md := Message("headers", metastorage.StateIncoming, base)
	md.Headers = h
	store(t, b, md)
	got := get(t, b, "headers")
	s.requireSameMeta(t, md, got)
}

func (s *suite) testLargeHeaders(t *testing.T) {
	b := s.backend(t)
	h := make(map[string]string, 2000)
	for i := range 2000 {
		h[seqID("X-Header", i)] = strings.Repeat(string(rune('a'+i%26)), i%300) + "é"
	}
	md := Message("large", metastorage.StateIncoming, base)
	md.Headers = h
	store(t, b, md)
	s.requireSameMeta(t, md, get(t, b, "large"))

	// Replacing with a small map drops every old entry.
	md.Headers = map[string]string{"only": "one"}
	require.NoError(t, b.UpdateMeta(context.Background(), md.ID, md))
	s.requireSameMeta(t, md, get(t, b, "large"))
}

func (s *suite) testExactIDs(t *testing.T) {
	b := s.backend(t)
	variants := []string{"msg", "MSG", "Msg", "msg ", "msg\u00a0", "mßg", "mssg", "méssage", "me\u0301ssage"}
	for i, id := range variants {
		md := Message(id, metastorage.StateIncoming, at(i))
		md.Attempts = i
		store(t, b, md)
	}
	for i, id := range variants {
		got := get(t, b, id)
		require.Equal(t, id, got.ID)
		require.Equal(t, i, got.Attempts, "ID %q must be distinct from the others", id)
	}
	requireCounts(t, b, counts{metastorage.StateIncoming: len(variants)})
	requireOnce(t, variants, listAll(t, b, metastorage.StateIncoming))
}

func (s *suite) testStoreReplaces(t *testing.T) {
	b := s.backend(t)
	first := Message("m", metastorage.StateIncoming, base)
	first.Headers = map[string]string{"a": "1", "b": "2"}
	store(t, b, first)

	second := metastorage.MessageMetadata{
		ID: "m", State: metastorage.StateIncoming, Attempts: 5, Created: at(1), Updated: at(2),
		Headers: map[string]string{"c": "3"},
	}
	store(t, b, second)
	s.requireSameMeta(t, second, get(t, b, "m"))

	third := second
	third.Headers = nil
	third.LastError = "x"
	store(t, b, third)
	s.requireSameMeta(t, third, get(t, b, "m"))
	requireCounts(t, b, counts{metastorage.StateIncoming: 1})
}

func (s *suite) testStoreAcrossStates(t *testing.T) {
	s.skipIf(t, StoreKeepsOldState)
	b := s.backend(t)
	md := Message("m", metastorage.StateIncoming, base)
	store(t, b, md)
	md.State = metastorage.StateHold
	md.Attempts = 9
	store(t, b, md)
	s.requireSameMeta(t, md, get(t, b, "m"))
	requireCounts(t, b, counts{metastorage.StateHold: 1})
	require.Empty(t, listAll(t, b, metastorage.StateIncoming))
	require.Equal(t, []string{"m"}, listAll(t, b, metastorage.StateHold))
}

func (s *suite) testUpdate(t *testing.T) {
	b := s.backend(t)
	ctx := ctxT(t)
	orig := Message("m", metastorage.StateActive, base)
	orig.Headers = map[string]string{"a": "1", "b": "2"}
	other := Message("other", metastorage.StateActive, at(1))
	store(t, b, orig, other)

	// What the queue does after a failed delivery: a whole new record in
	// another state.
	next := metastorage.MessageMetadata{
		ID: "m", State: metastorage.StateDeferred, Attempts: 3, MaxAttempts: 5,
		NextRetry: at(600), Created: base, Updated: at(7),
		LastError: "421 try later", Size: orig.Size, Priority: 4,
		Headers: map[string]string{"c": "3"}, RetryPolicyName: "linear",
	}
	require.NoError(t, b.UpdateMeta(ctx, "m", next))
	s.requireSameMeta(t, next, get(t, b, "m"))
	requireCounts(t, b, counts{metastorage.StateActive: 1, metastorage.StateDeferred: 1})
	require.Equal(t, []string{"m"}, listAll(t, b, metastorage.StateDeferred))

	// Same state, headers dropped, NextRetry cleared.
	next.Headers = nil
	next.NextRetry = time.Time{}
	next.Attempts = 4
	require.NoError(t, b.UpdateMeta(ctx, "m", next))
	s.requireSameMeta(t, next, get(t, b, "m"))

	// An update that changes nothing succeeds too.
	require.NoError(t, b.UpdateMeta(ctx, "m", next))
	s.requireSameMeta(t, next, get(t, b, "m"))

	// The other record is untouched.
	s.requireSameMeta(t, other, get(t, b, "other"))
	requireCounts(t, b, counts{metastorage.StateActive: 1, metastorage.StateDeferred: 1})
}

func (s *suite) testUpdateUnknown(t *testing.T) {
	b := s.backend(t)
	store(t, b, Message("known", metastorage.StateIncoming, base))
	err := b.UpdateMeta(ctxT(t), "unknown", Message("unknown", metastorage.StateActive, base))
	require.ErrorIs(t, err, metastorage.ErrMessageNotFound)
	requireAbsent(t, b, "unknown")
	requireCounts(t, b, counts{metastorage.StateIncoming: 1})
}

func (s *suite) testDelete(t *testing.T) {
	b := s.backend(t)
	ctx := ctxT(t)
	a := Message("a", metastorage.StateDeferred, base)
	keep := Message("keep", metastorage.StateDeferred, at(1))
	store(t, b, a, keep)
	require.NoError(t, b.DeleteMeta(ctx, "a"))
	requireAbsent(t, b, "a")
	require.ErrorIs(t, b.DeleteMeta(ctx, "a"), metastorage.ErrMessageNotFound, "second delete")
	require.ErrorIs(t, b.DeleteMeta(ctx, "never"), metastorage.ErrMessageNotFound)
	s.requireSameMeta(t, keep, get(t, b, "keep"))
	requireCounts(t, b, counts{metastorage.StateDeferred: 1})
	err := b.MoveToState(ctx, "a", metastorage.StateDeferred, metastorage.StateActive)
	if s.tolerates(t, MoveUnknownIsConflict) {
		require.Error(t, err)
	} else {
		requireIdentical(t, metastorage.ErrMessageNotFound, err, "move of a deleted message")
	}

	// A deleted ID can be stored again.
	store(t, b, a)
	s.requireSameMeta(t, a, get(t, b, "a"))
	requireCounts(t, b, counts{metastorage.StateDeferred: 2})
}

func (s *suite) testMove(t *testing.T) {
	b := s.backend(t)
	ctx := ctxT(t)
	md := Message("m", metastorage.StateIncoming, base)
	store(t, b, md)

	require.NoError(t, b.MoveToState(ctx, "m", metastorage.StateIncoming, metastorage.StateActive))
	got := get(t, b, "m")
	require.Equal(t, metastorage.StateActive, got.State)
	// Only the state (and perhaps Updated) changes.
	want := md
	want.State = metastorage.StateActive
	got.Updated = want.Updated
	s.requireSameMeta(t, want, got)
	requireCounts(t, b, counts{metastorage.StateActive: 1})

	// The loser of a claim gets the bare sentinel; nothing changes.
	err := b.MoveToState(ctx, "m", metastorage.StateIncoming, metastorage.StateActive)
	requireIdentical(t, metastorage.ErrStateConflict, err, "second claim")
	err = b.MoveToState(ctx, "m", metastorage.StateDeferred, metastorage.StateArchived)
	requireIdentical(t, metastorage.ErrStateConflict, err, "move from a state the message is not in")
	require.Equal(t, metastorage.StateActive, get(t, b, "m").State)
	requireCounts(t, b, counts{metastorage.StateActive: 1})

	// Unknown IDs get the bare ErrMessageNotFound and are not created.
	err = b.MoveToState(ctx, "unknown", metastorage.StateIncoming, metastorage.StateActive)
	if s.tolerates(t, MoveUnknownIsConflict) {
		require.Error(t, err)
	} else {
		requireIdentical(t, metastorage.ErrMessageNotFound, err, "unknown ID")
	}
	requireAbsent(t, b, "unknown")

	// Every state can be entered and left.
	from := metastorage.StateActive
	for _, to := range []metastorage.QueueState{
		metastorage.StateDeferred, metastorage.StateHold, metastorage.StateBounce,
		metastorage.StateArchived, metastorage.StateIncoming, metastorage.StateActive,
	} {
		require.NoError(t, b.MoveToState(ctx, "m", from, to), "%s -> %s", from, to)
		require.Equal(t, to, get(t, b, "m").State)
		requireCounts(t, b, counts{to: 1})
		from = to
	}
}

func (s *suite) testMoveSameState(t *testing.T) {
	s.skipIf(t, SameStateMoveAlwaysSucceeds)
	b := s.backend(t)
	ctx := ctxT(t)
	md := Message("m", metastorage.StateDeferred, base)
	store(t, b, md)
	require.NoError(t, b.MoveToState(ctx, "m", metastorage.StateDeferred, metastorage.StateDeferred))
	requireIdentical(t, metastorage.ErrStateConflict,
		b.MoveToState(ctx, "m", metastorage.StateActive, metastorage.StateActive), "not in that state")
	requireIdentical(t, metastorage.ErrMessageNotFound,
		b.MoveToState(ctx, "unknown", metastorage.StateActive, metastorage.StateActive), "unknown ID")
	s.requireSameMeta(t, md, get(t, b, "m"))
	requireCounts(t, b, counts{metastorage.StateDeferred: 1})
}

func (s *suite) testMoveInvalidState(t *testing.T) {
	s.skipIf(t, NoStateValidation)
	b := s.backend(t)
	ctx := ctxT(t)
	md := Message("m", metastorage.StateIncoming, base)
	store(t, b, md)
	for _, bad := range badStates {
		require.ErrorIs(t, b.MoveToState(ctx, "m", metastorage.StateIncoming, bad), metastorage.ErrInvalidState, "to %d", bad)
		require.ErrorIs(t, b.MoveToState(ctx, "m", bad, metastorage.StateActive), metastorage.ErrInvalidState, "from %d", bad)
		require.ErrorIs(t, b.MoveToState(ctx, "m", bad, bad), metastorage.ErrInvalidState, "from and to %d", bad)
	}
	s.requireSameMeta(t, md, get(t, b, "m"))
	requireCounts(t, b, counts{metastorage.StateIncoming: 1})
}

func (s *suite) testMoveRace(t *testing.T) {
	b := s.backend(t)
	ctx := ctxT(t)
	store(t, b, Message("m", metastorage.StateIncoming, base))
	const racers = 100
	targets := []metastorage.QueueState{metastorage.StateActive, metastorage.StateHold, metastorage.StateDeferred}
	errs := make([]error, racers)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range racers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs[i] = b.MoveToState(ctx, "m", metastorage.StateIncoming, targets[i%len(targets)])
		}()
	}
	close(start)
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil:
			require.Equal(t, -1, winner, "two winners: %d and %d", winner, i)
			winner = i
		case err == metastorage.ErrStateConflict: //nolint:errorlint // identity is the point
		default:
			require.Fail(t, "a loser must get the bare ErrStateConflict", "racer %d: %v (%T)", i, err, err)
		}
	}
	require.NotEqual(t, -1, winner, "no winner")
	want := targets[winner%len(targets)]
	require.Equal(t, want, get(t, b, "m").State, "the winner's move is the one stored")
	requireCounts(t, b, counts{want: 1})
}

func (s *suite) testIterator(t *testing.T) {
	b := s.backend(t)
	ctx := ctxT(t)
	const n = 10
	want := iteratorFixture(t, b, n)
	byID := map[string]metastorage.MessageMetadata{}
	for _, md := range want {
		byID[md.ID] = md
	}
	for _, size := range []int{1, 3, 0, -5, n, n + 1, 10000} {
		it, err := b.NewMessageIterator(ctx, metastorage.StateIncoming, size)
		require.NoError(t, err, "batch size %d", size)
		got := s.drain(t, it, nil)
		require.NoError(t, it.Close())
		requireOnce(t, ids(want), ids(got))
		for i, md := range got {
			s.requireSameMeta(t, byID[md.ID], md)
			if i > 0 && !s.tolerate[IteratorUnordered] {
				require.False(t, md.Created.Before(got[i-1].Created),
					"batch size %d: %q (created %s) after %q (created %s)", size, md.ID, md.Created, got[i-1].ID, got[i-1].Created)
			}
		}
	}
	if s.tolerate[IteratorUnordered] {
		t.Logf("tolerated deviation: %s", IteratorUnordered)
	}
}

func (s *suite) testIteratorEmpty(t *testing.T) {
	b := s.backend(t)
	ctx := ctxT(t)
	store(t, b, Message("m", metastorage.StateActive, base))
	for _, st := range []metastorage.QueueState{metastorage.StateIncoming, metastorage.StateArchived} {
		it, err := b.NewMessageIterator(ctx, st, 3)
		require.NoError(t, err)
		require.Empty(t, s.drain(t, it, nil), "state %s is empty", st)
		require.NoError(t, it.Close())
	}
}

func (s *suite) testIteratorWhileMoving(t *testing.T) {
	s.skipIf(t, IteratorSkipsMoved)
	for _, tc := range []struct{ n, size int }{{30, 1}, {30, 4}, {30, 7}, {130, 0}} {
		t.Run("", func(t *testing.T) {
			b := s.backend(t)
			ctx := ctxT(t)
			want := iteratorFixture(t, b, tc.n)
			it, err := b.NewMessageIterator(ctx, metastorage.StateIncoming, tc.size)
			require.NoError(t, err)
			defer it.Close()
			// The scheduler's loop: claim each message as it is seen.
			got := s.drain(t, it, func(md metastorage.MessageMetadata) {
				require.NoError(t, b.MoveToState(ctx, md.ID, metastorage.StateIncoming, metastorage.StateActive), "claim %q", md.ID)
			})
			requireOnce(t, ids(want), ids(got))
			requireCounts(t, b, counts{metastorage.StateActive: tc.n + 4})
		})
	}
}

// listFixture stores 13 deferred messages whose sort keys have ties, and
// two on hold. It returns the deferred ones as the backend stored them.
func listFixture(t *testing.T, b metastorage.Backend) []metastorage.MessageMetadata {
	t.Helper()
	var stored []string
	for i := range 13 {
		j := (i * 5) % 13
		md := Message(seqID("l", (j*3)%13), metastorage.StateDeferred, at(j/2))
		md.Updated = at(40 - (j % 4))
		md.Priority = j % 3
		md.Attempts = (j * 7) % 4
		store(t, b, md)
		stored = append(stored, md.ID)
	}
	store(t, b, Message("hold-1", metastorage.StateHold, at(0)), Message("hold-2", metastorage.StateHold, at(100)))
	var out []metastorage.MessageMetadata
	for _, id := range stored {
		out = append(out, get(t, b, id))
	}
	return out
}

// sortKey returns the value ListMessages sorts on.
func sortKey(md metastorage.MessageMetadata, by string) int64 {
	switch by {
	case "updated":
		return md.Updated.UnixNano()
	case "priority":
		return int64(md.Priority)
	case "attempts":
		return int64(md.Attempts)
	}
	return md.Created.UnixNano()
}

// expectedOrder sorts by the key, ties by ID, both in the given direction.
func expectedOrder(mds []metastorage.MessageMetadata, by string, desc bool) []string {
	out := append([]metastorage.MessageMetadata(nil), mds...)
	less := func(a, b metastorage.MessageMetadata) bool {
		ka, kb := sortKey(a, by), sortKey(b, by)
		if ka != kb {
			return ka < kb
		}
		return a.ID < b.ID
	}
	sort.Slice(out, func(i, j int) bool {
		if desc {
			return less(out[j], out[i])
		}
		return less(out[i], out[j])
	})
	return ids(out)
}

// requireSortedBy checks only that the keys are monotonic.
func requireSortedBy(t *testing.T, byID map[string]metastorage.MessageMetadata, got []string, by string, desc bool) {
	t.Helper()
	for i := 1; i < len(got); i++ {
		a, c := sortKey(byID[got[i-1]], by), sortKey(byID[got[i]], by)
		if desc {
			require.GreaterOrEqual(t, a, c, "%s desc: %q before %q", by, got[i-1], got[i])
		} else {
			require.LessOrEqual(t, a, c, "%s asc: %q before %q", by, got[i-1], got[i])
		}
	}
}

func (s *suite) testListSort(t *testing.T) {
	b := s.backend(t)
	ctx := ctxT(t)
	mds := listFixture(t, b)
	byID := map[string]metastorage.MessageMetadata{}
	for _, md := range mds {
		byID[md.ID] = md
	}
	lenient := s.tolerates(t, ListUnordered)
	for _, by := range []string{"created", "updated", "priority", "attempts"} {
		for _, order := range []string{"asc", "desc", ""} {
			res, err := b.ListMessages(ctx, metastorage.StateDeferred, metastorage.MessageListOptions{SortBy: by, SortOrder: order})
			require.NoError(t, err, "%s %s", by, order)
			require.Equal(t, len(mds), res.Total)
			require.False(t, res.HasMore)
			if lenient {
				requireOnce(t, ids(mds), res.MessageIDs)
				requireSortedBy(t, byID, res.MessageIDs, by, order == "desc")
				continue
			}
			require.Equal(t, expectedOrder(mds, by, order == "desc"), res.MessageIDs, "SortBy %q SortOrder %q", by, order)
		}
	}
}

func (s *suite) testListDefaults(t *testing.T) {
	b := s.backend(t)
	ctx := ctxT(t)
	mds := listFixture(t, b)
	res, err := b.ListMessages(ctx, metastorage.StateDeferred, metastorage.MessageListOptions{})
	require.NoError(t, err)
	require.Equal(t, len(mds), res.Total)
	require.False(t, res.HasMore)
	if s.tolerates(t, ListUnordered) {
		requireOnce(t, ids(mds), res.MessageIDs)
	} else {
		require.Equal(t, expectedOrder(mds, "created", false), res.MessageIDs, "default order is created asc, ties by ID")
	}
	res, err = b.ListMessages(ctx, metastorage.StateHold, metastorage.MessageListOptions{})
	require.NoError(t, err)
	require.Equal(t, 2, res.Total)
	requireOnce(t, []string{"hold-1", "hold-2"}, res.MessageIDs)
	res, err = b.ListMessages(ctx, metastorage.StateArchived, metastorage.MessageListOptions{})
	require.NoError(t, err)
	require.Empty(t, res.MessageIDs)
	require.Zero(t, res.Total)
	require.False(t, res.HasMore)
}

func (s *suite) testListPaging(t *testing.T) {
	b := s.backend(t)
	ctx := ctxT(t)
	mds := listFixture(t, b)
	n := len(mds)
	lenient := s.tolerates(t, ListUnordered)
	for _, by := range []string{"created", "updated", "priority", "attempts"} {
		for _, order := range []string{"asc", "desc"} {
			for _, limit := range []int{1, 4, 13} {
				var all []string
				for off := 0; off <= n+2; off += limit {
					res, err := b.ListMessages(ctx, metastorage.StateDeferred, metastorage.MessageListOptions{
						Limit: limit, Offset: off, SortBy: by, SortOrder: order,
					})
					require.NoError(t, err)
					require.Equal(t, n, res.Total, "Total counts every match, not the page")
					wantLen := max(0, min(limit, n-off))
					require.Len(t, res.MessageIDs, wantLen, "%s %s limit %d offset %d", by, order, limit, off)
					require.Equal(t, off+wantLen < n, res.HasMore, "HasMore at %s %s limit %d offset %d", by, order, limit, off)
					all = append(all, res.MessageIDs...)
				}
				if lenient {
					continue
				}
				require.Equal(t, expectedOrder(mds, by, order == "desc"), all, "pages of %d by %s %s", limit, by, order)
			}
		}
	}
}

func (s *suite) testListSince(t *testing.T) {
	b := s.backend(t)
	ctx := ctxT(t)
	var want []string
	for i := range 10 {
		md := Message(seqID("s", i), metastorage.StateIncoming, at(i))
		md.Updated = at(100) // every message was updated after Since
		store(t, b, md)
		if i >= 5 {
			want = append(want, md.ID)
		}
	}
	// One nanosecond before the boundary: excluded.
	early := Message("early", metastorage.StateIncoming, at(5).Add(-time.Nanosecond))
	early.Updated = at(100)
	store(t, b, early)
	store(t, b, Message("other-state", metastorage.StateActive, at(50)))

	since := at(5).In(time.UTC) // the same instant in another location
	if s.tolerates(t, ListSinceOnUpdated) {
		t.Skip("Since cannot be checked on Created alone")
	}
	res, err := b.ListMessages(ctx, metastorage.StateIncoming, metastorage.MessageListOptions{Since: since})
	require.NoError(t, err)
	require.Equal(t, 5, res.Total, "Since keeps messages created at or after it, and Total counts them")
	require.False(t, res.HasMore)
	requireOnce(t, want, res.MessageIDs)

	res, err = b.ListMessages(ctx, metastorage.StateIncoming, metastorage.MessageListOptions{Since: since, Limit: 2, Offset: 2})
	require.NoError(t, err)
	require.Equal(t, 5, res.Total)
	require.True(t, res.HasMore)
	require.Len(t, res.MessageIDs, 2)

	res, err = b.ListMessages(ctx, metastorage.StateIncoming, metastorage.MessageListOptions{Since: at(1000)})
	require.NoError(t, err)
	require.Zero(t, res.Total)
	require.Empty(t, res.MessageIDs)
}

func (s *suite) testListBadInput(t *testing.T) {
	s.skipIf(t, ListAcceptsBadOptions)
	b := s.backend(t)
	ctx := ctxT(t)
	store(t, b, Message("m", metastorage.StateIncoming, base))
	for _, opts := range []metastorage.MessageListOptions{
		{Limit: -1},
		{Offset: -1},
		{SortBy: "size"},
		{SortBy: "id; DROP TABLE x"},
		{SortOrder: "sideways"},
		{SortBy: "created", SortOrder: "up"},
	} {
		_, err := b.ListMessages(ctx, metastorage.StateIncoming, opts)
		require.Error(t, err, "%+v", opts)
	}
	require.Equal(t, []string{"m"}, listAll(t, b, metastorage.StateIncoming))
}

func (s *suite) testStateCounts(t *testing.T) {
	b := s.backend(t)
	ctx := ctxT(t)
	if _, ok := b.(metastorage.StateCounterBackend); !ok {
		t.Log("the backend has no GetStateCount: counts are checked through ListMessages only")
	}
	requireCounts(t, b, counts{})
	store(t, b,
		Message("a", metastorage.StateIncoming, at(1)),
		Message("b", metastorage.StateIncoming, at(2)),
		Message("c", metastorage.StateIncoming, at(3)),
		Message("d", metastorage.StateDeferred, at(4)))
	requireCounts(t, b, counts{metastorage.StateIncoming: 3, metastorage.StateDeferred: 1})

	if !s.tolerate[StoreKeepsOldState] {
		store(t, b, Message("c", metastorage.StateHold, at(3)))
		requireCounts(t, b, counts{metastorage.StateIncoming: 2, metastorage.StateDeferred: 1, metastorage.StateHold: 1})
	} else {
		require.NoError(t, b.MoveToState(ctx, "c", metastorage.StateIncoming, metastorage.StateHold))
	}

	require.NoError(t, b.UpdateMeta(ctx, "b", Message("b", metastorage.StateActive, at(2))))
	requireCounts(t, b, counts{metastorage.StateIncoming: 1, metastorage.StateActive: 1, metastorage.StateDeferred: 1, metastorage.StateHold: 1})

	require.NoError(t, b.UpdateMeta(ctx, "b", Message("b", metastorage.StateActive, at(9))))
	require.NoError(t, b.MoveToState(ctx, "b", metastorage.StateActive, metastorage.StateDeferred))
	requireCounts(t, b, counts{metastorage.StateIncoming: 1, metastorage.StateDeferred: 2, metastorage.StateHold: 1})

	requireIdentical(t, metastorage.ErrStateConflict, b.MoveToState(ctx, "b", metastorage.StateActive, metastorage.StateBounce))
	require.ErrorIs(t, b.UpdateMeta(ctx, "x", Message("x", metastorage.StateBounce, at(9))), metastorage.ErrMessageNotFound)
	requireCounts(t, b, counts{metastorage.StateIncoming: 1, metastorage.StateDeferred: 2, metastorage.StateHold: 1})

	require.NoError(t, b.DeleteMeta(ctx, "d"))
	require.NoError(t, b.DeleteMeta(ctx, "c"))
	requireCounts(t, b, counts{metastorage.StateIncoming: 1, metastorage.StateDeferred: 1})
	require.NoError(t, b.DeleteMeta(ctx, "a"))
	require.NoError(t, b.DeleteMeta(ctx, "b"))
	requireCounts(t, b, counts{})
}

func (s *suite) testBadInput(t *testing.T) {
	b := s.backend(t)
	ctx := ctxT(t)
	orig := Message("m", metastorage.StateIncoming, base)
	store(t, b, orig)
	check := func(what string, err error, is error) {
		t.Helper()
		require.Error(t, err, what)
		if is != nil {
			require.ErrorIs(t, err, is, what)
		}
		s.requireSameMeta(t, orig, get(t, b, "m"))
		requireCounts(t, b, counts{metastorage.StateIncoming: 1})
	}
	changed := orig
	changed.Attempts = 99
	if !s.tolerates(t, NoIDValidation) {
		check("StoreMeta with an empty ID", b.StoreMeta(ctx, "", changed), nil)
		check("UpdateMeta with an empty ID", b.UpdateMeta(ctx, "", changed), nil)
		check("DeleteMeta with an empty ID", b.DeleteMeta(ctx, ""), nil)
		check("MoveToState with an empty ID", b.MoveToState(ctx, "", metastorage.StateIncoming, metastorage.StateActive), nil)
		other := changed
		other.ID = "other"
		check("StoreMeta whose metadata.ID differs", b.StoreMeta(ctx, "m", other), nil)
		check("UpdateMeta whose metadata.ID differs", b.UpdateMeta(ctx, "m", other), nil)
		requireAbsent(t, b, "other")
	}
	if !s.tolerates(t, NoStateValidation) {
		for _, bad := range badStates {
			st := changed
			st.State = bad
			check("StoreMeta in an invalid state", b.StoreMeta(ctx, "m", st), metastorage.ErrInvalidState)
			check("UpdateMeta to an invalid state", b.UpdateMeta(ctx, "m", st), metastorage.ErrInvalidState)
			st.ID = "new"
			require.ErrorIs(t, b.StoreMeta(ctx, "new", st), metastorage.ErrInvalidState)
			requireAbsent(t, b, "new")
			check("MoveToState to an invalid state", b.MoveToState(ctx, "m", metastorage.StateIncoming, bad), metastorage.ErrInvalidState)
		}
	}
}

func (s *suite) testCancelled(t *testing.T) {
	s.skipIf(t, IgnoresContext)
	b := s.backend(t)
	orig := Message("m", metastorage.StateIncoming, base)
	store(t, b, orig)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	changed := orig
	changed.Attempts = 42
	changed.State = metastorage.StateActive
	require.Error(t, b.StoreMeta(ctx, "new", Message("new", metastorage.StateIncoming, base)), "StoreMeta")
	require.Error(t, b.StoreMeta(ctx, "m", changed), "StoreMeta over")
	require.Error(t, b.UpdateMeta(ctx, "m", changed), "UpdateMeta")
	require.Error(t, b.DeleteMeta(ctx, "m"), "DeleteMeta")
	require.Error(t, b.MoveToState(ctx, "m", metastorage.StateIncoming, metastorage.StateActive), "MoveToState")
	requireAbsent(t, b, "new")
	s.requireSameMeta(t, orig, get(t, b, "m"))
	requireCounts(t, b, counts{metastorage.StateIncoming: 1})
}

func (s *suite) testClosed(t *testing.T) {
	b := s.newBackend(t)
	ctx := ctxT(t)
	md := Message("m", metastorage.StateIncoming, base)
	store(t, b, md, Message("n", metastorage.StateIncoming, at(1)))
	it, err := b.NewMessageIterator(ctx, metastorage.StateIncoming, 1)
	require.NoError(t, err)
	require.NoError(t, b.Close())

	require.ErrorIs(t, b.StoreMeta(ctx, "x", Message("x", metastorage.StateIncoming, base)), metastorage.ErrBackendClosed, "StoreMeta")
	_, err = b.GetMeta(ctx, "m")
	require.ErrorIs(t, err, metastorage.ErrBackendClosed, "GetMeta")
	require.ErrorIs(t, b.UpdateMeta(ctx, "m", md), metastorage.ErrBackendClosed, "UpdateMeta")
	require.ErrorIs(t, b.DeleteMeta(ctx, "m"), metastorage.ErrBackendClosed, "DeleteMeta")
	require.ErrorIs(t, b.MoveToState(ctx, "m", metastorage.StateIncoming, metastorage.StateActive), metastorage.ErrBackendClosed, "MoveToState")
	_, err = b.ListMessages(ctx, metastorage.StateIncoming, metastorage.MessageListOptions{})
	require.ErrorIs(t, err, metastorage.ErrBackendClosed, "ListMessages")
	_, err = b.NewMessageIterator(ctx, metastorage.StateIncoming, 1)
	require.ErrorIs(t, err, metastorage.ErrBackendClosed, "NewMessageIterator")
	if !s.tolerates(t, IteratorIgnoresClose) {
		got, ok, err := it.Next(ctx)
		require.ErrorIs(t, err, metastorage.ErrBackendClosed, "Next of an iterator made before Close")
		require.False(t, ok)
		require.Equal(t, metastorage.MessageMetadata{}, got)
	}
	_ = it.Close()
	require.NoError(t, b.Close(), "Close twice")
	require.NoError(t, b.Close(), "Close three times")
}

// testCloseWhileBusy closes the backend while goroutines write and read:
// every call returns nil or ErrBackendClosed, and every call that starts
// after Close has returned fails with ErrBackendClosed.
func (s *suite) testCloseWhileBusy(t *testing.T) {
	b := s.newBackend(t)
	t.Cleanup(func() { _ = b.Close() })
	ctx := ctxT(t)
	const workers = 8
	var closed atomic.Bool
	var ops atomic.Int64
	busy := make(chan struct{})
	var busyOnce sync.Once
	errs := make(chan string, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := func(i int) string { return seqID(fmt.Sprintf("w%d", w), i) }
			for i := 0; ; i++ {
				after := closed.Load()
				var err error
				switch i % 3 {
				case 0:
					err = b.StoreMeta(ctx, id(i), Message(id(i), metastorage.StateIncoming, at(i)))
				case 1:
					err = b.MoveToState(ctx, id(i-1), metastorage.StateIncoming, metastorage.StateActive)
				case 2:
					_, err = b.GetMeta(ctx, id(i-2))
				}
				if ops.Add(1) >= 3*workers {
					busyOnce.Do(func() { close(busy) })
				}
				switch {
				case err == nil && after:
					errs <- "a call that started after Close returned nil"
					return
				case err == nil:
				case isClosed(err):
					return
				default:
					errs <- fmt.Sprintf("worker %d, call %d: got %s, want nil or ErrBackendClosed", w, i, errString(err))
					return
				}
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-busy: // work is under way
	case <-done: // every worker failed early; errs says why
	}
	require.NoError(t, b.Close())
	closed.Store(true)
	<-done
	close(errs)
	for e := range errs {
		require.Fail(t, e)
	}
}
