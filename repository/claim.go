package repository

import (
	"context"
	"fmt"
	"time"

	metastorage "schneider.vip/retryspool/storage/meta"

	"schneider.vip/retryspool/storage/meta/sqlite/model"
)

const (
	// MaxClaim caps how many messages one claim may move.
	MaxClaim = 10000
	// rowsPerStatement keeps a multi-row INSERT or an IN list under every
	// engine's limit on bound parameters (SQLite's is 32766).
	rowsPerStatement = 500
)

// StoreMetaBatch creates or replaces many records in one transaction: all
// are stored or, on any error, none. Each record's ID is its metadata.ID.
func (r *Repository) StoreMetaBatch(ctx context.Context, records []metastorage.MessageMetadata) (err error) {
	rows := make([]row, len(records))
	seen := make(map[string]struct{}, len(records))
	for i, md := range records {
		rw, err := toRow(md.ID, md)
		if err != nil {
			return fmt.Errorf("store meta batch: record %d: %w", i, err)
		}
		if _, dup := seen[md.ID]; dup {
			return fmt.Errorf("store meta batch: %w: ID %q appears twice", ErrInvalidInput, md.ID)
		}
		seen[md.ID] = struct{}{}
		rows[i] = rw
	}
	if len(rows) == 0 {
		return nil
	}
	ctx, c, err := r.enter(ctx, "StoreMetaBatch", "", long)
	if err != nil {
		return err
	}
	defer func() { err = c.end(err) }()
	ids := make([]string, len(rows))
	for i, rw := range rows {
		ids[i] = string(rw.m.ID)
	}
	_, err = r.settled(ctx, "StoreMetaBatch", func() []string { return ids }, func(stamp int64) error {
		for _, rw := range rows {
			rw.setStamp(stamp)
		}
		return r.ex.write(ctx, func(c conn) error {
			if len(r.hooks) > 0 {
				for _, rw := range rows {
					if err := r.storeHooked(c, rw); err != nil {
						return err
					}
				}
				return nil
			}
			for start := 0; start < len(rows); start += rowsPerStatement {
				chunk := rows[start:min(start+rowsPerStatement, len(rows))]
				if _, err := c.exec(r.s.upsertN(r.d, len(chunk)), flatArgs(chunk)...); err != nil {
					return err
				}
			}
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("store meta batch of %d: %w", len(rows), r.closedOr(err))
	}
	return nil
}

func flatArgs(rows []row) []any {
	args := make([]any, 0, len(rows)*len(columns))
	for _, rw := range rows {
		args = append(args, rw.args...)
	}
	return args
}

// ClaimMessages atomically moves up to limit messages from one state to
// another, oldest first (by created, then ID), and returns their records as
// they are after the move. Concurrent claimers, in any number of processes,
// never get the same message: on PostgreSQL and MySQL/MariaDB they skip
// each other's locked rows (FOR UPDATE SKIP LOCKED), on SQLite the write
// lock serialises them. A hook error rolls the whole claim back.
func (r *Repository) ClaimMessages(ctx context.Context, from, to metastorage.QueueState, limit int) ([]metastorage.MessageMetadata, error) {
	if err := checkState(from); err != nil {
		return nil, err
	}
	if err := checkState(to); err != nil {
		return nil, err
	}
	if from == to {
		return nil, fmt.Errorf("claim messages: %w: from and to are both %s", ErrInvalidInput, from)
	}
	return r.claim(ctx, "ClaimMessages", from, to, limit, r.s.claimIDs, int(from))
}

// ClaimDue atomically moves up to limit deferred messages whose NextRetry is
// at or before now to Active, earliest NextRetry first, and returns them as
// they are after the move. It reads the partial due index, so its cost does
// not grow with the number of deferred messages that are not yet due.
func (r *Repository) ClaimDue(ctx context.Context, now time.Time, limit int) ([]metastorage.MessageMetadata, error) {
	due, err := model.EncodeTime(now)
	if err != nil {
		return nil, fmt.Errorf("claim due: %w: %w", ErrInvalidInput, err)
	}
	return r.claim(ctx, "ClaimDue", metastorage.StateDeferred, metastorage.StateActive, limit, r.s.claimDueIDs, due)
}

// DueMessages returns, without moving them, up to limit deferred messages
// whose NextRetry is at or before now, earliest first.
func (r *Repository) DueMessages(ctx context.Context, now time.Time, limit int) (out []metastorage.MessageMetadata, err error) {
	due, err := model.EncodeTime(now)
	if err != nil {
		return nil, fmt.Errorf("due messages: %w: %w", ErrInvalidInput, err)
	}
	if limit <= 0 || limit > MaxClaim {
		return nil, fmt.Errorf("due messages: %w: limit %d outside 1..%d", ErrInvalidInput, limit, MaxClaim)
	}
	ctx, c, err := r.enter(ctx, "DueMessages", "", long)
	if err != nil {
		return nil, err
	}
	defer func() { err = c.end(err) }()
	err = r.ex.read(ctx, false, func(c conn) (err error) {
		out, err = r.selectMessages(c, r.s.due, due, limit)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("due messages: %w", r.closedOr(err))
	}
	return out, nil
}

func (r *Repository) claim(ctx context.Context, op string, from, to metastorage.QueueState, limit int, pick string, key any) (out []metastorage.MessageMetadata, err error) {
	if limit <= 0 || limit > MaxClaim {
		return nil, fmt.Errorf("%s: %w: limit %d outside 1..%d", op, ErrInvalidInput, limit, MaxClaim)
	}
	ctx, c, err := r.enter(ctx, op, "", long)
	if err != nil {
		return nil, err
	}
	defer func() { err = c.end(err) }()
	var ids []string
	v, err := r.settled(ctx, op, func() []string { return ids }, func(stamp int64) error {
		return r.ex.write(ctx, func(c conn) (err error) {
			out = nil
			if ids, err = r.selectIDs(c, pick, key, limit); err != nil || len(ids) == 0 {
				return err
			}
			if err := r.moveLocked(c, ids, from, to, time.Now().UnixNano(), stamp); err != nil {
				return err
			}
			got, err := r.getMany(c, ids)
			if err != nil {
				return err
			}
			out = inOrder(got, ids)
			return nil
		})
	})
	if v == landed {
		// The claim committed as its connection died: its messages are
		// this caller's, as the transaction read them before its COMMIT.
		return out, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, r.closedOr(err))
	}
	return out, nil
}

// selectIDs runs a query that selects the id column.
func (r *Repository) selectIDs(c conn, query string, args ...any) ([]string, error) {
	rows, err := c.query(query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id model.MessageID
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		ids = append(ids, string(id))
	}
	return ids, rows.Err()
}

// moveLocked moves messages that the transaction holds (locked on the
// server engines) from one state to another, sets their Updated to now and
// their stamp to the write's, and runs the hooks of each move. A message
// no longer in from is a conflict.
func (r *Repository) moveLocked(c conn, ids []string, from, to metastorage.QueueState, now, stamp int64) error {
	for start := 0; start < len(ids); start += rowsPerStatement {
		chunk := ids[start:min(start+rowsPerStatement, len(ids))]
		args := append([]any{int(to), now, stamp}, idArgs(chunk, int(from))...)
		n, err := c.exec(r.moveIDs(len(chunk)), args...)
		if err != nil {
			return err
		}
		if n != int64(len(chunk)) {
			return fmt.Errorf("moved %d of %d messages from %s: %w", n, len(chunk), from, metastorage.ErrStateConflict)
		}
	}
	for _, id := range ids {
		if err := r.runHooks(c, Transition{MessageID: id, From: from, To: to}); err != nil {
			return err
		}
	}
	return nil
}

// selectMessages runs a query that selects columnList.
func (r *Repository) selectMessages(c conn, query string, args ...any) ([]metastorage.MessageMetadata, error) {
	rows, err := c.query(query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []metastorage.MessageMetadata
	for rows.Next() {
		md, err := scanMessage(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, md)
	}
	return out, rows.Err()
}

// getMany reads the records of those ids that exist.
func (r *Repository) getMany(c conn, ids []string) ([]metastorage.MessageMetadata, error) {
	var out []metastorage.MessageMetadata
	for start := 0; start < len(ids); start += rowsPerStatement {
		chunk := ids[start:min(start+rowsPerStatement, len(ids))]
		mds, err := r.selectMessages(c, r.byIDs(len(chunk)), idArgs(chunk)...)
		if err != nil {
			return nil, err
		}
		out = append(out, mds...)
	}
	return out, nil
}

// inOrder returns those of mds whose IDs are in ids, in the order of ids
// (the order they were picked in).
func inOrder(mds []metastorage.MessageMetadata, ids []string) []metastorage.MessageMetadata {
	pos := make(map[string]int, len(ids))
	for i, id := range ids {
		pos[id] = i
	}
	out := make([]metastorage.MessageMetadata, len(ids))
	n := 0
	for _, md := range mds {
		if i, ok := pos[md.ID]; ok {
			out[i] = md
			n++
		}
	}
	if n == len(ids) {
		return out
	}
	kept := out[:0]
	for _, md := range out {
		if md.ID != "" {
			kept = append(kept, md)
		}
	}
	return kept
}
