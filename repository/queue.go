package repository

import (
	"context"
	"fmt"
	"strings"
	"time"

	"gorm.io/gorm"
	metastorage "schneider.vip/retryspool/storage/meta"

	"schneider.vip/retryspool/storage/meta/sqlite/model"
)

// DefaultOpBatchSize is the batch size of RequeueStale, Purge and BulkMove
// when the caller asks for 0. Each batch is one transaction; the largest
// batch is MaxClaim.
const DefaultOpBatchSize = 500

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
func (r *Repository) Stats(ctx context.Context) ([]StateStats, error) {
	ctx, done, err := r.enterLong(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	m := r.d.ident(r.t.messages)
	counts := "SELECT state, COALESCE(SUM(n), 0) FROM " + r.d.ident(r.t.counts) + " GROUP BY state"
	first := "SELECT id, created FROM " + m + " WHERE state = ? ORDER BY created, id LIMIT 1"
	last := "SELECT id, created FROM " + m + " WHERE state = ? ORDER BY created DESC, id DESC LIMIT 1"
	var out []StateStats
	err = r.readTx(ctx, func(tx *gorm.DB) error {
		out = make([]StateStats, metastorage.StateArchived+1)
		for i := range out {
			out[i].State = metastorage.QueueState(i)
		}
		rows, err := tx.Raw(counts).Rows()
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var state int
			var n int64
			if err := rows.Scan(&state, &n); err != nil {
				return err
			}
			if state >= 0 && state < len(out) {
				out[state].Count = n
			}
		}
		if err := rows.Close(); err != nil {
			return err
		}
		for i := range out {
			if out[i].Count == 0 {
				continue
			}
			s := &out[i]
			if s.OldestID, s.Oldest, err = endOf(tx, first, i); err != nil {
				return err
			}
			if s.NewestID, s.Newest, err = endOf(tx, last, i); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("stats: %w", r.closedOr(err))
	}
	return out, nil
}

// endOf runs a query that selects the id and created of at most one message.
func endOf(tx *gorm.DB, query string, state int) (string, time.Time, error) {
	rows, err := tx.Raw(query, state).Rows()
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
		from:  metastorage.StateActive,
		where: " AND updated < ?",
		args:  []any{cutoff},
		batch: batchSize,
		apply: r.moveIDs(metastorage.StateActive, metastorage.StateIncoming),
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
	// OnPurged, when set, is called after each committed batch that
	// deleted messages (not with Archive or DryRun) with the IDs of that
	// batch, outside any transaction: the place to delete their bodies
	// from a data store. The metadata is already gone when it runs, so a
	// crash in between leaves bodies without metadata, never metadata
	// without a body (spoolmeta check finds and removes such bodies). An
	// error ends Purge, which returns it with the count so far.
	OnPurged func(ctx context.Context, ids []string) error
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
		from:     state,
		where:    " AND created < ?",
		args:     []any{cutoff},
		batch:    batch,
		dryRun:   opts.DryRun,
		progress: opts.Progress,
		apply:    r.deleteIDs(state),
	}
	if opts.Archive {
		spec.apply = r.moveIDs(state, metastorage.StateArchived)
	} else if opts.OnPurged != nil && !opts.DryRun {
		spec.committed = opts.OnPurged
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
		from:     f.State,
		batch:    batch,
		dryRun:   opts.DryRun,
		progress: opts.Progress,
		apply:    r.moveIDs(f.State, to),
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

// opSpec describes a batched walk over the messages of one state.
type opSpec struct {
	op     string
	from   metastorage.QueueState
	where  string // more conditions, each starting with " AND "
	args   []any  // their arguments
	batch  int
	dryRun bool
	// match, when set, filters each batch's rows in Go; the rows then
	// carry their headers.
	match func(model.Headers) bool
	// apply changes the chosen messages, all in state from and locked.
	apply func(ctx context.Context, tx *gorm.DB, ids []string) error
	// progress, when set, hears the running total after each committed
	// batch that changed something.
	progress func(done int64)
	// committed, when set, gets the IDs of each committed batch that
	// changed something, after the commit; its error ends the walk.
	committed func(ctx context.Context, ids []string) error
}

// opRow is one row of a batch: its key in the walk, and its headers when
// the spec filters on them.
type opRow struct {
	id      string
	created int64
	headers model.Headers
}

// cursor is the (created, id) key after which the next batch starts.
type cursor struct {
	set     bool
	created int64
	id      string
}

// runOp walks spec.from in (created, id) order with keyset paging, one
// transaction per batch, so that messages a batch leaves in the state (a
// header that does not match) are not read again. A dry run without a
// header filter is a single COUNT on the index.
func (r *Repository) runOp(ctx context.Context, spec opSpec) (int64, error) {
	ctx, done, err := r.enterLong(ctx)
	if err != nil {
		return 0, err
	}
	defer done()
	if spec.dryRun && spec.match == nil {
		var n int64
		query := "SELECT COUNT(*) FROM " + r.d.ident(r.t.messages) + " WHERE state = ?" + spec.where
		if err := r.reader(ctx).Raw(query, append([]any{int(spec.from)}, spec.args...)...).Row().Scan(&n); err != nil {
			return 0, fmt.Errorf("%s: %w", spec.op, r.closedOr(err))
		}
		return n, nil
	}
	var total int64
	var cur cursor
	for {
		if err := ctx.Err(); err != nil {
			return total, fmt.Errorf("%s: %w", spec.op, r.closedOr(err))
		}
		var n int64
		var next cursor
		var full bool
		var changed []string // the IDs the batch changed
		batch := func(tx *gorm.DB) error {
			n, next, full, changed = 0, cur, false, nil
			rows, err := r.opRows(tx, spec, cur)
			if err != nil {
				return err
			}
			if len(rows) == 0 {
				return nil
			}
			full = len(rows) == spec.batch
			last := rows[len(rows)-1]
			next = cursor{set: true, created: last.created, id: last.id}
			ids := make([]string, 0, len(rows))
			for _, rw := range rows {
				if spec.match == nil || spec.match(rw.headers) {
					ids = append(ids, rw.id)
				}
			}
			if len(ids) == 0 {
				return nil
			}
			if !spec.dryRun {
				if err := spec.apply(ctx, tx, ids); err != nil {
					return err
				}
			}
			n = int64(len(ids))
			changed = ids
			return nil
		}
		if spec.dryRun {
			err = batch(r.reader(ctx))
		} else {
			err = r.write(ctx, batch)
		}
		if err != nil {
			return total, fmt.Errorf("%s: %w", spec.op, r.closedOr(err))
		}
		total += n
		cur = next
		if n > 0 && spec.committed != nil {
			if err := spec.committed(ctx, changed); err != nil {
				return total, fmt.Errorf("%s: after the commit: %w", spec.op, err)
			}
		}
		if n > 0 && spec.progress != nil && !spec.dryRun {
			spec.progress(total)
		}
		if !full {
			return total, nil
		}
	}
}

// opRows reads the next batch of spec after cur, locking the rows (and
// skipping rows locked by others) on the server engines unless it is a dry
// run.
func (r *Repository) opRows(tx *gorm.DB, spec opSpec, cur cursor) ([]opRow, error) {
	var q strings.Builder
	q.WriteString("SELECT id, created")
	if spec.match != nil {
		q.WriteString(", headers")
	}
	q.WriteString(" FROM " + r.d.ident(r.t.messages) + " WHERE state = ?" + spec.where)
	args := append([]any{int(spec.from)}, spec.args...)
	if cur.set {
		q.WriteString(" AND created >= ? AND (created > ? OR id > ?)")
		args = append(args, cur.created, cur.created, cur.id)
	}
	q.WriteString(" ORDER BY created, id LIMIT ?")
	args = append(args, spec.batch)
	if !spec.dryRun {
		q.WriteString(r.d.skipLocked)
	}
	rows, err := tx.Raw(q.String(), args...).Rows()
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := make([]opRow, 0, spec.batch)
	for rows.Next() {
		var rw opRow
		var id model.MessageID
		dest := []any{&id, &rw.created}
		if spec.match != nil {
			dest = append(dest, &rw.headers)
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, err
		}
		rw.id = string(id)
		out = append(out, rw)
	}
	return out, rows.Err()
}

// opDelete finds the rows of a batch by primary key. It still checks the
// state, as "state + 0" so that SQLite, which has no statistics unless
// ANALYZE ran, does not prefer the (state, created) index and scan the
// whole state for the IDs. Moves use the claims' statement, written alike.
const opDelete = "DELETE FROM %s WHERE id IN ? AND state + 0 = ?"

// moveIDs returns an apply function that moves locked messages from one
// state to another and runs the hooks of each move.
func (r *Repository) moveIDs(from, to metastorage.QueueState) func(context.Context, *gorm.DB, []string) error {
	return func(ctx context.Context, tx *gorm.DB, ids []string) error {
		res := tx.Exec(r.q.claimUpdate, int(to), time.Now().UnixNano(), ids, int(from))
		if res.Error != nil {
			return res.Error
		}
		if res.RowsAffected != int64(len(ids)) {
			return fmt.Errorf("moved %d of %d messages from %s: %w", res.RowsAffected, len(ids), from, metastorage.ErrStateConflict)
		}
		for _, id := range ids {
			if err := r.runHooks(ctx, tx, Transition{MessageID: id, From: from, To: to}); err != nil {
				return err
			}
		}
		return nil
	}
}

// deleteIDs returns an apply function that deletes locked messages.
func (r *Repository) deleteIDs(state metastorage.QueueState) func(context.Context, *gorm.DB, []string) error {
	query := fmt.Sprintf(opDelete, r.d.ident(r.t.messages))
	return func(_ context.Context, tx *gorm.DB, ids []string) error {
		res := tx.Exec(query, ids, int(state))
		if res.Error != nil {
			return res.Error
		}
		if res.RowsAffected != int64(len(ids)) {
			return fmt.Errorf("deleted %d of %d messages in %s: %w", res.RowsAffected, len(ids), state, metastorage.ErrStateConflict)
		}
		return nil
	}
}
