// Package faultdb opens a PostgreSQL or MySQL/MariaDB database through a
// driver wrapper that loses the connection at one chosen moment: just
// before a chosen statement or COMMIT reaches the server (the write does
// not land), or just after the server ran it and before its answer comes
// back (the write landed). Either way the caller gets the error of a
// connection that died, as from a killed session, and the connection is
// closed, so the server ends its session.
package faultdb

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"

	gomysql "github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5/stdlib"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"gorm.io/driver/mysql"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"schneider.vip/retryspool/storage/meta/sqlite/internal/telemetry"
)

// When is the moment a fault strikes.
type When int

const (
	// Before: the statement or COMMIT never reaches the server.
	Before When = iota + 1
	// After: the server ran it; its answer is lost.
	After
)

// ErrLost is what a faulted call returns; it wraps io.ErrUnexpectedEOF as
// a driver's error for a connection that died in the middle of a reply.
var ErrLost = fmt.Errorf("faultdb: connection lost: %w", io.ErrUnexpectedEOF)

// Commit is the match of Arm that picks a transaction's COMMIT.
const Commit = "COMMIT"

// Faults arms and counts the faults of one database.
type Faults struct {
	mu      sync.Mutex
	when    When
	match   string // a substring of the statement, or Commit
	struck  int    // faults that struck
	matched int    // calls that matched since Arm, the faulted one included
	query   string // the faulted statement
	args    []driver.NamedValue
	down    bool // every call fails, every connect too
	downOn  bool // go down when the armed fault strikes
}

// Arm makes the next call that matches (a statement whose text contains
// match, or, with Commit, the next COMMIT) fail as when says; calls after
// it are only counted.
func (f *Faults) Arm(when When, match string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.when, f.match, f.matched, f.args, f.downOn = when, match, 0, nil, false
}

// ArmDown is Arm, and the database then goes down (see Down) as the fault
// strikes, until Up.
func (f *Faults) ArmDown(when When, match string) {
	f.Arm(when, match)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.downOn = true
}

// Down makes every later call and connect fail as on a lost connection.
func (f *Faults) Down() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down = true
}

// Up ends Down.
func (f *Faults) Up() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down = false
}

func (f *Faults) isDown() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.down
}

// Query returns the text of the faulted statement.
func (f *Faults) Query() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.query
}

// Struck returns how many faults struck so far.
func (f *Faults) Struck() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.struck
}

// Matched returns how many calls matched the armed pattern since Arm,
// the faulted one included: 2 when the store ran the write again.
func (f *Faults) Matched() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.matched
}

// Args returns the arguments of the faulted statement.
func (f *Faults) Args() []any {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]any, len(f.args))
	for i, a := range f.args {
		out[i] = a.Value
	}
	return out
}

// strike reports whether the call, a statement's text or Commit, is the
// one to fault, and when; it disarms the fault.
func (f *Faults) strike(call string, args []driver.NamedValue) When {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.match == "" || !(call == f.match || f.match != Commit && strings.Contains(call, f.match)) {
		return 0
	}
	f.matched++
	w := f.when
	if w == 0 {
		return 0
	}
	f.when, f.query, f.args = 0, call, append([]driver.NamedValue(nil), args...)
	f.struck++
	if f.downOn {
		f.down, f.downOn = true, false
	}
	return w
}

// Open opens engine ("postgres" or "mysql") at dsn through the wrapper.
func Open(tb testing.TB, engine, dsn string) (*gorm.DB, *Faults) {
	tb.Helper()
	f := &Faults{}
	var drv driver.Driver
	switch engine {
	case "postgres":
		drv = stdlib.GetDefaultDriver()
	case "mysql":
		drv = &gomysql.MySQLDriver{}
	default:
		tb.Fatalf("faultdb: engine %q", engine)
	}
	pool := sql.OpenDB(connector{drv: drv, dsn: dsn, f: f})
	pool.SetMaxOpenConns(8)
	tb.Cleanup(func() { pool.Close() })
	var d gorm.Dialector = postgres.New(postgres.Config{Conn: pool})
	if engine == "mysql" {
		d = mysql.New(mysql.Config{Conn: pool})
	}
	db, err := gorm.Open(d, &gorm.Config{Logger: logger.Discard, SkipDefaultTransaction: true})
	if err != nil {
		tb.Fatalf("faultdb: open %s: %v", engine, err)
	}
	return db, f
}

type connector struct {
	drv driver.Driver
	dsn string
	f   *Faults
}

func (c connector) Connect(context.Context) (driver.Conn, error) {
	if c.f.isDown() {
		return nil, ErrLost
	}
	dc, err := c.drv.Open(c.dsn)
	if err != nil {
		return nil, err
	}
	return &conn{Conn: dc, f: c.f}, nil
}

func (c connector) Driver() driver.Driver { return c.drv }

// conn wraps a driver's connection; after a fault it is dead.
type conn struct {
	driver.Conn
	f    *Faults
	dead bool
}

// lose closes the real connection: the server ends the session, rolling
// back what it had not committed.
func (c *conn) lose() error {
	c.dead = true
	_ = c.Conn.Close()
	return ErrLost
}

func (c *conn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	if c.dead {
		return nil, driver.ErrBadConn
	}
	if c.f.isDown() {
		return nil, c.lose()
	}
	ex, ok := c.Conn.(driver.ExecerContext)
	if !ok {
		return nil, driver.ErrSkip
	}
	w := c.f.strike(query, args)
	if w == Before {
		return nil, c.lose()
	}
	res, err := ex.ExecContext(ctx, query, args)
	if errors.Is(err, driver.ErrSkip) { // the driver wants a prepared statement
		res, err = c.execPrepared(ctx, query, args)
	}
	if w == After {
		return nil, c.lose()
	}
	return res, err
}

func (c *conn) execPrepared(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	st, err := c.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	sx, ok := st.(driver.StmtExecContext)
	if !ok {
		return nil, errors.New("faultdb: statement without ExecContext")
	}
	return sx.ExecContext(ctx, args)
}

func (c *conn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	if c.dead {
		return nil, driver.ErrBadConn
	}
	if c.f.isDown() {
		return nil, c.lose()
	}
	q, ok := c.Conn.(driver.QueryerContext)
	if !ok {
		return nil, driver.ErrSkip
	}
	return q.QueryContext(ctx, query, args)
}

func (c *conn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	if p, ok := c.Conn.(driver.ConnPrepareContext); ok {
		return p.PrepareContext(ctx, query)
	}
	return c.Conn.Prepare(query)
}

func (c *conn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	if c.dead {
		return nil, driver.ErrBadConn
	}
	if c.f.isDown() {
		return nil, c.lose()
	}
	b, ok := c.Conn.(driver.ConnBeginTx)
	if !ok {
		return nil, errors.New("faultdb: driver without BeginTx")
	}
	tx, err := b.BeginTx(ctx, opts)
	if err != nil {
		return nil, err
	}
	return &faultTx{Tx: tx, c: c}, nil
}

func (c *conn) CheckNamedValue(v *driver.NamedValue) error {
	if nc, ok := c.Conn.(driver.NamedValueChecker); ok {
		return nc.CheckNamedValue(v)
	}
	return driver.ErrSkip
}

func (c *conn) ResetSession(ctx context.Context) error {
	if c.dead {
		return driver.ErrBadConn
	}
	if r, ok := c.Conn.(driver.SessionResetter); ok {
		return r.ResetSession(ctx)
	}
	return nil
}

func (c *conn) IsValid() bool {
	if c.dead {
		return false
	}
	if v, ok := c.Conn.(driver.Validator); ok {
		return v.IsValid()
	}
	return true
}

func (c *conn) Ping(ctx context.Context) error {
	if c.dead {
		return driver.ErrBadConn
	}
	if p, ok := c.Conn.(driver.Pinger); ok {
		return p.Ping(ctx)
	}
	return nil
}

func (c *conn) Close() error {
	if c.dead {
		return nil
	}
	return c.Conn.Close()
}

type faultTx struct {
	driver.Tx
	c *conn
}

func (t *faultTx) Commit() error {
	switch t.c.f.strike(Commit, nil) {
	case Before:
		return t.c.lose()
	case After:
		_ = t.Tx.Commit()
		return t.c.lose()
	}
	return t.Tx.Commit()
}

func (t *faultTx) Rollback() error {
	if t.c.dead {
		return nil
	}
	return t.Tx.Rollback()
}

// Settled reads, from the reader of a store's meter provider, how many
// writes the store settled after their connection died, by verdict
// ("landed", "not_landed", "unknown").
func Settled(tb testing.TB, reader *sdkmetric.ManualReader) map[string]int64 {
	tb.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		tb.Fatalf("faultdb: collect the metrics: %v", err)
	}
	out := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != telemetry.MetricSettled {
				continue
			}
			for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
				v, _ := dp.Attributes.Value(telemetry.AttrOutcome)
				out[v.AsString()] += dp.Value
			}
		}
	}
	return out
}
