package repository

import (
	"context"
	"database/sql"
	"fmt"

	"gorm.io/gorm"

	"schneider.vip/retryspool/storage/meta/sqlite/internal/telemetry"
)

// readPool runs reads on a connection pool, and snapshots in a transaction
// of the pool with the engine's read options.
type readPool struct {
	pool   *sql.DB
	base   *gorm.DB
	readTx *sql.TxOptions
}

func (p readPool) read(ctx context.Context, snapshot bool, fn func(c conn) error) error {
	if !snapshot {
		return fn(conn{ctx: ctx, pool: p.pool, base: p.base})
	}
	return p.inTx(ctx, p.readTx, fn)
}

// inTx runs fn in a transaction of the pool with opts, and commits it when
// fn returns nil.
func (p readPool) inTx(ctx context.Context, opts *sql.TxOptions, fn func(c conn) error) error {
	tx, err := p.pool.BeginTx(ctx, opts)
	if err != nil {
		return err
	}
	defer tx.Rollback() //nolint:errcheck // after Commit, a no-op
	if err := fn(conn{ctx: ctx, pool: tx, base: p.base}); err != nil {
		return err
	}
	return tx.Commit()
}

// serverExec runs on PostgreSQL and MySQL/MariaDB.
type serverExec struct {
	readPool
	writeTx *sql.TxOptions
	d       dialect
	tel     *telemetry.T
}

// maxTxAttempts bounds the runs of a transaction that the server aborts
// for a deadlock or serialization failure.
const maxTxAttempts = 5

// retry runs attempt again, up to maxTxAttempts times in all, while the
// server aborts it for a deadlock or serialization failure and ctx lasts.
func (e *serverExec) retry(ctx context.Context, op string, attempt func() error) error {
	var err error
	for i := 1; i <= maxTxAttempts; i++ {
		if err = attempt(); !e.d.retryable(err) || ctx.Err() != nil {
			return err
		}
		e.tel.Retry(op, i, err)
	}
	return err
}

func (e *serverExec) write(ctx context.Context, fn func(c conn) error) error {
	return e.retry(ctx, "transaction", func() error { return e.inTx(ctx, e.writeTx, fn) })
}

func (e *serverExec) exec(ctx context.Context, query string, args ...any) (int64, error) {
	var n int64
	err := e.retry(ctx, "statement", func() error {
		var err error
		n, err = conn{ctx: ctx, pool: e.pool}.exec(query, args...)
		return err
	})
	return n, err
}

func (e *serverExec) writesEndOnClose() bool { return false }
func (e *serverExec) settles() bool          { return true }
func (e *serverExec) close() error           { return nil }

// txExec runs everything in a caller's transaction (WithTx).
type txExec struct {
	tx *gorm.DB
}

func (e txExec) read(ctx context.Context, _ bool, fn func(c conn) error) error {
	return fn(conn{ctx: ctx, pool: e.tx.Statement.ConnPool, base: e.tx})
}

// write runs fn under a savepoint of the caller's transaction, so that a
// failed call leaves the transaction usable.
func (e txExec) write(ctx context.Context, fn func(c conn) error) error {
	return e.tx.WithContext(ctx).Transaction(func(sp *gorm.DB) error {
		return fn(conn{ctx: ctx, pool: sp.Statement.ConnPool, base: e.tx})
	})
}

func (e txExec) exec(ctx context.Context, query string, args ...any) (int64, error) {
	var n int64
	err := e.write(ctx, func(c conn) error {
		var err error
		n, err = c.exec(query, args...)
		return err
	})
	return n, err
}

func (e txExec) writesEndOnClose() bool { return false }
func (e txExec) settles() bool          { return false }
func (e txExec) close() error           { return nil }

// groupExec runs on SQLite: writes through the group writer, reads on the
// pool. A nil writer makes a read-only store.
type groupExec struct {
	readPool
	w *groupWriter
}

func (e *groupExec) write(ctx context.Context, fn func(c conn) error) error {
	if e.w == nil {
		return fmt.Errorf("%w: a write needs a store opened for writing", ErrReadOnly)
	}
	return e.w.do(ctx, fn)
}

func (e *groupExec) exec(ctx context.Context, query string, args ...any) (int64, error) {
	var n int64
	err := e.write(ctx, func(c conn) error {
		var err error
		n, err = c.exec(query, args...)
		return err
	})
	return n, err
}

func (e *groupExec) writesEndOnClose() bool { return true }
func (e *groupExec) settles() bool          { return false }

func (e *groupExec) close() error {
	if e.w == nil {
		return nil
	}
	return e.w.close()
}
