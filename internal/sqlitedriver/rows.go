package sqlitedriver

import (
	"context"
	"database/sql/driver"
	"errors"
	"io"
	"strings"
	"time"
	"unsafe"

	"modernc.org/libc"
	sqlite3 "modernc.org/sqlite/lib"
)

// query runs the first step of a one-statement query; the caller has
// entered the call. The step comes first so that the column names are
// those of the statement as SQLite runs it, recompiled after a schema
// change.
func (c *conn) query(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	s, tail, err := c.prepare(query)
	if err != nil {
		return nil, c.ctxErr(ctx, err)
	}
	if tail != "" || s.p == 0 {
		c.done(s)
		return nil, errors.New("sqlitedriver: a query must be exactly one statement")
	}
	if err := c.checkReadOnly(s); err != nil {
		c.done(s)
		return nil, err
	}
	s.busy = true
	if err := c.bind(s, args); err != nil {
		c.done(s)
		return nil, err
	}
	rc := sqlite3.Xsqlite3_step(c.tls, s.p)
	if rc != sqlite3.SQLITE_ROW && rc != sqlite3.SQLITE_DONE {
		err := c.errorFor(rc)
		c.done(s)
		c.after(s.kind, err)
		return nil, c.ctxErr(ctx, err)
	}
	c.after(s.kind, nil)
	if !s.cacheable {
		c.ensureBusyHandler()
	}
	c.columns(s)
	return &rows{c: c, s: s, ctx: ctx, first: rc, cols: s.cols, decl: s.decl}, nil
}

// columns reads the statement's column names and declared types, unless
// they were read since SQLite last compiled it.
func (c *conn) columns(s *cstmt) {
	at := sqlite3.Xsqlite3_stmt_status(c.tls, s.p, sqlite3.SQLITE_STMTSTATUS_REPREPARE, 0)
	if s.cols != nil && s.colsAt == at {
		return
	}
	n := int(sqlite3.Xsqlite3_column_count(c.tls, s.p))
	s.cols, s.decl = make([]string, n), make([]string, n)
	for i := range n {
		s.cols[i] = libc.GoString(sqlite3.Xsqlite3_column_name(c.tls, s.p, int32(i)))
		s.decl[i] = strings.ToUpper(libc.GoString(sqlite3.Xsqlite3_column_decltype(c.tls, s.p, int32(i))))
	}
	s.colsAt = at
}

type rows struct {
	c      *conn
	s      *cstmt
	ctx    context.Context
	first  int32 // the result of the step query took, for the first Next
	cols   []string
	decl   []string
	closed bool
}

func (r *rows) Columns() []string { return r.cols }

// ColumnTypeDatabaseTypeName returns the declared type of a column of a
// table, in upper case ("" for an expression).
func (r *rows) ColumnTypeDatabaseTypeName(i int) string { return r.decl[i] }

func (r *rows) Close() error {
	c := r.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	if !c.closed {
		c.done(r.s)
	}
	return nil
}

func (r *rows) Next(dest []driver.Value) error {
	c := r.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if r.closed || c.closed || r.s.p == 0 {
		return errors.New("sqlitedriver: rows are closed")
	}
	p := r.s.p
	rc := r.first
	if rc != 0 {
		r.first = 0
	} else {
		if err := c.enter(r.ctx); err != nil {
			return err
		}
		rc = sqlite3.Xsqlite3_step(c.tls, p)
		c.leave()
	}
	switch rc {
	case sqlite3.SQLITE_ROW:
	case sqlite3.SQLITE_DONE:
		return io.EOF
	default:
		err := c.errorFor(rc)
		c.after(r.s.kind, err)
		return c.ctxErr(r.ctx, err)
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
			v := ""
			if t != 0 && n > 0 {
				v = string(unsafe.Slice((*byte)(cptr(t)), n))
			}
			dest[i] = v
			switch r.decl[i] {
			case "DATE", "DATETIME", "TIMESTAMP":
				if tm, ok := parseTime(v); ok {
					dest[i] = tm
				}
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

// timeFormats are the layouts of text a DATE, DATETIME or TIMESTAMP column
// is read as a time.Time from: those of SQLite's date functions, with and
// without a zone, which is what the glebarez driver reads.
var timeFormats = []string{
	"2006-01-02 15:04:05.999999999-07:00",
	"2006-01-02T15:04:05.999999999-07:00",
	"2006-01-02 15:04:05.999999999",
	"2006-01-02T15:04:05.999999999",
	"2006-01-02 15:04:05",
	"2006-01-02T15:04:05",
	"2006-01-02 15:04",
	"2006-01-02T15:04",
	"2006-01-02",
}

// parseTime reads s as a time, in UTC when it names no zone; it also takes
// what time.Time.String writes.
func parseTime(s string) (time.Time, bool) {
	if x := strings.Index(s, " m="); x > 0 {
		s = s[:x]
	}
	if t, err := time.Parse("2006-01-02 15:04:05.999999999 -0700 MST", strings.TrimSpace(s)); err == nil {
		return t, true
	}
	ts := strings.TrimSuffix(s, "Z")
	for _, f := range timeFormats {
		if t, err := time.ParseInLocation(f, ts, time.UTC); err == nil {
			return t, true
		}
	}
	return time.Time{}, false
}

var _ driver.RowsColumnTypeDatabaseTypeName = (*rows)(nil)
