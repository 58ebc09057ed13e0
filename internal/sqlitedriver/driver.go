// Package sqlitedriver is a small database/sql driver on the pure-Go SQLite
// of modernc.org/sqlite/lib that keeps every connection's statements
// compiled.
//
// The glebarez driver compiles the SQL text on every execution. For the
// store's short statements that compilation, with the count triggers it
// pulls in, costs as much as running them, so the factory opens its SQLite
// files with this driver instead. It speaks the same SQL and takes the same
// DSN subset: a "file:" URI whose _pragma=name(value) parameters run, in
// order, on every new connection, and _txlock=immediate|exclusive|deferred
// for BEGIN. GORM uses it through Open, the glebarez dialector on this
// driver with its errors translated.
//
// # Statement cache
//
// Each connection keeps the statements it runs compiled, by SQL text, in a
// segmented LRU cache: a text compiled for the first time enters a small
// probation segment, and moves to the protected segment when it is used
// again. One-off texts (an IN-list of a new length, a GORM migration query)
// therefore only ever push other one-off texts out, never the statements a
// program runs all the time. Only DML, queries and transaction control are
// cached; DDL, PRAGMA, ATTACH and the like, and the statements run while a
// connection opens, are compiled for one use. Cached statements are prepared
// with SQLITE_PREPARE_PERSISTENT. After each use a statement is reset and
// only its text and blob parameters are unbound (their memory is the
// driver's); integer, float and NULL bindings stay, since unbinding them
// would make SQLite plan again every statement whose plan depends on a bound
// value. Stats and AllStats report the cache's work, with SQLite's own
// counters per statement.
//
// # Contexts, interrupts and busy waits
//
// A statement's context is checked by a progress handler while that
// statement runs (every thousand virtual machine steps), so a cancelled
// context ends only the statement it belongs to: a Rows open on the same
// connection, or a ROLLBACK issued afterwards, are not affected, as they
// would be by sqlite3_interrupt. The error then satisfies
// errors.Is(err, ctx.Err()).
//
// PRAGMA busy_timeout works as in SQLite: a statement that finds the
// database locked by another connection retries, with SQLite's schedule of
// sleeps, for up to the timeout, and then fails with SQLITE_BUSY (an *Error
// whose Code()&0xff is sqlite3.SQLITE_BUSY). In addition the wait ends as
// soon as the statement's context is done: the statement (BEGIN IMMEDIATE
// included) then returns promptly with an error that satisfies both
// errors.Is(err, ctx.Err()) and errors.As(err, **Error) with the BUSY code.
// With a context already done when the statement starts, the lock is tried
// once, without waiting. A caller that wants a shorter wait than the
// connection's busy timeout passes a context with a deadline; it need not
// change the timeout.
//
// # Transactions
//
// BeginTx honours ReadOnly (statements that would write are refused with
// SQLITE_READONLY, and BEGIN takes no write lock) and accepts the default and serializable
// isolation levels, which is what SQLite provides; other levels are refused.
// When SQLite rolls a transaction back by itself (an interrupted write, an
// I/O error, a full disk), the driver notices, whether the transaction was
// begun with BeginTx or as a BEGIN statement on a connection: later
// statements of that transaction fail with ErrTxRolledBack instead of
// running in autocommit mode and committing one by one; COMMIT (or Commit)
// fails with it, ROLLBACK (or Rollback) succeeds, and BEGIN starts afresh. A connection that is
// still inside a transaction when database/sql would reuse it (a ROLLBACK
// that failed, a BEGIN run by hand) is reported invalid and discarded, and
// Rollback returns driver.ErrBadConn when it leaves the connection inside
// the transaction.
//
// # Values
//
// Integers, floats, text, blobs, NULL, booleans (as 0 and 1) and time.Time
// (as UTC text, "2006-01-02 15:04:05.999999999-07:00") are bound; named
// arguments (sql.Named) are bound by name to :name, @name or $name. Text in
// a column declared DATE, DATETIME or TIMESTAMP is returned as a time.Time
// when it parses as one, as the glebarez driver does, and the declared type
// of each column is reported by ColumnTypeDatabaseTypeName. Column names are
// read again whenever SQLite recompiles a statement, so a table altered by
// another connection or process is seen as it is. SQL text containing a NUL
// byte is refused.
package sqlitedriver

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"math"
	"net/url"
	"strings"
	"sync"
	"time"
	"unsafe"

	"modernc.org/libc"
	sqlite3 "modernc.org/sqlite/lib"
)

// DriverName is the name the driver is registered under. It differs from
// "sqlite", which the glebarez driver owns.
const DriverName = "retryspool-sqlite"

func init() { sql.Register(DriverName, drv{}) }

// Error is an SQLite error with its extended result code.
type Error struct {
	code int
	msg  string
}

func (e *Error) Error() string { return e.msg }

// Code returns the extended result code; Code()&0xff is the primary code.
func (e *Error) Code() int { return e.code }

// ErrTxRolledBack is returned for the statements, and the Commit, of a
// transaction that SQLite has already rolled back by itself, after an
// interrupted write or an I/O error: its earlier work is gone, and running
// the rest in autocommit mode would commit it piecemeal.
var ErrTxRolledBack = errors.New("sqlitedriver: the transaction was rolled back by SQLite")

type drv struct{}

func (drv) Open(dsn string) (driver.Conn, error) { return open(dsn) }

type conn struct {
	// mu is held by every call into the connection; database/sql never
	// makes two at once, so it is only contended by AllStats.
	mu     sync.Mutex
	tls    *libc.TLS
	db     uintptr
	out    uintptr // scratch for the out-parameters of prepare
	cache  cache
	begin  string
	closed bool

	// ctx is the context of the call running on the connection, nil when
	// it cannot be cancelled. The progress and busy handlers, which SQLite
	// calls on the goroutine of that call, read it.
	ctx context.Context

	// inTx is set while a driver.Tx of the connection is open. txOpen
	// records whether SQLite was inside a transaction after the last
	// statement, however it was begun (BeginTx, or BEGIN run as a
	// statement); txErr is the error after which SQLite left such a
	// transaction by itself, kept until the transaction is ended.
	inTx   bool
	txOpen bool
	txErr  error
	// readOnly is set while a read-only transaction is open.
	readOnly bool
}

func open(dsn string) (*conn, error) {
	query := ""
	if i := strings.IndexByte(dsn, '?'); i >= 0 {
		query = dsn[i+1:]
	}
	params, err := url.ParseQuery(query)
	if err != nil {
		return nil, fmt.Errorf("sqlitedriver: DSN: %w", err)
	}
	if strings.IndexByte(dsn, 0) >= 0 {
		return nil, errors.New("sqlitedriver: DSN contains a NUL byte")
	}
	c := &conn{tls: libc.NewTLS(), begin: "BEGIN"}
	c.cache.init()
	switch mode := strings.ToUpper(params.Get("_txlock")); mode {
	case "":
	case "DEFERRED", "IMMEDIATE", "EXCLUSIVE":
		c.begin = "BEGIN " + mode
	default:
		c.tls.Close()
		return nil, fmt.Errorf("sqlitedriver: unknown _txlock %q", mode)
	}
	if c.out = libc.Xmalloc(c.tls, 2*8); c.out == 0 {
		c.tls.Close()
		return nil, errors.New("sqlitedriver: out of memory")
	}
	name, err := libc.CString(dsn)
	if err != nil {
		c.release()
		return nil, err
	}
	defer libc.Xfree(c.tls, name)
	flags := int32(sqlite3.SQLITE_OPEN_READWRITE | sqlite3.SQLITE_OPEN_CREATE | sqlite3.SQLITE_OPEN_FULLMUTEX | sqlite3.SQLITE_OPEN_URI)
	rc := sqlite3.Xsqlite3_open_v2(c.tls, name, c.out, flags, 0)
	c.db = *(*uintptr)(cptr(c.out))
	if rc != sqlite3.SQLITE_OK {
		err := c.errorFor(rc)
		c.release()
		return nil, err
	}
	sqlite3.Xsqlite3_extended_result_codes(c.tls, c.db, 1)
	c.register()
	// The statements of the DSN run once per connection: none is cached.
	c.cache.off = true
	for _, p := range params["_pragma"] {
		if _, err := c.exec(context.Background(), "PRAGMA "+p, nil); err != nil {
			c.release()
			return nil, err
		}
	}
	c.cache.off = false
	return c, nil
}

func (c *conn) errorFor(rc int32) error {
	msg := libc.GoString(sqlite3.Xsqlite3_errstr(c.tls, rc))
	if c.db != 0 {
		if m := libc.GoString(sqlite3.Xsqlite3_errmsg(c.tls, c.db)); m != "" && m != msg {
			msg += ": " + m
		}
	}
	name := ""
	switch rc & 0xff {
	case sqlite3.SQLITE_BUSY:
		name = " SQLITE_BUSY"
	case sqlite3.SQLITE_LOCKED:
		name = " SQLITE_LOCKED"
	}
	return &Error{code: int(rc), msg: fmt.Sprintf("%s (%d)%s", msg, rc, name)}
}

// release frees the connection's resources.
func (c *conn) release() {
	if c.closed {
		return
	}
	c.closed = true
	c.cache.finalizeAll(c)
	if c.db != 0 {
		c.unregister()
		sqlite3.Xsqlite3_close_v2(c.tls, c.db)
		c.db = 0
	}
	if c.out != 0 {
		libc.Xfree(c.tls, c.out)
	}
	c.tls.Close()
}

func (c *conn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.release()
	return nil
}

// enter starts a call with ctx: it refuses a closed connection, and makes
// ctx the one the handlers check. A context that is already done does not
// keep the call from being tried, as before this driver checked contexts
// itself (database/sql refuses it before a call on a *sql.DB or *sql.Tx,
// not on a *sql.Conn): the statement takes no lock it would have to wait
// for, and is interrupted at its first progress check.
func (c *conn) enter(ctx context.Context) error {
	if c.closed {
		return driver.ErrBadConn
	}
	c.ctx = nil
	if ctx.Done() != nil {
		c.ctx = ctx
	}
	c.ensureBusyHandler()
	return nil
}

// leave ends a call begun with enter.
func (c *conn) leave() { c.ctx = nil }

// checkTx refuses the statements of a transaction SQLite has already left
// by itself, until the transaction is ended: ROLLBACK then succeeds without
// running (skip), COMMIT fails, BEGIN starts afresh.
func (c *conn) checkTx(query string) (skip bool, err error) {
	if c.txErr == nil {
		return false, nil
	}
	lost := fmt.Errorf("%w (after: %v)", ErrTxRolledBack, c.txErr)
	first, rest := keyword(query)
	switch first {
	case "BEGIN":
		c.txErr = nil
		return false, nil
	case "ROLLBACK":
		if second, _ := keyword(rest); second != "TO" && !strings.HasPrefix(strings.ToUpper(skipComments(rest)), "TRANSACTION TO") {
			c.txErr = nil
			return true, nil
		}
	case "COMMIT", "END":
		c.txErr = nil
	}
	// The cause is named, not wrapped: it is not this statement's error.
	return false, lost
}

// after records the transaction state after a statement: a transaction
// that was open and is no longer, without a statement that ends one, was
// rolled back by SQLite (an interrupted write, an I/O error, a full disk).
func (c *conn) after(kind int, err error) {
	open := sqlite3.Xsqlite3_get_autocommit(c.tls, c.db) == 0
	if c.txOpen && !open && kind != kindTx && c.txErr == nil {
		if err == nil {
			err = errors.New("the transaction ended")
		}
		c.txErr = err
	}
	c.txOpen = open
}

// bind binds args. Text and blob arguments are copied to one block of C
// memory that the statement keeps until its next bind (or its end), so
// that a text parameter goes from one value to the next without passing
// through NULL; see done.
func (c *conn) bind(s *cstmt, args []driver.NamedValue) error {
	n := int(sqlite3.Xsqlite3_bind_parameter_count(c.tls, s.p))
	if len(args) != n {
		return fmt.Errorf("sqlitedriver: statement takes %d arguments, got %d", n, len(args))
	}
	size, texts := 0, 0
	var times []string
	for _, a := range args {
		switch v := a.Value.(type) {
		case string:
			size += len(v)
			texts++
		case []byte:
			size += len(v)
			texts++
		case time.Time:
			t := v.UTC().Format(timeFormat)
			times = append(times, t)
			size += len(t)
			texts++
		}
	}
	if size > math.MaxInt32 {
		return errors.New("sqlitedriver: value too large")
	}
	old := s.block
	s.block, s.blockSize = 0, 0
	if texts > 0 {
		// Never NULL, so that an empty text stays '' and not NULL.
		if s.block = libc.Xmalloc(c.tls, uint64(max(size, 1))); s.block == 0 {
			s.block = old
			return errors.New("sqlitedriver: out of memory")
		}
		s.blockSize = size
	}
	err := c.bindArgs(s, args, times)
	if err != nil {
		// Some parameters may still point into the old block.
		sqlite3.Xsqlite3_clear_bindings(c.tls, s.p)
		s.unbind = s.unbind[:0]
	}
	c.free(old)
	return err
}

func (c *conn) bindArgs(s *cstmt, args []driver.NamedValue, times []string) error {
	off := 0
	put := func(v string) uintptr {
		p := s.block + uintptr(off)
		if len(v) > 0 {
			copy(unsafe.Slice((*byte)(cptr(p)), len(v)), v)
		}
		off += len(v)
		return p
	}
	s.unbind = s.unbind[:0]
	for i, a := range args {
		idx := int32(i + 1)
		if a.Ordinal > 0 {
			idx = int32(a.Ordinal)
		}
		if a.Name != "" {
			var err error
			if idx, err = c.paramIndex(s, a.Name); err != nil {
				return err
			}
		}
		var rc int32
		switch v := a.Value.(type) {
		case nil:
			rc = sqlite3.Xsqlite3_bind_null(c.tls, s.p, idx)
		case int64:
			rc = sqlite3.Xsqlite3_bind_int64(c.tls, s.p, idx, v)
		case float64:
			rc = sqlite3.Xsqlite3_bind_double(c.tls, s.p, idx, v)
		case bool:
			var b int64
			if v {
				b = 1
			}
			rc = sqlite3.Xsqlite3_bind_int64(c.tls, s.p, idx, b)
		case string:
			s.unbind = append(s.unbind, idx)
			rc = sqlite3.Xsqlite3_bind_text(c.tls, s.p, idx, put(v), int32(len(v)), sqlite3.SQLITE_STATIC)
		case []byte:
			if v == nil {
				rc = sqlite3.Xsqlite3_bind_null(c.tls, s.p, idx)
				break
			}
			s.unbind = append(s.unbind, idx)
			rc = sqlite3.Xsqlite3_bind_blob(c.tls, s.p, idx, put(string(v)), int32(len(v)), sqlite3.SQLITE_STATIC)
		case time.Time:
			t := times[0]
			times = times[1:]
			s.unbind = append(s.unbind, idx)
			rc = sqlite3.Xsqlite3_bind_text(c.tls, s.p, idx, put(t), int32(len(t)), sqlite3.SQLITE_STATIC)
		default:
			return fmt.Errorf("sqlitedriver: cannot bind %T", a.Value)
		}
		if rc != sqlite3.SQLITE_OK {
			return c.errorFor(rc)
		}
	}
	return nil
}

// timeFormat is how a time.Time is bound, as text in UTC.
const timeFormat = "2006-01-02 15:04:05.999999999-07:00"

// paramIndex finds the parameter :name, @name or $name.
func (c *conn) paramIndex(s *cstmt, name string) (int32, error) {
	for _, prefix := range [...]string{":", "@", "$"} {
		z, err := libc.CString(prefix + name)
		if err != nil {
			return 0, err
		}
		idx := sqlite3.Xsqlite3_bind_parameter_index(c.tls, s.p, z)
		libc.Xfree(c.tls, z)
		if idx > 0 {
			return idx, nil
		}
	}
	return 0, fmt.Errorf("sqlitedriver: the statement has no parameter named %q", name)
}

func (c *conn) free(block uintptr) {
	if block != 0 {
		libc.Xfree(c.tls, block)
	}
}

// exec runs query (several statements are allowed when it has no
// arguments) to the end. The caller has entered the call.
func (c *conn) exec(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	var res result
	for !onlyComments(query) {
		s, tail, err := c.prepare(query)
		if err != nil {
			return nil, c.ctxErr(ctx, err)
		}
		if tail != "" && len(args) > 0 {
			c.done(s)
			return nil, errors.New("sqlitedriver: arguments with several statements")
		}
		if s.p == 0 { // only whitespace or a comment
			c.done(s)
			query = tail
			continue
		}
		if err := c.checkReadOnly(s); err != nil {
			c.done(s)
			return nil, err
		}
		var before int64
		if s.kind == kindWith || s.kind == kindOther {
			before = sqlite3.Xsqlite3_total_changes64(c.tls, c.db)
		}
		err = c.bind(s, args)
		if err == nil {
			err = c.run(s)
		}
		c.done(s)
		c.after(s.kind, err)
		if err != nil {
			return nil, c.ctxErr(ctx, err)
		}
		// sqlite3_changes64 keeps the count of the last INSERT, UPDATE or
		// DELETE; a statement that changed nothing (DDL, a SELECT)
		// reports 0.
		res = result{lastID: int64(sqlite3.Xsqlite3_last_insert_rowid(c.tls, c.db))}
		switch s.kind {
		case kindWrite:
			res.changes = int64(sqlite3.Xsqlite3_changes64(c.tls, c.db))
		case kindWith, kindOther:
			if sqlite3.Xsqlite3_total_changes64(c.tls, c.db) != before {
				res.changes = int64(sqlite3.Xsqlite3_changes64(c.tls, c.db))
			}
		}
		if !s.cacheable {
			// A PRAGMA busy_timeout puts SQLite's own busy handler back.
			c.ensureBusyHandler()
		}
		query = tail
	}
	return res, nil
}

// run steps a statement to the end, ignoring rows.
func (c *conn) run(s *cstmt) error {
	for {
		switch rc := sqlite3.Xsqlite3_step(c.tls, s.p); rc {
		case sqlite3.SQLITE_ROW:
		case sqlite3.SQLITE_DONE:
			return nil
		default:
			return c.errorFor(rc)
		}
	}
}

// ctxErr reports a statement interrupted, or a busy wait ended, by its
// context as the context's error, keeping SQLite's in the chain.
func (c *conn) ctxErr(ctx context.Context, err error) error {
	var se *Error
	if ctx.Err() != nil && errors.As(err, &se) {
		switch se.code & 0xff {
		case sqlite3.SQLITE_INTERRUPT, sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED:
			return fmt.Errorf("%w: %w", ctx.Err(), err)
		}
	}
	return err
}

type result struct{ changes, lastID int64 }

func (r result) LastInsertId() (int64, error) { return r.lastID, nil }
func (r result) RowsAffected() (int64, error) { return r.changes, nil }

func (c *conn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.enter(ctx); err != nil {
		return nil, err
	}
	defer c.leave()
	if skip, err := c.checkTx(query); skip || err != nil {
		return result{}, err
	}
	return c.exec(ctx, query, args)
}

func (c *conn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.enter(ctx); err != nil {
		return nil, err
	}
	defer c.leave()
	if _, err := c.checkTx(query); err != nil {
		return nil, err
	}
	return c.query(ctx, query, args)
}

// Prepare compiles query; the statement is executed through the
// connection's cache, so this only validates the SQL.
func (c *conn) Prepare(query string) (driver.Stmt, error) {
	return c.PrepareContext(context.Background(), query)
}

func (c *conn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.enter(ctx); err != nil {
		return nil, err
	}
	defer c.leave()
	s, _, err := c.prepare(query)
	if err != nil {
		return nil, c.ctxErr(ctx, err)
	}
	n := -1 // several statements: database/sql does not count the arguments
	if s.p != 0 {
		n = int(sqlite3.Xsqlite3_bind_parameter_count(c.tls, s.p))
	}
	c.done(s)
	return &stmt{c: c, query: query, n: n}, nil
}

func (c *conn) Begin() (driver.Tx, error) {
	return c.BeginTx(context.Background(), driver.TxOptions{})
}

func (c *conn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	switch sql.IsolationLevel(opts.Isolation) {
	case sql.LevelDefault, sql.LevelSerializable:
	default:
		return nil, fmt.Errorf("sqlitedriver: isolation level %v is not supported (SQLite transactions are serializable)", sql.IsolationLevel(opts.Isolation))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.enter(ctx); err != nil {
		return nil, err
	}
	defer c.leave()
	if c.inTx {
		return nil, errors.New("sqlitedriver: a transaction is already open")
	}
	if skip, err := c.checkTx("BEGIN"); skip || err != nil {
		return nil, err
	}
	begin := c.begin
	if opts.ReadOnly {
		begin = "BEGIN" // a reader takes no write lock
	}
	if _, err := c.exec(ctx, begin, nil); err != nil {
		return nil, err
	}
	c.inTx, c.readOnly = true, opts.ReadOnly
	return tx{c}, nil
}

// endTx ends the transaction's bookkeeping.
func (c *conn) endTx() { c.inTx, c.txErr, c.readOnly = false, nil, false }

// checkReadOnly refuses, in a read-only transaction, a statement that
// writes. (PRAGMA query_only would do it too, but switching it makes SQLite
// recompile every statement of the connection.)
func (c *conn) checkReadOnly(s *cstmt) error {
	if !c.readOnly || s.p == 0 || sqlite3.Xsqlite3_stmt_readonly(c.tls, s.p) != 0 {
		return nil
	}
	return &Error{code: sqlite3.SQLITE_READONLY, msg: fmt.Sprintf("attempt to write in a read-only transaction (%d)", sqlite3.SQLITE_READONLY)}
}

// ResetSession refuses a connection left inside a transaction.
func (c *conn) ResetSession(context.Context) error {
	if !c.IsValid() {
		return driver.ErrBadConn
	}
	return nil
}

// IsValid reports whether the connection may be reused: it is open and not
// inside a transaction.
func (c *conn) IsValid() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.closed && !c.inTx && c.txErr == nil && sqlite3.Xsqlite3_get_autocommit(c.tls, c.db) != 0
}

type tx struct{ c *conn }

func (t tx) Commit() error {
	c := t.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return driver.ErrBadConn
	}
	if c.txErr != nil {
		err := fmt.Errorf("%w (after: %v)", ErrTxRolledBack, c.txErr)
		c.endTx()
		return err
	}
	_, err := c.exec(context.Background(), "COMMIT", nil)
	c.endTx()
	return err
}

func (t tx) Rollback() error {
	c := t.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return driver.ErrBadConn
	}
	if c.txErr != nil || sqlite3.Xsqlite3_get_autocommit(c.tls, c.db) != 0 {
		c.endTx()
		return nil // SQLite already rolled back (after an I/O error, say)
	}
	_, err := c.exec(context.Background(), "ROLLBACK", nil)
	c.endTx()
	if err != nil && sqlite3.Xsqlite3_get_autocommit(c.tls, c.db) == 0 {
		// Still inside the transaction: the connection must go.
		return fmt.Errorf("%w: rollback: %w", driver.ErrBadConn, err)
	}
	return err
}

type stmt struct {
	c     *conn
	query string
	n     int
}

func (s *stmt) Close() error  { return nil }
func (s *stmt) NumInput() int { return s.n }
func (s *stmt) Exec(args []driver.Value) (driver.Result, error) {
	return s.c.ExecContext(context.Background(), s.query, named(args))
}
func (s *stmt) Query(args []driver.Value) (driver.Rows, error) {
	return s.c.QueryContext(context.Background(), s.query, named(args))
}
func (s *stmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	return s.c.ExecContext(ctx, s.query, args)
}
func (s *stmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	return s.c.QueryContext(ctx, s.query, args)
}

func named(args []driver.Value) []driver.NamedValue {
	out := make([]driver.NamedValue, len(args))
	for i, v := range args {
		out[i] = driver.NamedValue{Ordinal: i + 1, Value: v}
	}
	return out
}

var (
	_ driver.ConnBeginTx        = (*conn)(nil)
	_ driver.ConnPrepareContext = (*conn)(nil)
	_ driver.ExecerContext      = (*conn)(nil)
	_ driver.QueryerContext     = (*conn)(nil)
	_ driver.SessionResetter    = (*conn)(nil)
	_ driver.Validator          = (*conn)(nil)
)

// cptr turns an address of C memory into a pointer. The memory is
// SQLite's or libc's, never Go's heap, so the collector does not track it.
func cptr(p uintptr) unsafe.Pointer { return unsafe.Add(nil, p) }
