package sqlite

import (
	"context"
	"fmt"

	metastorage "schneider.vip/retryspool/storage/meta"

	"schneider.vip/retryspool/storage/meta/sqlite/repository"
)

// Transition describes one state change: the message, From, To, whether
// StoreMeta created the message, and Tx, the *gorm.DB of the transaction
// that makes the change.
type Transition = repository.Transition

// TransitionHook runs inside the transaction of every state change:
// MoveToState, UpdateMeta and StoreMeta when they change State (and
// StoreMeta when it creates a message, with Created set), and the batch
// and queue operations. Whatever the hook writes through t.Tx commits or
// rolls back with the change; a non-nil error rolls the change back and is
// returned to the caller wrapped, so errors.Is finds it.
//
// Hooks are run by the repository, not registered as GORM callbacks: a
// *gorm.DB handed in with WithDB never gains global callbacks.
type TransitionHook = repository.Hook

// transitions is RetrySpool's state diagram: the moves its README draws.
// Hold may be entered from and left to any state; it is handled in
// AllowedTransition.
var transitions = map[metastorage.QueueState][]metastorage.QueueState{
	metastorage.StateIncoming: {metastorage.StateActive},
	metastorage.StateActive: {
		metastorage.StateDeferred, metastorage.StateBounce,
		metastorage.StateArchived, metastorage.StateIncoming,
	},
	metastorage.StateDeferred: {metastorage.StateActive},
	metastorage.StateBounce:   {metastorage.StateActive, metastorage.StateArchived},
	metastorage.StateArchived: {metastorage.StateIncoming},
}

// AllowedTransition reports whether the strict policy permits moving a
// message from one state to another: incoming to active; active to
// deferred, bounce, archived or incoming; deferred to active; bounce to
// active or archived; archived to incoming; hold to and from any state.
func AllowedTransition(from, to metastorage.QueueState) bool {
	if from == metastorage.StateHold || to == metastorage.StateHold {
		return true
	}
	for _, s := range transitions[from] {
		if s == to {
			return true
		}
	}
	return false
}

// StrictTransitions is the hook behind WithStrictTransitions: it refuses
// every move outside AllowedTransition with metastorage.ErrInvalidState.
// Creating a message, in any state, is not a move and is allowed.
func StrictTransitions(_ context.Context, t Transition) error {
	if t.Created || AllowedTransition(t.From, t.To) {
		return nil
	}
	return fmt.Errorf("%w: %s to %s is outside the state diagram", metastorage.ErrInvalidState, t.From, t.To)
}
