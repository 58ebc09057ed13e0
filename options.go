package sqlite

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	"gorm.io/gorm"

	"schneider.vip/retryspool/storage/meta/sqlite/model"
	"schneider.vip/retryspool/storage/meta/sqlite/repository"
)

// Defaults of the options, in one place.
const (
	DefaultDatabasePath   = "retryspool-meta.db"
	DefaultWALMode        = true
	DefaultBusyTimeout    = 30000 // milliseconds
	DefaultCacheSize      = 2000  // KiB
	DefaultJournalMode    = "WAL"
	DefaultSynchronous    = "NORMAL"
	DefaultMaxConnections = 10
	// DefaultMaxIdleConns is the idle read connections kept without
	// WithMaxIdleConns: as many as WithMaxConnections allows.
	DefaultMaxIdleConns   = DefaultMaxConnections
	DefaultForeignKeys    = true
	DefaultAutoVacuum     = "INCREMENTAL"
	DefaultTableName      = model.DefaultTableName
	DefaultMaxGroupCommit = repository.DefaultMaxGroupCommit
)

var (
	journalModes = []string{"DELETE", "TRUNCATE", "PERSIST", "MEMORY", "WAL", "OFF"}
	syncModes    = []string{"OFF", "NORMAL", "FULL", "EXTRA"}
	vacuumModes  = []string{"NONE", "FULL", "INCREMENTAL"}
)

// Option configures a Factory.
type Option func(*config)

type config struct {
	path           string
	walMode        bool
	walModeSet     bool
	busyTimeout    int
	cacheSize      int
	journalMode    string
	journalModeSet bool
	synchronous    string
	maxConns       int
	maxIdle        int
	maxIdleSet     bool
	foreignKeys    bool
	autoVacuum     string
	tableName      string
	maxGroupCommit int
	db             *gorm.DB
	dbSet          bool
	hooks          []repository.Hook

	// Set by the options of opsOptions (below).
	fileOptions    []string // the SQLite file options given, by name, for the WithDB conflict check
	readOnly       bool
	integrityCheck bool
	logger         *slog.Logger
	meterProvider  metric.MeterProvider
	tracerProvider trace.TracerProvider
	slowThreshold  time.Duration
}

func defaultConfig() config {
	return config{
		path:           DefaultDatabasePath,
		walMode:        DefaultWALMode,
		busyTimeout:    DefaultBusyTimeout,
		cacheSize:      DefaultCacheSize,
		journalMode:    DefaultJournalMode,
		synchronous:    DefaultSynchronous,
		maxConns:       DefaultMaxConnections,
		maxIdle:        DefaultMaxIdleConns,
		foreignKeys:    DefaultForeignKeys,
		autoVacuum:     DefaultAutoVacuum,
		tableName:      DefaultTableName,
		maxGroupCommit: DefaultMaxGroupCommit,
	}
}

// WithDatabasePath sets the SQLite file. Missing parent directories are
// created. Default "retryspool-meta.db".
func WithDatabasePath(path string) Option {
	return func(c *config) { c.path = path; c.fileOption("WithDatabasePath") }
}

// WithWALMode chooses write-ahead logging (true, the default) or not.
// WithWALMode(true) means journal mode WAL. WithWALMode(false) means
// journal mode DELETE unless WithJournalMode names another non-WAL mode.
// Asking for WAL mode off and journal mode WAL at once, or WAL mode on
// and another journal mode, is a configuration error reported by Create.
func WithWALMode(on bool) Option {
	return func(c *config) { c.walMode, c.walModeSet = on, true; c.fileOption("WithWALMode") }
}

// WithBusyTimeout sets how long, in milliseconds, a connection waits for a
// lock held by another connection or process before giving up with ErrBusy.
// Default 30000.
func WithBusyTimeout(ms int) Option {
	return func(c *config) { c.busyTimeout = ms; c.fileOption("WithBusyTimeout") }
}

// WithCacheSize sets the page cache of each connection in KiB. Default 2000.
func WithCacheSize(kib int) Option {
	return func(c *config) { c.cacheSize = kib; c.fileOption("WithCacheSize") }
}

// WithJournalMode sets the journal mode: DELETE, TRUNCATE, PERSIST, MEMORY,
// WAL or OFF (case-insensitive). Default WAL. See WithWALMode.
func WithJournalMode(mode string) Option {
	return func(c *config) {
		c.journalMode, c.journalModeSet = strings.ToUpper(mode), true
		c.fileOption("WithJournalMode")
	}
}

// WithSynchronous sets how hard SQLite pushes commits to disk: OFF, NORMAL,
// FULL or EXTRA (case-insensitive). Default NORMAL. In WAL mode, NORMAL
// survives a crash of the process (every commit is in the WAL file, written
// before the call returns) but the last commits before a power loss or OS
// crash may be rolled back; FULL also survives power loss, at the price of
// an fsync per commit (shared by group-committed writers). See the README.
func WithSynchronous(mode string) Option {
	return func(c *config) { c.synchronous = strings.ToUpper(mode); c.fileOption("WithSynchronous") }
}

// WithMaxConnections caps the pool of read connections. Writes go through
// one more connection of their own. Default 10.
func WithMaxConnections(n int) Option {
	return func(c *config) { c.maxConns = n; c.fileOption("WithMaxConnections") }
}

// WithMaxIdleConns sets how many idle read connections are kept. Default:
// as many as WithMaxConnections allows, so that the connections opened for
// concurrent readers serve the next ones instead of being closed and
// opened again (a new SQLite connection reads the schema and compiles its
// statements anew).
func WithMaxIdleConns(n int) Option {
	return func(c *config) { c.maxIdle, c.maxIdleSet = n, true; c.fileOption("WithMaxIdleConns") }
}

// idleConns is how many idle read connections the pool keeps.
func (c *config) idleConns() int {
	if c.maxIdleSet {
		return c.maxIdle
	}
	return c.maxConns
}

// WithForeignKeys turns SQLite's foreign key enforcement on or off on every
// connection. Default true.
func WithForeignKeys(on bool) Option {
	return func(c *config) { c.foreignKeys = on; c.fileOption("WithForeignKeys") }
}

// WithAutoVacuum sets the auto-vacuum mode: NONE, FULL or INCREMENTAL
// (case-insensitive). Default INCREMENTAL. SQLite applies it only to a
// database that has no table yet, so it takes effect for new files; an
// existing file keeps its mode until VACUUM.
func WithAutoVacuum(mode string) Option {
	return func(c *config) { c.autoVacuum = strings.ToUpper(mode); c.fileOption("WithAutoVacuum") }
}

// WithTableName sets the message table, so that several queues can share
// one database or the name can fit an application's schema. Letters,
// digits and underscores, at most 40 bytes. Default "messages".
func WithTableName(name string) Option { return func(c *config) { c.tableName = name } }

// WithMaxGroupCommit caps how many concurrent writes share one SQLite
// transaction and commit. 1 turns group commit off. Default 256.
func WithMaxGroupCommit(n int) Option {
	return func(c *config) { c.maxGroupCommit = n; c.fileOption("WithMaxGroupCommit") }
}

// WithDB makes the factory use an application's own *gorm.DB (SQLite,
// PostgreSQL or MySQL/MariaDB) instead of opening a SQLite file. Close
// leaves db open. The options that configure the file the factory opens
// (WithDatabasePath, WithSynchronous, WithJournalMode, WithWALMode,
// WithBusyTimeout, WithCacheSize, WithForeignKeys, WithAutoVacuum,
// WithMaxConnections, WithMaxIdleConns, WithMaxGroupCommit, WithReadOnly,
// WithIntegrityCheck) cannot apply to it: given together with WithDB they
// are an ErrConfig naming them, so that nobody believes in a durability
// setting that is not in force.
func WithDB(db *gorm.DB) Option { return func(c *config) { c.db, c.dbSet = db, true } }

// WithTransitionHook adds a hook that runs inside the transaction of every
// state change; see TransitionHook.
func WithTransitionHook(h TransitionHook) Option {
	return func(c *config) { c.hooks = append(c.hooks, h) }
}

// WithStrictTransitions enforces RetrySpool's state diagram (see
// AllowedTransition) with a transition hook. It is off by default, because
// RetrySpool itself also makes moves outside the diagram.
func WithStrictTransitions() Option { return WithTransitionHook(StrictTransitions) }

// WithLogger makes the store log through l: migrations and upgrades,
// repairs, checkpoints that failed or stayed busy while the WAL grew, waits
// for another process's lock, transactions retried after deadlocks, calls
// slower than WithSlowThreshold, failed calls, and Close. Nothing is logged
// at Info or above for a call that went well; every call is logged at
// Debug. Each record carries the attributes operation, table, engine,
// duration and, when there is one, error. Default: no logs.
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.logger = l } }

// WithMeterProvider makes the store record OpenTelemetry metrics through
// mp: db.client.operation.duration (seconds) per operation and outcome,
// group-commit sizes and latency, lock waits, retries, checkpoints and WAL
// pages, and observable gauges of the messages per state, the age of the
// oldest message per state and the due deferred messages, read from the
// store's counters and indexes at each collection. See the README's
// Observability section for the names. Default: no metrics.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(c *config) { c.meterProvider = mp }
}

// WithTracerProvider makes the store start an OpenTelemetry span of kind
// client per call, with the database attributes of the semantic
// conventions and the message ID, and its error recorded. Default: no
// spans.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(c *config) { c.tracerProvider = tp }
}

// WithSlowThreshold logs calls that take longer than d at Warn through the
// logger of WithLogger, and lock waits longer than d at Info. 0 (the
// default) logs no slow calls; a negative d is a configuration error.
func WithSlowThreshold(d time.Duration) Option { return func(c *config) { c.slowThreshold = d } }

// ErrConfig reports an invalid option; Create returns it wrapped with the
// details.
var ErrConfig = errors.New("invalid configuration")

// validate checks the whole configuration once and resolves the journal
// mode.
func (c *config) validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrConfig}, args...)...))
	}
	if c.dbSet && c.db == nil {
		bad("WithDB(nil)")
	}
	if err := repository.CheckTableName(c.tableName); err != nil {
		bad("%v", err)
	}
	if c.maxGroupCommit < 1 {
		bad("WithMaxGroupCommit(%d): must be at least 1", c.maxGroupCommit)
	}
	for i, h := range c.hooks {
		if h == nil {
			bad("transition hook %d is nil", i)
		}
	}
	if c.slowThreshold < 0 {
		bad("WithSlowThreshold(%s): must not be negative", c.slowThreshold)
	}
	if c.dbSet {
		if len(c.fileOptions) > 0 {
			bad("WithDB cannot go with %s: they configure the SQLite file the factory opens, and the database handed in is configured by its opener", strings.Join(c.fileOptions, ", "))
		}
		return errors.Join(errs...)
	}
	switch {
	case c.path == "":
		bad("empty database path")
	case c.path == ":memory:" || strings.HasPrefix(c.path, "file:"):
		bad("database path %q: give a file path (an in-memory database is not shared between connections; use a file in a temporary directory)", c.path)
	case strings.IndexByte(c.path, 0) >= 0:
		bad("database path contains a NUL byte")
	}
	if c.busyTimeout < 0 {
		bad("WithBusyTimeout(%d): must not be negative", c.busyTimeout)
	}
	if c.cacheSize < 0 {
		bad("WithCacheSize(%d): must not be negative", c.cacheSize)
	}
	if c.maxConns < 1 {
		bad("WithMaxConnections(%d): must be at least 1", c.maxConns)
	}
	if c.maxIdle < 0 {
		bad("WithMaxIdleConns(%d): must not be negative", c.maxIdle)
	}
	if !oneOf(c.journalMode, journalModes) {
		bad("WithJournalMode(%q): want one of %v", c.journalMode, journalModes)
	}
	if !oneOf(c.synchronous, syncModes) {
		bad("WithSynchronous(%q): want one of %v", c.synchronous, syncModes)
	}
	if !oneOf(c.autoVacuum, vacuumModes) {
		bad("WithAutoVacuum(%q): want one of %v", c.autoVacuum, vacuumModes)
	}
	switch {
	case c.walModeSet && !c.walMode && c.journalModeSet && c.journalMode == "WAL":
		bad("WithWALMode(false) conflicts with WithJournalMode(\"WAL\")")
	case c.walModeSet && c.walMode && c.journalModeSet && c.journalMode != "WAL":
		bad("WithWALMode(true) conflicts with WithJournalMode(%q)", c.journalMode)
	case !c.walMode && c.journalMode == "WAL":
		c.journalMode = "DELETE"
	}
	return errors.Join(errs...)
}

func oneOf(s string, set []string) bool {
	for _, v := range set {
		if s == v {
			return true
		}
	}
	return false
}

// Options of safe operation: read-only access and the integrity check.
// (Kept together; see opsOptions in the README.)

// WithReadOnly opens the SQLite file for reading only, for an operator
// who may read the file but not write its directory (or must not change
// it). While another process has the database open in WAL mode (its
// -wal and -shm files exist), the file is read as the sqlite3 shell
// reads it then, seeing every committed write; without a -wal file it is
// opened immutable, which needs no lock and creates no file. Every write
// then fails. The open creates no -wal, -shm or journal file.
func WithReadOnly() Option {
	return func(c *config) { c.readOnly = true; c.fileOption("WithReadOnly") }
}

// WithIntegrityCheck(true) runs SQLite's PRAGMA quick_check on an
// existing file before using it, and refuses it with ErrNotDatabase when
// the check fails. The check reads the whole file, so it takes time in
// proportion to its size (about a second per 300 MB); without it, the
// open inspects only the header, the schema and the edges of every
// b-tree, whatever the file's size. Default false.
func WithIntegrityCheck(on bool) Option {
	return func(c *config) { c.integrityCheck = on; c.fileOption("WithIntegrityCheck") }
}

// fileOption records that an option of the SQLite file was given.
func (c *config) fileOption(name string) {
	for _, n := range c.fileOptions {
		if n == name {
			return
		}
	}
	c.fileOptions = append(c.fileOptions, name)
}
