// Package metacheck holds the fixtures and checks of the contract suite
// (package metatest) that the repository's own suites use too: records
// with every field set, stores and reads that fail the test on error, and
// comparisons that tell zero times and nil headers apart. It imports only
// the contract and testify, like metatest.
package metacheck

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sort"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	metastorage "schneider.vip/retryspool/storage/meta"
)

type Subtest struct {
	Name string
	Fn   func(t *testing.T)
}

// Counts are expected numbers of messages per state; missing states are 0.
// States are the six states of the contract, in order.
var States = []metastorage.QueueState{
	metastorage.StateIncoming, metastorage.StateActive, metastorage.StateDeferred,
	metastorage.StateHold, metastorage.StateBounce, metastorage.StateArchived,
}

type Counts map[metastorage.QueueState]int

// Zone is a non-UTC location with a non-whole-hour offset, so that a
// backend that drops the location or compares wall clocks is caught.
var Zone = time.FixedZone("UTC+05:45", 5*3600+45*60)

// Base is the reference time of the fixtures: nanoseconds set, not UTC.
var Base = time.Date(2024, time.May, 17, 9, 30, 15, 123456789, Zone)

// Message returns a record with every field set, in state.
func Message(id string, state metastorage.QueueState, created time.Time) metastorage.MessageMetadata {
	return metastorage.MessageMetadata{
		ID:              id,
		State:           state,
		Attempts:        2,
		MaxAttempts:     7,
		NextRetry:       created.Add(90*time.Minute + 17*time.Nanosecond),
		Created:         created,
		Updated:         created.Add(3*time.Second + 5*time.Nanosecond),
		LastError:       "451 4.7.1 greylisted: try again \"later\" <é>",
		Size:            123456789012,
		Priority:        -3,
		Headers:         map[string]string{"From": "a@example.org", "Subject": "hé"},
		RetryPolicyName: "exponential",
	}
}

// Run runs the named subtests in parallel.
func Run(t *testing.T, tests []Subtest) {
	t.Helper()
	for _, tc := range tests {
		t.Run(tc.Name, func(t *testing.T) {
			t.Parallel()
			tc.Fn(t)
		})
	}
}

// At returns base plus i seconds and i nanoseconds, so that times differ
// below the second and below the microsecond.
func At(i int) time.Time {
	return Base.Add(time.Duration(i)*time.Second + time.Duration(i)*time.Nanosecond)
}

func Ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// Store stores each record under its ID.
func Store(t *testing.T, b metastorage.Backend, mds ...metastorage.MessageMetadata) {
	t.Helper()
	ctx := context.Background()
	for _, md := range mds {
		require.NoError(t, b.StoreMeta(ctx, md.ID, md), "StoreMeta %q", md.ID)
	}
}

// Get returns the stored record of id.
func Get(t *testing.T, b metastorage.Backend, id string) metastorage.MessageMetadata {
	t.Helper()
	md, err := b.GetMeta(context.Background(), id)
	require.NoError(t, err, "GetMeta %q", id)
	return md
}

// RequireAbsent checks that id is not stored.
func RequireAbsent(t *testing.T, b metastorage.Backend, id string) {
	t.Helper()
	_, err := b.GetMeta(context.Background(), id)
	require.ErrorIs(t, err, metastorage.ErrMessageNotFound, "GetMeta %q", id)
}

// RequireIdentical checks that err is the sentinel itself, not a wrapper.
func RequireIdentical(t *testing.T, want, err error, msgAndArgs ...any) {
	t.Helper()
	if err != want { //nolint:errorlint // identity is the point
		require.Fail(t, fmt.Sprintf("want the bare sentinel %q, got %v (%T)", want, err, err), msgAndArgs...)
	}
}

// TimeField compares one time field with Equal; zero must stay zero.
func TimeField(t *testing.T, name string, want, got time.Time) {
	t.Helper()
	if want.IsZero() {
		require.True(t, got.IsZero(), "%s: want the zero time, got %s", name, got)
		return
	}
	require.True(t, want.Equal(got), "%s: want %s, got %s (off by %s)", name,
		want.Format(time.RFC3339Nano), got.Format(time.RFC3339Nano), got.Sub(want))
}

// RequireSameHeaders tells nil from empty and compares entries byte for
// byte.
func RequireSameHeaders(t *testing.T, want, got map[string]string) {
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

// RequireCounts checks the number of messages in every state, through
// ListMessages' Total and, when the backend keeps counters, GetStateCount.
func RequireCounts(t *testing.T, b metastorage.Backend, want Counts) {
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

// ListAll returns every ID in state, in the default order, one page.
func ListAll(t *testing.T, b metastorage.Backend, st metastorage.QueueState) []string {
	t.Helper()
	res, err := b.ListMessages(context.Background(), st, metastorage.MessageListOptions{Limit: 100000})
	require.NoError(t, err, "ListMessages %s", st)
	require.False(t, res.HasMore)
	return res.MessageIDs
}

func IDs(mds []metastorage.MessageMetadata) []string {
	out := make([]string, len(mds))
	for i, md := range mds {
		out[i] = md.ID
	}
	return out
}

func Sorted(in []string) []string {
	out := append([]string(nil), in...)
	sort.Strings(out)
	return out
}

// RequireOnce checks that got holds every ID of want exactly once.
func RequireOnce(t *testing.T, want, got []string) {
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
	require.Equal(t, Sorted(want), Sorted(got), "IDs returned")
}

// SeqID makes IDs that sort in the order of i.
func SeqID(prefix string, i int) string { return fmt.Sprintf("%s-%04d", prefix, i) }

// IteratorFixture stores n messages in state Incoming whose Created times
// come in groups of three equal ones, in an order that is neither ID nor
// time order, plus messages in other states in between.
func IteratorFixture(t *testing.T, b metastorage.Backend, n int) []metastorage.MessageMetadata {
	t.Helper()
	rnd := rand.New(rand.NewPCG(uint64(n), 7))
	order, times := rnd.Perm(n), rnd.Perm(n)
	var in []metastorage.MessageMetadata
	for _, k := range order {
		in = append(in, Message(SeqID("it", k), metastorage.StateIncoming, At(times[k]/3)))
	}
	var others []metastorage.MessageMetadata
	for i := range 4 {
		others = append(others, Message(SeqID("other", i), metastorage.StateActive, At(i)))
	}
	Store(t, b, in...)
	Store(t, b, others...)
	return in
}
