package repository

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"time"
)

// Settling a write whose connection died.
//
// On PostgreSQL and MySQL/MariaDB, a connection may die (a killed session,
// a server restart, a network fault) or a call's context may end while a
// write is on its way: the statement or the COMMIT may have reached the
// server and committed, or not, and the answer is lost. Running the write
// again blindly is wrong: if it had landed and another worker changed the
// message since (claimed it, say), the second run would undo that.
//
// So every write carries a stamp of its own (newStamp), which it sets on
// the rows it inserts or updates (a DELETE hands it to the trigger in a
// transaction-local setting), and triggers record (stamp, id) for every
// row it changes in the write fence (<table>_writes, model.Write), in the
// write's own transaction. When the outcome is unknown, the store inserts
// those same pairs itself, on another connection:
//
//   - a duplicate key proves that the write committed: it landed;
//   - a successful insert proves that it had not committed, and that it
//     never will: if its session is still running somewhere (a KILL that
//     has not yet stopped it, a half-open connection), its trigger now
//     fails on the same key and its transaction rolls back. A write that
//     changed no row (a compare-and-swap that found another state) leaves
//     no pair either, and is then run again, which gives its answer.
//
// Only a write that certainly did not land is run again (with a new
// stamp): running it then is the same as the caller's call arriving now,
// and cannot undo a change made after it. When the fence cannot be
// reached within settleTimeout, the call fails with ErrOutcomeUnknown.
// SQLite needs none of this: a commit's outcome is always known in-process.

// stampEpoch is the origin of the stamps' clock: 2020-01-01 UTC.
const stampEpoch = 1577836800000 // ms

// newStamp returns a write's stamp: milliseconds since stampEpoch in the
// high bits, so that the fence can be pruned by age, and 22 random bits,
// so that two writes of the same row never share one. It is never 0, the
// stamp of rows that no write of schema version 2 set.
func newStamp() int64 {
	ms := time.Now().UnixMilli() - stampEpoch
	return ms<<22 | int64(rand.Uint32()&(1<<22-1))
}

// stampTime is when a stamp was made, to the millisecond.
func stampTime(s int64) time.Time { return time.UnixMilli(s>>22 + stampEpoch) }

// stampBefore is the smallest stamp made at or after t.
func stampBefore(t time.Time) int64 { return (t.UnixMilli() - stampEpoch) << 22 }

// stampText is the stamp as a DELETE hands it to the fence trigger.
func stampText(s int64) string { return strconv.FormatInt(s, 10) }

// settleTimeout bounds how long a call waits to learn the outcome of its
// write, for example while the server restarts.
var settleTimeout = 30 * time.Second

// settleGrace is how long a write whose caller's context has ended may
// still take to learn its outcome.
const settleGrace = time.Second

const (
	// fenceRetention is how long the fence keeps a write's pairs. A write
	// older than half of it is not settled (ErrOutcomeUnknown).
	fenceRetention = 20 * time.Minute
	// pruneEvery is how often a repository prunes the fence.
	pruneEvery = time.Minute
)

// verdict is what settling found.
type verdict int

const (
	notLanded verdict = iota
	landed
)

// String is the verdict as the settle counter's outcome attribute names it.
func (v verdict) String() string {
	if v == landed {
		return "landed"
	}
	return "not_landed"
}

// ambiguous reports whether err, the result of a write, leaves its outcome
// unknown: the connection died, or the call's context ended, while the
// write may have been on its way.
func (r *Repository) ambiguous(ctx context.Context, err error) bool {
	return err != nil && r.ex.settles() && !isOutcome(err) && (r.d.connLost(err) || ctx.Err() != nil)
}

// settle tells whether the write of stamp, which touched ids (those it
// would change), landed; cause is the error the write got. It fails with
// ErrOutcomeUnknown when it cannot tell.
func (r *Repository) settle(ctx context.Context, op string, stamp int64, ids []string, cause error) (verdict, error) {
	if len(ids) == 0 {
		return notLanded, nil // nothing was sent that writes
	}
	if time.Since(stampTime(stamp)) > fenceRetention/2 {
		r.tel.Settled(ctx, op, "unknown", cause)
		return notLanded, fmt.Errorf("%w: %w (the write is older than the fence keeps)", ErrOutcomeUnknown, cause)
	}
	ctx, cancel := r.settleContext(ctx)
	defer cancel()
	delay := 5 * time.Millisecond
	for {
		v, err := r.fence(ctx, stamp, ids)
		if err == nil {
			r.tel.Settled(ctx, op, v.String(), cause)
			return v, nil
		}
		if ctx.Err() != nil || !(r.d.connLost(err) || r.d.retryable(err)) {
			r.tel.Settled(ctx, op, "unknown", cause)
			return notLanded, fmt.Errorf("%w: %w (checking it: %w)", ErrOutcomeUnknown, cause, err)
		}
		select { // the server may be restarting
		case <-ctx.Done():
		case <-time.After(delay):
		}
		delay = min(2*delay, 500*time.Millisecond)
	}
}

// settleContext is the context of a settle: the caller's values, and the
// caller's deadline when it has one within settleTimeout; when the
// caller's context has already ended (which may be why the write failed),
// settleGrace for one try, and settleTimeout/6 once Close has begun.
func (r *Repository) settleContext(ctx context.Context) (context.Context, context.CancelFunc) {
	timeout := settleTimeout
	if r.life.isClosed() {
		timeout = settleTimeout / 6
	}
	if ctx.Err() != nil {
		timeout = min(timeout, settleGrace)
	} else if dl, ok := ctx.Deadline(); ok {
		timeout = min(timeout, max(time.Until(dl), settleGrace))
	}
	return context.WithTimeout(context.WithoutCancel(ctx), timeout)
}

// fence inserts the pairs of stamp and ids into the write fence, marked as
// fencing the write off, in statements of their own. A duplicate key means
// that the pairs are there already: the write's own (it landed), or those
// of an earlier run of this check whose connection died after its insert
// committed (it did not land); the mark tells which. A write lands whole,
// so after one chunk went in, none of the others can be the write's.
func (r *Repository) fence(ctx context.Context, stamp int64, ids []string) (verdict, error) {
	for start := 0; start < len(ids); start += rowsPerStatement {
		chunk := ids[start:min(start+rowsPerStatement, len(ids))]
		args := make([]any, 0, 2*len(chunk))
		for _, id := range chunk {
			args = append(args, stamp, id)
		}
		_, err := r.ex.exec(ctx, r.fenceIDs(len(chunk)), args...)
		if err == nil {
			continue
		}
		if !r.d.duplicate(err) {
			return notLanded, err
		}
		var fenced int
		err = r.ex.read(ctx, false, func(c conn) error { return c.scalar(r.s.fenced, []any{stamp, chunk[0]}, &fenced) })
		switch {
		case err != nil:
			return notLanded, err
		case fenced == 0:
			return landed, nil
		}
	}
	return notLanded, nil
}

// settled runs a write of the messages ids() and settles it when its
// outcome is unknown. attempt runs the write once with the stamp it is
// given; ids is called after it, since a claim learns its IDs as it runs.
// A write that certainly did not land runs again, up to twice in all;
// settled returns landed when settling found that the write landed (the
// caller then reports success), and otherwise attempt's error.
func (r *Repository) settled(ctx context.Context, op string, ids func() []string, attempt func(stamp int64) error) (verdict, error) {
	var err error
	for try := 0; try < 2; try++ {
		stamp := newStamp()
		if err = attempt(stamp); !r.ambiguous(ctx, err) {
			r.maybePrune()
			return notLanded, err
		}
		v, serr := r.settle(ctx, op, stamp, ids(), err)
		if serr != nil || v == landed {
			return v, serr
		}
		if ctx.Err() != nil {
			break // the caller gave up: it did not land
		}
	}
	return notLanded, err
}

// one returns an ids function for a single message.
func one(id string) func() []string { return func() []string { return []string{id} } }

// maybePrune removes the fence's expired pairs, at most once per
// pruneEvery, in the background of a call that just wrote.
func (r *Repository) maybePrune() {
	if !r.ex.settles() {
		return
	}
	now := time.Now().UnixNano()
	last := r.prune.Load()
	if now-last < int64(pruneEvery) || !r.prune.CompareAndSwap(last, now) {
		return
	}
	go func() { _ = r.pruneFence(context.Background()) }()
}

// pruneFence deletes the fence's pairs older than fenceRetention.
func (r *Repository) pruneFence(ctx context.Context) (err error) {
	ctx, c, err := r.enter(ctx, "PruneFence", "", long)
	if err != nil {
		return err
	}
	defer func() { err = c.end(err) }()
	ctx, cancel := context.WithTimeout(ctx, pruneEvery)
	defer cancel()
	_, err = r.ex.exec(ctx, r.s.prune, stampBefore(time.Now().Add(-fenceRetention)))
	if err != nil && r.tel != nil && !errors.Is(err, context.Canceled) {
		r.tel.Log(ctx, slog.LevelWarn, "pruning the write fence failed", slog.Any("error", err))
	}
	return err
}
