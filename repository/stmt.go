package repository

import (
	"context"
	"database/sql"
	"strconv"
	"strings"

	"gorm.io/gorm"
)

// The hot statements (one row by ID, the iterator's pages, the counters)
// skip GORM's statement building and go to database/sql directly, in the
// engine's own placeholder syntax. On a SQLite file opened by the factory,
// the library's driver keeps each connection's statements compiled by SQL
// text, so the same text is as good as a prepared statement.

// fastStmts are the hot statements of a table, in the engine's placeholder
// syntax.
type fastStmts struct {
	upsert, update, cas, state, stateLock, exists, get, del, count, iterFirst, iterNext string
}

func buildFast(d dialect, q queries) fastStmts {
	return fastStmts{
		upsert:    d.rebind(q.upsert),
		update:    d.rebind(q.update),
		cas:       d.rebind(q.cas),
		state:     d.rebind(q.state),
		stateLock: d.rebind(q.stateLock),
		exists:    d.rebind(q.exists),
		get:       d.rebind(q.get),
		del:       d.rebind(q.del),
		count:     d.rebind(q.count),
		iterFirst: d.rebind(q.iterFirst),
		iterNext:  d.rebind(q.iterNext),
	}
}

// rebind turns ? placeholders into the engine's syntax.
func (d dialect) rebind(s string) string {
	if !d.dollarVars {
		return s
	}
	var b strings.Builder
	n := 0
	for _, c := range s {
		if c == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(c)
	}
	return b.String()
}

// execW runs a hot statement in a write transaction.
func execW(tx *gorm.DB, query string, args ...any) (sql.Result, error) {
	return tx.Statement.ConnPool.ExecContext(tx.Statement.Context, query, args...)
}

// queryW runs a hot query in a write transaction.
func queryW(tx *gorm.DB, query string, args ...any) (*sql.Rows, error) {
	return tx.Statement.ConnPool.QueryContext(tx.Statement.Context, query, args...)
}

// queryR runs a hot query on the read side: the caller's transaction on a
// WithTx view, the read pool otherwise.
func (r *Repository) queryR(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if r.tx != nil {
		return r.tx.Statement.ConnPool.QueryContext(ctx, query, args...)
	}
	return r.db.Statement.ConnPool.QueryContext(ctx, query, args...)
}
