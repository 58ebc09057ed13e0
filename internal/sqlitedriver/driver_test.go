package sqlitedriver

import (
	"context"
	"database/sql"
	"errors"
	"math"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	sqlite3 "modernc.org/sqlite/lib"
)

func openDB(t *testing.T, params string) (*sql.DB, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "d.db")
	db, err := sql.Open(DriverName, "file:"+path+"?_pragma=journal_mode(WAL)&_pragma=busy_timeout(5000)"+params)
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	return db, path
}

func TestValuesRoundTrip(t *testing.T) {
	t.Parallel()
	db, _ := openDB(t, "")
	_, err := db.Exec(`CREATE TABLE v (i INTEGER, f REAL, s TEXT, b BLOB)`)
	require.NoError(t, err)
	cases := []struct {
		i int64
		f float64
		s string
		b []byte
	}{
		{0, 0, "", []byte{}},
		{math.MinInt64, math.Inf(-1), "a\x00b", []byte{0, 1, 2}},
		{math.MaxInt64, 1.5, "ünïcødé \u2028 \"q\"", []byte("blob")},
		{-1, -0.25, strings.Repeat("x", 100000), make([]byte, 70000)},
	}
	for _, c := range cases {
		_, err := db.Exec(`DELETE FROM v`)
		require.NoError(t, err)
		_, err = db.Exec(`INSERT INTO v VALUES (?, ?, ?, ?)`, c.i, c.f, c.s, c.b)
		require.NoError(t, err)
		var (
			i int64
			f float64
			s string
			b []byte
		)
		require.NoError(t, db.QueryRow(`SELECT i, f, s, b FROM v`).Scan(&i, &f, &s, &b))
		require.Equal(t, c.i, i)
		require.Equal(t, c.f, f)
		require.Equal(t, c.s, s)
		require.Equal(t, c.b, b)
	}
}

func TestNullAndEmpty(t *testing.T) {
	t.Parallel()
	db, _ := openDB(t, "")
	_, err := db.Exec(`CREATE TABLE n (s TEXT)`)
	require.NoError(t, err)
	_, err = db.Exec(`INSERT INTO n VALUES (?), (?), (?)`, nil, "", true)
	require.NoError(t, err)
	rows, err := db.Query(`SELECT s, s IS NULL FROM n ORDER BY rowid`)
	require.NoError(t, err)
	defer rows.Close()
	var got []sql.NullString
	var nulls []bool
	for rows.Next() {
		var s sql.NullString
		var isNull bool
		require.NoError(t, rows.Scan(&s, &isNull))
		got, nulls = append(got, s), append(nulls, isNull)
	}
	require.NoError(t, rows.Err())
	require.Equal(t, []bool{true, false, false}, nulls)
	require.Equal(t, "", got[1].String)
	require.True(t, got[1].Valid)
	require.Equal(t, "1", got[2].String)
}

func TestExecSeveralStatementsAndResult(t *testing.T) {
	t.Parallel()
	db, _ := openDB(t, "")
	_, err := db.Exec(`CREATE TABLE a (x INTEGER); CREATE TABLE b (y INTEGER); -- done`)
	require.NoError(t, err)
	res, err := db.Exec(`INSERT INTO a VALUES (1), (2), (3)`)
	require.NoError(t, err)
	n, err := res.RowsAffected()
	require.NoError(t, err)
	require.Equal(t, int64(3), n)
	id, err := res.LastInsertId()
	require.NoError(t, err)
	require.Equal(t, int64(3), id)
	_, err = db.Exec(`INSERT INTO a VALUES (?); INSERT INTO b VALUES (?)`, 1, 2)
	require.Error(t, err, "arguments with several statements are refused")
}

func TestCachedStatementReusedWhileRowsOpen(t *testing.T) {
	t.Parallel()
	db, _ := openDB(t, "")
	db.SetMaxOpenConns(1)
	_, err := db.Exec(`CREATE TABLE a (x INTEGER); INSERT INTO a VALUES (1), (2), (3)`)
	require.NoError(t, err)
	const q = `SELECT x FROM a WHERE x >= ? ORDER BY x`
	// The same SQL on one connection while a Rows of it is open must get a
	// statement of its own, not rebind the open one.
	var x int
	conn, err := db.Conn(context.Background())
	require.NoError(t, err)
	defer conn.Close()
	r1, err := conn.QueryContext(context.Background(), q, 2)
	require.NoError(t, err)
	r2, err := conn.QueryContext(context.Background(), q, 3)
	require.NoError(t, err)
	var a, b []int
	for r1.Next() {
		require.NoError(t, r1.Scan(&x))
		a = append(a, x)
	}
	for r2.Next() {
		require.NoError(t, r2.Scan(&x))
		b = append(b, x)
	}
	require.NoError(t, r1.Close())
	require.NoError(t, r2.Close())
	require.Equal(t, []int{2, 3}, a)
	require.Equal(t, []int{3}, b)
	// And again through the cache, after both were returned.
	var c []int
	rows, err := conn.QueryContext(context.Background(), q, 1)
	require.NoError(t, err)
	for rows.Next() {
		require.NoError(t, rows.Scan(&x))
		c = append(c, x)
	}
	require.NoError(t, rows.Close())
	require.Equal(t, []int{1, 2, 3}, c)
}

func TestErrorsCarryCodes(t *testing.T) {
	t.Parallel()
	db, _ := openDB(t, "")
	_, err := db.Exec(`SELEKT 1`)
	var se *Error
	require.ErrorAs(t, err, &se)
	require.Equal(t, sqlite3.SQLITE_ERROR, se.Code()&0xff)

	_, err = db.Exec(`CREATE TABLE u (x INTEGER PRIMARY KEY)`)
	require.NoError(t, err)
	_, err = db.Exec(`INSERT INTO u VALUES (1)`)
	require.NoError(t, err)
	_, err = db.Exec(`INSERT INTO u VALUES (1)`)
	require.ErrorAs(t, err, &se)
	require.Equal(t, sqlite3.SQLITE_CONSTRAINT, se.Code()&0xff)
}

func TestBusyAfterTimeout(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "busy.db")
	open := func(timeout string) *sql.DB {
		db, err := sql.Open(DriverName, "file:"+path+"?_pragma=journal_mode(WAL)&_pragma=busy_timeout("+timeout+")&_txlock=immediate")
		require.NoError(t, err)
		t.Cleanup(func() { db.Close() })
		return db
	}
	a, b := open("5000"), open("100")
	_, err := a.Exec(`CREATE TABLE t (x INTEGER)`)
	require.NoError(t, err)
	tx, err := a.Begin()
	require.NoError(t, err)
	defer tx.Rollback()
	_, err = tx.Exec(`INSERT INTO t VALUES (1)`)
	require.NoError(t, err)

	_, err = b.Begin()
	var se *Error
	require.ErrorAs(t, err, &se)
	require.Equal(t, sqlite3.SQLITE_BUSY, se.Code()&0xff)
	require.Contains(t, err.Error(), "SQLITE_BUSY")
}

func TestContextCancelInterrupts(t *testing.T) {
	t.Parallel()
	db, _ := openDB(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	// An endless recursive query; only the interrupt ends it.
	_, err := db.ExecContext(ctx, `WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) FROM c`)
	require.Error(t, err)
	require.True(t, errors.Is(err, context.DeadlineExceeded), "got %v", err)
	// The connection is still usable and later statements are not
	// interrupted by the old context.
	var n int
	require.NoError(t, db.QueryRow(`SELECT 41 + 1`).Scan(&n))
	require.Equal(t, 42, n)
}

func TestTransactionsAndConcurrency(t *testing.T) {
	t.Parallel()
	db, _ := openDB(t, "&_txlock=immediate")
	db.SetMaxOpenConns(4)
	_, err := db.Exec(`CREATE TABLE c (k INTEGER PRIMARY KEY, n INTEGER)`)
	require.NoError(t, err)
	_, err = db.Exec(`INSERT INTO c VALUES (1, 0)`)
	require.NoError(t, err)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				tx, err := db.Begin()
				if err != nil {
					t.Error(err)
					return
				}
				var n int
				if err := tx.QueryRow(`SELECT n FROM c WHERE k = 1`).Scan(&n); err != nil {
					t.Error(err)
					tx.Rollback()
					return
				}
				if _, err := tx.Exec(`UPDATE c SET n = ? WHERE k = 1`, n+1); err != nil {
					t.Error(err)
					tx.Rollback()
					return
				}
				if err := tx.Commit(); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	var n int
	require.NoError(t, db.QueryRow(`SELECT n FROM c WHERE k = 1`).Scan(&n))
	require.Equal(t, 400, n, "BEGIN IMMEDIATE serialises read-modify-write transactions")

	tx, err := db.Begin()
	require.NoError(t, err)
	_, err = tx.Exec(`UPDATE c SET n = 0`)
	require.NoError(t, err)
	require.NoError(t, tx.Rollback())
	require.NoError(t, db.QueryRow(`SELECT n FROM c WHERE k = 1`).Scan(&n))
	require.Equal(t, 400, n, "rolled back")
}

func TestBadDSN(t *testing.T) {
	t.Parallel()
	db, err := sql.Open(DriverName, "file:"+filepath.Join(t.TempDir(), "x.db")+"?_txlock=sometimes")
	require.NoError(t, err)
	defer db.Close()
	require.ErrorContains(t, db.Ping(), "_txlock")

	db2, err := sql.Open(DriverName, "file:"+filepath.Join(t.TempDir(), "x.db")+"?_pragma=no_such_thing(((")
	require.NoError(t, err)
	defer db2.Close()
	require.Error(t, db2.Ping())
}
