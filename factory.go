package sqlite

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/glebarez/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
	sqlite3 "modernc.org/sqlite/lib"
	metastorage "schneider.vip/retryspool/storage/meta"

	"schneider.vip/retryspool/storage/meta/sqlite/internal/sqlitedriver"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/wiring"
	"schneider.vip/retryspool/storage/meta/sqlite/model"
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
	readPool.SetMaxIdleConns(c.maxIdle)

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
	pool.SetMaxIdleConns(c.maxIdle)
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

// sqliteHeader starts every SQLite database file.
var sqliteHeader = []byte("SQLite format 3\x00")

// checkPath makes the path absolute, creates missing parent directories and
// refuses what SQLite would open wrongly or not at all: a directory, a
// read-only file or directory, a file that is not a database or is cut
// short. It reports whether the file exists with content.
func checkPath(p string) (string, bool, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", false, fmt.Errorf("%w: %w", ErrPath, err)
	}
	dir := filepath.Dir(abs)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return "", false, fmt.Errorf("%w: create directory: %w", ErrPath, err)
	}
	di, err := os.Stat(dir)
	if err != nil {
		return "", false, fmt.Errorf("%w: %w", ErrPath, err)
	}
	if di.Mode().Perm()&0o222 == 0 {
		return "", false, fmt.Errorf("%w: directory %s is read-only (the journal and WAL files live beside the database)", ErrPath, dir)
	}
	fi, err := os.Stat(abs)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return abs, false, nil
	case err != nil:
		return "", false, fmt.Errorf("%w: %w", ErrPath, err)
	case fi.IsDir():
		return "", false, fmt.Errorf("%w: %s is a directory", ErrPath, abs)
	case !fi.Mode().IsRegular():
		return "", false, fmt.Errorf("%w: %s is not a regular file", ErrPath, abs)
	case fi.Mode().Perm()&0o222 == 0:
		return "", false, fmt.Errorf("%w: %s is read-only", ErrPath, abs)
	case fi.Size() == 0:
		return abs, false, nil // SQLite treats an empty file as a new database
	}
	if err := checkHeader(abs, fi.Size()); err != nil {
		return "", false, err
	}
	return abs, true, nil
}

// checkHeader reads the 100-byte database header: the magic string, and the
// page size and count, which must fit in the file.
func checkHeader(path string, size int64) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrPath, err)
	}
	defer f.Close()
	h := make([]byte, 100)
	if _, err := io.ReadFull(f, h); err != nil || !bytes.Equal(h[:16], sqliteHeader) {
		return fmt.Errorf("%w: %s does not start with the SQLite header", ErrNotDatabase, path)
	}
	pageSize := int64(binary.BigEndian.Uint16(h[16:18]))
	if pageSize == 1 {
		pageSize = 65536
	}
	if pageSize < 512 || pageSize&(pageSize-1) != 0 {
		return fmt.Errorf("%w: %s has an invalid page size %d", ErrNotDatabase, path, pageSize)
	}
	// The page count is valid when the version-valid-for number matches
	// the change counter. It is judged only when the file is the whole
	// database: a process that dies during a checkpoint, which writes page
	// 1 first, leaves a file shorter than its header says, and SQLite
	// completes it from the WAL (or rolls it back from the journal) on
	// open.
	if !journalHolds(path) && binary.BigEndian.Uint32(h[92:96]) == binary.BigEndian.Uint32(h[24:28]) {
		pages := int64(binary.BigEndian.Uint32(h[28:32]))
		if pages*pageSize > size {
			return fmt.Errorf("%w: %s is truncated (%d bytes, the header says %d pages of %d)", ErrNotDatabase, path, size, pages, pageSize)
		}
	}
	return nil
}

// journalHolds reports whether a WAL or rollback journal with content lies
// beside the database.
func journalHolds(path string) bool {
	for _, suffix := range []string{"-wal", "-journal"} {
		if fi, err := os.Stat(path + suffix); err == nil && fi.Size() > 0 {
			return true
		}
	}
	return false
}

// probe inspects an existing file on a read-only connection.
func probe(ctx context.Context, path string, c config) error {
	db, err := gorm.Open(dialector(probeDSN(path, c)), gormConfig())
	if err != nil {
		return translateOpen(err)
	}
	if pool, err := db.DB(); err == nil {
		defer pool.Close()
	}
	return inspect(ctx, db, path, c)
}

// inspect decides, reading only, whether an existing file can be used. Its
// cost does not grow with the file: the header was checked before; here
// the schema is read and the edges of every b-tree are walked (see
// checkEdges). Only when that walk finds something wrong, or
// WithIntegrityCheck asks for it, does PRAGMA quick_check read the whole
// file; its verdict decides. In read-only mode the table must exist.
func inspect(ctx context.Context, db *gorm.DB, path string, c config) error {
	db = db.WithContext(ctx)
	suspect := c.integrityCheck
	if !suspect {
		if err := checkEdges(ctx, db, path); err != nil {
			var se interface{ Code() int }
			if !errors.Is(err, errEdge) && !errors.As(err, &se) {
				return err
			}
			suspect = true
		}
	}
	if suspect {
		var check string
		if err := db.Raw("PRAGMA quick_check(1)").Row().Scan(&check); err != nil {
			return translateOpen(err)
		}
		if check != "ok" {
			return fmt.Errorf("%w: quick_check: %s", ErrNotDatabase, check)
		}
	}
	if err := translateOpen(repository.Check(ctx, db, c.tableName)); err != nil {
		return err
	}
	if c.readOnly {
		// A table the migration would create, upgrade or repair cannot be
		// read as it is: its schema record must say it is current.
		var version int
		err := db.Raw("SELECT version FROM "+model.SchemaTableName+" WHERE table_name = ?", c.tableName).Row().Scan(&version)
		if err != nil || version != repository.SchemaVersion {
			return fmt.Errorf("table %q %w in %s with the current schema (a read-only open cannot create or upgrade it)", c.tableName, errNoTable, path)
		}
		for _, t := range []string{c.tableName, c.tableName + "_counts"} {
			var n int64
			if err := db.Raw("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?", t).Row().Scan(&n); err != nil {
				return translateOpen(err)
			}
			if n == 0 {
				return fmt.Errorf("table %q %w in %s (a read-only open cannot create it)", t, errNoTable, path)
			}
		}
	}
	return nil
}

// errNoTable wraps os.ErrNotExist: a read-only open of a file without the
// table.
var errNoTable = fmt.Errorf("does not exist: %w", os.ErrNotExist)

// checkReadablePath is checkPath for a read-only open: the file must exist
// and be a database; nothing is created and nothing needs to be writable.
func checkReadablePath(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrPath, err)
	}
	fi, err := os.Stat(abs)
	switch {
	case err != nil:
		return "", fmt.Errorf("%w: %w", ErrPath, err)
	case fi.IsDir():
		return "", fmt.Errorf("%w: %s is a directory", ErrPath, abs)
	case !fi.Mode().IsRegular():
		return "", fmt.Errorf("%w: %s is not a regular file", ErrPath, abs)
	case fi.Size() == 0:
		return "", fmt.Errorf("%w: %s is empty (a read-only open cannot create a database)", ErrNotDatabase, abs)
	}
	if err := checkHeader(abs, fi.Size()); err != nil {
		return "", err
	}
	return abs, nil
}

// translateOpen names the SQLite errors that mean a damaged or unusable
// file.
func translateOpen(err error) error {
	var se interface{ Code() int }
	if err == nil || !errors.As(err, &se) {
		return err
	}
	switch se.Code() & 0xff {
	case sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT:
		return fmt.Errorf("%w: %w", ErrNotDatabase, err)
	case sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM:
		return fmt.Errorf("%w: %w", ErrPath, err)
	}
	return err
}
