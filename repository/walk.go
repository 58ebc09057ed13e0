package repository

import (
	"context"
	"fmt"
	"strings"
	"time"

	metastorage "schneider.vip/retryspool/storage/meta"

	"schneider.vip/retryspool/storage/meta/sqlite/model"
)

// opSpec describes a batched walk over the messages of one state.
type opSpec struct {
	op     string // for error messages
	name   string // the method, for telemetry
	from   metastorage.QueueState
	where  string // more conditions, each starting with " AND "
	args   []any  // their arguments
	batch  int
	dryRun bool
	// match, when set, filters each batch's rows in Go; the rows then
	// carry their headers.
	match func(model.Headers) bool
	// apply changes the chosen messages, all in state from and locked,
	// as the write of stamp.
	apply func(c conn, ids []string, stamp int64) error
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
func (r *Repository) runOp(ctx context.Context, spec opSpec) (total int64, err error) {
	ctx, c, err := r.enter(ctx, spec.name, "", long)
	if err != nil {
		return 0, err
	}
	defer func() { err = c.end(err) }()
	if spec.dryRun && spec.match == nil {
		var n int64
		query := r.d.bind("SELECT COUNT(*) FROM " + r.d.ident(r.t.messages) + " WHERE state = ?" + spec.where)
		err := r.ex.read(ctx, false, func(c conn) error {
			return c.scalar(query, append([]any{int(spec.from)}, spec.args...), &n)
		})
		if err != nil {
			return 0, fmt.Errorf("%s: %w", spec.op, r.closedOr(err))
		}
		return n, nil
	}
	var cur cursor
	for {
		if err := ctx.Err(); err != nil {
			return total, fmt.Errorf("%s: %w", spec.op, r.closedOr(err))
		}
		var n int64
		var next cursor
		var full bool
		var changed []string // the IDs the batch changed
		batch := func(c conn, stamp int64) error {
			n, next, full, changed = 0, cur, false, nil
			rows, err := r.opRows(c, spec, cur)
			if err != nil || len(rows) == 0 {
				return err
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
				if err := spec.apply(c, ids, stamp); err != nil {
					return err
				}
			}
			n = int64(len(ids))
			changed = ids
			return nil
		}
		if spec.dryRun {
			err = r.ex.read(ctx, false, func(c conn) error { return batch(c, 0) })
		} else {
			_, err = r.settled(ctx, spec.name, func() []string { return changed }, func(stamp int64) error {
				return r.ex.write(ctx, func(c conn) error { return batch(c, stamp) })
			})
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
func (r *Repository) opRows(c conn, spec opSpec, cur cursor) ([]opRow, error) {
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
	rows, err := c.query(r.d.bind(q.String()), args...)
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

// mover returns an apply function that moves locked messages from one
// state to another and runs the hooks of each move.
func (r *Repository) mover(from, to metastorage.QueueState) func(conn, []string, int64) error {
	return func(c conn, ids []string, stamp int64) error {
		return r.moveLocked(c, ids, from, to, time.Now().UnixNano(), stamp)
	}
}

// deleter returns an apply function that deletes locked messages.
func (r *Repository) deleter(state metastorage.QueueState) func(conn, []string, int64) error {
	return func(c conn, ids []string, stamp int64) error {
		n, err := c.exec(r.deleteIDs(len(ids)), idArgs(ids, int(state), stampText(stamp))...)
		if err != nil {
			return err
		}
		if n != int64(len(ids)) {
			return fmt.Errorf("deleted %d of %d messages in %s: %w", n, len(ids), state, metastorage.ErrStateConflict)
		}
		return nil
	}
}
