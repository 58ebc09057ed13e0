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
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	metastorage "schneider.vip/retryspool/storage/meta"

	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/metacheck"
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

// States are the six states of the contract, in order.
var States = metacheck.States

// badStates are values outside the six.
var badStates = []metastorage.QueueState{-1, 6, 42}

// Message returns a record with every field set, in state: times with
// nanoseconds in a zone that is not UTC, headers with non-ASCII text.
func Message(id string, state metastorage.QueueState, created time.Time) metastorage.MessageMetadata {
	return metacheck.Message(id, state, created)
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

// errString formats an error for a failure message.
func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return strings.TrimSpace(err.Error())
}

// isClosed reports the contract's closed error.
func isClosed(err error) bool { return errors.Is(err, metastorage.ErrBackendClosed) }

// The fixtures and checks shared with the repository's own suites.
type (
	subtest = metacheck.Subtest
	counts  = metacheck.Counts
)

var (
	zone               = metacheck.Zone
	base               = metacheck.Base
	run                = metacheck.Run
	at                 = metacheck.At
	ctxT               = metacheck.Ctx
	store              = metacheck.Store
	get                = metacheck.Get
	requireAbsent      = metacheck.RequireAbsent
	requireIdentical   = metacheck.RequireIdentical
	timeField          = metacheck.TimeField
	requireSameHeaders = metacheck.RequireSameHeaders
	requireCounts      = metacheck.RequireCounts
	listAll            = metacheck.ListAll
	ids                = metacheck.IDs
	sorted             = metacheck.Sorted
	requireOnce        = metacheck.RequireOnce
	seqID              = metacheck.SeqID
	iteratorFixture    = metacheck.IteratorFixture
)
