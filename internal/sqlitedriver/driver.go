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
// for BEGIN. GORM uses it through the glebarez dialector with
// DriverName set to DriverName.
package sqlitedriver

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
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

// maxCached bounds the compiled statements kept per connection; statements
// beyond it are compiled for one use.
const maxCached = 64

// Error is an SQLite error with its extended result code.
type Error struct {
	code int
	msg  string
}

func (e *Error) Error() string { return e.msg }

// Code returns the extended result code; Code()&0xff is the primary code.
func (e *Error) Code() int { return e.code }

type drv struct{}

func (drv) Open(dsn string) (driver.Conn, error) { return open(dsn) }

type conn struct {
	tls    *libc.TLS
	db     uintptr
	out    uintptr // scratch for the out-parameters of prepare
	stmts  map[string]*cstmt
	begin  string
	mu     sync.Mutex // orders interrupt against close
	closed bool
	itls   *libc.TLS // for interrupts, which come from other goroutines
}

// cstmt is a compiled statement.
type cstmt struct {
	p      uintptr
	cached bool
	busy   bool // a Rows is reading it
	cols   []string
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
	c := &conn{tls: libc.NewTLS(), stmts: map[string]*cstmt{}, begin: "BEGIN"}
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
	for _, p := range params["_pragma"] {
		if _, err := c.exec(context.Background(), "PRAGMA "+p, nil); err != nil {
			c.release()
			return nil, err
		}
	}
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
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	c.closed = true
	for _, s := range c.stmts {
		sqlite3.Xsqlite3_finalize(c.tls, s.p)
	}
	c.stmts = nil
	if c.db != 0 {
		sqlite3.Xsqlite3_close_v2(c.tls, c.db)
		c.db = 0
	}
	if c.out != 0 {
		libc.Xfree(c.tls, c.out)
	}
	if c.itls != nil {
		c.itls.Close()
	}
	c.tls.Close()
}

func (c *conn) Close() error {
	c.release()
	return nil
}

// interrupt stops the statement running on the connection.
func (c *conn) interrupt() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.db == 0 {
		return
	}
	if c.itls == nil {
		c.itls = libc.NewTLS()
	}
	sqlite3.Xsqlite3_interrupt(c.itls, c.db)
}

// watch interrupts the connection when ctx ends, until the returned
// function is called; after it returns no interrupt can reach a later
// statement.
func (c *conn) watch(ctx context.Context) func() {
	if ctx.Done() == nil {
		return func() {}
	}
	var mu sync.Mutex
	active := true
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if active {
			c.interrupt()
		}
	})
	return func() {
		if !stop() {
			mu.Lock()
			active = false
			mu.Unlock()
		}
	}
}

// prepare returns a compiled statement for query, from the cache when
// possible. tail reports SQL left after the first statement.
func (c *conn) prepare(query string) (*cstmt, string, error) {
	if s, ok := c.stmts[query]; ok && !s.busy {
		return s, "", nil
	}
	z, err := libc.CString(query)
	if err != nil {
		return nil, "", err
	}
	defer libc.Xfree(c.tls, z)
	pp, ptail := c.out, c.out+8
	if rc := sqlite3.Xsqlite3_prepare_v2(c.tls, c.db, z, -1, pp, ptail); rc != sqlite3.SQLITE_OK {
		return nil, "", c.errorFor(rc)
	}
	p := *(*uintptr)(cptr(pp))
	consumed := int(*(*uintptr)(cptr(ptail)) - z)
	tail := ""
	if consumed < len(query) {
		tail = strings.TrimSpace(query[consumed:])
	}
	s := &cstmt{p: p}
	if p != 0 && tail == "" && len(c.stmts) < maxCached {
		if _, taken := c.stmts[query]; !taken {
			s.cached = true
			c.stmts[query] = s
		}
	}
	return s, tail, nil
}

// done returns a statement after use: reset for the next, or finalized.
func (c *conn) done(s *cstmt) {
	if s.p == 0 {
		return
	}
	if s.cached {
		sqlite3.Xsqlite3_reset(c.tls, s.p)
		sqlite3.Xsqlite3_clear_bindings(c.tls, s.p)
		s.busy = false
		return
	}
	sqlite3.Xsqlite3_finalize(c.tls, s.p)
}

// bind binds args; the returned C strings must be freed after the
// statement has run.
func (c *conn) bind(s *cstmt, args []driver.NamedValue) ([]uintptr, error) {
	n := int(sqlite3.Xsqlite3_bind_parameter_count(c.tls, s.p))
	if len(args) != n {
		return nil, fmt.Errorf("sqlitedriver: statement takes %d arguments, got %d", n, len(args))
	}
	var allocs []uintptr
	for i, a := range args {
		idx := int32(i + 1)
		if a.Ordinal > 0 {
			idx = int32(a.Ordinal)
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
			p, err := c.cbytes(v)
			if err != nil {
				return allocs, err
			}
			if p != 0 {
				allocs = append(allocs, p)
			}
			rc = sqlite3.Xsqlite3_bind_text(c.tls, s.p, idx, p, int32(len(v)), sqlite3.SQLITE_STATIC)
		case []byte:
			p, err := c.cbytes(string(v))
			if err != nil {
				return allocs, err
			}
			if p != 0 {
				allocs = append(allocs, p)
			}
			if v == nil {
				rc = sqlite3.Xsqlite3_bind_null(c.tls, s.p, idx)
			} else {
				rc = sqlite3.Xsqlite3_bind_blob(c.tls, s.p, idx, p, int32(len(v)), sqlite3.SQLITE_STATIC)
			}
		case time.Time:
			t := v.UTC().Format("2006-01-02 15:04:05.999999999-07:00")
			p, err := c.cbytes(t)
			if err != nil {
				return allocs, err
			}
			allocs = append(allocs, p)
			rc = sqlite3.Xsqlite3_bind_text(c.tls, s.p, idx, p, int32(len(t)), sqlite3.SQLITE_STATIC)
		default:
			return allocs, fmt.Errorf("sqlitedriver: cannot bind %T", a.Value)
		}
		if rc != sqlite3.SQLITE_OK {
			return allocs, c.errorFor(rc)
		}
	}
	return allocs, nil
}

// cbytes copies s to C memory (not zero-terminated; lengths are passed).
// An empty s gives a valid non-NULL pointer so that ” stays ” and not
// NULL.
func (c *conn) cbytes(s string) (uintptr, error) {
	if len(s) > math.MaxInt32 {
		return 0, errors.New("sqlitedriver: value too large")
	}
	p := libc.Xmalloc(c.tls, uint64(max(len(s), 1)))
	if p == 0 {
		return 0, errors.New("sqlitedriver: out of memory")
	}
	if len(s) > 0 {
		copy(unsafe.Slice((*byte)(cptr(p)), len(s)), s)
	}
	return p, nil
}

func (c *conn) free(allocs []uintptr) {
	for _, p := range allocs {
		libc.Xfree(c.tls, p)
	}
}

// exec runs query (several statements are allowed when it has no
// arguments) to the end.
func (c *conn) exec(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	stop := c.watch(ctx)
	defer stop()
	var res result
	for query != "" {
		s, tail, err := c.prepare(query)
		if err != nil {
			return nil, c.ctxErr(ctx, err)
		}
		if tail != "" && len(args) > 0 {
			c.done(s)
			return nil, errors.New("sqlitedriver: arguments with several statements")
		}
		if s.p == 0 { // only whitespace or a comment
			query = tail
			continue
		}
		s.busy = true
		allocs, err := c.bind(s, args)
		if err == nil {
			err = c.run(s)
		}
		c.done(s)
		c.free(allocs)
		if err != nil {
			return nil, c.ctxErr(ctx, err)
		}
		res = result{changes: int64(sqlite3.Xsqlite3_changes64(c.tls, c.db)), lastID: int64(sqlite3.Xsqlite3_last_insert_rowid(c.tls, c.db))}
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

// ctxErr reports an interrupted statement as the context's error.
func (c *conn) ctxErr(ctx context.Context, err error) error {
	var se *Error
	if ctx.Err() != nil && errors.As(err, &se) && se.code&0xff == sqlite3.SQLITE_INTERRUPT {
		return fmt.Errorf("%w: %w", ctx.Err(), err)
	}
	return err
}

type result struct{ changes, lastID int64 }

func (r result) LastInsertId() (int64, error) { return r.lastID, nil }
func (r result) RowsAffected() (int64, error) { return r.changes, nil }

func (c *conn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	return c.exec(ctx, query, args)
}

func (c *conn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	s, tail, err := c.prepare(query)
	if err != nil {
		return nil, err
	}
	if tail != "" || s.p == 0 {
		c.done(s)
		return nil, errors.New("sqlitedriver: a query must be exactly one statement")
	}
	s.busy = true
	allocs, err := c.bind(s, args)
	if err != nil {
		c.done(s)
		c.free(allocs)
		return nil, err
	}
	if s.cols == nil {
		n := int(sqlite3.Xsqlite3_column_count(c.tls, s.p))
		s.cols = make([]string, n)
		for i := range s.cols {
			s.cols[i] = libc.GoString(sqlite3.Xsqlite3_column_name(c.tls, s.p, int32(i)))
		}
	}
	return &rows{c: c, s: s, allocs: allocs, stop: c.watch(ctx), ctx: ctx}, nil
}

// Prepare compiles query; the statement is executed through the
// connection's cache, so this only validates the SQL.
func (c *conn) Prepare(query string) (driver.Stmt, error) {
	return c.PrepareContext(context.Background(), query)
}

func (c *conn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	s, _, err := c.prepare(query)
	if err != nil {
		return nil, err
	}
	n := 0
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
	begin := c.begin
	if opts.ReadOnly {
		begin = "BEGIN"
	}
	if _, err := c.exec(ctx, begin, nil); err != nil {
		return nil, err
	}
	return tx{c}, nil
}

// ResetSession refuses a connection left inside a transaction.
func (c *conn) ResetSession(context.Context) error {
	if c.closed || sqlite3.Xsqlite3_get_autocommit(c.tls, c.db) == 0 {
		return driver.ErrBadConn
	}
	return nil
}

// IsValid reports whether the connection may be reused.
func (c *conn) IsValid() bool { return !c.closed }

type tx struct{ c *conn }

func (t tx) Commit() error {
	_, err := t.c.exec(context.Background(), "COMMIT", nil)
	return err
}

func (t tx) Rollback() error {
	if sqlite3.Xsqlite3_get_autocommit(t.c.tls, t.c.db) != 0 {
		return nil // SQLite already rolled back (after an I/O error, say)
	}
	_, err := t.c.exec(context.Background(), "ROLLBACK", nil)
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
	return s.c.exec(context.Background(), s.query, named(args))
}
func (s *stmt) Query(args []driver.Value) (driver.Rows, error) {
	return s.c.QueryContext(context.Background(), s.query, named(args))
}
func (s *stmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	return s.c.exec(ctx, s.query, args)
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

type rows struct {
	c      *conn
	s      *cstmt
	allocs []uintptr
	stop   func()
	ctx    context.Context
	closed bool
}

func (r *rows) Columns() []string { return r.s.cols }

func (r *rows) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	r.stop()
	r.c.done(r.s)
	r.c.free(r.allocs)
	return nil
}

func (r *rows) Next(dest []driver.Value) error {
	c, p := r.c, r.s.p
	switch rc := sqlite3.Xsqlite3_step(c.tls, p); rc {
	case sqlite3.SQLITE_ROW:
	case sqlite3.SQLITE_DONE:
		return io.EOF
	default:
		return c.ctxErr(r.ctx, c.errorFor(rc))
	}
	for i := range dest {
		col := int32(i)
		switch sqlite3.Xsqlite3_column_type(c.tls, p, col) {
		case sqlite3.SQLITE_INTEGER:
			dest[i] = int64(sqlite3.Xsqlite3_column_int64(c.tls, p, col))
		case sqlite3.SQLITE_FLOAT:
			dest[i] = sqlite3.Xsqlite3_column_double(c.tls, p, col)
		case sqlite3.SQLITE_TEXT:
			t := sqlite3.Xsqlite3_column_text(c.tls, p, col)
			n := int(sqlite3.Xsqlite3_column_bytes(c.tls, p, col))
			if t == 0 || n == 0 {
				dest[i] = ""
			} else {
				dest[i] = string(unsafe.Slice((*byte)(cptr(t)), n))
			}
		case sqlite3.SQLITE_BLOB:
			b := sqlite3.Xsqlite3_column_blob(c.tls, p, col)
			n := int(sqlite3.Xsqlite3_column_bytes(c.tls, p, col))
			out := make([]byte, n)
			if b != 0 && n > 0 {
				copy(out, unsafe.Slice((*byte)(cptr(b)), n))
			}
			dest[i] = out
		default:
			dest[i] = nil
		}
	}
	return nil
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
