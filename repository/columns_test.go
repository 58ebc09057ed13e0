package repository_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/testdb"
)

// The columns of the engine matrix: the ways an application runs the
// repository. The conformance, repository, queue-operation and hook suites
// run in every column.
//
//   - sqlite: a SQLite file opened by the factory (WithDatabasePath), with
//     its write connection and group commit;
//   - sqlite-withdb: a SQLite file the application opened itself with GORM
//     (glebarez driver, no DSN flags) and handed in with WithDB;
//   - sqlite-cgo: the same with gorm.io/driver/sqlite (mattn/go-sqlite3,
//     cgo), skipped with the reason where cgo is off;
//   - postgres, mysql: a fresh table of the server's test database, handed
//     in with WithDB; skipped with the reason when the DSN is not set.

// column is one column of the matrix.
type column struct {
	name string
	// skip, when set, is why the column does not run.
	skip string
	// groupCommit: concurrent writes share transactions (the factory's
	// SQLite file).
	groupCommit bool
	// prepare is called once in the column's subtest and returns a maker
	// of fresh, empty databases.
	prepare func(t *testing.T) func(t *testing.T) *dbEnv
}

// dbEnv is one test's database: where the repositories open it, and the
// table they use.
type dbEnv struct {
	where []sqlitemeta.Option // WithDatabasePath or WithDB
	table string              // "" for the default table
	// server is the server database on PostgreSQL and MySQL, nil on SQLite
	// (whose file goes with the test's temporary directory).
	server *gorm.DB
}

func columns() []column {
	cols := []column{
		{name: "sqlite", groupCommit: true, prepare: func(*testing.T) func(t *testing.T) *dbEnv {
			return func(t *testing.T) *dbEnv {
				return &dbEnv{where: []sqlitemeta.Option{sqlitemeta.WithDatabasePath(testdb.SQLitePath(t))}}
			}
		}},
		{name: "sqlite-withdb", prepare: func(*testing.T) func(t *testing.T) *dbEnv {
			return func(t *testing.T) *dbEnv {
				db := testdb.OpenSQLite(t, testdb.SQLitePath(t))
				return &dbEnv{where: []sqlitemeta.Option{sqlitemeta.WithDB(db)}}
			}
		}},
		{name: "sqlite-cgo", skip: testdb.CgoSkip, prepare: func(*testing.T) func(t *testing.T) *dbEnv {
			return func(t *testing.T) *dbEnv {
				db := testdb.OpenSQLiteCgo(t, testdb.SQLitePath(t))
				return &dbEnv{where: []sqlitemeta.Option{sqlitemeta.WithDB(db)}}
			}
		}},
	}
	for _, e := range testdb.Servers() {
		cols = append(cols, column{name: e.Name, skip: e.Skip, prepare: func(t *testing.T) func(t *testing.T) *dbEnv {
			db := e.Open(t)
			return func(t *testing.T) *dbEnv {
				return &dbEnv{where: []sqlitemeta.Option{sqlitemeta.WithDB(db)}, table: e.Table(t, db), server: db}
			}
		}})
	}
	return cols
}

// forColumns runs fn as a subtest per column, in parallel when parallel is
// set; a column that cannot run is skipped with its reason.
func forColumns(t *testing.T, parallel bool, fn func(t *testing.T, c column, newEnv func(t *testing.T) *dbEnv)) {
	t.Helper()
	for _, c := range columns() {
		t.Run(c.name, func(t *testing.T) {
			if c.skip != "" {
				t.Skip(c.skip)
			}
			if parallel {
				t.Parallel()
			}
			fn(t, c, c.prepare(t))
		})
	}
}

// withTable names the table of the environment when it has none yet.
func (e *dbEnv) withTable(table string) *dbEnv {
	if e.table == "" {
		e.table = table
	}
	return e
}

// open opens a repository with the factory on the environment's database
// and table, with opts added; it is closed when the test ends.
func (e *dbEnv) open(t *testing.T, opts ...sqlitemeta.Option) *sqlitemeta.Repository {
	t.Helper()
	r := e.openUnclosed(t, opts...)
	t.Cleanup(func() { require.NoError(t, r.Close()) })
	return r
}

// openUnclosed is open without the Close at the end of the test: for suites
// that close the repository themselves.
func (e *dbEnv) openUnclosed(t *testing.T, opts ...sqlitemeta.Option) *sqlitemeta.Repository {
	t.Helper()
	all := append([]sqlitemeta.Option(nil), e.where...)
	if e.table != "" {
		all = append(all, sqlitemeta.WithTableName(e.table))
	}
	r, err := sqlitemeta.NewFactory(append(all, opts...)...).Open(context.Background())
	require.NoError(t, err)
	return r
}
