package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/glebarez/sqlite"
	"gorm.io/driver/mysql"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
	metastorage "schneider.vip/retryspool/storage/meta"
	metafs "schneider.vip/retryspool/storage/meta/filesystem"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
)

const (
	defaultDBPath = sqlitemeta.DefaultDatabasePath
	defaultTable  = sqlitemeta.DefaultTableName
)

// connFlags are the database flags every command has.
type connFlags struct {
	db, dsn, table string
	json           bool
	fs             *flag.FlagSet // to tell flags given from defaults
	// opts are more options for the store (serve's meter provider).
	opts []sqlitemeta.Option
}

// given reports whether the flag was on the command line.
func (cf *connFlags) given(name string) bool {
	found := false
	if cf.fs != nil {
		cf.fs.Visit(func(f *flag.Flag) { found = found || f.Name == name })
	}
	return found
}

// access is what a command does with the store.
type access int

const (
	// readOnly opens an existing SQLite file read-only: it works for an
	// operator who may read the file but not write its directory, and
	// leaves no file behind (see sqlitemeta.WithReadOnly).
	readOnly access = iota
	// readWrite opens an existing store for changes.
	readWrite
	// create opens the store, creating the file and table when missing.
	create
)

// Engines.
const (
	engineSQLite   = "sqlite"
	enginePostgres = "postgres"
	engineMySQL    = "mysql"
)

var (
	// pgKeyValue is the key=value form of a PostgreSQL DSN.
	pgKeyValue = regexp.MustCompile(`^\s*[a-z_]+\s*=`)
	// mysqlDSN is go-sql-driver's form, [user[:password]@][net[(addr)]]/db,
	// with an "@" or a "(" before the first slash, so that file paths are
	// not taken for it.
	mysqlDSN = regexp.MustCompile(`^[^/]*[@(][^/]*/`)
)

// detectDSN tells the engine of a server DSN and returns it in the form
// its driver takes.
func detectDSN(dsn string) (engine, driverDSN string, ok bool) {
	lower := strings.ToLower(dsn)
	switch {
	case strings.HasPrefix(lower, "postgres://"), strings.HasPrefix(lower, "postgresql://"), pgKeyValue.MatchString(dsn):
		return enginePostgres, dsn, true
	case strings.HasPrefix(lower, "mysql://"):
		u, err := url.Parse(dsn)
		if err != nil || u.Host == "" {
			return "", "", false
		}
		d := ""
		if u.User != nil {
			d = u.User.String() + "@"
		}
		d += "tcp(" + u.Host + ")" + u.EscapedPath()
		if !strings.HasPrefix(u.EscapedPath(), "/") {
			d += "/"
		}
		if u.RawQuery != "" {
			d += "?" + u.RawQuery
		}
		return engineMySQL, d, true
	case mysqlDSN.MatchString(dsn):
		return engineMySQL, dsn, true
	}
	return "", "", false
}

// store is an opened metadata store.
type store struct {
	r      *sqlitemeta.Repository
	engine string
	path   string // absolute path of a SQLite file
	table  string
	// readOnly: a SQLite file opened read-only.
	readOnly bool
	close    func() error
}

func (s *store) describe() string {
	if s.engine == engineSQLite {
		return fmt.Sprintf("sqlite %s, table %s", s.path, s.table)
	}
	return fmt.Sprintf("%s, table %s", s.engine, s.table)
}

// gormConfig is how the library opens GORM.
func gormConfig() *gorm.Config {
	return &gorm.Config{SkipDefaultTransaction: true, Logger: logger.Discard, TranslateError: true}
}

// openStore opens the store of the database flags. Unless acc is create,
// the SQLite file and the table must already exist: an inspection with a
// typo in a name must not create an empty store.
func openStore(ctx context.Context, cmd string, cf *connFlags, acc access) (*store, error) {
	if err := sqlitemeta.CheckTableName(cf.table); err != nil {
		return nil, usagef(cmd, "--table: %v", err)
	}
	if cf.dsn != "" && cf.given("db") {
		return nil, usagef(cmd, "--db and --dsn cannot go together: --db names a SQLite file, --dsn a server")
	}
	if cf.dsn != "" {
		engine, dsn, ok := detectDSN(cf.dsn)
		if !ok {
			return nil, usagef(cmd, "--dsn: cannot tell the engine; give postgres://..., \"host=... dbname=...\" or user@tcp(host:3306)/db")
		}
		return openServer(ctx, engine, dsn, cf.table, acc == create, cf.opts...)
	}
	if cf.db == "" {
		return nil, usagef(cmd, "--db: empty path")
	}
	return openFile(ctx, cf.db, cf.table, acc, cf.opts...)
}

func openServer(ctx context.Context, engine, dsn, table string, create bool, extra ...sqlitemeta.Option) (*store, error) {
	var d gorm.Dialector
	if engine == enginePostgres {
		d = postgres.Open(dsn)
	} else {
		d = mysql.Open(dsn)
	}
	db, err := gorm.Open(d, gormConfig())
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", engine, err)
	}
	pool, err := db.DB()
	if err != nil {
		return nil, err
	}
	if err := pool.PingContext(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect to %s: %w", engine, err)
	}
	if !create && !db.WithContext(ctx).Migrator().HasTable(table) {
		pool.Close()
		return nil, fmt.Errorf("%w: table %q does not exist on %s", errNotFound, table, engine)
	}
	r, err := sqlitemeta.NewFactory(append([]sqlitemeta.Option{sqlitemeta.WithDB(db), sqlitemeta.WithTableName(table)}, extra...)...).Open(ctx)
	if err != nil {
		pool.Close()
		return nil, err
	}
	return &store{r: r, engine: engine, table: table, close: func() error {
		return errors.Join(r.Close(), pool.Close())
	}}, nil
}

func openFile(ctx context.Context, path, table string, acc access, extra ...sqlitemeta.Option) (*store, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	if acc != create {
		fi, err := os.Stat(abs)
		switch {
		case errors.Is(err, os.ErrNotExist):
			return nil, fmt.Errorf("%w: no database at %s", errNotFound, abs)
		case err != nil:
			return nil, err
		case fi.IsDir():
			return nil, fmt.Errorf("%s is a directory", abs)
		}
	}
	opts := []sqlitemeta.Option{sqlitemeta.WithDatabasePath(abs), sqlitemeta.WithTableName(table)}
	if acc == readOnly {
		opts = append(opts, sqlitemeta.WithReadOnly())
	} else if acc == readWrite {
		has, err := fileHasTable(ctx, abs, table)
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", abs, err)
		}
		if !has {
			return nil, fmt.Errorf("%w: table %q does not exist in %s", errNotFound, table, abs)
		}
	}
	r, err := sqlitemeta.NewFactory(append(opts, extra...)...).Open(ctx)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %w", errNotFound, err)
	}
	if err != nil {
		return nil, err
	}
	return &store{r: r, engine: engineSQLite, path: abs, table: table, readOnly: acc == readOnly, close: r.Close}, nil
}

// fileHasTable looks for the table on a read-only connection that leaves
// no file behind: immutable when no -wal file exists.
func fileHasTable(ctx context.Context, path, table string) (bool, error) {
	esc := strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23").Replace(filepath.ToSlash(path))
	dsn := "file:" + esc + "?mode=ro&_pragma=busy_timeout(10000)"
	if _, err := os.Lstat(path + "-wal"); errors.Is(err, os.ErrNotExist) {
		dsn += "&immutable=1"
	}
	db, err := gorm.Open(sqlite.Open(dsn), gormConfig())
	if err != nil {
		return false, err
	}
	pool, err := db.DB()
	if err != nil {
		return false, err
	}
	defer pool.Close()
	var n int64
	err = db.WithContext(ctx).Raw("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?", table).Row().Scan(&n)
	return n > 0, err
}

// source is a store to copy from.
type source struct {
	b     metastorage.Backend
	desc  string
	path  string // absolute path of a SQLite source file
	table string
	close func() error
}

// openSource opens the --from of copy: "fs:DIR" (RetrySpool's filesystem
// metadata backend), a server DSN, or a SQLite file ("sqlite:PATH" or a
// plain path).
func openSource(ctx context.Context, cmd, from, table string) (*source, error) {
	if err := sqlitemeta.CheckTableName(table); err != nil {
		return nil, usagef(cmd, "--from-table: %v", err)
	}
	switch {
	case from == "":
		return nil, usagef(cmd, "%s needs --from", cmd)
	case strings.HasPrefix(from, "fs:"):
		dir, err := filepath.Abs(strings.TrimPrefix(from, "fs:"))
		if err != nil {
			return nil, err
		}
		fi, err := os.Stat(dir)
		switch {
		case errors.Is(err, os.ErrNotExist):
			return nil, fmt.Errorf("%w: no directory %s", errNotFound, dir)
		case err != nil:
			return nil, err
		case !fi.IsDir():
			return nil, usagef(cmd, "--from fs:%s is not a directory", dir)
		}
		// The filesystem store logs its crash recovery with the standard
		// logger; say where the lines come from.
		log.SetFlags(0)
		log.SetPrefix("spoolmeta: filesystem store: ")
		b, err := metafs.NewBackend(dir)
		if err != nil {
			return nil, fmt.Errorf("open filesystem store %s: %w", dir, err)
		}
		return &source{b: b, desc: "filesystem " + dir, close: b.Close}, nil
	}
	if strings.HasPrefix(from, "sqlite:") {
		from = strings.TrimPrefix(from, "sqlite:")
	} else if engine, dsn, ok := detectDSN(from); ok {
		s, err := openServer(ctx, engine, dsn, table, false)
		if err != nil {
			return nil, err
		}
		return &source{b: s.r, desc: s.describe(), table: table, close: s.close}, nil
	}
	s, err := openFile(ctx, from, table, readWrite)
	if err != nil {
		return nil, err
	}
	return &source{b: s.r, desc: s.describe(), path: s.path, table: table, close: s.close}, nil
}
