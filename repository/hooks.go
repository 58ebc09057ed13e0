package repository

import (
	"context"
	"fmt"

	"gorm.io/gorm"
	metastorage "schneider.vip/retryspool/storage/meta"
)

// Transition describes one state change of one message, as hooks see it.
type Transition struct {
	MessageID string
	From      metastorage.QueueState
	To        metastorage.QueueState
	// Created is set when StoreMeta creates the message; From and To are
	// then both its first state.
	Created bool
	// Tx is the transaction that makes the change. A hook may read and
	// write through it; its writes commit or roll back with the change.
	Tx *gorm.DB
}

// Hook runs inside the transaction of a state change. A non-nil error
// rolls the whole change back and is returned to the caller (wrapped; use
// errors.Is).
//
// Hooks are called by the repository itself, not registered as GORM
// callbacks, so a *gorm.DB handed in by an application never gains global
// callbacks.
type Hook func(ctx context.Context, t Transition) error

// runHooks runs the hooks of one transition in the transaction of c. The
// hooks' context is marked, so that a hook calling the store itself with
// it gets ErrReentrantCall at once instead of waiting for its own
// transaction.
func (r *Repository) runHooks(c conn, t Transition) error {
	if len(r.hooks) == 0 {
		return nil
	}
	ctx := context.WithValue(c.ctx, hookKey{}, r.life)
	c.ctx = ctx
	t.Tx = c.gorm()
	for _, h := range r.hooks {
		if err := h(ctx, t); err != nil {
			return fmt.Errorf("transition hook %s -> %s of %q: %w", t.From, t.To, t.MessageID, err)
		}
	}
	return nil
}
