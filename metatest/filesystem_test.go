package metatest_test

import (
	"io"
	"log"
	"testing"

	"github.com/stretchr/testify/require"
	metastorage "schneider.vip/retryspool/storage/meta"
	fsmeta "schneider.vip/retryspool/storage/meta/filesystem"

	"schneider.vip/retryspool/storage/meta/sqlite/metatest"
)

// TestConformanceFilesystemBackend runs the generic suite on RetrySpool's
// own filesystem backend (meta/filesystem v0.0.6), which shows that the
// suite needs nothing of this library. That backend departs from the
// contract on the points listed below; each is declared, so that the rest
// of the suite still runs on it, and removing any one of them makes the
// suite fail.
func TestConformanceFilesystemBackend(t *testing.T) {
	// The backend logs its crash recovery on every open.
	prev := log.Writer()
	log.SetOutput(io.Discard)
	t.Cleanup(func() { log.SetOutput(prev) })
	metatest.Run(t, func(t *testing.T) metastorage.Backend {
		b, err := fsmeta.NewFactory(t.TempDir()).WithDisableSync(true).Create()
		require.NoError(t, err)
		return b
	},
		// StoreMeta and UpdateMeta write time.Now() into Updated, and
		// UpdateMeta keeps the old Created.
		metatest.BackendSetsTimestamps,
		// StoreMeta of an existing ID in another state writes a second
		// file and leaves the first: the message is then in two states.
		metatest.StoreKeepsOldState,
		// MoveToState on an unknown ID returns ErrStateConflict.
		metatest.MoveUnknownIsConflict,
		// MoveToState(id, s, s) returns nil without looking at the message.
		metatest.SameStateMoveAlwaysSucceeds,
		// Any state value is accepted and stored in a directory "unknown".
		metatest.NoStateValidation,
		// An empty ID, or a metadata.ID that differs, is accepted.
		metatest.NoIDValidation,
		// The iterator returns directory order, and the last message of
		// each batch with false.
		metatest.IteratorUnordered,
		metatest.IteratorLastWithoutTrue,
		// The iterator pages by offset in the directory, so moving the
		// messages it returned out of the state makes it skip others.
		metatest.IteratorSkipsMoved,
		// An iterator made before Close keeps reading after it.
		metatest.IteratorIgnoresClose,
		// ListMessages leaves directory order when SortBy is empty and
		// breaks no ties, so pages are not stable.
		metatest.ListUnordered,
		// Since keeps messages created or updated after it.
		metatest.ListSinceOnUpdated,
		// Negative Limit or Offset and unknown SortBy or SortOrder are
		// accepted.
		metatest.ListAcceptsBadOptions,
		// Contexts are not looked at by writes.
		metatest.IgnoresContext,
	)
}
