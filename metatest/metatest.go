// Package metatest is a conformance suite for RetrySpool metadata backends
// (metastorage.Backend, schneider.vip/retryspool/storage/meta v0.0.5).
//
// Run checks what every backend owes RetrySpool: whole-record stores and
// updates that round-trip every field exactly, compare-and-swap moves with
// exactly one winner, iterators that neither skip nor repeat while the
// caller moves what they return, list paging, exact per-state counts, and
// the behaviour on bad input, cancelled contexts and after Close. It uses
// only the contract's interface and sentinels, so any backend can run it:
//
//	func TestConformance(t *testing.T) {
//		metatest.Run(t, func(t *testing.T) metastorage.Backend {
//			b, err := NewFactory(t.TempDir()).Create()
//			require.NoError(t, err)
//			return b
//		})
//	}
//
// RunStrict adds what a stricter backend such as this library promises
// beyond the contract (an error for bad input, the longest ID, the storable
// time range, exact iterator order), with the backend's own error and bounds
// handed in as Limits. The package imports only the contract, testify and
// the standard library: a backend author running it compiles nothing of
// this library's storage (the suites of *repository.Repository's batch,
// transaction and queue operations live with the repository's tests).
//
// Each subtest calls newBackend for a fresh, empty backend and closes it
// when the subtest ends; subtests run in parallel.
//
// A backend that is known to depart from the contract on some point can
// still run the rest of the suite: name the departure with a Deviation.
// Each one relaxes exactly the checks of that point, to a weaker property
// where one is meaningful and to a skip otherwise, and says so in the test
// log.
package metatest

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	metastorage "schneider.vip/retryspool/storage/meta"
)

// Deviation names a known departure of a backend from the contract.
type Deviation string

// The departures the suite knows how to tolerate.
const (
	// BackendSetsTimestamps: StoreMeta, UpdateMeta or MoveToState set
	// Created or Updated themselves instead of storing the caller's
	// values. Created and Updated are then only checked to be set.
	BackendSetsTimestamps Deviation = "the backend sets Created and Updated itself"
	// StoreKeepsOldState: StoreMeta of an existing ID in another state
	// leaves the old record in its old state as well.
	StoreKeepsOldState Deviation = "StoreMeta of an existing message in another state keeps the old copy"
	// MoveUnknownIsConflict: MoveToState on an unknown ID returns
	// ErrStateConflict instead of ErrMessageNotFound.
	MoveUnknownIsConflict Deviation = "MoveToState on an unknown ID returns ErrStateConflict"
	// SameStateMoveAlwaysSucceeds: MoveToState(id, s, s) succeeds whatever
	// the message's state, even for unknown IDs.
	SameStateMoveAlwaysSucceeds Deviation = "MoveToState from a state to itself always succeeds"
	// NoStateValidation: states outside the six are accepted.
	NoStateValidation Deviation = "states outside the six are accepted"
	// NoIDValidation: an empty ID or a metadata.ID that differs from the
	// message ID is accepted.
	NoIDValidation Deviation = "empty or mismatched IDs are accepted"
	// IteratorUnordered: the iterator does not return messages oldest
	// first.
	IteratorUnordered Deviation = "the iterator does not return messages oldest first"
	// IteratorLastWithoutTrue: the iterator returns some real messages with
	// false.
	IteratorLastWithoutTrue Deviation = "the iterator returns real messages with false"
	// IteratorSkipsMoved: moving returned messages out of the state while
	// iterating makes the iterator skip others.
	IteratorSkipsMoved Deviation = "the iterator skips messages when earlier ones leave the state"
	// IteratorIgnoresClose: an iterator made before Close goes on
	// returning messages after it.
	IteratorIgnoresClose Deviation = "an iterator keeps working after the backend is closed"
	// ListUnordered: ListMessages does not order by the default key, or
	// does not break ties by ID, so pages are not stable.
	ListUnordered Deviation = "ListMessages does not give a total, stable order"
	// ListSinceOnUpdated: Since also keeps messages updated after it.
	ListSinceOnUpdated Deviation = "ListMessages Since also matches Updated"
	// ListAcceptsBadOptions: negative Limit or Offset and unknown SortBy or
	// SortOrder are accepted.
	ListAcceptsBadOptions Deviation = "ListMessages accepts invalid options"
	// IgnoresContext: a cancelled context does not stop a write.
	IgnoresContext Deviation = "a cancelled context does not stop a write"
)

// suite is the shared state of one Run.
type suite struct {
	newBackend func(t *testing.T) metastorage.Backend
	tolerate   map[Deviation]bool
	lim        Limits // RunStrict only
}

func newSuite(newBackend func(t *testing.T) metastorage.Backend, tolerate []Deviation) *suite {
	s := &suite{newBackend: newBackend, tolerate: map[Deviation]bool{}}
	for _, d := range tolerate {
		s.tolerate[d] = true
	}
	return s
}

// tolerates reports whether d was declared, and logs it when it was.
func (s *suite) tolerates(t *testing.T, d Deviation) bool {
	t.Helper()
	if s.tolerate[d] {
		t.Logf("tolerated deviation: %s", d)
		return true
	}
	return false
}

// skipIf skips the test when d was declared: nothing weaker is worth
// checking.
func (s *suite) skipIf(t *testing.T, d Deviation) {
	t.Helper()
	if s.tolerate[d] {
		t.Skipf("tolerated deviation: %s", d)
	}
}

// backend returns a fresh backend that is closed when the test ends.
func (s *suite) backend(t *testing.T) metastorage.Backend {
	t.Helper()
	b := s.newBackend(t)
	require.NotNil(t, b, "newBackend returned nil")
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return b
}

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
var States = []metastorage.QueueState{
	metastorage.StateIncoming, metastorage.StateActive, metastorage.StateDeferred,
	metastorage.StateHold, metastorage.StateBounce, metastorage.StateArchived,
}

// badStates are values outside the six.
var badStates = []metastorage.QueueState{-1, 6, 42}

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
func (s *suite) requireSameMeta(t *testing.T, want, got metastorage.MessageMetadata) {
	t.Helper()
	require.Equal(t, want.ID, got.ID, "ID")
	require.Equal(t, want.State, got.State, "State of %q", want.ID)
	require.Equal(t, want.Attempts, got.Attempts, "Attempts of %q", want.ID)
	require.Equal(t, want.MaxAttempts, got.MaxAttempts, "MaxAttempts of %q", want.ID)
	timeField(t, "NextRetry of "+want.ID, want.NextRetry, got.NextRetry)
	if s.tolerate[BackendSetsTimestamps] {
		require.False(t, got.Created.IsZero(), "Created of %q", want.ID)
		require.False(t, got.Updated.IsZero(), "Updated of %q", want.ID)
	} else {
		timeField(t, "Created of "+want.ID, want.Created, got.Created)
		timeField(t, "Updated of "+want.ID, want.Updated, got.Updated)
	}
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
func (s *suite) drain(t *testing.T, it metastorage.MessageIterator, each func(md metastorage.MessageMetadata)) []metastorage.MessageMetadata {
	t.Helper()
	ctx := context.Background()
	var out []metastorage.MessageMetadata
	lenient := s.tolerate[IteratorLastWithoutTrue]
	for i := 0; ; i++ {
		require.Less(t, i, 1_000_000, "iterator does not end")
		md, ok, err := it.Next(ctx)
		require.NoError(t, err, "Next")
		if md.ID == "" {
			require.Equal(t, metastorage.MessageMetadata{}, md, "the end must be a zero MessageMetadata")
			require.False(t, ok, "the end must come with false")
			break
		}
		if !lenient {
			require.True(t, ok, "message %q came with false", md.ID)
		}
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

// errString formats an error for a failure message.
func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return strings.TrimSpace(err.Error())
}

// isClosed reports the contract's closed error.
func isClosed(err error) bool { return errors.Is(err, metastorage.ErrBackendClosed) }
