package sqlitedriver

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	sqlite3 "modernc.org/sqlite/lib"
)

// oneConn opens a database of one connection and returns that connection.
func oneConn(t *testing.T, params string) (*sql.Conn, *sql.DB, string) {
	t.Helper()
	db, path := openDB(t, params)
	db.SetMaxOpenConns(1)
	conn, err := db.Conn(context.Background())
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return conn, db, path
}

// connStats returns the cache statistics of conn.
func connStats(t *testing.T, conn *sql.Conn) CacheStats {
	t.Helper()
	var st CacheStats
	require.NoError(t, conn.Raw(func(dc any) error {
		var ok bool
		if st, ok = Stats(dc); !ok {
			return errors.New("not a connection of this driver")
		}
		return nil
	}))
	return st
}

func stmtStats(st CacheStats, query string) (StatementStats, bool) {
	for _, s := range st.Statements {
		if s.SQL == query {
			return s, true
		}
	}
	return StatementStats{}, false
}

// Statements whose plan depends on a bound value (col = ? with ORDER BY, a
// join, LIMIT ?) are compiled once and never recompiled by SQLite, through
// Exec and Query alike, with text and integer arguments.
func TestCachedStatementsNotReprepared(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn, _, _ := oneConn(t, "")
	_, err := conn.ExecContext(ctx, `
		CREATE TABLE a (id INTEGER PRIMARY KEY, v TEXT);
		CREATE TABLE b (x INTEGER, s TEXT, aid INTEGER);
		CREATE INDEX b_x ON b (x);
		CREATE INDEX b_s ON b (s, x);
		INSERT INTO a VALUES (1, 'one'), (2, 'two');
		INSERT INTO b VALUES (5, 'p', 1), (5, 'q', 2), (6, 'p', 2)`)
	require.NoError(t, err)
	queries := []string{
		`SELECT a.v FROM a JOIN b ON b.aid = a.id WHERE b.x = ?`,
		`SELECT aid FROM b WHERE x = ? ORDER BY aid`,
		`SELECT aid FROM b WHERE s = ? ORDER BY x LIMIT ?`,
		`SELECT aid FROM b WHERE x >= ? ORDER BY x LIMIT ?`,
	}
	for i := range 50 {
		for _, q := range queries {
			var args []any
			switch strings.Count(q, "?") {
			case 1:
				args = []any{int64(5 + i%2)}
			default:
				// A page size stays the same from call to call (a new
				// LIMIT may rightly make SQLite plan again).
				if strings.Contains(q, "s = ?") {
					args = []any{[]string{"p", "q"}[i%2], int64(100)}
				} else {
					args = []any{int64(5 + i%2), int64(100)}
				}
			}
			rows, err := conn.QueryContext(ctx, q, args...)
			require.NoError(t, err)
			for rows.Next() {
			}
			require.NoError(t, rows.Err())
			require.NoError(t, rows.Close())
			_, err = conn.ExecContext(ctx, q, args...)
			require.NoError(t, err)
		}
	}
	st := connStats(t, conn)
	for _, q := range queries {
		s, ok := stmtStats(st, q)
		require.True(t, ok, "%s is cached", q)
		// SQLite may plan once more with the first values bound (a LIMIT
		// it plans for), never again for values that keep the plan.
		require.LessOrEqual(t, s.Reprepares, 1, "%s: recompiled by SQLite", q)
		require.Equal(t, uint64(1), s.Compiles, q)
		require.Equal(t, 100, s.Runs, q)
	}
}

// One-off texts (IN-lists of new lengths, pragmas, DDL) never push out the
// statements a connection runs all the time; pragmas and DDL are not
// cached at all, and the cache stays bounded.
func TestCacheKeepsHotStatements(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn, _, _ := oneConn(t, "")
	// The tables exist before: a schema change would rightly make SQLite
	// recompile every statement once.
	_, err := conn.ExecContext(ctx, `CREATE TABLE m (id INTEGER PRIMARY KEY, state INTEGER);
		CREATE TABLE t0 (x); CREATE TABLE t1 (x); CREATE TABLE t2 (x); CREATE TABLE t3 (x); CREATE TABLE t4 (x)`)
	require.NoError(t, err)
	hot := []string{
		`UPDATE m SET state = ? WHERE id = ?`,
		`DELETE FROM m WHERE id = ?`,
		`INSERT INTO m (id, state) VALUES (?, ?)`,
	}
	for i := range 300 {
		_, err := conn.ExecContext(ctx, hot[2], i, 1)
		require.NoError(t, err)
		_, err = conn.ExecContext(ctx, hot[0], 2, i)
		require.NoError(t, err)
		// A claim with an IN-list of a new length each time.
		in := strings.TrimSuffix(strings.Repeat("?,", i%150+1), ",")
		args := make([]any, i%150+1)
		for j := range args {
			args[j] = j
		}
		_, err = conn.ExecContext(ctx, `UPDATE m SET state = 3 WHERE id IN (`+in+`)`, args...)
		require.NoError(t, err)
		_, err = conn.ExecContext(ctx, fmt.Sprintf("PRAGMA busy_timeout = %d", 1000+i))
		require.NoError(t, err)
		_, err = conn.ExecContext(ctx, fmt.Sprintf("CREATE TABLE IF NOT EXISTS t%d (x)", i%5))
		require.NoError(t, err)
		// A statement first run once the cache has long been full.
		if i >= 150 {
			_, err = conn.ExecContext(ctx, hot[1], i)
			require.NoError(t, err)
		}
	}
	st := connStats(t, conn)
	for _, q := range hot {
		s, ok := stmtStats(st, q)
		require.True(t, ok, "%s is cached", q)
		require.Equal(t, uint64(1), s.Compiles, "%s compiled once", q)
		require.Equal(t, 0, s.Reprepares, q)
	}
	require.LessOrEqual(t, len(st.Statements), protectedSize+probationSize)
	require.NotZero(t, st.Evictions)
	for _, s := range st.Statements {
		require.False(t, strings.HasPrefix(s.SQL, "PRAGMA") || strings.HasPrefix(s.SQL, "CREATE"), "%s is cached", s.SQL)
	}
	// PRAGMA busy_timeout still reports what was set.
	var ms int
	require.NoError(t, conn.QueryRowContext(ctx, `PRAGMA busy_timeout`).Scan(&ms))
	require.Equal(t, 1299, ms)
}

// A table altered by another connection is seen with its new columns by a
// statement cached before.
func TestColumnsAfterAlterElsewhere(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	conn, _, path := oneConn(t, "")
	_, err := conn.ExecContext(ctx, `CREATE TABLE t (a INTEGER, b TEXT); INSERT INTO t VALUES (1, 'x')`)
	require.NoError(t, err)
	cols := func() ([]string, []any) {
		rows, err := conn.QueryContext(ctx, `SELECT * FROM t`)
		require.NoError(t, err)
		defer rows.Close()
		names, err := rows.Columns()
		require.NoError(t, err)
		require.True(t, rows.Next())
		vals := make([]any, len(names))
		ptrs := make([]any, len(names))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		require.NoError(t, rows.Scan(ptrs...))
		return names, vals
	}
	for range 3 {
		names, _ := cols()
		require.Equal(t, []string{"a", "b"}, names)
	}
	other, err := sql.Open(DriverName, "file:"+path+"?_pragma=busy_timeout(5000)")
	require.NoError(t, err)
	defer other.Close()
	_, err = other.Exec(`ALTER TABLE t ADD COLUMN c INTEGER DEFAULT 7; ALTER TABLE t RENAME COLUMN a TO z`)
	require.NoError(t, err)
	names, vals := cols()
	require.Equal(t, []string{"z", "b", "c"}, names)
	require.Equal(t, []any{int64(1), "x", int64(7)}, vals)
}

// SQL text with a NUL byte is refused instead of spinning forever.
func TestNULInSQLRefused(t *testing.T) {
	t.Parallel()
	db, _ := openDB(t, "")
	done := make(chan error, 2)
	go func() {
		_, err := db.Exec("SELECT 1;\x00 SELECT 2")
		done <- err
		_, err = db.Query("SELECT 1\x00")
		done <- err
	}()
	for range 2 {
		select {
		case err := <-done:
			require.ErrorContains(t, err, "NUL")
		case <-time.After(time.Minute):
			t.Fatal("a statement with a NUL byte never returns")
		}
	}
}

// Named arguments are bound by name, whatever their order.
func TestNamedParameters(t *testing.T) {
	t.Parallel()
	db, _ := openDB(t, "")
	var a, b int
	require.NoError(t, db.QueryRow(`SELECT :a, :b`, sql.Named("b", 2), sql.Named("a", 1)).Scan(&a, &b))
	require.Equal(t, []int{1, 2}, []int{a, b})
	require.NoError(t, db.QueryRow(`SELECT @x, $y`, sql.Named("y", 4), sql.Named("x", 3)).Scan(&a, &b))
	require.Equal(t, []int{3, 4}, []int{a, b})
	// Positional arguments still bind in order.
	require.NoError(t, db.QueryRow(`SELECT :a, :b`, 5, 6).Scan(&a, &b))
	require.Equal(t, []int{5, 6}, []int{a, b})
	err := db.QueryRow(`SELECT :a`, sql.Named("nope", 1)).Scan(&a)
	require.ErrorContains(t, err, "nope")
}

// After SQLite rolls a transaction back by itself (here an interrupted
// write), its later statements fail instead of committing one by one.
func TestTxRolledBackBySQLite(t *testing.T) {
	t.Parallel()
	db, _ := openDB(t, "&_txlock=immediate")
	db.SetMaxOpenConns(1)
	_, err := db.Exec(`CREATE TABLE t (x INTEGER)`)
	require.NoError(t, err)
	tx, err := db.Begin()
	require.NoError(t, err)
	_, err = tx.Exec(`INSERT INTO t VALUES (1)`)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err = tx.ExecContext(ctx, `INSERT INTO t WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT x FROM c`)
	require.ErrorIs(t, err, context.DeadlineExceeded)

	_, err = tx.Exec(`INSERT INTO t VALUES (2)`)
	require.ErrorIs(t, err, ErrTxRolledBack)
	_, err = tx.Query(`SELECT x FROM t`)
	require.ErrorIs(t, err, ErrTxRolledBack)
	require.ErrorIs(t, tx.Commit(), ErrTxRolledBack)

	var n int
	require.NoError(t, db.QueryRow(`SELECT count(*) FROM t`).Scan(&n))
	require.Equal(t, 0, n, "nothing of the transaction was committed")
	// The connection works normally afterwards.
	tx, err = db.Begin()
	require.NoError(t, err)
	_, err = tx.Exec(`INSERT INTO t VALUES (3)`)
	require.NoError(t, err)
	require.NoError(t, tx.Commit())
	require.NoError(t, db.QueryRow(`SELECT count(*) FROM t`).Scan(&n))
	require.Equal(t, 1, n)
}

// A cancelled statement ends alone: a Rows open on the same connection
// reads on, and the ROLLBACK that follows runs and releases the write lock.
func TestCancelEndsOnlyItsStatement(t *testing.T) {
	t.Parallel()
	db, path := openDB(t, "&_txlock=immediate")
	db.SetMaxOpenConns(1)
	_, err := db.Exec(`CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1), (2), (3)`)
	require.NoError(t, err)

	tx, err := db.Begin()
	require.NoError(t, err)
	_, err = tx.Exec(`INSERT INTO t VALUES (4)`)
	require.NoError(t, err)
	rows, err := tx.Query(`SELECT x FROM t ORDER BY x`)
	require.NoError(t, err)
	var got []int
	require.True(t, rows.Next())
	var x int
	require.NoError(t, rows.Scan(&x))
	got = append(got, x)

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err = tx.ExecContext(ctx, `WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) FROM c`)
	require.ErrorIs(t, err, context.DeadlineExceeded)

	for rows.Next() {
		require.NoError(t, rows.Scan(&x))
		got = append(got, x)
	}
	require.NoError(t, rows.Err(), "the open Rows was not interrupted")
	require.NoError(t, rows.Close())
	require.Equal(t, []int{1, 2, 3, 4}, got)

	// A read that is cancelled, then the ROLLBACK.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel2()
	_, err = tx.ExecContext(ctx2, `WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) FROM c`)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.NoError(t, tx.Rollback())

	// Another connection gets the write lock at once: the rollback ran.
	other, err := sql.Open(DriverName, "file:"+path+"?_txlock=immediate")
	require.NoError(t, err)
	defer other.Close()
	otx, err := other.Begin()
	require.NoError(t, err)
	require.NoError(t, otx.Rollback())
	var n int
	require.NoError(t, db.QueryRow(`SELECT count(*) FROM t`).Scan(&n))
	require.Equal(t, 3, n)
}

// A Rollback that leaves the connection inside its transaction reports
// driver.ErrBadConn, and such a connection is not reused.
func TestConnectionInsideTransactionNotReused(t *testing.T) {
	t.Parallel()
	db, path := openDB(t, "")
	db.SetMaxOpenConns(1)
	_, err := db.Exec(`CREATE TABLE t (x INTEGER)`)
	require.NoError(t, err)
	conn, err := db.Conn(context.Background())
	require.NoError(t, err)
	// A transaction begun by hand, left open when the connection goes back.
	_, err = conn.ExecContext(context.Background(), `BEGIN IMMEDIATE`)
	require.NoError(t, err)
	_, err = conn.ExecContext(context.Background(), `INSERT INTO t VALUES (1)`)
	require.NoError(t, err)
	require.NoError(t, conn.Close())

	// The pool must not keep it: another connection gets the write lock.
	other, err := sql.Open(DriverName, "file:"+path+"?_txlock=immediate")
	require.NoError(t, err)
	defer other.Close()
	otx, err := other.Begin()
	require.NoError(t, err, "the abandoned transaction still holds the write lock")
	require.NoError(t, otx.Rollback())
	var n int
	require.NoError(t, db.QueryRow(`SELECT count(*) FROM t`).Scan(&n))
	require.Equal(t, 0, n)
}

// A busy wait (BEGIN IMMEDIATE behind another connection's write lock) ends
// as soon as the statement's context is done, with an error that is both
// the context's and SQLite's BUSY.
func TestBusyWaitEndsWithContext(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "busy.db")
	open := func(timeout string) *sql.DB {
		db, err := sql.Open(DriverName, "file:"+path+"?_pragma=journal_mode(WAL)&_pragma=busy_timeout("+timeout+")&_txlock=immediate")
		require.NoError(t, err)
		t.Cleanup(func() { db.Close() })
		return db
	}
	// b would wait ten minutes for the lock.
	a, b := open("5000"), open("600000")
	_, err := a.Exec(`CREATE TABLE t (x INTEGER)`)
	require.NoError(t, err)
	tx, err := a.Begin()
	require.NoError(t, err)
	defer tx.Rollback()
	_, err = tx.Exec(`INSERT INTO t VALUES (1)`)
	require.NoError(t, err)

	check := func(name string, run func(ctx context.Context) error) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- run(ctx) }()
		time.Sleep(50 * time.Millisecond) // let it start waiting
		cancel()
		select {
		case err := <-done:
			require.ErrorIs(t, err, context.Canceled, name)
			var se *Error
			require.ErrorAs(t, err, &se, name)
			require.Equal(t, sqlite3.SQLITE_BUSY, se.Code()&0xff, name)
		case <-time.After(2 * time.Minute):
			t.Fatalf("%s: the busy wait did not end with its context", name)
		}
	}
	conn, err := b.Conn(context.Background())
	require.NoError(t, err)
	defer conn.Close()
	check("BEGIN IMMEDIATE", func(ctx context.Context) error {
		_, err := conn.ExecContext(ctx, `BEGIN IMMEDIATE`)
		return err
	})
	check("BeginTx", func(ctx context.Context) error {
		tx, err := b.BeginTx(ctx, nil)
		if err == nil {
			tx.Rollback()
		}
		return err
	})
	check("INSERT", func(ctx context.Context) error {
		_, err := conn.ExecContext(ctx, `INSERT INTO t VALUES (2)`)
		return err
	})
	// The connection still waits its timeout when the context allows it.
	_, err = conn.ExecContext(context.Background(), `PRAGMA busy_timeout = 100`)
	require.NoError(t, err)
	_, err = conn.ExecContext(context.Background(), `BEGIN IMMEDIATE`)
	var se *Error
	require.ErrorAs(t, err, &se)
	require.Equal(t, sqlite3.SQLITE_BUSY, se.Code()&0xff)
	require.NotErrorIs(t, err, context.Canceled)
}

// ReadOnly transactions cannot write; isolation levels SQLite does not
// provide are refused.
func TestTxOptions(t *testing.T) {
	t.Parallel()
	db, _ := openDB(t, "&_txlock=immediate")
	db.SetMaxOpenConns(1)
	ctx := context.Background()
	_, err := db.Exec(`CREATE TABLE t (x INTEGER)`)
	require.NoError(t, err)

	tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	require.NoError(t, err)
	_, err = tx.Exec(`INSERT INTO t VALUES (1)`)
	var se *Error
	require.ErrorAs(t, err, &se, "a read-only transaction wrote")
	require.Equal(t, sqlite3.SQLITE_READONLY, se.Code()&0xff)
	require.NoError(t, tx.Commit())
	// The connection writes again afterwards.
	_, err = db.Exec(`INSERT INTO t VALUES (1)`)
	require.NoError(t, err)

	tx, err = db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelSerializable})
	require.NoError(t, err)
	require.NoError(t, tx.Rollback())
	for _, level := range []sql.IsolationLevel{sql.LevelReadUncommitted, sql.LevelReadCommitted, sql.LevelRepeatableRead, sql.LevelLinearizable} {
		_, err = db.BeginTx(ctx, &sql.TxOptions{Isolation: level})
		require.ErrorContains(t, err, "isolation level", level.String())
	}
}

// RowsAffected counts the statement's own changes: 0 after DDL or a
// SELECT, not the count of the UPDATE before.
func TestRowsAffectedOwnStatement(t *testing.T) {
	t.Parallel()
	conn, _, _ := oneConn(t, "")
	ctx := context.Background()
	_, err := conn.ExecContext(ctx, `CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1), (2), (3)`)
	require.NoError(t, err)
	affected := func(q string, args ...any) int64 {
		res, err := conn.ExecContext(ctx, q, args...)
		require.NoError(t, err)
		n, err := res.RowsAffected()
		require.NoError(t, err)
		return n
	}
	require.Equal(t, int64(3), affected(`UPDATE t SET x = x + 1`))
	require.Equal(t, int64(0), affected(`CREATE TABLE u (y INTEGER)`))
	require.Equal(t, int64(2), affected(`DELETE FROM t WHERE x > ?`, 2))
	require.Equal(t, int64(0), affected(`SELECT * FROM t`))
	require.Equal(t, int64(0), affected(`UPDATE t SET x = 0 WHERE x > 100`))
}

// A statement followed by a trailing comment works, with arguments too.
func TestTrailingComment(t *testing.T) {
	t.Parallel()
	db, _ := openDB(t, "")
	_, err := db.Exec(`CREATE TABLE t (x INTEGER) -- the table`)
	require.NoError(t, err)
	_, err = db.Exec(`INSERT INTO t VALUES (?); -- one row`, 7)
	require.NoError(t, err)
	_, err = db.Exec(`INSERT INTO t VALUES (?) /* another */ ;`, 8)
	require.NoError(t, err)
	var n int
	require.NoError(t, db.QueryRow(`SELECT sum(x) FROM t -- all of them`).Scan(&n))
	require.Equal(t, 15, n)
	require.NoError(t, db.QueryRow("SELECT count(*) FROM t; /* done */\n").Scan(&n))
	require.Equal(t, 2, n)
}

// DATE, DATETIME and TIMESTAMP columns scan into time.Time, and declared
// types are reported.
func TestTimeColumnsAndDeclaredTypes(t *testing.T) {
	t.Parallel()
	db, _ := openDB(t, "")
	_, err := db.Exec(`CREATE TABLE t (id INTEGER, at DATETIME, ts timestamp, d DATE, s VARCHAR(20), n TEXT)`)
	require.NoError(t, err)
	at := time.Date(2026, 3, 4, 5, 6, 7, 890123000, time.FixedZone("x", 3600))
	_, err = db.Exec(`INSERT INTO t VALUES (1, ?, '2026-03-04T05:06:07Z', '2026-03-04', ?, 'not a time')`, at, "s")
	require.NoError(t, err)
	rows, err := db.Query(`SELECT id, at, ts, d, s, n, at AS expr FROM t`)
	require.NoError(t, err)
	defer rows.Close()
	types, err := rows.ColumnTypes()
	require.NoError(t, err)
	var names []string
	for _, ct := range types {
		names = append(names, ct.DatabaseTypeName())
	}
	require.Equal(t, []string{"INTEGER", "DATETIME", "TIMESTAMP", "DATE", "VARCHAR(20)", "TEXT", "DATETIME"}, names)
	require.True(t, rows.Next())
	var (
		id         int
		gotAt, ts  time.Time
		d          time.Time
		s, n, expr string
	)
	require.NoError(t, rows.Scan(&id, &gotAt, &ts, &d, &s, &n, &expr))
	require.True(t, at.Equal(gotAt), "%v != %v", at, gotAt)
	require.Equal(t, time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC), ts)
	require.Equal(t, time.Date(2026, 3, 4, 0, 0, 0, 0, time.UTC), d)
	require.Equal(t, "not a time", n)
	require.NoError(t, rows.Close())
}

// The same for a transaction begun as a statement on a connection, as the
// store's group writer does: after SQLite rolled it back by itself, its
// statements fail until ROLLBACK (which then succeeds) or BEGIN.
func TestStatementTxRolledBackBySQLite(t *testing.T) {
	t.Parallel()
	conn, db, _ := oneConn(t, "")
	ctx := context.Background()
	_, err := conn.ExecContext(ctx, `CREATE TABLE t (x INTEGER)`)
	require.NoError(t, err)
	for _, end := range []string{"ROLLBACK", "COMMIT", "BEGIN IMMEDIATE"} {
		_, err = conn.ExecContext(ctx, `BEGIN IMMEDIATE`)
		require.NoError(t, err)
		_, err = conn.ExecContext(ctx, `SAVEPOINT w`)
		require.NoError(t, err)
		_, err = conn.ExecContext(ctx, `INSERT INTO t VALUES (1)`)
		require.NoError(t, err)
		tctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		_, err = conn.ExecContext(tctx, `INSERT INTO t WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT x FROM c`)
		cancel()
		require.ErrorIs(t, err, context.DeadlineExceeded)

		_, err = conn.ExecContext(ctx, `INSERT INTO t VALUES (2)`)
		require.ErrorIs(t, err, ErrTxRolledBack, end)
		_, err = conn.ExecContext(ctx, `ROLLBACK TO w`)
		require.ErrorIs(t, err, ErrTxRolledBack, end)
		_, err = conn.QueryContext(ctx, `SELECT x FROM t`)
		require.ErrorIs(t, err, ErrTxRolledBack, end)
		switch end {
		case "ROLLBACK":
			_, err = conn.ExecContext(ctx, end)
			require.NoError(t, err)
		case "COMMIT":
			_, err = conn.ExecContext(ctx, end)
			require.ErrorIs(t, err, ErrTxRolledBack)
		default:
			_, err = conn.ExecContext(ctx, end)
			require.NoError(t, err)
			_, err = conn.ExecContext(ctx, `INSERT INTO t VALUES (3)`)
			require.NoError(t, err)
			_, err = conn.ExecContext(ctx, `COMMIT`)
			require.NoError(t, err)
		}
	}
	require.NoError(t, conn.Close())
	var n int
	require.NoError(t, db.QueryRow(`SELECT count(*) FROM t`).Scan(&n))
	require.Equal(t, 1, n, "only the row of the new transaction")
}

// A context already done when BEGIN IMMEDIATE starts: the lock is tried
// once, without waiting; the error carries both the context's error and
// SQLite's BUSY.
func TestBusyWithContextAlreadyDone(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "done.db")
	a, err := sql.Open(DriverName, "file:"+path+"?_pragma=journal_mode(WAL)&_txlock=immediate")
	require.NoError(t, err)
	defer a.Close()
	b, err := sql.Open(DriverName, "file:"+path+"?_pragma=busy_timeout(600000)")
	require.NoError(t, err)
	defer b.Close()
	_, err = a.Exec(`CREATE TABLE t (x INTEGER)`)
	require.NoError(t, err)
	conn, err := b.Conn(context.Background())
	require.NoError(t, err)
	defer conn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()

	// The lock is free: taken.
	_, err = conn.ExecContext(ctx, `BEGIN IMMEDIATE`)
	require.NoError(t, err)
	_, err = conn.ExecContext(context.Background(), `ROLLBACK`)
	require.NoError(t, err)

	tx, err := a.Begin()
	require.NoError(t, err)
	defer tx.Rollback()
	_, err = conn.ExecContext(ctx, `BEGIN IMMEDIATE`)
	require.ErrorIs(t, err, context.Canceled)
	var se *Error
	require.ErrorAs(t, err, &se)
	require.Equal(t, sqlite3.SQLITE_BUSY, se.Code()&0xff)
}
