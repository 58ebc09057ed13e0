package repository

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	metastorage "schneider.vip/retryspool/storage/meta"
)

// StoreMeta creates or replaces the whole record of messageID.
func (r *Repository) StoreMeta(ctx context.Context, messageID string, metadata metastorage.MessageMetadata) (err error) {
	rw, err := toRow(messageID, metadata)
	if err != nil {
		return fmt.Errorf("store meta: %w", err)
	}
	ctx, c, err := r.enter(ctx, "StoreMeta", messageID, write)
	if err != nil {
		return err
	}
	defer func() { err = c.end(err) }()
	_, err = r.settled(ctx, "StoreMeta", one(messageID), func(stamp int64) error {
		rw.setStamp(stamp)
		if len(r.hooks) == 0 {
			_, err := r.ex.exec(ctx, r.s.upsert, rw.args...)
			return err
		}
		return r.ex.write(ctx, func(c conn) error { return r.storeHooked(c, rw) })
	})
	if err != nil {
		return fmt.Errorf("store meta %q: %w", messageID, r.closedOr(err))
	}
	return nil
}

// storeHooked stores one record and runs the hooks of what that changes.
func (r *Repository) storeHooked(c conn, rw row) error {
	id := string(rw.m.ID)
	from, found, err := r.lockedState(c, id)
	if err != nil {
		return err
	}
	if _, err := c.exec(r.s.upsert, rw.args...); err != nil {
		return err
	}
	to := metastorage.QueueState(rw.m.State)
	switch {
	case !found:
		return r.runHooks(c, Transition{MessageID: id, From: to, To: to, Created: true})
	case from != to:
		return r.runHooks(c, Transition{MessageID: id, From: from, To: to})
	}
	return nil
}

// UpdateMeta replaces the whole record of an existing message, State
// included; an unknown ID gives ErrMessageNotFound.
func (r *Repository) UpdateMeta(ctx context.Context, messageID string, metadata metastorage.MessageMetadata) (err error) {
	rw, err := toRow(messageID, metadata)
	if err != nil {
		return fmt.Errorf("update meta: %w", err)
	}
	ctx, c, err := r.enter(ctx, "UpdateMeta", messageID, write)
	if err != nil {
		return err
	}
	defer func() { err = c.end(err) }()
	var n int64
	v, err := r.settled(ctx, "UpdateMeta", one(messageID), func(stamp int64) (err error) {
		rw.setStamp(stamp)
		args := append(rw.args[1:len(rw.args):len(rw.args)], messageID)
		if len(r.hooks) == 0 {
			n, err = r.ex.exec(ctx, r.s.update, args...)
			return err
		}
		return r.ex.write(ctx, func(c conn) error {
			from, found, err := r.lockedState(c, messageID)
			if err != nil || !found {
				n = 0
				return err
			}
			if n, err = c.exec(r.s.update, args...); err != nil {
				return err
			}
			if to := metastorage.QueueState(rw.m.State); from != to {
				return r.runHooks(c, Transition{MessageID: messageID, From: from, To: to})
			}
			return nil
		})
	})
	if v == landed {
		return nil
	}
	if err == nil && n == 0 {
		// Not found, but for a stamp that happened to equal the row's
		// (MySQL counts an UPDATE that changes nothing as zero rows).
		err = r.ex.read(ctx, false, func(c conn) error {
			if found, err := r.exists(c, messageID); err != nil || found {
				return err
			}
			return metastorage.ErrMessageNotFound
		})
	}
	if err != nil {
		return fmt.Errorf("update meta %q: %w", messageID, r.closedOr(err))
	}
	return nil
}

// DeleteMeta removes a record; an unknown ID gives ErrMessageNotFound.
func (r *Repository) DeleteMeta(ctx context.Context, messageID string) (err error) {
	if err := checkID(messageID); err != nil {
		return fmt.Errorf("delete meta: %w", err)
	}
	ctx, c, err := r.enter(ctx, "DeleteMeta", messageID, write)
	if err != nil {
		return err
	}
	defer func() { err = c.end(err) }()
	var n int64
	v, err := r.settled(ctx, "DeleteMeta", one(messageID), func(stamp int64) (err error) {
		n, err = r.ex.exec(ctx, r.s.del, messageID, stampText(stamp))
		return err
	})
	if v == landed {
		return nil
	}
	if err == nil && n == 0 {
		err = metastorage.ErrMessageNotFound
	}
	if err != nil {
		return fmt.Errorf("delete meta %q: %w", messageID, r.closedOr(err))
	}
	return nil
}

// MoveToState is one atomic compare-and-swap: it moves the message to
// toState only if it is in fromState. Losers get the bare
// metastorage.ErrStateConflict and unknown IDs the bare ErrMessageNotFound,
// so that callers may compare with ==. fromState == toState succeeds, and
// changes nothing, exactly when the message is in that state.
func (r *Repository) MoveToState(ctx context.Context, messageID string, fromState, toState metastorage.QueueState) (err error) {
	if err := checkID(messageID); err != nil {
		return fmt.Errorf("move to state: %w", err)
	}
	if err := checkState(fromState); err != nil {
		return err
	}
	if err := checkState(toState); err != nil {
		return err
	}
	ctx, c, err := r.enter(ctx, "MoveToState", messageID, write)
	if err != nil {
		return err
	}
	defer func() { err = c.end(err) }()
	var n int64
	if fromState != toState {
		var v verdict
		v, err = r.settled(ctx, "MoveToState", one(messageID), func(stamp int64) (err error) {
			args := []any{int(toState), time.Now().UnixNano(), stamp, messageID, int(fromState)}
			if len(r.hooks) == 0 {
				n, err = r.ex.exec(ctx, r.s.cas, args...)
				return err
			}
			return r.ex.write(ctx, func(c conn) error {
				if n, err = c.exec(r.s.cas, args...); err != nil || n == 0 {
					return err
				}
				return r.runHooks(c, Transition{MessageID: messageID, From: fromState, To: toState})
			})
		})
		if v == landed {
			return nil
		}
	}
	if err == nil && n == 0 {
		// Nothing moved: tell not found from conflict. A same-state
		// move succeeds when the message is in that state.
		var state metastorage.QueueState
		var found bool
		err = r.ex.read(ctx, false, func(c conn) (err error) {
			state, found, err = r.readState(c, r.s.state, messageID)
			return err
		})
		switch {
		case err != nil:
		case !found:
			return metastorage.ErrMessageNotFound
		case fromState != toState || state != fromState:
			return metastorage.ErrStateConflict
		}
	}
	if err != nil {
		return fmt.Errorf("move to state %q: %w", messageID, r.closedOr(err))
	}
	return nil
}

// GetMeta returns the record of messageID.
func (r *Repository) GetMeta(ctx context.Context, messageID string) (md metastorage.MessageMetadata, err error) {
	if err := checkID(messageID); err != nil {
		return metastorage.MessageMetadata{}, fmt.Errorf("get meta: %w", err)
	}
	ctx, c, err := r.enter(ctx, "GetMeta", messageID, quick)
	if err != nil {
		return metastorage.MessageMetadata{}, err
	}
	defer func() { err = c.end(err) }()
	err = r.ex.read(ctx, false, func(c conn) error {
		rows, err := c.query(r.s.get, messageID)
		if err != nil {
			return err
		}
		defer rows.Close()
		if !rows.Next() {
			if err := rows.Err(); err != nil {
				return err
			}
			return metastorage.ErrMessageNotFound
		}
		if md, err = scanMessage(rows); err != nil {
			return err
		}
		return rows.Close()
	})
	if err != nil {
		return metastorage.MessageMetadata{}, fmt.Errorf("get meta %q: %w", messageID, r.closedOr(err))
	}
	return md, nil
}

// GetStateCount returns the exact number of messages in state, read from
// the trigger-maintained counters (a lookup of at most 16 rows, whatever the
// table's size). The contract gives it no error: on failure it returns 0.
func (r *Repository) GetStateCount(state metastorage.QueueState) int64 {
	n, err := r.StateCount(context.Background(), state)
	if err != nil {
		return 0
	}
	return n
}

// StateCount is GetStateCount with a context and an error.
func (r *Repository) StateCount(ctx context.Context, state metastorage.QueueState) (n int64, err error) {
	if err := checkState(state); err != nil {
		return 0, err
	}
	ctx, c, err := r.enter(ctx, "StateCount", "", quick)
	if err != nil {
		return 0, err
	}
	defer func() { err = c.end(err) }()
	err = r.ex.read(ctx, false, func(c conn) error { return c.scalar(r.s.count, []any{int(state)}, &n) })
	if err != nil {
		return 0, fmt.Errorf("count %s: %w", state, r.closedOr(err))
	}
	return n, nil
}

// lockedState reads the state of id inside a write transaction, locking the
// row on engines with row locks.
func (r *Repository) lockedState(c conn, id string) (metastorage.QueueState, bool, error) {
	return r.readState(c, r.s.stateLock, id)
}

// readState runs a query that selects the state of id, if any.
func (r *Repository) readState(c conn, query, id string) (metastorage.QueueState, bool, error) {
	var s int
	switch err := c.scalar(query, []any{id}, &s); err {
	case nil:
		return metastorage.QueueState(s), true, nil
	case sql.ErrNoRows:
		return 0, false, nil
	default:
		return 0, false, err
	}
}

func (r *Repository) exists(c conn, id string) (bool, error) {
	var n int64
	err := c.scalar(r.s.exists, []any{id}, &n)
	return n > 0, err
}
