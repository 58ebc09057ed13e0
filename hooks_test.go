package sqlite_test

import (
	"testing"

	"github.com/stretchr/testify/require"
	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/fixture"
)

// The hooks' behaviour in every engine is tested with the repository
// (repository/hooks_test.go); here, the state diagram of hooks.go.

func TestAllowedTransitionMatchesTheDiagram(t *testing.T) {
	t.Parallel()
	allowed := 0
	for _, from := range fixture.States {
		for _, to := range fixture.States {
			want := fixture.DiagramAllows(from, to)
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
