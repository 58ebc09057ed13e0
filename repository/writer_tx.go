package repository

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	metastorage "schneider.vip/retryspool/storage/meta"
)

// The group writer's transaction: BEGIN IMMEDIATE with the requests' time
// to wait for the lock, COMMIT, ROLLBACK, and the connection as GORM sees
// it inside the transaction.

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

// txConn is the writer's connection inside its transaction, as GORM sees
// it: a transaction (so that a hook's nested db.Transaction becomes a
// savepoint) that only the writer ends.
type txConn struct{ *sql.Conn }

var errWriterTx = errors.New("the store commits or rolls back its own write transaction")

// Commit refuses: the writer commits.
func (txConn) Commit() error { return errWriterTx }

// Rollback refuses: the writer rolls back.
func (txConn) Rollback() error { return errWriterTx }
