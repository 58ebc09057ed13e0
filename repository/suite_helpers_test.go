package repository_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sort"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	metastorage "schneider.vip/retryspool/storage/meta"

	"schneider.vip/retryspool/storage/meta/sqlite/metatest"
)

// The helpers of the repository and queue-operation suites: the fixtures
// and checks of metatest's contract suite, with no deviation tolerated.

// run runs the named subtests in parallel.
func run(t *testing.T, tests []subtest) {
	t.Helper()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t)
		})
	}
}

type subtest struct {
	name string
	fn   func(t *testing.T)
}

// States are the six states of the contract, in order.
var States = metatest.States

// Message returns a record with every field set, in state.
func Message(id string, state metastorage.QueueState, created time.Time) metastorage.MessageMetadata {
	return metatest.Message(id, state, created)
}

// zone is a non-UTC location with a non-whole-hour offset, so that a
// backend that drops the location or compares wall clocks is caught.
var zone = time.FixedZone("UTC+05:45", 5*3600+45*60)

// base is the reference time of the fixtures: nanoseconds set, not UTC.
var base = time.Date(2024, time.May, 17, 9, 30, 15, 123456789, zone)

// at returns base plus i seconds and i nanoseconds, so that times differ
// below the second and below the microsecond.
func at(i int) time.Time {
	return base.Add(time.Duration(i)*time.Second + time.Duration(i)*time.Nanosecond)
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// store stores each record under its ID.
func store(t *testing.T, b metastorage.Backend, mds ...metastorage.MessageMetadata) {
	t.Helper()
	ctx := context.Background()
	for _, md := range mds {
		require.NoError(t, b.StoreMeta(ctx, md.ID, md), "StoreMeta %q", md.ID)
	}
}

// get returns the stored record of id.
func get(t *testing.T, b metastorage.Backend, id string) metastorage.MessageMetadata {
	t.Helper()
	md, err := b.GetMeta(context.Background(), id)
	require.NoError(t, err, "GetMeta %q", id)
	return md
}

// requireAbsent checks that id is not stored.
func requireAbsent(t *testing.T, b metastorage.Backend, id string) {
	t.Helper()
	_, err := b.GetMeta(context.Background(), id)
	require.ErrorIs(t, err, metastorage.ErrMessageNotFound, "GetMeta %q", id)
}

// requireIdentical checks that err is the sentinel itself, not a wrapper.
func requireIdentical(t *testing.T, want, err error, msgAndArgs ...any) {
	t.Helper()
	if err != want { //nolint:errorlint // identity is the point
		require.Fail(t, fmt.Sprintf("want the bare sentinel %q, got %v (%T)", want, err, err), msgAndArgs...)
	}
}

// timeField compares one time field with Equal; zero must stay zero.
func timeField(t *testing.T, name string, want, got time.Time) {
	t.Helper()
	if want.IsZero() {
		require.True(t, got.IsZero(), "%s: want the zero time, got %s", name, got)
		return
	}
	require.True(t, want.Equal(got), "%s: want %s, got %s (off by %s)", name,
		want.Format(time.RFC3339Nano), got.Format(time.RFC3339Nano), got.Sub(want))
}

// requireSameMeta compares every field of two records: times with Equal,
// headers with nil and empty told apart.
func requireSameMeta(t *testing.T, want, got metastorage.MessageMetadata) {
	t.Helper()
	require.Equal(t, want.ID, got.ID, "ID")
	require.Equal(t, want.State, got.State, "State of %q", want.ID)
	require.Equal(t, want.Attempts, got.Attempts, "Attempts of %q", want.ID)
	require.Equal(t, want.MaxAttempts, got.MaxAttempts, "MaxAttempts of %q", want.ID)
	timeField(t, "NextRetry of "+want.ID, want.NextRetry, got.NextRetry)
	timeField(t, "Created of "+want.ID, want.Created, got.Created)
	timeField(t, "Updated of "+want.ID, want.Updated, got.Updated)
	require.Equal(t, want.LastError, got.LastError, "LastError of %q", want.ID)
	require.Equal(t, want.Size, got.Size, "Size of %q", want.ID)
	require.Equal(t, want.Priority, got.Priority, "Priority of %q", want.ID)
	requireSameHeaders(t, want.Headers, got.Headers)
	require.Equal(t, want.RetryPolicyName, got.RetryPolicyName, "RetryPolicyName of %q", want.ID)
}

// requireSameHeaders tells nil from empty and compares entries byte for
// byte.
func requireSameHeaders(t *testing.T, want, got map[string]string) {
	t.Helper()
	if want == nil {
		require.Nil(t, got, "headers: want nil")
		return
	}
	require.NotNil(t, got, "headers: want a non-nil map of %d entries", len(want))
	require.Len(t, got, len(want), "headers")
	for k, v := range want {
		g, ok := got[k]
		require.True(t, ok, "header %q missing", k)
		require.True(t, g == v, "header %q: want %q, got %q", k, v, g)
	}
}

// counts are expected numbers of messages per state; missing states are 0.
type counts map[metastorage.QueueState]int

// requireCounts checks the number of messages in every state, through
// ListMessages' Total and, when the backend keeps counters, GetStateCount.
func requireCounts(t *testing.T, b metastorage.Backend, want counts) {
	t.Helper()
	sc, hasCounter := b.(metastorage.StateCounterBackend)
	for _, st := range States {
		res, err := b.ListMessages(context.Background(), st, metastorage.MessageListOptions{Limit: 1})
		require.NoError(t, err, "ListMessages %s", st)
		require.Equal(t, want[st], res.Total, "ListMessages(%s).Total", st)
		if hasCounter {
			require.Equal(t, int64(want[st]), sc.GetStateCount(st), "GetStateCount(%s)", st)
		}
	}
}

// listAll returns every ID in state, in the default order, one page.
func listAll(t *testing.T, b metastorage.Backend, st metastorage.QueueState) []string {
	t.Helper()
	res, err := b.ListMessages(context.Background(), st, metastorage.MessageListOptions{Limit: 100000})
	require.NoError(t, err, "ListMessages %s", st)
	require.False(t, res.HasMore)
	return res.MessageIDs
}

// drain reads an iterator to its end, checking the end and the bools.
func drain(t *testing.T, it metastorage.MessageIterator, each func(md metastorage.MessageMetadata)) []metastorage.MessageMetadata {
	t.Helper()
	ctx := context.Background()
	var out []metastorage.MessageMetadata
	for i := 0; ; i++ {
		require.Less(t, i, 1_000_000, "iterator does not end")
		md, ok, err := it.Next(ctx)
		require.NoError(t, err, "Next")
		if md.ID == "" {
			require.Equal(t, metastorage.MessageMetadata{}, md, "the end must be a zero MessageMetadata")
			require.False(t, ok, "the end must come with false")
			break
		}
		require.True(t, ok, "message %q came with false", md.ID)
		out = append(out, md)
		if each != nil {
			each(md)
		}
	}
	for range 2 {
		md, ok, err := it.Next(ctx)
		require.NoError(t, err, "Next after the end")
		require.False(t, ok, "Next after the end")
		require.Equal(t, metastorage.MessageMetadata{}, md, "Next after the end")
	}
	return out
}

// iteratorFixture stores n messages in state Incoming whose Created times
// come in groups of three equal ones, in an order that is neither ID nor
// time order, plus messages in other states in between.
func iteratorFixture(t *testing.T, b metastorage.Backend, n int) []metastorage.MessageMetadata {
	t.Helper()
	rnd := rand.New(rand.NewPCG(uint64(n), 7))
	order, times := rnd.Perm(n), rnd.Perm(n)
	var in []metastorage.MessageMetadata
	for _, k := range order {
		in = append(in, Message(seqID("it", k), metastorage.StateIncoming, at(times[k]/3)))
	}
	var others []metastorage.MessageMetadata
	for i := range 4 {
		others = append(others, Message(seqID("other", i), metastorage.StateActive, at(i)))
	}
	store(t, b, in...)
	store(t, b, others...)
	return in
}

func ids(mds []metastorage.MessageMetadata) []string {
	out := make([]string, len(mds))
	for i, md := range mds {
		out[i] = md.ID
	}
	return out
}

func sorted(in []string) []string {
	out := append([]string(nil), in...)
	sort.Strings(out)
	return out
}

// requireOnce checks that got holds every ID of want exactly once.
func requireOnce(t *testing.T, want, got []string) {
	t.Helper()
	seen := map[string]int{}
	for _, id := range got {
		seen[id]++
	}
	var dup []string
	for id, n := range seen {
		if n > 1 {
			dup = append(dup, fmt.Sprintf("%s x%d", id, n))
		}
	}
	sort.Strings(dup)
	require.Empty(t, dup, "IDs returned more than once")
	require.Equal(t, sorted(want), sorted(got), "IDs returned")
}

// seqID makes IDs that sort in the order of i.
func seqID(prefix string, i int) string { return fmt.Sprintf("%s-%04d", prefix, i) }

// badStates are values outside the six.
var badStates = []metastorage.QueueState{-1, 6, 42}
