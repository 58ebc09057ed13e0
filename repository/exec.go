package repository

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"

	metastorage "schneider.vip/retryspool/storage/meta"

	"schneider.vip/retryspool/storage/meta/sqlite/internal/telemetry"
)

// An executor is how a repository runs statements: its one write path,
// chosen once, when the repository is built (New) or viewed (WithTx).
// Methods of the repository never ask which path they are on.
//
//   - groupExec: SQLite. Writes go to the group writer, which takes the
//     database's write lock itself (BEGIN IMMEDIATE) and lets concurrent
//     writes share one transaction and commit (writer.go); reads go to the
//     pool. Without a writer (a read-only store), writes fail with
//     ErrReadOnly.
//   - serverExec: PostgreSQL and MySQL/MariaDB. A write is a transaction of
//     its own, run again when the server aborts it for a deadlock; one
//     statement runs alone, without a transaction around it.
//   - txExec: a view made by WithTx. Everything runs in the caller's
//     transaction, each write under a savepoint.
type executor interface {
	// read runs fn on the read side. With snapshot, fn's statements see
	// one consistent snapshot of the database.
	read(ctx context.Context, snapshot bool, fn func(c conn) error) error
	// write runs fn in one write transaction: all that fn writes commits,
	// or none of it.
	write(ctx context.Context, fn func(c conn) error) error
	// exec runs one statement that writes (atomic on its own, triggers
	// included) and returns the number of rows it changed.
	exec(ctx context.Context, query string, args ...any) (int64, error)
	// writesEndOnClose reports whether a write of this path returns by
	// itself once Close is called. When it does not, Close cancels the
	// write's context (see enter).
	writesEndOnClose() bool
	// settles reports whether a write whose connection died is settled
	// through the write fence (settle.go): on the server engines, outside
	// a caller's transaction, whose commit is the caller's.
	settles() bool
	// close stops what the executor runs; the repository's Close calls
	// it once, after the last call in flight has returned.
	close() error
}

// callKind tells admission how long a call may keep Close waiting.
type callKind uint8

const (
	// quick calls return promptly whatever the database does: reads of
	// one row or one counter.
	quick callKind = iota
	// long calls may wait for locks or scan at length: Close cancels
	// their context.
	long
	// write is a write of one record: quick where the executor's writes
	// end on Close by themselves, long elsewhere.
	write
)

// lifecycle is shared by a repository and its WithTx views.
type lifecycle struct {
	mu      sync.RWMutex // held for reading by every call in flight
	closed  atomic.Bool
	ctx     context.Context // cancelled by Close
	cancel  context.CancelFunc
	closers []func() error // run by Close, in order
	once    sync.Once
	err     error
}

func newLifecycle() *lifecycle {
	ctx, cancel := context.WithCancel(context.Background())
	return &lifecycle{ctx: ctx, cancel: cancel}
}

func (l *lifecycle) isClosed() bool { return l.closed.Load() }

func (l *lifecycle) close() error {
	l.once.Do(func() {
		l.closed.Store(true)
		l.cancel()
		l.mu.Lock() // wait for the calls in flight
		defer l.mu.Unlock()
		var errs []error
		for _, c := range l.closers {
			if err := c(); err != nil {
				errs = append(errs, err)
			}
		}
		l.err = errors.Join(errs...)
	})
	return l.err
}

// call is one admitted call of the public API, between enter and end.
type call struct {
	life   *lifecycle
	stop   func() bool        // unhooks cancel from Close; nil for quick calls
	cancel context.CancelFunc // nil for quick calls
	tel    telemetry.Call
}

// hookKey marks the context that transition hooks are given.
type hookKey struct{}

// enter admits one call of operation op on message id: it fails with
// ErrBackendClosed after Close, with ErrReentrantCall for a write made
// from a transition hook's context, and with the context's error when
// that is done. Close waits for every admitted call to end; the context of
// a call that may block (see callKind) is also cancelled by Close, so that
// it returns instead of holding Close up.
func (r *Repository) enter(ctx context.Context, op, id string, kind callKind) (context.Context, call, error) {
	l := r.life
	if ctx == nil {
		ctx = context.Background()
	}
	if l.closed.Load() {
		return nil, call{}, metastorage.ErrBackendClosed
	}
	if kind != quick && !r.view && ctx.Value(hookKey{}) == l {
		return nil, call{}, ErrReentrantCall
	}
	l.mu.RLock()
	if l.closed.Load() {
		l.mu.RUnlock()
		return nil, call{}, metastorage.ErrBackendClosed
	}
	if err := ctx.Err(); err != nil {
		l.mu.RUnlock()
		return nil, call{}, err
	}
	c := call{life: l}
	if kind == long || kind == write && !r.ex.writesEndOnClose() {
		ctx, c.cancel = context.WithCancel(ctx)
		c.stop = context.AfterFunc(l.ctx, c.cancel)
	}
	ctx, c.tel = r.tel.Start(ctx, op, id)
	return ctx, c, nil
}

// end ends the call with its final error, which it returns.
func (c call) end(err error) error {
	if c.stop != nil {
		c.stop()
		c.cancel()
	}
	c.life.mu.RUnlock()
	c.tel.End(err)
	return err
}
