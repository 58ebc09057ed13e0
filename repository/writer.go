package repository

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"gorm.io/gorm"
	metastorage "schneider.vip/retryspool/storage/meta"
)

// defaultMaxGroupCommit caps how many writes share one commit.
const defaultMaxGroupCommit = 256

// groupWriter owns the one write connection of a SQLite file. Writers hand
// it their work; it runs everything that is waiting in one transaction and
// one commit (group commit), each write under its own savepoint so that one
// failure, or one cancelled context, fails only its own caller.
//
// SQLite admits one writer at a time anyway. Funnelling our writes through
// one connection means they never meet SQLITE_BUSY among themselves, and
// sharing a commit means sharing its WAL write and, with synchronous=FULL,
// its fsync.
type groupWriter struct {
	db       *gorm.DB
	reqs     chan *writeReq
	maxBatch int
	stop     chan struct{}
	stopped  chan struct{}
	once     sync.Once
	// busyTimeout is the connection's busy timeout (0: unknown, left
	// alone); timeout is the one currently set on the connection.
	busyTimeout time.Duration
	timeout     time.Duration
	ckpt        *checkpointer // nil: SQLite checkpoints inside commits
}

const (
	reqPending int32 = iota
	reqTaken
	reqAbandoned
)

type writeReq struct {
	ctx      context.Context
	fn       func(tx *gorm.DB) error
	state    atomic.Int32
	err      error
	done     chan struct{}
	deadline time.Time // when the request has waited the busy timeout
}

func newGroupWriter(db *gorm.DB, maxBatch int, busyTimeout time.Duration) *groupWriter {
	if maxBatch <= 0 {
		maxBatch = defaultMaxGroupCommit
	}
	w := &groupWriter{
		db:       db,
		reqs:     make(chan *writeReq, maxBatch),
		maxBatch: maxBatch,
		stop:     make(chan struct{}),
		stopped:  make(chan struct{}),

		busyTimeout: busyTimeout,
		timeout:     busyTimeout,
	}
	go w.loop()
	return w
}

// do runs fn in a write transaction and returns its error, or the commit's.
// If ctx ends before the writer has taken the request, do returns ctx.Err()
// and fn never runs; once taken, do waits for the outcome, so a nil error
// always means committed and a non-nil one means nothing was written.
//
// A taken request runs to the end without ctx's cancellation: SQLite rolls
// back the whole transaction when a statement in it is interrupted, which
// would fail every other write of the batch.
//
// closing, when closed, makes do give up like a cancelled ctx, with
// ErrBackendClosed.
func (w *groupWriter) do(ctx context.Context, closing <-chan struct{}, fn func(tx *gorm.DB) error) error {
	req := &writeReq{ctx: ctx, fn: fn, done: make(chan struct{})}
	if w.busyTimeout > 0 {
		req.deadline = time.Now().Add(w.busyTimeout)
	}
	select {
	case w.reqs <- req:
	case <-ctx.Done():
		return ctx.Err()
	case <-closing:
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
	case <-closing:
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
			if req.state.CompareAndSwap(reqPending, reqTaken) {
				req.err = metastorage.ErrBackendClosed
				close(req.done)
			}
		default:
			return
		}
	}
}

func (w *groupWriter) run(batch []*writeReq) {
	// Take the write lock first: while BEGIN IMMEDIATE waits for another
	// process, callers may still give up and withdraw their requests.
	tx := w.begin(&batch)
	if tx == nil {
		return
	}
	live := batch[:0]
	for _, req := range batch {
		if !req.state.CompareAndSwap(reqPending, reqTaken) {
			continue // the caller gave up and already returned
		}
		if err := req.ctx.Err(); err != nil {
			req.err = err
			close(req.done)
			continue
		}
		if tx.Error != nil {
			req.err = tx.Error
			close(req.done)
			continue
		}
		live = append(live, req)
	}
	if tx.Error != nil {
		return
	}
	if len(live) == 0 {
		tx.Rollback()
		return
	}
	defer func() {
		for _, req := range live {
			close(req.done)
		}
	}()

	if len(live) == 1 {
		// Alone, the transaction itself is the savepoint.
		req := live[0]
		if req.err = req.fn(tx.WithContext(context.WithoutCancel(req.ctx))); req.err != nil {
			tx.Rollback()
			return
		}
		if req.err = tx.Commit().Error; req.err == nil {
			w.ckpt.kick()
		}
		return
	}

	committed := 0
	for i, req := range live {
		if _, err := execW(tx, "SAVEPOINT gc"); err != nil {
			req.err = err
			continue
		}
		if req.err = req.fn(tx.WithContext(context.WithoutCancel(req.ctx))); req.err == nil {
			committed++
		} else if _, err := execW(tx, "ROLLBACK TO gc"); err != nil {
			// The transaction is unusable: nothing of it may commit.
			tx.Rollback()
			for _, r := range live[:i+1] {
				if r.err == nil {
					r.err = err
				}
			}
			for _, r := range live[i+1:] {
				r.err = err
			}
			return
		}
		if _, err := execW(tx, "RELEASE gc"); err != nil && req.err == nil {
			req.err = err
		}
	}
	if committed == 0 {
		tx.Rollback()
		return
	}
	if err := tx.Commit().Error; err != nil {
		for _, req := range live {
			if req.err == nil {
				req.err = err
			}
		}
		return
	}
	w.ckpt.kick()
}

// begin starts the batch's transaction. Each request may wait for the lock
// for the busy timeout in all, counted from when it was made: BEGIN waits
// only as long as the batch's oldest pending request may still wait, and
// when it gives up, the requests whose time is up fail with ErrBusy while
// the others try again. It returns nil when no request is left (all
// answered); otherwise a transaction, or one carrying the error that every
// request of the batch is to get.
func (w *groupWriter) begin(batch *[]*writeReq) *gorm.DB {
	for {
		w.setTimeout(*batch)
		tx := w.db.Begin()
		if tx.Error == nil || w.busyTimeout <= 0 || !errors.Is(translate(tx.Error), ErrBusy) {
			return tx
		}
		now := time.Now()
		keep := (*batch)[:0]
		for _, req := range *batch {
			switch {
			case req.state.Load() != reqPending:
				// given up: drop it
			case !now.Before(req.deadline.Add(-time.Millisecond)):
				if req.state.CompareAndSwap(reqPending, reqTaken) {
					req.err = tx.Error
					close(req.done)
				}
			default:
				keep = append(keep, req)
			}
		}
		*batch = keep
		if len(keep) == 0 {
			return nil
		}
	}
}

// setTimeout sets the connection's busy timeout to what the batch's oldest
// pending request has left of its own, when that is notably less than the
// configured one.
func (w *groupWriter) setTimeout(batch []*writeReq) {
	if w.busyTimeout <= 0 {
		return
	}
	want := w.busyTimeout
	now := time.Now()
	for _, req := range batch {
		if req.state.Load() == reqPending {
			want = min(want, max(req.deadline.Sub(now), time.Millisecond))
		}
	}
	if want > w.busyTimeout-10*time.Millisecond {
		want = w.busyTimeout // close enough: spare the statement
	}
	if want == w.timeout {
		return
	}
	if err := w.db.Exec(fmt.Sprintf("PRAGMA busy_timeout = %d", want.Milliseconds())).Error; err == nil {
		w.timeout = want
	}
}

// close stops the writer after the batch it is running and fails what is
// still queued with ErrBackendClosed. It does not close the connection.
func (w *groupWriter) close() error {
	w.once.Do(func() { close(w.stop) })
	<-w.stopped
	w.ckpt.close()
	return nil
}

// checkpointInterval spaces the background checkpoints: each one copies
// what was committed since the last, and ends with an fsync of the
// database file, so running them back to back would buy little.
const checkpointInterval = 10 * time.Millisecond

// checkpointer copies committed WAL frames back into the database file on
// a connection of its own, after commits, so that the writer does not
// stop to do it. PASSIVE never waits for readers or the writer; whatever
// it could not copy, the next one will. Errors are left alone: the
// writer's own automatic checkpoint still bounds the WAL.
type checkpointer struct {
	db      *gorm.DB
	kicks   chan struct{}
	stop    chan struct{}
	stopped chan struct{}
	once    sync.Once
}

func newCheckpointer(db *gorm.DB) *checkpointer {
	c := &checkpointer{
		db:      db,
		kicks:   make(chan struct{}, 1),
		stop:    make(chan struct{}),
		stopped: make(chan struct{}),
	}
	go c.loop()
	return c
}

// kick tells the checkpointer that there is something to copy.
func (c *checkpointer) kick() {
	if c == nil {
		return
	}
	select {
	case c.kicks <- struct{}{}:
	default:
	}
}

func (c *checkpointer) loop() {
	defer close(c.stopped)
	pause := time.NewTimer(0)
	defer pause.Stop()
	for {
		select {
		case <-c.kicks:
		case <-c.stop:
			return
		}
		c.db.Exec("PRAGMA wal_checkpoint(PASSIVE)")
		pause.Reset(checkpointInterval)
		select {
		case <-pause.C:
		case <-c.stop:
			return
		}
	}
}

func (c *checkpointer) close() {
	if c == nil {
		return
	}
	c.once.Do(func() { close(c.stop) })
	<-c.stopped
}
