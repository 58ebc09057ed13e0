package repository

import (
	"context"
	"database/sql"
	"strings"

	"gorm.io/gorm"
)

// Every statement of the repository is SQL text in the engine's own
// placeholder syntax, built once per table (stmts) or per call where its
// shape varies (an IN list, a sort column), and run through a conn: one way
// to run a statement. GORM builds the schema and the text's quoting and
// placeholders (see dialect.bind); the statements themselves skip GORM's
// statement building, which would cost more than the statement on the hot
// paths. On a SQLite file the library's driver keeps each connection's
// statements compiled by text, so the same text is as good as a prepared
// statement.

// conn runs the statements of one call on a pool, a connection or a
// transaction.
type conn struct {
	ctx  context.Context
	pool gorm.ConnPool
	base *gorm.DB // for gorm(); any *gorm.DB of the repository's database
}

// exec runs a statement that writes and returns how many rows it changed.
func (c conn) exec(query string, args ...any) (int64, error) {
	res, err := c.pool.ExecContext(c.ctx, query, args...)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// query runs a statement that reads.
func (c conn) query(query string, args ...any) (*sql.Rows, error) {
	return c.pool.QueryContext(c.ctx, query, args...)
}

// scalar scans the one row of a query into dest; no row gives
// sql.ErrNoRows.
func (c conn) scalar(query string, args []any, dest ...any) error {
	rows, err := c.query(query, args...)
	if err != nil {
		return err
	}
	return scanOne(rows, dest...)
}

// gorm returns a GORM handle on the same pool, connection or transaction,
// for what GORM does here beyond text (hooks' Transition.Tx, migrations).
// Inside a transaction of the store, GORM sees a transaction: a hook's
// nested db.Transaction becomes a savepoint.
func (c conn) gorm() *gorm.DB {
	db := c.base.Session(&gorm.Session{NewDB: true, SkipDefaultTransaction: true, Context: c.ctx})
	db.Statement.ConnPool = c.pool
	return db
}

// scanOne scans the first row into dest and closes rows; no row gives
// sql.ErrNoRows.
func scanOne(rows *sql.Rows, dest ...any) error {
	defer rows.Close()
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return err
		}
		return sql.ErrNoRows
	}
	if err := rows.Scan(dest...); err != nil {
		return err
	}
	return rows.Close()
}

// stmts are the fixed statements of one table, in the engine's syntax.
type stmts struct {
	upsert, update, cas, state, stateLock, exists, get, del string
	count, counts, sinceCount                               string
	iterFirst, iterNext                                     string
	claimIDs, claimDueIDs, due, dueCount                    string
	first, last                                             string // ends of a state, for Stats
	upsertHead, upsertTail                                  string // of a multi-row upsert, unbound
	prune, fenced                                           string // of the write fence
}

func buildStmts(d dialect, t tables) stmts {
	m, c := d.ident(t.messages), d.ident(t.counts)
	sets := make([]string, 0, len(columns)-1)
	for _, col := range columns[1:] {
		sets = append(sets, col+" = ?")
	}
	one := "(" + placeholders(len(columns)) + ")"
	// The due queries name state 2 (deferred) literally: SQLite uses a
	// partial index only when the query's WHERE implies the index's.
	due := "state = 2 AND next_retry <= ? ORDER BY next_retry, id LIMIT ?"
	s := stmts{
		upsert:      "INSERT INTO " + m + " (" + columnList + ") VALUES " + one + " " + d.upsertClause(),
		update:      "UPDATE " + m + " SET " + strings.Join(sets, ", ") + " WHERE id = ?",
		cas:         "UPDATE " + m + " SET state = ?, updated = ?, stamp = ? WHERE id = ? AND state = ?",
		state:       "SELECT state FROM " + m + " WHERE id = ?",
		stateLock:   "SELECT state FROM " + m + " WHERE id = ?" + d.forUpdate,
		exists:      "SELECT COUNT(*) FROM " + m + " WHERE id = ?",
		get:         "SELECT " + columnList + " FROM " + m + " WHERE id = ?",
		del:         "DELETE FROM " + m + " WHERE id = ? AND " + d.deleteStamp,
		count:       "SELECT COALESCE(SUM(n), 0) FROM " + c + " WHERE state = ?",
		counts:      "SELECT state, COALESCE(SUM(n), 0) FROM " + c + " GROUP BY state",
		sinceCount:  "SELECT COUNT(*) FROM " + m + " WHERE state = ? AND created >= ?",
		iterFirst:   "SELECT " + columnList + " FROM " + m + " WHERE state = ? ORDER BY created, id LIMIT ?",
		iterNext:    "SELECT " + columnList + " FROM " + m + " WHERE state = ? AND created >= ? AND (created > ? OR id > ?) ORDER BY created, id LIMIT ?",
		claimIDs:    "SELECT id FROM " + m + " WHERE state = ? ORDER BY created, id LIMIT ?" + d.skipLocked,
		claimDueIDs: "SELECT id FROM " + m + " WHERE " + due + d.skipLocked,
		due:         "SELECT " + columnList + " FROM " + m + " WHERE " + due,
		dueCount:    "SELECT COUNT(*) FROM " + m + " WHERE state = 2 AND next_retry <= ?",
		first:       "SELECT id, created FROM " + m + " WHERE state = ? ORDER BY created, id LIMIT 1",
		last:        "SELECT id, created FROM " + m + " WHERE state = ? ORDER BY created DESC, id DESC LIMIT 1",
		prune:       "DELETE FROM " + d.ident(t.writes) + " WHERE stamp < ?",
		fenced:      "SELECT fenced FROM " + d.ident(t.writes) + " WHERE stamp = ? AND id = ?",
	}
	for _, p := range []*string{
		&s.upsert, &s.update, &s.cas, &s.state, &s.stateLock, &s.exists, &s.get, &s.del,
		&s.count, &s.counts, &s.sinceCount, &s.iterFirst, &s.iterNext,
		&s.claimIDs, &s.claimDueIDs, &s.due, &s.dueCount, &s.first, &s.last, &s.prune, &s.fenced,
	} {
		*p = d.bind(*p)
	}
	s.upsertHead = "INSERT INTO " + m + " (" + columnList + ") VALUES "
	s.upsertTail = " " + d.upsertClause()
	return s
}

// upsertN is the upsert of n rows in one statement.
func (s stmts) upsertN(d dialect, n int) string {
	if n == 1 {
		return s.upsert
	}
	one := "(" + placeholders(len(columns)) + ")"
	return d.bind(s.upsertHead + strings.TrimSuffix(strings.Repeat(one+", ", n), ", ") + s.upsertTail)
}

// byIDs selects the records of n IDs.
func (r *Repository) byIDs(n int) string {
	return r.d.bind("SELECT " + columnList + " FROM " + r.d.ident(r.t.messages) + " WHERE id IN (" + placeholders(n) + ")")
}

// moveIDs moves n messages, found by ID, from one state to another: its
// arguments are the new state, the time of the move, the write's stamp, the
// IDs and the old state.
func (r *Repository) moveIDs(n int) string {
	return r.d.bind("UPDATE " + r.d.ident(r.t.messages) + " SET state = ?, updated = ?, stamp = ? WHERE id IN (" +
		placeholders(n) + ") AND " + r.d.byKeyState + " = ?")
}

// deleteIDs deletes n messages, found by ID, of one state: its arguments
// are the IDs, the state and the write's stamp (as text, see
// dialect.deleteStamp).
func (r *Repository) deleteIDs(n int) string {
	return r.d.bind("DELETE FROM " + r.d.ident(r.t.messages) + " WHERE id IN (" + placeholders(n) + ") AND " +
		r.d.byKeyState + " = ? AND " + r.d.deleteStamp)
}

// fenceIDs inserts n rows of the write fence that fence a write off: its
// arguments are pairs of stamp and ID.
func (r *Repository) fenceIDs(n int) string {
	return r.d.bind("INSERT INTO " + r.d.ident(r.t.writes) + " (stamp, id, fenced) VALUES " +
		strings.TrimSuffix(strings.Repeat("(?, ?, 1), ", n), ", "))
}

func placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?, ", n), ", ")
}

// idArgs turns IDs into statement arguments, followed by more.
func idArgs[T ~string](ids []T, more ...any) []any {
	args := make([]any, 0, len(ids)+len(more))
	for _, id := range ids {
		args = append(args, string(id))
	}
	return append(args, more...)
}
