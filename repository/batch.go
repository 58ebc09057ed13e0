package repository

import (
	"context"
	"fmt"
	"time"

	"gorm.io/gorm"
	metastorage "schneider.vip/retryspool/storage/meta"

	"schneider.vip/retryspool/storage/meta/sqlite/model"
)

const (
	// MaxClaim caps how many messages one claim may move.
	MaxClaim = 10000
	// rowsPerInsert keeps a multi-row INSERT under every engine's limit
	// on bound parameters (SQLite's is 32766).
	rowsPerInsert = 500
)

// StoreMetaBatch creates or replaces many records in one transaction: all
// are stored or, on any error, none. Each record's ID is its metadata.ID.
func (r *Repository) StoreMetaBatch(ctx context.Context, records []metastorage.MessageMetadata) error {
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
	ctx, done, err := r.enterLong(ctx)
	if err != nil {
		return err
	}
	defer done()
	err = r.write(ctx, func(tx *gorm.DB) error {
		if len(r.hooks) > 0 {
			for _, rw := range rows {
				if err := r.storeTx(ctx, tx, rw); err != nil {
					return err
				}
			}
			return nil
		}
		for start := 0; start < len(rows); start += rowsPerInsert {
			chunk := rows[start:min(start+rowsPerInsert, len(rows))]
			if err := tx.Exec(r.q.upsertN(len(chunk)), flatArgs(chunk)...).Error; err != nil {
				return err
			}
		}
		return nil
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
	return r.claim(ctx, "claim messages", from, to, limit, r.q.claimIDs, int(from))
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
	return r.claim(ctx, "claim due", metastorage.StateDeferred, metastorage.StateActive, limit, r.q.claimDueIDs, due)
}

// DueMessages returns, without moving them, up to limit deferred messages
// whose NextRetry is at or before now, earliest first.
func (r *Repository) DueMessages(ctx context.Context, now time.Time, limit int) ([]metastorage.MessageMetadata, error) {
	due, err := model.EncodeTime(now)
	if err != nil {
		return nil, fmt.Errorf("due messages: %w: %w", ErrInvalidInput, err)
	}
	if limit <= 0 || limit > MaxClaim {
		return nil, fmt.Errorf("due messages: %w: limit %d outside 1..%d", ErrInvalidInput, limit, MaxClaim)
	}
	ctx, done, err := r.enterLong(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	out, err := r.selectMessages(r.reader(ctx), r.q.due, due, limit)
	if err != nil {
		return nil, fmt.Errorf("due messages: %w", r.closedOr(err))
	}
	return out, nil
}

func (r *Repository) claim(ctx context.Context, op string, from, to metastorage.QueueState, limit int, pick string, key any) ([]metastorage.MessageMetadata, error) {
	if limit <= 0 || limit > MaxClaim {
		return nil, fmt.Errorf("%s: %w: limit %d outside 1..%d", op, ErrInvalidInput, limit, MaxClaim)
	}
	ctx, done, err := r.enterLong(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	var out []metastorage.MessageMetadata
	err = r.write(ctx, func(tx *gorm.DB) error {
		out = nil
		var ids []model.MessageID
		if err := tx.Raw(pick, key, limit).Scan(&ids).Error; err != nil {
			return err
		}
		if len(ids) == 0 {
			return nil
		}
		now := time.Now().UnixNano()
		if err := tx.Exec(r.q.claimUpdate, int(to), now, ids, int(from)).Error; err != nil {
			return err
		}
		got, err := r.selectMessages(tx, r.q.byIDs, ids)
		if err != nil {
			return err
		}
		out = inOrder(got, ids)
		for _, md := range out {
			if err := r.runHooks(ctx, tx, Transition{MessageID: md.ID, From: from, To: to}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, r.closedOr(err))
	}
	return out, nil
}

// selectMessages runs a query that selects columnList.
func (r *Repository) selectMessages(db *gorm.DB, query string, args ...any) ([]metastorage.MessageMetadata, error) {
	rows, err := db.Raw(query, args...).Rows()
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

// inOrder returns mds in the order of ids (the order they were picked in).
func inOrder(mds []metastorage.MessageMetadata, ids []model.MessageID) []metastorage.MessageMetadata {
	pos := make(map[string]int, len(ids))
	for i, id := range ids {
		pos[string(id)] = i
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
