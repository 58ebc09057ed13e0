package sqlite

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/glebarez/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
	metastorage "schneider.vip/retryspool/storage/meta"

	"schneider.vip/retryspool/storage/meta/sqlite/internal/sqlitedriver"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/wiring"
	"schneider.vip/retryspool/storage/meta/sqlite/repository"
)

// FactoryName is what Factory.Name returns.
const FactoryName = "sqlite-meta"

// Repository is the backend Create returns: a metastorage.Backend and
// metastorage.StateCounterBackend with batch and queue operations beyond the
// contract.
type Repository = repository.Repository

// Errors of the library, matched with errors.Is.
var (
	ErrInvalidInput   = repository.ErrInvalidInput
	ErrBusy           = repository.ErrBusy
	ErrSchemaTooNew   = repository.ErrSchemaTooNew
	ErrForeignTable   = repository.ErrForeignTable
	ErrIteratorClosed = repository.ErrIteratorClosed
	ErrCopyMismatch   = repository.ErrCopyMismatch
	ErrReadOnly       = repository.ErrReadOnly
	ErrReentrantCall  = repository.ErrReentrantCall
	ErrOutcomeUnknown = repository.ErrOutcomeUnknown

	// ErrNotDatabase reports a database path whose file is not a SQLite
	// database, or is truncated or corrupt. The file is left untouched.
	ErrNotDatabase = errors.New("not a usable SQLite database")
	// ErrPath reports a database path that cannot be used: a directory, a
	// read-only file or directory, a parent that cannot be created.
	ErrPath = errors.New("database path not usable")
)

// Factory creates metadata backends; it implements metastorage.Factory.
type Factory struct {
	opts []Option
}

var _ metastorage.Factory = (*Factory)(nil)

// NewFactory returns a factory with the given options. Options are checked
// by Create, which reports every problem at once.
func NewFactory(opts ...Option) *Factory {
	return &Factory{opts: append([]Option(nil), opts...)}
}

// Name returns "sqlite-meta".
func (f *Factory) Name() string { return FactoryName }

// Create opens the backend: the SQLite file of the options, or the
// application's database given with WithDB, creating or upgrading the
// schema. The result also implements metastorage.StateCounterBackend and
// is a *Repository.
func (f *Factory) Create() (metastorage.Backend, error) {
	r, err := f.Open(context.Background())
	if err != nil {
		return nil, err
	}
	return r, nil
}

// Open is Create with a context and the concrete type.
func (f *Factory) Open(ctx context.Context) (*Repository, error) {
	c := defaultConfig()
	for _, o := range f.opts {
		if o != nil {
			o(&c)
		}
	}
	if err := c.validate(); err != nil {
		return nil, fmt.Errorf("sqlite-meta: %w", err)
	}
	rc := repository.Config{
		TableName: c.tableName, Hooks: c.hooks,
		Logger: c.logger, MeterProvider: c.meterProvider, TracerProvider: c.tracerProvider, SlowThreshold: c.slowThreshold,
	}
	if c.db != nil {
		r, err := repository.New(ctx, c.db, rc)
		if err != nil {
			return nil, fmt.Errorf("sqlite-meta: %w", err)
		}
		return r, nil
	}
	r, err := openFile(ctx, c, rc)
	if err != nil {
		return nil, fmt.Errorf("sqlite-meta: open %s: %w", c.path, err)
	}
	return r, nil
}

// gormConfig is how this library opens GORM: no default transaction around
// single statements (every write here is already in one), no logging, and
// driver errors translated where the dialector can.
func gormConfig() *gorm.Config {
	return &gorm.Config{
		SkipDefaultTransaction: true,
		Logger:                 logger.Discard,
		TranslateError:         true,
	}
}

// openFile opens a SQLite file with a read pool and one write connection,
// or, with WithReadOnly, with a read pool only.
func openFile(ctx context.Context, c config, rc repository.Config) (*Repository, error) {
	if c.readOnly {
		return openReadOnly(ctx, c, rc)
	}
	path, exists, err := checkPath(c.path)
	if err != nil {
		return nil, err
	}
	if exists {
		// Decide on a read-only connection whether the file can be used,
		// so that a foreign or too new database is refused unchanged.
		if err := probe(ctx, path, c); err != nil {
			return nil, err
		}
	}
	// The writer connects first: its auto_vacuum setting must reach a new
	// file before the first journal_mode(WAL) does.
	writer, err := gorm.Open(dialector(dsn(path, c, true)), gormConfig())
	if err != nil {
		return nil, translateOpen(err)
	}
	writePool, _ := writer.DB()
	// The repository's group writer takes this pool's one connection
	// for its own, for the store's life.
	writePool.SetMaxOpenConns(1)
	writePool.SetMaxIdleConns(1)
	writePool.SetConnMaxIdleTime(0)
	writePool.SetConnMaxLifetime(0)

	if err := writePool.PingContext(ctx); err != nil {
		writePool.Close()
		return nil, translateOpen(err)
	}

	reader, err := gorm.Open(dialector(dsn(path, c, false)), gormConfig())
	if err != nil {
		writePool.Close()
		return nil, translateOpen(err)
	}
	readPool, _ := reader.DB()
	readPool.SetMaxOpenConns(c.maxConns)
	readPool.SetMaxIdleConns(c.idleConns())

	file := &wiring.File{
		Writer:         writePool,
		BusyTimeout:    time.Duration(c.busyTimeout) * time.Millisecond,
		MaxGroupCommit: c.maxGroupCommit,
		Checkpoint:     c.journalMode == "WAL",
		OnClose:        func() error { return errors.Join(writePool.Close(), readPool.Close()) },
	}
	r, err := newRepository(ctx, reader, file, rc)
	if err != nil {
		return nil, translateOpen(err)
	}
	return r, nil
}

// openReadOnly opens an existing file for reading only, creating no file
// beside it: while the -wal file exists (the queue runs, or stopped
// without cleaning up), as a mode=ro connection, which reads the WAL
// through the existing -shm as the sqlite3 shell does; otherwise
// immutable, which takes no lock and needs no -shm.
func openReadOnly(ctx context.Context, c config, rc repository.Config) (*Repository, error) {
	path, err := checkReadablePath(c.path)
	if err != nil {
		return nil, err
	}
	dsn := readOnlyDSN(path, c)
	db, err := gorm.Open(dialector(dsn), gormConfig())
	if err != nil {
		return nil, translateOpen(err)
	}
	pool, _ := db.DB()
	pool.SetMaxOpenConns(c.maxConns)
	pool.SetMaxIdleConns(c.idleConns())
	if err := inspect(ctx, db, path, c); err != nil {
		pool.Close()
		return nil, err
	}
	// No Writer: the repository is read-only; its migration only checks
	// and every write returns an error wrapping repository.ErrReadOnly.
	r, err := newRepository(ctx, db, &wiring.File{OnClose: pool.Close}, rc)
	if err != nil {
		return nil, translateOpen(err)
	}
	return r, nil
}

// readOnlyDSN is the DSN of a read-only open (see openReadOnly).
func readOnlyDSN(path string, c config) string {
	// mode=ro alone makes every write fail, and unlike query_only it
	// still lets Backup's VACUUM INTO write its copy elsewhere.
	q := "mode=ro&_pragma=" + url.QueryEscape("busy_timeout("+strconv.Itoa(c.busyTimeout)+")") +
		"&_pragma=" + url.QueryEscape("cache_size(-"+strconv.Itoa(c.cacheSize)+")")
	if _, err := os.Lstat(path + "-wal"); errors.Is(err, os.ErrNotExist) {
		q += "&immutable=1"
	}
	return "file:" + uriPath(path) + "?" + q
}

// newRepository is where the factory hands the database it opened to the
// repository: the single call site of repository.New for files. A file
// without a Writer is read-only.
func newRepository(ctx context.Context, db *gorm.DB, file *wiring.File, rc repository.Config) (*Repository, error) {
	return repository.New(ctx, db.Set(wiring.Key, file), rc)
}

// writerAutoCheckpoint is the WAL size, in pages, at which the write
// connection checkpoints by itself (SQLite's default is 1,000): with the
// background checkpointer keeping up, it is reached only under sustained
// load, and then copies only what the checkpointer has not yet.
const writerAutoCheckpoint = 4000

// dialector is GORM's SQLite dialect on this library's driver, which keeps
// statements compiled and translates its errors (see internal/sqlitedriver).
func dialector(dsn string) gorm.Dialector {
	return &sqlitedriver.Dialector{Dialector: &sqlite.Dialector{DriverName: sqlitedriver.DriverName, DSN: dsn}}
}

// dsn builds the driver's DSN. The driver, like the glebarez one, applies
// only _pragma and _txlock, so every setting is a _pragma, run on each new
// connection in this order: busy_timeout first, so that the others wait for
// locks, and auto_vacuum before journal_mode, since SQLite applies it only
// before the first table and WAL exist.
func dsn(path string, c config, writer bool) string {
	fk := "0"
	if c.foreignKeys {
		fk = "1"
	}
	q := []string{
		"_pragma=" + url.QueryEscape("busy_timeout("+strconv.Itoa(c.busyTimeout)+")"),
	}
	if writer {
		// Setting auto_vacuum waits for the write lock, so only the
		// writer, which connects first, sets it: a new read connection
		// must not wait behind a write transaction.
		q = append(q, "_pragma="+url.QueryEscape("auto_vacuum("+c.autoVacuum+")"))
	}
	q = append(q,
		"_pragma="+url.QueryEscape("journal_mode("+c.journalMode+")"),
		"_pragma="+url.QueryEscape("synchronous("+c.synchronous+")"),
		"_pragma="+url.QueryEscape("cache_size(-"+strconv.Itoa(c.cacheSize)+")"),
		"_pragma="+url.QueryEscape("foreign_keys("+fk+")"),
	)
	if writer {
		// Savepoints of a group commit keep their undo pages in memory.
		q = append(q, "_pragma="+url.QueryEscape("temp_store(MEMORY)"))
		if c.journalMode == "WAL" {
			// A background checkpointer copies the WAL back after
			// commits (see repository/checkpoint.go); the writer
			// checkpoints itself only when the WAL outgrows this.
			q = append(q, "_pragma="+url.QueryEscape("wal_autocheckpoint("+strconv.Itoa(writerAutoCheckpoint)+")"))
		}
		// Write transactions take the write lock at BEGIN, where the busy
		// timeout applies, instead of failing to upgrade a read lock later.
		q = append(q, "_txlock=immediate")
	}
	return "file:" + uriPath(path) + "?" + strings.Join(q, "&")
}

// probeDSN opens the existing file (mode=rw never creates it) with
// query_only, so that no statement can write, and no pragma that could. A
// mode=ro connection would do as well, but on a WAL database it leaves the
// -wal and -shm files it creates behind, beside a file it refuses; this
// one removes them on close when it is the last connection, as SQLite
// does, without writing to the database.
func probeDSN(path string, c config) string {
	return "file:" + uriPath(path) + "?mode=rw&_pragma=" + url.QueryEscape("busy_timeout("+strconv.Itoa(c.busyTimeout)+")") +
		"&_pragma=" + url.QueryEscape("query_only(1)")
}

// uriPath escapes what an SQLite URI gives meaning to.
func uriPath(p string) string {
	return strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23").Replace(filepath.ToSlash(p))
}
