package repository

import (
	"context"
	"fmt"
	"time"

	metastorage "schneider.vip/retryspool/storage/meta"

	"schneider.vip/retryspool/storage/meta/sqlite/internal/telemetry"
	"schneider.vip/retryspool/storage/meta/sqlite/model"
)

// StateStats describes the messages of one state. Oldest and Newest are the
// first and last message in (Created, ID) order; their IDs are empty when
// the state holds no message.
type StateStats struct {
	State    metastorage.QueueState
	Count    int64
	OldestID string
	Oldest   time.Time // Created of OldestID
	NewestID string
	Newest   time.Time // Created of NewestID
}

// Stats returns the count, oldest and newest message of every state, in
// state order (incoming first), all read from one snapshot. The counts come
// from the trigger-maintained counters and the ends from the (state,
// created) index, so the cost does not grow with the number of messages.
func (r *Repository) Stats(ctx context.Context) (out []StateStats, err error) {
	ctx, c, err := r.enter(ctx, "Stats", "", long)
	if err != nil {
		return nil, err
	}
	defer func() { err = c.end(err) }()
	err = r.ex.read(ctx, true, func(c conn) (err error) {
		out, err = r.stats(c)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("stats: %w", r.closedOr(err))
	}
	return out, nil
}

// stats reads the counters, and the ends of each state that has messages.
func (r *Repository) stats(c conn) ([]StateStats, error) {
	out := make([]StateStats, len(allStates))
	for i, state := range allStates {
		out[i].State = state
	}
	rows, err := c.query(r.s.counts)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var state int
		var n int64
		if err := rows.Scan(&state, &n); err != nil {
			return nil, err
		}
		if state >= 0 && state < len(out) {
			out[state].Count = n
		}
	}
	if err := rows.Close(); err != nil {
		return nil, err
	}
	for i := range out {
		if out[i].Count == 0 {
			continue
		}
		s := &out[i]
		if s.OldestID, s.Oldest, err = endOf(c, r.s.first, i); err != nil {
			return nil, err
		}
		if s.NewestID, s.Newest, err = endOf(c, r.s.last, i); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// endOf runs a query that selects the id and created of at most one message.
func endOf(c conn, query string, state int) (string, time.Time, error) {
	rows, err := c.query(query, state)
	if err != nil {
		return "", time.Time{}, err
	}
	defer rows.Close()
	if !rows.Next() {
		return "", time.Time{}, rows.Err()
	}
	var id model.MessageID
	var created int64
	if err := rows.Scan(&id, &created); err != nil {
		return "", time.Time{}, err
	}
	return string(id), model.DecodeTime(created), rows.Close()
}

// queueSnapshot is what the telemetry's gauges report: per state the count
// (from the counters) and the oldest message (from the (state, created)
// index), and the number of due deferred messages (from the due index).
func (r *Repository) queueSnapshot(ctx context.Context) (telemetry.QueueSnapshot, error) {
	l := r.life
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.isClosed() {
		return telemetry.QueueSnapshot{}, metastorage.ErrBackendClosed
	}
	var snap telemetry.QueueSnapshot
	err := r.ex.read(ctx, true, func(c conn) error {
		stats, err := r.stats(c)
		if err != nil {
			return err
		}
		for _, s := range stats {
			snap.States = append(snap.States, telemetry.StateSnapshot{State: s.State.String(), Count: s.Count, Oldest: s.Oldest})
		}
		return c.scalar(r.s.dueCount, []any{time.Now().UnixNano()}, &snap.Due)
	})
	return snap, r.closedOr(err)
}
