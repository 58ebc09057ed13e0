package repository_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	metastorage "schneider.vip/retryspool/storage/meta"

	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/metacheck"
)

// The helpers of the repository and queue-operation suites: the fixtures
// and checks of metatest's contract suite, with no deviation tolerated.

// The fixtures and checks shared with metatest.
type (
	subtest = metacheck.Subtest
	counts  = metacheck.Counts
)

var (
	States             = metacheck.States
	Message            = metacheck.Message
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

// badStates are values outside the six.
var badStates = []metastorage.QueueState{-1, 6, 42}
