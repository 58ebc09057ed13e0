package repository

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"gorm.io/gorm"
	metastorage "schneider.vip/retryspool/storage/meta"

	"schneider.vip/retryspool/storage/meta/sqlite/internal/telemetry"
)

// DefaultMaxGroupCommit caps how many writes share one commit unless the
// factory is told otherwise (WithMaxGroupCommit).
const DefaultMaxGroupCommit = 256

// groupWriter runs every write of a SQLite database. Writers hand it their
// work; it takes the database's write lock itself (BEGIN IMMEDIATE, so a
// transaction never fails later for want of it), runs everything that is
// waiting in that one transaction, each write under its own savepoint so
// that one failure, or one cancelled context, fails only its own caller,
// and commits once (group commit).
//
// SQLite admits one writer at a time anyway. Funnelling the store's writes
// through one goroutine means they never meet SQLITE_BUSY among
// themselves, and sharing a commit means sharing its WAL write and, with
// synchronous=FULL, its fsync.
//
// The writer owns its connection when the store opened the file itself
// (own), and otherwise borrows one from the application's pool for each
// batch and gives it back after COMMIT or ROLLBACK.
type groupWriter struct {
	own  *sql.Conn // the write connection, for the writer's life; nil: borrow
	pool *sql.DB   // where connections are borrowed from when own is nil
	base *gorm.DB

	reqs     chan *writeReq
	maxBatch int
	// wait is how long a write may wait for another connection's or
	// process's write lock in all, counted from when it was made; 0
	// means not at all.
	wait time.Duration

	ctx     context.Context // cancelled when the store closes: every wait ends
	stop    chan struct{}   // closed by close: the loop ends
	stopped chan struct{}   // closed by the loop when it has ended
	once    sync.Once

	ckpt *checkpointer // nil: SQLite checkpoints inside commits
	tel  *telemetry.T
}

// The states of a writeReq.
const (
	reqPending   int32 = iota // queued; neither side has claimed it
	reqTaken                  // the writer will run it and answer it
	reqAbandoned              // the caller gave up and has returned
)

// writeReq is one write waiting for the group writer.
//
//   - state only moves forward, by CompareAndSwap from reqPending: to
//     reqTaken by the writer, or to reqAbandoned by the caller who gave up
//     (its context ended, or the store closed). Exactly one side wins: a
//     request is answered at most once, and an abandoned one never runs.
//   - fn runs only for a taken request, on the writer's goroutine, inside
//     the batch's transaction: under a savepoint of its own, or as the
//     whole transaction when it is alone.
//   - done is closed exactly once, by the writer, for a taken request and
//     after err is set; the caller reads err only after done is closed.
//     done of an abandoned request is never closed.
//   - Once taken, the caller waits for done whatever its context says:
//     nil means committed, non-nil means nothing fn wrote was kept.
type writeReq struct {
	ctx      context.Context
	fn       func(c conn) error
	deadline time.Time // when the request has waited w.wait for the lock
	state    atomic.Int32
	err      error
	done     chan struct{}
}

// answer sets the outcome of a taken request and wakes its caller.
func (req *writeReq) answer(err error) {
	req.err = err
	close(req.done)
}

// take claims a pending request for the writer.
func (req *writeReq) take() bool { return req.state.CompareAndSwap(reqPending, reqTaken) }

// newGroupWriter returns a writer; start runs it. ctx ends every wait of
// the writer when cancelled.
func newGroupWriter(ctx context.Context, own *sql.Conn, pool *sql.DB, base *gorm.DB, maxBatch int, wait time.Duration, tel *telemetry.T) *groupWriter {
	if maxBatch <= 0 {
		maxBatch = DefaultMaxGroupCommit
	}
	return &groupWriter{
		own: own, pool: pool, base: base,
		reqs:     make(chan *writeReq, maxBatch),
		maxBatch: maxBatch,
		wait:     wait,
		ctx:      ctx,
		stop:     make(chan struct{}),
		stopped:  make(chan struct{}),
		tel:      tel,
	}
}

func (w *groupWriter) start() { go w.loop() }

// do runs fn in a write transaction and returns its error, or the
// commit's. If ctx ends, or the store closes, before the writer has taken
// the request, do returns at once (ctx.Err() or ErrBackendClosed) and fn
// never runs; once taken, do waits for the outcome (see writeReq).
//
// A taken request runs to the end without ctx's cancellation: SQLite rolls
// back the whole transaction when a statement in it is interrupted, which
// would fail every other write of the batch.
func (w *groupWriter) do(ctx context.Context, fn func(c conn) error) error {
	req := &writeReq{ctx: ctx, fn: fn, done: make(chan struct{})}
	if w.wait > 0 {
		req.deadline = time.Now().Add(w.wait)
	}
	select {
	case w.reqs <- req:
	case <-ctx.Done():
		return ctx.Err()
	case <-w.ctx.Done():
		return metastorage.ErrBackendClosed
	case <-w.stop:
		return metastorage.ErrBackendClosed
	}
	var gaveUp error
	select {
	case <-req.done:
		return req.err
	case <-ctx.Done():
		gaveUp = ctx.Err()
	case <-w.ctx.Done():
		gaveUp = metastorage.ErrBackendClosed
	}
	if req.state.CompareAndSwap(reqPending, reqAbandoned) {
		return gaveUp
	}
	<-req.done
	return req.err
}

func (w *groupWriter) loop() {
	defer close(w.stopped)
	batch := make([]*writeReq, 0, w.maxBatch)
	prev := 0 // size of the last batch
	for {
		select {
		case req := <-w.reqs:
			batch = append(batch[:0], req)
		case <-w.stop:
			w.failQueued()
			return
		}
		// Gather what is queued. Under load, the callers of the last
		// batch are still on their way back with their next write: when
		// fewer than half as many are queued, yield a few times so that
		// they join this commit instead of the next (one commit per
		// handful of writes would cost as much as one per write).
		for spin := 0; ; spin++ {
		gather:
			for len(batch) < w.maxBatch {
				select {
				case req := <-w.reqs:
					batch = append(batch, req)
				default:
					break gather
				}
			}
			if spin >= 4 || len(batch) >= prev/2 {
				break
			}
			runtime.Gosched()
		}
		prev = len(batch)
		w.run(batch)
		clear(batch)
	}
}

// failQueued answers the requests still queued when the writer stops.
func (w *groupWriter) failQueued() {
	for {
		select {
		case req := <-w.reqs:
			if req.take() {
				req.answer(metastorage.ErrBackendClosed)
			}
		default:
			return
		}
	}
}

// failPending answers every request of batch that nobody has claimed yet.
func failPending(batch []*writeReq, err error) {
	for _, req := range batch {
		if req.take() {
			req.answer(err)
		}
	}
}

// run runs one batch in one transaction.
func (w *groupWriter) run(batch []*writeReq) {
	c := w.own
	if c == nil {
		var err error
		if c, err = w.pool.Conn(w.ctx); err != nil {
			failPending(batch, w.closedOr(err))
			return
		}
		defer c.Close()
	}
	start := time.Now()
	live := w.begin(c, batch)
	if len(live) == 0 {
		return
	}
	err := w.runAll(c, live)
	for _, req := range live {
		if req.err == nil {
			req.err = err
		}
		close(req.done)
	}
	w.tel.GroupCommit(len(live), time.Since(start), err)
	if err == nil {
		w.ckpt.kick()
	}
}

// runAll runs the taken requests of a batch and commits; it sets the error
// of each request that failed on its own, and returns the error that all
// the others are to get (nil: committed).
func (w *groupWriter) runAll(c *sql.Conn, live []*writeReq) error {
	tc := txConn{c}
	if len(live) == 1 {
		// Alone, the transaction itself is the savepoint.
		req := live[0]
		if req.err = w.call(req, tc); req.err != nil {
			rollback(c)
			return nil
		}
		return w.commit(c)
	}
	committed := 0
	for _, req := range live {
		if _, err := c.ExecContext(context.Background(), "SAVEPOINT gc"); err != nil {
			req.err = err
			continue
		}
		if req.err = w.call(req, tc); req.err == nil {
			committed++
		} else if _, err := c.ExecContext(context.Background(), "ROLLBACK TO gc"); err != nil {
			// The transaction is unusable: nothing of it may commit.
			rollback(c)
			return fmt.Errorf("roll back a failed write of the group: %w", err)
		}
		if _, err := c.ExecContext(context.Background(), "RELEASE gc"); err != nil && req.err == nil {
			req.err = err
		}
	}
	if committed == 0 {
		rollback(c)
		return nil
	}
	return w.commit(c)
}

// call runs one request's function. A panic in it (a transition hook's,
// say) becomes the request's error: the process and the batch's other
// writes go on.
func (w *groupWriter) call(req *writeReq, tc txConn) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("write panicked: %v", p)
		}
	}()
	return req.fn(conn{ctx: context.WithoutCancel(req.ctx), pool: tc, base: w.base})
}

// commit commits the transaction. In rollback-journal mode COMMIT waits
// for readers to finish, and a driver whose busy timeout is shorter than
// the store's wait gives up early, leaving the transaction open: commit
// then tries again for up to w.wait before it rolls back.
func (w *groupWriter) commit(c *sql.Conn) error {
	deadline := time.Now().Add(w.wait)
	for backoff := time.Millisecond; ; backoff = min(2*backoff, 50*time.Millisecond) {
		_, err := c.ExecContext(context.Background(), "COMMIT")
		if err == nil {
			return nil
		}
		if !sqliteBusy(err) || !time.Now().Add(backoff).Before(deadline) {
			rollback(c)
			return err
		}
		select {
		case <-time.After(backoff):
		case <-w.ctx.Done():
			rollback(c)
			return fmt.Errorf("%w: %w", metastorage.ErrBackendClosed, err)
		}
	}
}

// rollback ends the transaction; if SQLite has already ended it, the
// error says so and changes nothing.
func rollback(c *sql.Conn) {
	_, _ = c.ExecContext(context.Background(), "ROLLBACK")
}

// begin takes the write lock (BEGIN IMMEDIATE) for a batch. Each request
// may wait for the lock w.wait in all, counted from when it was made: BEGIN
// waits only as long as the batch's oldest pending request may still wait,
// and when it gives up, the requests whose time is up fail with ErrBusy
// while the others try again. It then takes the requests still pending and
// returns them, the transaction open; with none left, it answers the rest
// and leaves no transaction open.
func (w *groupWriter) begin(c *sql.Conn, batch []*writeReq) []*writeReq {
	for backoff := time.Millisecond; ; backoff = min(2*backoff, 50*time.Millisecond) {
		batch = pending(batch)
		if len(batch) == 0 {
			return nil
		}
		ctx, cancel := w.lockWait(batch)
		t0 := time.Now()
		_, err := c.ExecContext(ctx, "BEGIN IMMEDIATE")
		cancel()
		if err == nil {
			break
		}
		switch {
		case w.ctx.Err() != nil:
			failPending(batch, fmt.Errorf("%w: %w", metastorage.ErrBackendClosed, err))
			return nil
		case !sqliteBusy(err) && ctx.Err() == nil:
			failPending(batch, err)
			return nil
		}
		now := time.Now()
		waited := false
		for _, req := range batch {
			if w.wait <= 0 || !now.Before(req.deadline) {
				if req.take() {
					req.answer(fmt.Errorf("%w: %w", ErrBusy, err))
				}
			} else {
				waited = true
			}
		}
		if !waited {
			return nil
		}
		w.tel.BusyWait("begin", time.Since(t0), err)
		// The driver gave up before the requests' time was up (a busy
		// timeout shorter than the store's): wait a little, then try
		// again.
		select {
		case <-time.After(backoff):
		case <-w.ctx.Done():
		}
	}
	live := batch[:0]
	for _, req := range batch {
		if !req.take() {
			continue // the caller gave up and already returned
		}
		if err := req.ctx.Err(); err != nil {
			req.answer(err)
			continue
		}
		live = append(live, req)
	}
	if len(live) == 0 {
		rollback(c)
	}
	return live
}

// pending keeps the requests of batch that nobody has claimed.
func pending(batch []*writeReq) []*writeReq {
	keep := batch[:0]
	for _, req := range batch {
		if req.state.Load() == reqPending {
			keep = append(keep, req)
		}
	}
	return keep
}

// lockWait is the context of one BEGIN: it ends when the store closes and,
// when writes wait a bounded time, at the oldest pending request's
// deadline.
func (w *groupWriter) lockWait(batch []*writeReq) (context.Context, context.CancelFunc) {
	if w.wait <= 0 {
		return context.WithCancel(w.ctx)
	}
	oldest := batch[0].deadline
	for _, req := range batch[1:] {
		if req.deadline.Before(oldest) {
			oldest = req.deadline
		}
	}
	return context.WithDeadline(w.ctx, oldest)
}

func (w *groupWriter) closedOr(err error) error {
	if w.ctx.Err() != nil {
		return fmt.Errorf("%w: %w", metastorage.ErrBackendClosed, err)
	}
	return err
}

// close stops the writer after the batch it is running and fails what is
// still queued with ErrBackendClosed; it gives back the connection it
// owns.
func (w *groupWriter) close() error {
	w.once.Do(func() { close(w.stop) })
	<-w.stopped
	w.ckpt.close()
	if w.own != nil {
		return w.own.Close()
	}
	return nil
}

// txConn is the writer's connection inside its transaction, as GORM sees
// it: a transaction (so that a hook's nested db.Transaction becomes a
// savepoint) that only the writer ends.
type txConn struct{ *sql.Conn }

var errWriterTx = errors.New("the store commits or rolls back its own write transaction")

// Commit refuses: the writer commits.
func (txConn) Commit() error { return errWriterTx }

// Rollback refuses: the writer rolls back.
func (txConn) Rollback() error { return errWriterTx }
