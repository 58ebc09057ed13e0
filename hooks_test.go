package sqlite_test

import (
	"testing"

	"github.com/stretchr/testify/require"
	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
)

// The hooks' behaviour in every engine is tested with the repository
// (repository/hooks_test.go); here, the state diagram of hooks.go.

// hookDiagram is RetrySpool's state diagram as documented: incoming to
// active; active to deferred, bounce, archived or incoming; deferred to
// active; bounce to active or archived; archived to incoming; hold to and
// from any state.
var hookDiagram = map[[2]metastorage.QueueState]bool{
	{metastorage.StateIncoming, metastorage.StateActive}:   true,
	{metastorage.StateActive, metastorage.StateDeferred}:   true,
	{metastorage.StateActive, metastorage.StateBounce}:     true,
	{metastorage.StateActive, metastorage.StateArchived}:   true,
	{metastorage.StateActive, metastorage.StateIncoming}:   true,
	{metastorage.StateDeferred, metastorage.StateActive}:   true,
	{metastorage.StateBounce, metastorage.StateActive}:     true,
	{metastorage.StateBounce, metastorage.StateArchived}:   true,
	{metastorage.StateArchived, metastorage.StateIncoming}: true,
}

func hookAllowed(from, to metastorage.QueueState) bool {
	return from == metastorage.StateHold || to == metastorage.StateHold || hookDiagram[[2]metastorage.QueueState{from, to}]
}

var hookStates = []metastorage.QueueState{
	metastorage.StateIncoming, metastorage.StateActive, metastorage.StateDeferred,
	metastorage.StateHold, metastorage.StateBounce, metastorage.StateArchived,
}

func TestAllowedTransitionMatchesTheDiagram(t *testing.T) {
	t.Parallel()
	allowed := 0
	for _, from := range hookStates {
		for _, to := range hookStates {
			want := hookAllowed(from, to)
			require.Equal(t, want, sqlitemeta.AllowedTransition(from, to), "%s -> %s", from, to)
			if want {
				allowed++
			}
		}
	}
	// 9 moves of the diagram, 11 into or out of hold (hold to hold counted
	// once).
	require.Equal(t, 9+11, allowed)
	require.False(t, sqlitemeta.AllowedTransition(metastorage.StateIncoming, metastorage.QueueState(42)))
}
