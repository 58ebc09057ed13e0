package repository_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/fixture"
	"schneider.vip/retryspool/storage/meta/sqlite/repository"
)

// The fuzz targets share one backend per target and process, opened before
// the fuzzing starts, so that each input costs a few statements. Each input
// leaves the table as it found it. The seed corpus is in
// testdata/fuzz/<target>/ and runs with every go test.

func fuzzOpen(f *testing.F) *sqlitemeta.Repository {
	f.Helper()
	r, err := sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(filepath.Join(f.TempDir(), "fuzz.db"))).Open(context.Background())
	require.NoError(f, err)
	f.Cleanup(func() { _ = r.Close() })
	return r
}

// fuzzTotal is the number of rows, from COUNT(*), after checking that the
// counters agree.
func fuzzTotal(t *testing.T, r *sqlitemeta.Repository) int64 {
	t.Helper()
	var n int64
	for _, c := range fixture.RequireCounts(t, r) {
		n += c
	}
	return n
}

func fuzzValidID(id string) bool {
	return len(id) >= 1 && len(id) <= 255 && utf8.ValidString(id) && !strings.ContainsRune(id, 0)
}

// FuzzMessageID: any string as an ID is either stored and read back byte
// for byte, listed, moved and deleted, or refused with ErrInvalidInput by
// every method, leaving the table as it was.
func FuzzMessageID(f *testing.F) {
	r := fuzzOpen(f)
	ctx := context.Background()
	const sentinel = "sentinel"
	sentinelMD := fixture.Sample(sentinel, metastorage.StateHold, 1)
	require.NoError(f, r.StoreMeta(ctx, sentinel, sentinelMD))
	for _, s := range []string{"a", "A", "msg-1", " ", "a ", "ü", "\u202e", "'; DROP TABLE messages; --", "%", "_", "\\",
		strings.Repeat("x", 255), strings.Repeat("x", 256), strings.Repeat("é", 127), strings.Repeat("é", 128), "", "\x00", "a\x00b", "\xff", "\xc3"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		before := fuzzTotal(t, r)
		md := fixture.Sample(id, metastorage.StateDeferred, len(id))
		err := r.StoreMeta(ctx, id, md)
		if !fuzzValidID(id) {
			require.ErrorIs(t, err, sqlitemeta.ErrInvalidInput)
			_, err = r.GetMeta(ctx, id)
			require.ErrorIs(t, err, sqlitemeta.ErrInvalidInput)
			require.ErrorIs(t, r.UpdateMeta(ctx, id, md), sqlitemeta.ErrInvalidInput)
			require.ErrorIs(t, r.MoveToState(ctx, id, metastorage.StateDeferred, metastorage.StateActive), sqlitemeta.ErrInvalidInput)
			require.ErrorIs(t, r.DeleteMeta(ctx, id), sqlitemeta.ErrInvalidInput)
			require.ErrorIs(t, r.StoreMetaBatch(ctx, []metastorage.MessageMetadata{md}), sqlitemeta.ErrInvalidInput)
			require.Equal(t, before, fuzzTotal(t, r))
			got, err := r.GetMeta(ctx, sentinel)
			require.NoError(t, err)
			fixture.RequireSameMeta(t, sentinelMD, got, false)
			return
		}
		require.NoError(t, err)
		if id == sentinel {
			defer func() { require.NoError(t, r.StoreMeta(ctx, sentinel, sentinelMD)) }()
			before--
		}
		got, err := r.GetMeta(ctx, id)
		require.NoError(t, err)
		require.Equal(t, []byte(id), []byte(got.ID))
		fixture.RequireSameMeta(t, md, got, false)
		require.Equal(t, before+1, fuzzTotal(t, r))
		list, err := r.ListMessages(ctx, metastorage.StateDeferred, metastorage.MessageListOptions{})
		require.NoError(t, err)
		require.Equal(t, []string{id}, list.MessageIDs)
		require.NoError(t, r.MoveToState(ctx, id, metastorage.StateDeferred, metastorage.StateActive))
		require.Equal(t, metastorage.ErrStateConflict, r.MoveToState(ctx, id, metastorage.StateDeferred, metastorage.StateActive))
		require.NoError(t, r.DeleteMeta(ctx, id))
		_, err = r.GetMeta(ctx, id)
		require.ErrorIs(t, err, metastorage.ErrMessageNotFound)
		require.Equal(t, before, fuzzTotal(t, r))
	})
}

// fuzzHeaders builds a header map from the fuzzer's strings: n entries
// (up to 1023) derived from key and value, plus one of extra as both key
// and value; nil when asked.
func fuzzHeaders(key, value string, n uint16, extra []byte, isNil bool) map[string]string {
	if isNil {
		return nil
	}
	h := make(map[string]string)
	for i := 0; i < int(n%1024); i++ {
		k := key
		if i > 0 {
			k += strconv.Itoa(i)
		}
		h[k] = strings.Repeat(value, 1+i%3)
	}
	if len(extra) > 0 {
		h[string(extra)] = string(extra)
	}
	return h
}

// FuzzHeaders: a header map either round-trips byte for byte (nil and
// empty stay apart) or is refused with ErrInvalidInput, storing nothing.
func FuzzHeaders(f *testing.F) {
	r := fuzzOpen(f)
	ctx := context.Background()
	f.Add("from", "a@example.org", uint16(1), []byte(nil), false)
	f.Add("", "", uint16(0), []byte(nil), false)
	f.Add("", "", uint16(0), []byte(nil), true)
	f.Add("x-long", strings.Repeat("v", 300), uint16(900), []byte("k"), false)
	f.Add("\u2028<&>\"\\", "\x00\x01\x7f", uint16(3), []byte("\ufeff"), false)
	f.Add("bad\xff", "v", uint16(2), []byte(nil), false)
	f.Add("k", "bad\xc3", uint16(2), []byte(nil), false)
	f.Add("k", "v", uint16(1), []byte("\xed\xa0\x80"), false) // a surrogate half
	f.Fuzz(func(t *testing.T, key, value string, n uint16, extra []byte, isNil bool) {
		h := fuzzHeaders(key, value, n, extra, isNil)
		valid := true
		for k, v := range h {
			valid = valid && utf8.ValidString(k) && utf8.ValidString(v)
		}
		md := fixture.Sample("h", metastorage.StateIncoming, 1)
		md.Headers = h
		err := r.StoreMeta(ctx, "h", md)
		if !valid {
			require.ErrorIs(t, err, sqlitemeta.ErrInvalidInput)
			_, err = r.GetMeta(ctx, "h")
			require.ErrorIs(t, err, metastorage.ErrMessageNotFound)
			return
		}
		require.NoError(t, err)
		got, err := r.GetMeta(ctx, "h")
		require.NoError(t, err)
		require.Equal(t, h == nil, got.Headers == nil, "nil and empty headers must stay apart")
		require.Equal(t, len(h), len(got.Headers))
		for k, v := range h {
			g, ok := got.Headers[k]
			require.True(t, ok, "header %q lost", k)
			require.Equal(t, []byte(v), []byte(g), "header %q", k)
		}
		// UpdateMeta encodes the same way.
		require.NoError(t, r.UpdateMeta(ctx, "h", md))
		got, err = r.GetMeta(ctx, "h")
		require.NoError(t, err)
		require.Equal(t, h, got.Headers)
		require.NoError(t, r.DeleteMeta(ctx, "h"))
	})
}

// fuzzListData is the fixed data set of FuzzListOptions: states, times and
// sort keys with ties, so that the ID tie-break matters.
func fuzzListData() []metastorage.MessageMetadata {
	var out []metastorage.MessageMetadata
	for k := 0; k < 30; k++ {
		md := fixture.Sample(fmt.Sprintf("l%02d-%c", (k*7)%30, 'a'+rune(k%3)), fixture.States[k%3], k)
		md.Created = time.Unix(1_700_000_000+int64(k%5), int64(k%2)*500).UTC()
		md.Updated = time.Unix(1_700_000_100-int64(k%4), 0).UTC()
		md.Priority = k%4 - 1
		md.Attempts = k % 3
		out = append(out, md)
	}
	return out
}

// fuzzListModel computes ListMessages in Go. It returns the errors the call
// may give (several when several arguments are wrong) or the result.
func fuzzListModel(data []metastorage.MessageMetadata, state metastorage.QueueState, o metastorage.MessageListOptions) ([]error, metastorage.MessageListResult) {
	var errs []error
	if state < 0 || state > 5 {
		errs = append(errs, metastorage.ErrInvalidState)
	}
	keys := map[string]func(md metastorage.MessageMetadata) int64{
		"":         func(md metastorage.MessageMetadata) int64 { return md.Created.UnixNano() },
		"created":  func(md metastorage.MessageMetadata) int64 { return md.Created.UnixNano() },
		"updated":  func(md metastorage.MessageMetadata) int64 { return md.Updated.UnixNano() },
		"priority": func(md metastorage.MessageMetadata) int64 { return int64(md.Priority) },
		"attempts": func(md metastorage.MessageMetadata) int64 { return int64(md.Attempts) },
	}
	key, ok := keys[o.SortBy]
	if !ok {
		errs = append(errs, sqlitemeta.ErrInvalidInput)
	}
	if o.SortOrder != "" && o.SortOrder != "asc" && o.SortOrder != "desc" {
		errs = append(errs, sqlitemeta.ErrInvalidInput)
	}
	limit := o.Limit
	if limit == 0 {
		limit = repository.DefaultListLimit
	}
	if o.Limit < 0 || o.Offset < 0 || limit > repository.MaxListLimit {
		errs = append(errs, sqlitemeta.ErrInvalidInput)
	}
	minT, maxT := time.Unix(0, math.MinInt64+1), time.Unix(0, math.MaxInt64)
	if !o.Since.IsZero() && (o.Since.Before(minT) || o.Since.After(maxT)) {
		errs = append(errs, sqlitemeta.ErrInvalidInput)
	}
	if len(errs) > 0 {
		return errs, metastorage.MessageListResult{}
	}
	var match []metastorage.MessageMetadata
	for _, md := range data {
		if md.State == state && (o.Since.IsZero() || md.Created.UnixNano() >= o.Since.UnixNano()) {
			match = append(match, md)
		}
	}
	slices.SortFunc(match, func(a, b metastorage.MessageMetadata) int {
		c := int64Cmp(key(a), key(b))
		if c == 0 {
			c = strings.Compare(a.ID, b.ID)
		}
		if o.SortOrder == "desc" {
			c = -c
		}
		return c
	})
	res := metastorage.MessageListResult{MessageIDs: []string{}, Total: len(match)}
	if o.Offset < len(match) {
		end := len(match)
		if limit < end-o.Offset {
			end = o.Offset + limit
		}
		for _, md := range match[o.Offset:end] {
			res.MessageIDs = append(res.MessageIDs, md.ID)
		}
	}
	res.HasMore = o.Offset+len(res.MessageIDs) < res.Total
	return nil, res
}

func int64Cmp(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// FuzzListOptions compares ListMessages with a model computed in Go over a
// small fixed data set: the same page, Total and HasMore, or an error for
// invalid options.
func FuzzListOptions(f *testing.F) {
	r := fuzzOpen(f)
	ctx := context.Background()
	data := fuzzListData()
	require.NoError(f, r.StoreMetaBatch(ctx, data))
	f.Add(0, 0, 0, "", "", false, int64(0), int64(0))
	f.Add(0, 3, 2, "priority", "desc", false, int64(0), int64(0))
	f.Add(1, 5, 0, "updated", "asc", true, int64(1_700_000_002), int64(0))
	f.Add(2, 4, 4, "attempts", "desc", true, int64(1_700_000_001), int64(500))
	f.Add(0, 100000, 0, "created", "", true, int64(-62135596800), int64(0))
	f.Add(0, 100001, 0, "created", "", false, int64(0), int64(0))
	f.Add(0, -1, 0, "", "", false, int64(0), int64(0))
	f.Add(0, 1, -1, "", "", false, int64(0), int64(0))
	f.Add(6, 1, 0, "", "", false, int64(0), int64(0))
	f.Add(-1, 1, 0, "id", "sideways", false, int64(0), int64(0))
	f.Add(0, 1, 0, "created; DROP TABLE messages", "", false, int64(0), int64(0))
	f.Add(0, 1, 0, "", "", true, int64(math.MaxInt64/1_000_000_000+1), int64(0))
	f.Add(0, 1, math.MaxInt, "", "", false, int64(0), int64(0))
	f.Fuzz(func(t *testing.T, state, limit, offset int, sortBy, sortOrder string, useSince bool, sec, nsec int64) {
		o := metastorage.MessageListOptions{Limit: limit, Offset: offset, SortBy: sortBy, SortOrder: sortOrder}
		if useSince {
			o.Since = time.Unix(sec, nsec)
		}
		errs, want := fuzzListModel(data, metastorage.QueueState(state), o)
		got, err := r.ListMessages(ctx, metastorage.QueueState(state), o)
		if len(errs) > 0 {
			require.Error(t, err, "model expects one of %v", errs)
			require.True(t, slices.ContainsFunc(errs, func(e error) bool { return errors.Is(err, e) }), "got %v, want one of %v", err, errs)
			return
		}
		require.NoError(t, err)
		require.Equal(t, want, got)
	})
}

// fuzzMove applies the contract's compare-and-swap to the model and
// returns the error MoveToState must give.
func fuzzMove(cur *int, from, to int) error {
	switch {
	case from < 0 || from > 5 || to < 0 || to > 5:
		return metastorage.ErrInvalidState
	case *cur < 0:
		return metastorage.ErrMessageNotFound
	case *cur != from:
		return metastorage.ErrStateConflict
	}
	*cur = to
	return nil
}

// FuzzStates: any ints as states. Invalid ones give ErrInvalidState and
// change nothing; valid ones follow the compare-and-swap semantics; the
// counters follow every change.
func FuzzStates(f *testing.F) {
	r := fuzzOpen(f)
	ctx := context.Background()
	for _, s := range [][5]int{{0, 0, 1, 1, 2}, {2, 2, 2, 0, 5}, {0, 1, 2, 0, 1}, {6, 0, 1, 0, 1}, {-1, 0, 0, 0, 0},
		{3, 3, 6, 3, 4}, {5, -1, 0, 5, 0}, {1, 1, 0, 0, 1}, {math.MaxInt, 0, 0, 0, math.MinInt}} {
		f.Add(s[0], s[1], s[2], s[3], s[4])
	}
	f.Fuzz(func(t *testing.T, store, from1, to1, from2, to2 int) {
		const id = "st"
		before := fixture.RequireCounts(t, r)
		md := fixture.Sample(id, metastorage.QueueState(store), 1)
		err := r.StoreMeta(ctx, id, md)
		cur := -1 // not stored
		if store < 0 || store > 5 {
			require.ErrorIs(t, err, metastorage.ErrInvalidState)
		} else {
			require.NoError(t, err)
			cur = store
		}
		for _, mv := range [][2]int{{from1, to1}, {from2, to2}} {
			want := fuzzMove(&cur, mv[0], mv[1])
			got := r.MoveToState(ctx, id, metastorage.QueueState(mv[0]), metastorage.QueueState(mv[1]))
			if want == metastorage.ErrInvalidState {
				require.ErrorIs(t, got, want, "move %d -> %d", mv[0], mv[1])
			} else {
				require.Equal(t, want, got, "move %d -> %d: the bare sentinel", mv[0], mv[1])
			}
			gotMD, err := r.GetMeta(ctx, id)
			if cur < 0 {
				require.ErrorIs(t, err, metastorage.ErrMessageNotFound)
				continue
			}
			require.NoError(t, err)
			require.Equal(t, metastorage.QueueState(cur), gotMD.State)
		}
		// UpdateMeta moves too, and refuses invalid states.
		md.State = metastorage.QueueState(to2)
		err = r.UpdateMeta(ctx, id, md)
		switch {
		case to2 < 0 || to2 > 5:
			require.ErrorIs(t, err, metastorage.ErrInvalidState)
		case cur < 0:
			require.ErrorIs(t, err, metastorage.ErrMessageNotFound)
		default:
			require.NoError(t, err)
			cur = to2
		}
		after := fixture.RequireCounts(t, r)
		for _, s := range fixture.States {
			want := before[s]
			if int(s) == cur {
				want++
			}
			require.Equal(t, want, after[s], "count of %s", s)
		}
		if cur >= 0 {
			require.NoError(t, r.DeleteMeta(ctx, id))
		}
		require.Equal(t, before, fixture.RequireCounts(t, r))
	})
}
