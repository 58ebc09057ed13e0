package metatest

import (
	"context"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	metastorage "schneider.vip/retryspool/storage/meta"

	"schneider.vip/retryspool/storage/meta/sqlite/model"
	"schneider.vip/retryspool/storage/meta/sqlite/repository"
)

// RunStrict checks what this library promises beyond the contract: bad
// input is refused with an error matching repository.ErrInvalidInput (and
// changes nothing), IDs are 1 to 255 bytes of valid UTF-8 without NUL,
// times must lie in 1677-09-21..2262-04-11, a cancelled context fails every
// call with context.Canceled, the iterator returns messages in exact
// (Created, ID) order, and GetStateCount exists.
func RunStrict(t *testing.T, newBackend func(t *testing.T) metastorage.Backend) {
	s := newSuite(newBackend, nil)
	run(t, []subtest{
		{"StateCounter", s.testHasCounter},
		{"InvalidInput", s.testInvalidInput},
		{"IDLength", s.testIDLength},
		{"EmptyMetadataID", s.testEmptyMetadataID},
		{"TimeRange", s.testTimeRange},
		{"InvalidStates", s.testInvalidStates},
		{"ListInvalidInput", s.testListInvalidInput},
		{"CancelledContextError", s.testCancelledError},
		{"IteratorExactOrder", s.testIteratorExactOrder},
		{"IteratorClose", s.testIteratorClose},
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
		"empty":          "",
		"256 bytes":      strings.Repeat("x", 256),
		"invalid utf8":   "m\xff",
		"NUL":            "m\x00",
		"surrogate half": "m\xed\xa0\x80",
	}
	badRecords := map[string]metastorage.MessageMetadata{
		"metadata.ID differs":       with(func(md *metastorage.MessageMetadata) { md.ID = "other" }),
		"invalid utf8 last error":   with(func(md *metastorage.MessageMetadata) { md.LastError = "bad \xc3\x28" }),
		"NUL in last error":         with(func(md *metastorage.MessageMetadata) { md.LastError = "a\x00b" }),
		"invalid utf8 header key":   with(func(md *metastorage.MessageMetadata) { md.Headers = map[string]string{"\xff": "v"} }),
		"invalid utf8 header value": with(func(md *metastorage.MessageMetadata) { md.Headers = map[string]string{"k": "\xfe"} }),
		"invalid utf8 policy":       with(func(md *metastorage.MessageMetadata) { md.RetryPolicyName = "\x80" }),
		"NUL in policy":             with(func(md *metastorage.MessageMetadata) { md.RetryPolicyName = "p\x00" }),
		"policy of 256 bytes":       with(func(md *metastorage.MessageMetadata) { md.RetryPolicyName = strings.Repeat("p", 256) }),
		"created before 1677":       with(func(md *metastorage.MessageMetadata) { md.Created = time.Date(1600, 1, 1, 0, 0, 0, 0, time.UTC) }),
		"next retry after 2262":     with(func(md *metastorage.MessageMetadata) { md.NextRetry = time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC) }),
		"updated year 9999":         with(func(md *metastorage.MessageMetadata) { md.Updated = time.Date(9999, 1, 1, 0, 0, 0, 0, zone) }),
	}
	invalid := func(what string, err error) {
		t.Helper()
		require.ErrorIs(t, err, repository.ErrInvalidInput, what)
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
	ascii := strings.Repeat("a", model.MaxIDLength)
	multi := strings.Repeat("é", model.MaxIDLength/2) + "z" // 255 bytes, 128 runes
	require.Len(t, multi, model.MaxIDLength)
	four := strings.Repeat("🙂", model.MaxIDLength/4) + "xyz" // 255 bytes
	require.Len(t, four, model.MaxIDLength)
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
	for _, id := range []string{ascii + "a", multi + "é", strings.Repeat("🙂", 64)} {
		require.Greater(t, len(id), model.MaxIDLength)
		require.ErrorIs(t, b.StoreMeta(ctx, id, Message(id, metastorage.StateIncoming, base)), repository.ErrInvalidInput)
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
	lo := time.Date(1677, time.September, 21, 0, 12, 43, 145224193, time.UTC) // just after the smallest int64 nanoseconds
	hi := time.Date(2262, time.April, 11, 23, 47, 16, 854775807, time.UTC)    // the largest
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
		require.ErrorIs(t, b.StoreMeta(ctxT(t), "bad", md), repository.ErrInvalidInput, "%s", bad)
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
		{Limit: repository.MaxListLimit + 1},
		{SortBy: "size"},
		{SortBy: "Created"},
		{SortOrder: "DESC"},
		{SortOrder: "sideways"},
		{Since: time.Date(1500, 1, 1, 0, 0, 0, 0, time.UTC)},
	} {
		_, err := b.ListMessages(ctx, metastorage.StateIncoming, opts)
		require.ErrorIs(t, err, repository.ErrInvalidInput, "%+v", opts)
	}
	res, err := b.ListMessages(ctx, metastorage.StateIncoming, metastorage.MessageListOptions{Limit: repository.MaxListLimit})
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
	require.ErrorIs(t, err, repository.ErrIteratorClosed)
	require.False(t, ok)
	require.Equal(t, metastorage.MessageMetadata{}, md)
	require.NoError(t, it.Close(), "Close twice")
}
