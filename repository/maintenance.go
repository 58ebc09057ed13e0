package repository

import (
	"context"
	"fmt"
	"time"

	metastorage "schneider.vip/retryspool/storage/meta"

	"schneider.vip/retryspool/storage/meta/sqlite/model"
)

// DefaultOpBatchSize is the batch size of RequeueStale, Purge and BulkMove
// when the caller asks for 0. Each batch is one transaction; the largest
// batch is MaxClaim.
const DefaultOpBatchSize = 500

// RequeueStale moves Active messages whose Updated is before olderThan
// (strictly) back to Incoming, and returns how many it moved. MoveToState
// and the claims set Updated, so for an Active message it is the moment it
// was claimed: RequeueStale recovers messages whose worker died. It works
// in batches of batchSize (0 means DefaultOpBatchSize), each one
// transaction that runs the transition hooks of every message it moves and
// sets their Updated to the time of the move; a hook error rolls its batch
// back and ends the call. On error the count is what earlier batches
// committed. On PostgreSQL and MySQL/MariaDB, messages that another
// transaction holds locked at that moment are left alone.
func (r *Repository) RequeueStale(ctx context.Context, olderThan time.Time, batchSize int) (int64, error) {
	const op = "requeue stale"
	cutoff, err := cutoffOf(op, olderThan)
	if err != nil {
		return 0, err
	}
	if batchSize, err = opBatch(op, batchSize); err != nil {
		return 0, err
	}
	return r.runOp(ctx, opSpec{
		op:    op,
		name:  "RequeueStale",
		from:  metastorage.StateActive,
		where: " AND updated < ?",
		args:  []any{cutoff},
		batch: batchSize,
		apply: r.mover(metastorage.StateActive, metastorage.StateIncoming),
	})
}

// PurgeOptions tunes Purge.
type PurgeOptions struct {
	// BatchSize is the number of messages per transaction; 0 means
	// DefaultOpBatchSize.
	BatchSize int
	// Archive moves the messages to Archived, running the transition
	// hooks, instead of deleting them.
	Archive bool
	// DryRun only counts the messages that would go.
	DryRun bool
	// Progress, when set, is called after each committed batch with the
	// number of messages purged so far.
	Progress func(done int64)
}

// Purge deletes the messages of state created before olderThan (strictly),
// or with opts.Archive moves them to Archived, and returns how many. It
// walks the (state, created) index in batches, each one transaction; on
// error the count is what earlier batches committed. Deleting runs no hook
// (as DeleteMeta); archiving runs the transition hooks of every message and
// sets its Updated to the time of the move. With opts.DryRun it changes
// nothing and returns how many messages would go.
func (r *Repository) Purge(ctx context.Context, state metastorage.QueueState, olderThan time.Time, opts PurgeOptions) (int64, error) {
	const op = "purge"
	if err := checkState(state); err != nil {
		return 0, err
	}
	if opts.Archive && state == metastorage.StateArchived {
		return 0, fmt.Errorf("%s: %w: archiving messages that are already archived", op, ErrInvalidInput)
	}
	cutoff, err := cutoffOf(op, olderThan)
	if err != nil {
		return 0, err
	}
	batch, err := opBatch(op, opts.BatchSize)
	if err != nil {
		return 0, err
	}
	spec := opSpec{
		op:       op,
		name:     "Purge",
		from:     state,
		where:    " AND created < ?",
		args:     []any{cutoff},
		batch:    batch,
		dryRun:   opts.DryRun,
		progress: opts.Progress,
		apply:    r.deleter(state),
	}
	if opts.Archive {
		spec.apply = r.mover(state, metastorage.StateArchived)
	}
	return r.runOp(ctx, spec)
}

// Filter selects the messages of BulkMove.
type Filter struct {
	// State is the state the messages are in.
	State metastorage.QueueState
	// OlderThan keeps messages created before it (strictly); the zero
	// time keeps every age.
	OlderThan time.Time
	// HeaderKey keeps messages that have this header; empty keeps all.
	HeaderKey string
	// HeaderValue, when set, keeps only messages whose HeaderKey header
	// has exactly this value; empty accepts any value. It needs HeaderKey.
	HeaderValue string
}

// match reports whether headers pass the header part of the filter.
func (f Filter) match(h model.Headers) bool {
	if f.HeaderKey == "" {
		return true
	}
	v, ok := h[f.HeaderKey]
	return ok && (f.HeaderValue == "" || v == f.HeaderValue)
}

// MoveOptions tunes BulkMove.
type MoveOptions struct {
	// BatchSize is the number of messages examined per transaction; 0
	// means DefaultOpBatchSize.
	BatchSize int
	// DryRun only counts the messages that would move.
	DryRun bool
	// Progress, when set, is called after each committed batch with the
	// number of messages moved so far.
	Progress func(done int64)
}

// BulkMove moves every message that matches f to state to, and returns how
// many it moved. It walks f.State in (created, id) order in batches, each
// one transaction; the header filter is applied to each batch's rows in Go,
// so it behaves the same on every engine. Every move runs the transition
// hooks and sets Updated to the time of the move; a hook error rolls its
// batch back and ends the call, and on error the count is what earlier
// batches committed. Messages that enter f.State behind the walk are not
// moved. With opts.DryRun it changes nothing and returns how many messages
// would move.
func (r *Repository) BulkMove(ctx context.Context, f Filter, to metastorage.QueueState, opts MoveOptions) (int64, error) {
	const op = "bulk move"
	if err := checkState(f.State); err != nil {
		return 0, err
	}
	if err := checkState(to); err != nil {
		return 0, err
	}
	if f.State == to {
		return 0, fmt.Errorf("%s: %w: from and to are both %s", op, ErrInvalidInput, to)
	}
	if f.HeaderKey == "" && f.HeaderValue != "" {
		return 0, fmt.Errorf("%s: %w: HeaderValue without HeaderKey", op, ErrInvalidInput)
	}
	if err := checkText("header key", f.HeaderKey); err != nil {
		return 0, fmt.Errorf("%s: %w", op, err)
	}
	if err := checkText("header value", f.HeaderValue); err != nil {
		return 0, fmt.Errorf("%s: %w", op, err)
	}
	batch, err := opBatch(op, opts.BatchSize)
	if err != nil {
		return 0, err
	}
	spec := opSpec{
		op:       op,
		name:     "BulkMove",
		from:     f.State,
		batch:    batch,
		dryRun:   opts.DryRun,
		progress: opts.Progress,
		apply:    r.mover(f.State, to),
	}
	if !f.OlderThan.IsZero() {
		cutoff, err := cutoffOf(op, f.OlderThan)
		if err != nil {
			return 0, err
		}
		spec.where, spec.args = " AND created < ?", []any{cutoff}
	}
	if f.HeaderKey != "" {
		spec.match = f.match
	}
	return r.runOp(ctx, spec)
}

func cutoffOf(op string, t time.Time) (int64, error) {
	if t.IsZero() {
		return 0, fmt.Errorf("%s: %w: zero cutoff time", op, ErrInvalidInput)
	}
	n, err := model.EncodeTime(t)
	if err != nil {
		return 0, fmt.Errorf("%s: %w: cutoff: %w", op, ErrInvalidInput, err)
	}
	return n, nil
}

func opBatch(op string, n int) (int, error) {
	switch {
	case n == 0:
		return DefaultOpBatchSize, nil
	case n < 0 || n > MaxClaim:
		return 0, fmt.Errorf("%s: %w: batch size %d outside 1..%d", op, ErrInvalidInput, n, MaxClaim)
	}
	return n, nil
}
