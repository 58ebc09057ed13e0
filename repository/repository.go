// Package repository maps the GORM model to RetrySpool's metastorage
// contract. It is the only package that queries the database, and it serves
// SQLite, PostgreSQL and MySQL/MariaDB with the same code: what differs
// between engines lives in dialect.go.
//
// What GORM does here: it describes the schema (package model) and builds
// and upgrades it with AutoMigrate; it opens the connections and is how an
// application hands its own database in (New takes the application's
// *gorm.DB, and Transaction and WithTx share transactions with the
// application's own GORM code); it quotes names and writes placeholders in
// each engine's syntax; and transition hooks get the transaction as a
// *gorm.DB. The statements of the contract's hot paths are SQL text run
// through database/sql (stmt.go): building them with GORM's chainable API
// on every call would cost more than running them, and the same text lets
// the SQLite driver keep them compiled.
//
// Files: repository.go builds a repository; exec.go and executors.go are
// how statements run (one executor per write path), writer.go and
// checkpoint.go the SQLite group writer and its checkpointer; stmt.go the
// statements; contract.go, iterator.go and list.go the contract's methods;
// claim.go batches and claims; maintenance.go Stats, RequeueStale, Purge
// and BulkMove; migrate.go the schema; copy.go and backup.go copies.
package repository

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"regexp"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	"gorm.io/gorm"
	metastorage "schneider.vip/retryspool/storage/meta"

	"schneider.vip/retryspool/storage/meta/sqlite/internal/telemetry"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/wiring"
	"schneider.vip/retryspool/storage/meta/sqlite/model"
)

// Compile-time checks that the repository is a complete backend.
var (
	_ metastorage.Backend             = (*Repository)(nil)
	_ metastorage.StateCounterBackend = (*Repository)(nil)
)

const (
	// DefaultListLimit is the page size ListMessages uses when
	// MessageListOptions.Limit is 0.
	DefaultListLimit = 1000
	// MaxListLimit is the largest page ListMessages returns.
	MaxListLimit = 100000
	// DefaultBatchSize is the iterator's batch size when the caller asks
	// for 0 or less.
	DefaultBatchSize = 100
	// MaxBatchSize caps the iterator's batch, which bounds its memory.
	MaxBatchSize = 10000
	// maxTableName leaves room for the derived index and trigger names
	// within PostgreSQL's 63-byte identifier limit.
	maxTableName = 40
	// defaultLockWait is how long a write to an application's SQLite
	// database waits for another connection's write lock when the
	// connection sets no busy timeout of its own.
	defaultLockWait = 30 * time.Second
)

var tableNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// CheckTableName accepts names of letters, digits and underscores that do
// not start with a digit, at most 40 bytes, so that a table name never
// carries SQL.
func CheckTableName(name string) error {
	if len(name) == 0 || len(name) > maxTableName || !tableNameRE.MatchString(name) {
		return fmt.Errorf("%w: table name %q must match %s and be at most %d bytes",
			ErrInvalidInput, name, tableNameRE, maxTableName)
	}
	return nil
}

// Config is what an application chooses for a Repository.
type Config struct {
	// TableName is the message table; model.DefaultTableName when empty.
	// The counters live in <TableName>_counts.
	TableName string
	// Hooks run inside the transaction of every state change.
	Hooks []Hook
	// Logger receives the store's events (migrations, repairs, failed
	// checkpoints, long waits for locks, retried transactions, slow
	// calls, Close); nil logs nothing.
	Logger *slog.Logger
	// MeterProvider receives the store's OpenTelemetry metrics; nil
	// records none.
	MeterProvider metric.MeterProvider
	// TracerProvider receives a span per call; nil traces nothing.
	TracerProvider trace.TracerProvider
	// SlowThreshold logs calls slower than it at Warn; 0 does not.
	SlowThreshold time.Duration
}

// Repository implements metastorage.Backend and StateCounterBackend on a
// GORM database. It is safe for concurrent use.
type Repository struct {
	db    *gorm.DB // the database, for GORM's own use
	ex    executor
	view  bool // made by WithTx
	d     dialect
	t     tables
	s     stmts
	hooks []Hook
	tel   *telemetry.T
	life  *lifecycle
	prune *atomic.Int64 // when the write fence was last pruned (settle.go)
}

// New returns a repository on db, creating or upgrading the schema. db may
// be SQLite, PostgreSQL or MySQL/MariaDB, on a connection pool (for a
// transaction, see WithTx); Close does not close it.
//
// On SQLite the repository takes the database's write lock itself at the
// start of each write transaction (BEGIN IMMEDIATE, on a connection it
// borrows from db's pool for that transaction), whatever the driver and
// its DSN say, and concurrent writes share that transaction (group
// commit). A write waits for another connection's lock as long as the
// connections' busy_timeout says, or 30 seconds when it says 0.
func New(ctx context.Context, db *gorm.DB, cfg Config) (*Repository, error) {
	if db == nil {
		return nil, fmt.Errorf("%w: nil *gorm.DB", ErrInvalidInput)
	}
	if cfg.TableName == "" {
		cfg.TableName = model.DefaultTableName
	}
	if err := CheckTableName(cfg.TableName); err != nil {
		return nil, err
	}
	for i, h := range cfg.Hooks {
		if h == nil {
			return nil, fmt.Errorf("%w: hook %d is nil", ErrInvalidInput, i)
		}
	}
	if cfg.SlowThreshold < 0 {
		return nil, fmt.Errorf("%w: negative SlowThreshold %s", ErrInvalidInput, cfg.SlowThreshold)
	}
	d, err := dialectFor(db)
	if err != nil {
		return nil, err
	}
	pool, err := db.DB()
	if err != nil {
		return nil, fmt.Errorf("%w: New needs a *gorm.DB on a connection pool (for a transaction, use WithTx): %w", ErrInvalidInput, err)
	}
	var file *wiring.File
	if v, ok := db.Get(wiring.Key); ok {
		file, _ = v.(*wiring.File)
	}
	var r *Repository
	if file != nil && file.OnClose != nil {
		defer func() {
			if r == nil || r.ex == nil { // failed before the repository could own it
				_ = file.OnClose()
			}
		}()
	}
	tel, err := telemetry.New(telemetry.Config{
		Logger: cfg.Logger, MeterProvider: cfg.MeterProvider, TracerProvider: cfg.TracerProvider,
		SlowThreshold: cfg.SlowThreshold, Engine: d.system, Table: cfg.TableName, Outcome: outcome,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: telemetry: %w", ErrInvalidInput, err)
	}
	// The repository's own handle, on a statement of its own that no
	// longer carries the factory's wiring: a repository made with New on
	// r.DB() is an application's, not a second owner of the file.
	base := db.Session(&gorm.Session{NewDB: true, SkipDefaultTransaction: true, Context: context.Background()})
	base.Statement.Settings.Delete(wiring.Key)
	r = &Repository{
		db:    base,
		d:     d,
		t:     tablesOf(cfg.TableName),
		hooks: append([]Hook(nil), cfg.Hooks...),
		tel:   tel,
		life:  newLifecycle(),
		prune: new(atomic.Int64),
	}
	r.s = buildStmts(d, r.t)
	r.prune.Store(time.Now().UnixNano()) // the first prune of the fence a minute from now
	ex, err := r.executor(ctx, pool, file)
	if err != nil {
		return nil, err
	}
	r.ex = ex
	r.life.closers = append(r.life.closers, ex.close)
	if file != nil && file.OnClose != nil {
		r.life.closers = append(r.life.closers, file.OnClose)
	}
	if err := r.migrate(ctx); err != nil {
		_ = r.Close()
		return nil, err
	}
	if cfg.MeterProvider != nil {
		unregister, err := tel.ObserveQueue(r.queueSnapshot)
		if err != nil {
			_ = r.Close()
			return nil, fmt.Errorf("%w: register gauges: %w", ErrInvalidInput, err)
		}
		r.life.closers = append([]func() error{unregister}, r.life.closers...)
	}
	return r, nil
}

// executor chooses the repository's write path (see executor).
func (r *Repository) executor(ctx context.Context, pool *sql.DB, file *wiring.File) (executor, error) {
	reads := readPool{pool: pool, base: r.db, readTx: r.d.readTx}
	if r.d.name != sqliteDialect.name {
		return &serverExec{readPool: reads, writeTx: r.d.writeTx, d: r.d, tel: r.tel}, nil
	}
	if file == nil {
		wait, err := busyTimeout(ctx, pool)
		if err != nil {
			return nil, fmt.Errorf("read busy_timeout: %w", r.d.translate(err))
		}
		w := newGroupWriter(r.life.ctx, nil, pool, r.db, DefaultMaxGroupCommit, wait, r.tel)
		w.start()
		return &groupExec{readPool: reads, w: w}, nil
	}
	if file.Writer == nil {
		return &groupExec{readPool: reads}, nil
	}
	own, err := file.Writer.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("open the write connection: %w", r.d.translate(err))
	}
	w := newGroupWriter(r.life.ctx, own, nil, r.db, file.MaxGroupCommit, file.BusyTimeout, r.tel)
	if file.Checkpoint {
		w.ckpt = newCheckpointer(pool, r.tel)
	}
	w.start()
	return &groupExec{readPool: reads, w: w}, nil
}

// busyTimeout is how long a write to an application's SQLite database
// waits for the lock: the connections' busy_timeout, or defaultLockWait.
func busyTimeout(ctx context.Context, pool *sql.DB) (time.Duration, error) {
	var ms int64
	if err := pool.QueryRowContext(ctx, "PRAGMA busy_timeout").Scan(&ms); err != nil {
		return 0, err
	}
	if ms <= 0 {
		return defaultLockWait, nil
	}
	return time.Duration(ms) * time.Millisecond, nil
}

// WithTx returns a view of the repository whose every call runs inside the
// caller's transaction tx, so that metadata commits or rolls back with the
// caller's own writes. Each write of the view runs under a savepoint: a
// failed call leaves tx usable. The view must not outlive tx, and its
// Close does nothing.
func (r *Repository) WithTx(tx *gorm.DB) *Repository {
	v := *r
	v.ex = txExec{tx: tx.Session(&gorm.Session{NewDB: true, SkipDefaultTransaction: true})}
	v.view = true
	return &v
}

// Transaction runs fn in one write transaction of the repository and commits
// it when fn returns nil. Inside fn, r.WithTx(tx) stores and moves metadata
// in that transaction, beside the caller's own statements on tx. On SQLite
// this transaction is the group writer's, so fn should be short, and must
// not call the repository itself except through r.WithTx(tx).
func (r *Repository) Transaction(ctx context.Context, fn func(tx *gorm.DB) error) (err error) {
	ctx, c, err := r.enter(ctx, "Transaction", "", long)
	if err != nil {
		return err
	}
	defer func() { err = c.end(err) }()
	return r.closedOr(r.ex.write(ctx, func(cn conn) error { return fn(cn.gorm()) }))
}

// DB returns the *gorm.DB the repository reads from.
func (r *Repository) DB() *gorm.DB { return r.db }

// TableName is the message table.
func (r *Repository) TableName() string { return r.t.messages }

// Dialect names the engine: "sqlite", "postgres" or "mysql".
func (r *Repository) Dialect() string { return r.d.name }

// Close stops the repository: calls in flight return (those waiting for the
// database with ErrBackendClosed), later calls return ErrBackendClosed, and
// what the repository opened is closed. Close twice is not an error. On a
// WithTx view Close does nothing.
func (r *Repository) Close() error {
	if r.view {
		return nil
	}
	if r.tel != nil {
		r.tel.Log(context.Background(), slog.LevelInfo, "close")
	}
	return r.life.close()
}
