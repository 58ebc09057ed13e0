package metatest

import (
	"context"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	metastorage "schneider.vip/retryspool/storage/meta"
)

// Limits are the promises beyond the contract that RunStrict holds a
// backend to: the error it refuses bad input with and the bounds of what
// it stores. Every field must be set.
type Limits struct {
	// InvalidInput is the error (matched with errors.Is) that bad input is
	// refused with.
	InvalidInput error
	// IteratorClosed is the error (matched with errors.Is) that Next
	// returns after Close.
	IteratorClosed error
	// MaxIDLength is the length in bytes of the longest ID.
	MaxIDLength int
	// MaxPolicyNameLength is the length in bytes of the longest
	// RetryPolicyName.
	MaxPolicyNameLength int
	// MaxListLimit is the largest Limit ListMessages accepts.
	MaxListLimit int
	// MinTime and MaxTime are the earliest and the latest storable time
	// (inclusive); MaxTime must lie before the year 9999.
	MinTime, MaxTime time.Time
}

// RunStrict checks what a backend such as this library promises beyond the
// contract, with the bounds in lim: bad input is refused with an error
// matching lim.InvalidInput (and changes nothing), IDs are 1 to
// lim.MaxIDLength bytes of valid UTF-8 without NUL, times must lie in
// lim.MinTime..lim.MaxTime, a cancelled context fails every call with
// context.Canceled, the iterator returns messages in exact (Created, ID)
// order, and GetStateCount exists.
func RunStrict(t *testing.T, newBackend func(t *testing.T) metastorage.Backend, lim Limits) {
	require.NotNil(t, lim.InvalidInput, "Limits.InvalidInput")
	require.NotNil(t, lim.IteratorClosed, "Limits.IteratorClosed")
	require.Positive(t, lim.MaxIDLength, "Limits.MaxIDLength")
	require.Positive(t, lim.MaxPolicyNameLength, "Limits.MaxPolicyNameLength")
	require.Positive(t, lim.MaxListLimit, "Limits.MaxListLimit")
	require.True(t, lim.MinTime.Before(lim.MaxTime), "Limits.MinTime must lie before Limits.MaxTime")
	require.True(t, lim.MaxTime.Before(time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)), "Limits.MaxTime must lie before the year 9999")
	s := newSuite(newBackend, nil)
	s.lim = lim
	run(t, []subtest{
		{Name: "StateCounter", Fn: s.testHasCounter},
		{Name: "InvalidInput", Fn: s.testInvalidInput},
		{Name: "IDLength", Fn: s.testIDLength},
		{Name: "EmptyMetadataID", Fn: s.testEmptyMetadataID},
		{Name: "TimeRange", Fn: s.testTimeRange},
		{Name: "InvalidStates", Fn: s.testInvalidStates},
		{Name: "ListInvalidInput", Fn: s.testListInvalidInput},
		{Name: "CancelledContextError", Fn: s.testCancelledError},
		{Name: "IteratorExactOrder", Fn: s.testIteratorExactOrder},
		{Name: "IteratorClose", Fn: s.testIteratorClose},
	})
}

func (s *suite) testHasCounter(t *testing.T) {
	b := s.backend(t)
	sc, ok := b.(metastorage.StateCounterBackend)
	require.True(t, ok, "%T does not implement metastorage.StateCounterBackend", b)
	store(t, b, Message("a", metastorage.StateBounce, base))
	require.Equal(t, int64(1), sc.GetStateCount(metastorage.StateBounce))
}

// requireUnchanged checks that b holds exactly the records of want and
// nothing else.
func (s *suite) requireUnchanged(t *testing.T, b metastorage.Backend, want ...metastorage.MessageMetadata) {
	t.Helper()
	c := counts{}
	for _, md := range want {
		s.requireSameMeta(t, md, get(t, b, md.ID))
		c[md.State]++
	}
	requireCounts(t, b, c)
}

func (s *suite) testInvalidInput(t *testing.T) {
	b := s.backend(t)
	ctx := ctxT(t)
	orig := Message("m", metastorage.StateIncoming, base)
	store(t, b, orig)
	ok := orig
	ok.Attempts = 5
	with := func(f func(md *metastorage.MessageMetadata)) metastorage.MessageMetadata {
		md := ok
		md.Headers = map[string]string{"k": "v"}
		f(&md)
		return md
	}
	badIDs := map[string]string{
		"empty":             "",
		"one byte too long": strings.Repeat("x", s.lim.MaxIDLength+1),
		"invalid utf8":      "m\xff",
		"NUL":               "m\x00",
		"surrogate half":    "m\xed\xa0\x80",
	}
	badRecords := map[string]metastorage.MessageMetadata{
		"metadata.ID differs":       with(func(md *metastorage.MessageMetadata) { md.ID = "other" }),
		"invalid utf8 last error":   with(func(md *metastorage.MessageMetadata) { md.LastError = "bad \xc3\x28" }),
		"NUL in last error":         with(func(md *metastorage.MessageMetadata) { md.LastError = "a\x00b" }),
		"invalid utf8 header key":   with(func(md *metastorage.MessageMetadata) { md.Headers = map[string]string{"\xff": "v"} }),
		"invalid utf8 header value": with(func(md *metastorage.MessageMetadata) { md.Headers = map[string]string{"k": "\xfe"} }),
		"invalid utf8 policy":       with(func(md *metastorage.MessageMetadata) { md.RetryPolicyName = "\x80" }),
		"NUL in policy":             with(func(md *metastorage.MessageMetadata) { md.RetryPolicyName = "p\x00" }),
		"policy one byte too long": with(func(md *metastorage.MessageMetadata) {
			md.RetryPolicyName = strings.Repeat("p", s.lim.MaxPolicyNameLength+1)
		}),
		"created long before MinTime":   with(func(md *metastorage.MessageMetadata) { md.Created = s.lim.MinTime.AddDate(-77, 0, 0) }),
		"next retry long after MaxTime": with(func(md *metastorage.MessageMetadata) { md.NextRetry = s.lim.MaxTime.AddDate(38, 0, 0) }),
		"updated year 9999":             with(func(md *metastorage.MessageMetadata) { md.Updated = time.Date(9999, 1, 1, 0, 0, 0, 0, zone) }),
	}
	invalid := func(what string, err error) {
		t.Helper()
		require.ErrorIs(t, err, s.lim.InvalidInput, what)
		s.requireUnchanged(t, b, orig)
	}
	for name, id := range badIDs {
		md := ok
		md.ID = id
		invalid("StoreMeta, ID "+name, b.StoreMeta(ctx, id, md))
		invalid("UpdateMeta, ID "+name, b.UpdateMeta(ctx, id, md))
		invalid("DeleteMeta, ID "+name, b.DeleteMeta(ctx, id))
		invalid("MoveToState, ID "+name, b.MoveToState(ctx, id, metastorage.StateIncoming, metastorage.StateActive))
		_, err := b.GetMeta(ctx, id)
		invalid("GetMeta, ID "+name, err)
	}
	for name, md := range badRecords {
		invalid("StoreMeta over, "+name, b.StoreMeta(ctx, "m", md))
		invalid("UpdateMeta, "+name, b.UpdateMeta(ctx, "m", md))
		md.ID = "new"
		if name == "metadata.ID differs" {
			md.ID = "other"
		}
		invalid("StoreMeta new, "+name, b.StoreMeta(ctx, "new", md))
		requireAbsent(t, b, "new")
	}
	requireAbsent(t, b, "other")
}

func (s *suite) testIDLength(t *testing.T) {
	b := s.backend(t)
	ctx := ctxT(t)
	n := s.lim.MaxIDLength
	ascii := strings.Repeat("a", n)
	multi := strings.Repeat("é", n/2) + strings.Repeat("z", n%2) // for 255: 128 runes
	require.Len(t, multi, n)
	four := strings.Repeat("🙂", n/4) + "xyz"[:n%4] // for 255: 63 emoji and "xyz"
	require.Len(t, four, n)
	for i, id := range []string{ascii, multi, four, "x"} {
		md := Message(id, metastorage.StateIncoming, at(i))
		store(t, b, md)
		s.requireSameMeta(t, md, get(t, b, id))
		require.NoError(t, b.MoveToState(ctx, id, metastorage.StateIncoming, metastorage.StateActive))
		md.State = metastorage.StateDeferred
		require.NoError(t, b.UpdateMeta(ctx, id, md))
		s.requireSameMeta(t, md, get(t, b, id))
	}
	requireOnce(t, []string{ascii, multi, four, "x"}, listAll(t, b, metastorage.StateDeferred))
	for _, id := range []string{ascii + "a", multi + "é", strings.Repeat("🙂", n/4+1)} {
		require.Greater(t, len(id), n)
		require.ErrorIs(t, b.StoreMeta(ctx, id, Message(id, metastorage.StateIncoming, base)), s.lim.InvalidInput)
	}
	requireCounts(t, b, counts{metastorage.StateDeferred: 4})
	for _, id := range []string{ascii, multi, four, "x"} {
		require.NoError(t, b.DeleteMeta(ctx, id))
	}
	requireCounts(t, b, counts{})
}

func (s *suite) testEmptyMetadataID(t *testing.T) {
	b := s.backend(t)
	ctx := ctxT(t)
	md := Message("", metastorage.StateIncoming, base)
	require.NoError(t, b.StoreMeta(ctx, "m", md))
	got := get(t, b, "m")
	require.Equal(t, "m", got.ID, "GetMeta fills in the message ID")
	md.ID = "m"
	s.requireSameMeta(t, md, got)
	md.ID = ""
	md.Attempts = 8
	require.NoError(t, b.UpdateMeta(ctx, "m", md))
	require.Equal(t, 8, get(t, b, "m").Attempts)
	it, err := b.NewMessageIterator(ctx, metastorage.StateIncoming, 0)
	require.NoError(t, err)
	all := s.drain(t, it, nil)
	require.Equal(t, []string{"m"}, ids(all))
}

func (s *suite) testTimeRange(t *testing.T) {
	b := s.backend(t)
	lo, hi := s.lim.MinTime, s.lim.MaxTime
	md := Message("edges", metastorage.StateDeferred, lo)
	md.NextRetry = hi
	md.Updated = time.Unix(0, 0)
	store(t, b, md)
	s.requireSameMeta(t, md, get(t, b, "edges"))
	res, err := b.ListMessages(ctxT(t), metastorage.StateDeferred, metastorage.MessageListOptions{Since: lo})
	require.NoError(t, err)
	require.Equal(t, []string{"edges"}, res.MessageIDs)
	for _, bad := range []time.Time{lo.Add(-time.Nanosecond), hi.Add(time.Nanosecond)} {
		md := Message("bad", metastorage.StateDeferred, base)
		md.NextRetry = bad
		require.ErrorIs(t, b.StoreMeta(ctxT(t), "bad", md), s.lim.InvalidInput, "%s", bad)
	}
	requireAbsent(t, b, "bad")
}

func (s *suite) testInvalidStates(t *testing.T) {
	b := s.backend(t)
	ctx := ctxT(t)
	store(t, b, Message("m", metastorage.StateIncoming, base))
	sc := b.(metastorage.StateCounterBackend)
	for _, bad := range badStates {
		_, err := b.ListMessages(ctx, bad, metastorage.MessageListOptions{})
		require.ErrorIs(t, err, metastorage.ErrInvalidState, "ListMessages(%d)", bad)
		_, err = b.NewMessageIterator(ctx, bad, 10)
		require.ErrorIs(t, err, metastorage.ErrInvalidState, "NewMessageIterator(%d)", bad)
		require.Zero(t, sc.GetStateCount(bad), "GetStateCount(%d)", bad)
	}
}

func (s *suite) testListInvalidInput(t *testing.T) {
	b := s.backend(t)
	ctx := ctxT(t)
	store(t, b, Message("m", metastorage.StateIncoming, base))
	for _, opts := range []metastorage.MessageListOptions{
		{Limit: -1},
		{Offset: -1},
		{Limit: s.lim.MaxListLimit + 1},
		{SortBy: "size"},
		{SortBy: "Created"},
		{SortOrder: "DESC"},
		{SortOrder: "sideways"},
		{Since: s.lim.MinTime.AddDate(-177, 0, 0)},
	} {
		_, err := b.ListMessages(ctx, metastorage.StateIncoming, opts)
		require.ErrorIs(t, err, s.lim.InvalidInput, "%+v", opts)
	}
	res, err := b.ListMessages(ctx, metastorage.StateIncoming, metastorage.MessageListOptions{Limit: s.lim.MaxListLimit})
	require.NoError(t, err)
	require.Equal(t, []string{"m"}, res.MessageIDs)
}

func (s *suite) testCancelledError(t *testing.T) {
	b := s.backend(t)
	orig := Message("m", metastorage.StateIncoming, base)
	store(t, b, orig)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	cancelled := func(what string, err error) {
		t.Helper()
		require.ErrorIs(t, err, context.Canceled, what)
	}
	cancelled("StoreMeta", b.StoreMeta(ctx, "n", Message("n", metastorage.StateIncoming, base)))
	cancelled("UpdateMeta", b.UpdateMeta(ctx, "m", Message("m", metastorage.StateActive, base)))
	cancelled("DeleteMeta", b.DeleteMeta(ctx, "m"))
	cancelled("MoveToState", b.MoveToState(ctx, "m", metastorage.StateIncoming, metastorage.StateActive))
	cancelled("MoveToState to the same state", b.MoveToState(ctx, "m", metastorage.StateIncoming, metastorage.StateIncoming))
	_, err := b.GetMeta(ctx, "m")
	cancelled("GetMeta", err)
	_, err = b.ListMessages(ctx, metastorage.StateIncoming, metastorage.MessageListOptions{})
	cancelled("ListMessages", err)
	it, err := b.NewMessageIterator(ctx, metastorage.StateIncoming, 10)
	if err == nil {
		_, _, err = it.Next(ctx)
		_ = it.Close()
	}
	cancelled("iterating", err)
	s.requireUnchanged(t, b, orig)
}

func (s *suite) testIteratorExactOrder(t *testing.T) {
	b := s.backend(t)
	ctx := ctxT(t)
	mds := iteratorFixture(t, b, 40)
	sort.Slice(mds, func(i, j int) bool {
		if !mds[i].Created.Equal(mds[j].Created) {
			return mds[i].Created.Before(mds[j].Created)
		}
		return mds[i].ID < mds[j].ID
	})
	// Batch sizes that split groups of equal Created times.
	for _, size := range []int{1, 2, 3, 4, 5, 7, 40, 41} {
		it, err := b.NewMessageIterator(ctx, metastorage.StateIncoming, size)
		require.NoError(t, err)
		got := s.drain(t, it, nil)
		require.NoError(t, it.Close())
		require.Equal(t, ids(mds), ids(got), "batch size %d: order by Created, then ID", size)
	}
}

func (s *suite) testIteratorClose(t *testing.T) {
	b := s.backend(t)
	ctx := ctxT(t)
	store(t, b, Message("a", metastorage.StateIncoming, base), Message("b", metastorage.StateIncoming, at(1)))
	it, err := b.NewMessageIterator(ctx, metastorage.StateIncoming, 1)
	require.NoError(t, err)
	md, ok, err := it.Next(ctx)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, "a", md.ID)
	require.NoError(t, it.Close())
	md, ok, err = it.Next(ctx)
	require.ErrorIs(t, err, s.lim.IteratorClosed)
	require.False(t, ok)
	require.Equal(t, metastorage.MessageMetadata{}, md)
	require.NoError(t, it.Close(), "Close twice")
}
