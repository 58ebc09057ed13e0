package sqlite_test

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/glebarez/sqlite"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/testdb"
)

// facOpen opens a backend on a fresh SQLite file with opts.
func facOpen(t *testing.T, opts ...sqlitemeta.Option) *sqlitemeta.Repository {
	t.Helper()
	opts = append([]sqlitemeta.Option{sqlitemeta.WithDatabasePath(testdb.SQLitePath(t))}, opts...)
	r, err := sqlitemeta.NewFactory(opts...).Open(context.Background())
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, r.Close()) })
	return r
}

// facMeta is a small record.
func facMeta(id string, state metastorage.QueueState) metastorage.MessageMetadata {
	now := time.Now()
	return metastorage.MessageMetadata{ID: id, State: state, Created: now, Updated: now, NextRetry: now}
}

func TestFactoryName(t *testing.T) {
	t.Parallel()
	require.Equal(t, "sqlite-meta", sqlitemeta.NewFactory().Name())
	require.Equal(t, sqlitemeta.FactoryName, sqlitemeta.NewFactory().Name())
}

func TestFactoryCreateReturnsStateCounterBackend(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var f metastorage.Factory = sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(testdb.SQLitePath(t)))
	b, err := f.Create()
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, b.Close()) })

	counter, ok := b.(metastorage.StateCounterBackend)
	require.True(t, ok, "Create returned %T, not a StateCounterBackend", b)
	_, ok = b.(*sqlitemeta.Repository)
	require.True(t, ok, "Create returned %T, not a *Repository", b)

	require.NoError(t, b.StoreMeta(ctx, "m", facMeta("m", metastorage.StateIncoming)))
	require.EqualValues(t, 1, counter.GetStateCount(metastorage.StateIncoming))
	require.Zero(t, counter.GetStateCount(metastorage.StateActive))
}

// facPragmas are the per-connection settings the options control.
type facPragmas struct {
	JournalMode string
	Synchronous int // 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA
	BusyTimeout int // milliseconds
	CacheSize   int // negative: KiB
	ForeignKeys int
	AutoVacuum  int // 0 NONE, 1 FULL, 2 INCREMENTAL
}

// facReadPragmas reads the settings with query, which runs a statement on
// one particular connection and scans its single value.
func facReadPragmas(query func(q string, dest any) error) (facPragmas, error) {
	var p facPragmas
	for q, dest := range map[string]any{
		"PRAGMA journal_mode": &p.JournalMode,
		"PRAGMA synchronous":  &p.Synchronous,
		"PRAGMA busy_timeout": &p.BusyTimeout,
		"PRAGMA cache_size":   &p.CacheSize,
		"PRAGMA foreign_keys": &p.ForeignKeys,
		"PRAGMA auto_vacuum":  &p.AutoVacuum,
	} {
		if err := query(q, dest); err != nil {
			return p, fmt.Errorf("%s: %w", q, err)
		}
	}
	return p, nil
}

// facRequirePragmas checks the settings on several read connections held at
// once (so they are distinct connections of the pool) and on the write
// connection.
func facRequirePragmas(t *testing.T, r *sqlitemeta.Repository, want facPragmas, readConns int) {
	t.Helper()
	ctx := context.Background()
	pool, err := r.DB().DB()
	require.NoError(t, err)
	conns := make([]*sql.Conn, readConns)
	for i := range conns {
		conns[i], err = pool.Conn(ctx)
		require.NoError(t, err)
	}
	for i, c := range conns {
		got, err := facReadPragmas(func(q string, dest any) error { return c.QueryRowContext(ctx, q).Scan(dest) })
		require.NoError(t, err)
		require.Equal(t, want, got, "read connection %d", i)
	}
	for _, c := range conns {
		require.NoError(t, c.Close())
	}

	// The function runs on the writer's goroutine: it returns errors
	// rather than failing the test there.
	var got facPragmas
	require.NoError(t, r.Transaction(ctx, func(tx *gorm.DB) error {
		var err error
		got, err = facReadPragmas(func(q string, dest any) error { return tx.Raw(q).Row().Scan(dest) })
		return err
	}))
	require.Equal(t, want, got, "write connection")
}

func TestFactoryPragmasOnEveryConnection(t *testing.T) {
	t.Parallel()
	t.Run("defaults", func(t *testing.T) {
		t.Parallel()
		r := facOpen(t)
		facRequirePragmas(t, r, facPragmas{
			JournalMode: "wal", Synchronous: 1, BusyTimeout: sqlitemeta.DefaultBusyTimeout,
			CacheSize: -sqlitemeta.DefaultCacheSize, ForeignKeys: 1, AutoVacuum: 2,
		}, 3)
		pool, err := r.DB().DB()
		require.NoError(t, err)
		require.Equal(t, sqlitemeta.DefaultMaxConnections, pool.Stats().MaxOpenConnections)
	})
	t.Run("delete full none", func(t *testing.T) {
		t.Parallel()
		r := facOpen(t,
			sqlitemeta.WithJournalMode("DELETE"),
			sqlitemeta.WithSynchronous("FULL"),
			sqlitemeta.WithAutoVacuum("NONE"),
			sqlitemeta.WithBusyTimeout(5000),
			sqlitemeta.WithCacheSize(4096),
			sqlitemeta.WithForeignKeys(false),
			sqlitemeta.WithMaxConnections(3),
			sqlitemeta.WithMaxIdleConns(1),
		)
		facRequirePragmas(t, r, facPragmas{
			JournalMode: "delete", Synchronous: 2, BusyTimeout: 5000, CacheSize: -4096, ForeignKeys: 0, AutoVacuum: 0,
		}, 3)
		pool, err := r.DB().DB()
		require.NoError(t, err)
		st := pool.Stats()
		require.Equal(t, 3, st.MaxOpenConnections)
		// Three connections were returned to the pool; it keeps one.
		require.Equal(t, 1, st.Idle)
	})
	t.Run("lower case truncate extra full", func(t *testing.T) {
		t.Parallel()
		r := facOpen(t,
			sqlitemeta.WithWALMode(false),
			sqlitemeta.WithJournalMode("truncate"),
			sqlitemeta.WithSynchronous("extra"),
			sqlitemeta.WithAutoVacuum("full"),
			sqlitemeta.WithBusyTimeout(0),
			sqlitemeta.WithCacheSize(0),
		)
		facRequirePragmas(t, r, facPragmas{
			JournalMode: "truncate", Synchronous: 3, BusyTimeout: 0, CacheSize: 0, ForeignKeys: 1, AutoVacuum: 1,
		}, 2)
	})
	t.Run("WAL mode off alone", func(t *testing.T) {
		t.Parallel()
		r := facOpen(t, sqlitemeta.WithWALMode(false))
		facRequirePragmas(t, r, facPragmas{
			JournalMode: "delete", Synchronous: 1, BusyTimeout: sqlitemeta.DefaultBusyTimeout,
			CacheSize: -sqlitemeta.DefaultCacheSize, ForeignKeys: 1, AutoVacuum: 2,
		}, 2)
	})
	t.Run("WAL mode on and journal mode WAL agree", func(t *testing.T) {
		t.Parallel()
		r := facOpen(t, sqlitemeta.WithWALMode(true), sqlitemeta.WithJournalMode("wal"))
		facRequirePragmas(t, r, facPragmas{
			JournalMode: "wal", Synchronous: 1, BusyTimeout: sqlitemeta.DefaultBusyTimeout,
			CacheSize: -sqlitemeta.DefaultCacheSize, ForeignKeys: 1, AutoVacuum: 2,
		}, 2)
	})
}

func TestFactoryConfigErrors(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		opts []sqlitemeta.Option
		want string // part of the message
	}{
		{"WAL off with journal WAL", []sqlitemeta.Option{sqlitemeta.WithWALMode(false), sqlitemeta.WithJournalMode("WAL")}, `WithWALMode(false) conflicts with WithJournalMode("WAL")`},
		{"WAL on with journal DELETE", []sqlitemeta.Option{sqlitemeta.WithWALMode(true), sqlitemeta.WithJournalMode("DELETE")}, `WithWALMode(true) conflicts with WithJournalMode("DELETE")`},
		{"unknown journal mode", []sqlitemeta.Option{sqlitemeta.WithJournalMode("WAL2")}, `WithJournalMode("WAL2")`},
		{"unknown synchronous", []sqlitemeta.Option{sqlitemeta.WithSynchronous("SOMETIMES")}, `WithSynchronous("SOMETIMES")`},
		{"unknown auto vacuum", []sqlitemeta.Option{sqlitemeta.WithAutoVacuum("DAILY")}, `WithAutoVacuum("DAILY")`},
		{"negative busy timeout", []sqlitemeta.Option{sqlitemeta.WithBusyTimeout(-1)}, "WithBusyTimeout(-1)"},
		{"negative cache size", []sqlitemeta.Option{sqlitemeta.WithCacheSize(-2000)}, "WithCacheSize(-2000)"},
		{"no connections", []sqlitemeta.Option{sqlitemeta.WithMaxConnections(0)}, "WithMaxConnections(0)"},
		{"negative idle", []sqlitemeta.Option{sqlitemeta.WithMaxIdleConns(-1)}, "WithMaxIdleConns(-1)"},
		{"no group commit", []sqlitemeta.Option{sqlitemeta.WithMaxGroupCommit(0)}, "WithMaxGroupCommit(0)"},
		{"SQL in table name", []sqlitemeta.Option{sqlitemeta.WithTableName("messages; DROP TABLE x")}, "table name"},
		{"quote in table name", []sqlitemeta.Option{sqlitemeta.WithTableName(`messages" --`)}, "table name"},
		{"table name too long", []sqlitemeta.Option{sqlitemeta.WithTableName(strings.Repeat("q", 41))}, "table name"},
		{"empty table name", []sqlitemeta.Option{sqlitemeta.WithTableName("")}, "table name"},
		{"table name starts with a digit", []sqlitemeta.Option{sqlitemeta.WithTableName("1queue")}, "table name"},
		{"nil database", []sqlitemeta.Option{sqlitemeta.WithDB(nil)}, "WithDB(nil)"},
		{"nil hook", []sqlitemeta.Option{sqlitemeta.WithTransitionHook(nil)}, "hook"},
		{"in-memory database", []sqlitemeta.Option{sqlitemeta.WithDatabasePath(":memory:")}, ":memory:"},
		{"URI database", []sqlitemeta.Option{sqlitemeta.WithDatabasePath("file:meta.db?mode=memory")}, "give a file path"},
		{"empty path", []sqlitemeta.Option{sqlitemeta.WithDatabasePath("")}, "empty database path"},
		{"NUL in path", []sqlitemeta.Option{sqlitemeta.WithDatabasePath("meta\x00.db")}, "NUL"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			path := filepath.Join(dir, "meta.db")
			opts := append([]sqlitemeta.Option{sqlitemeta.WithDatabasePath(path)}, tc.opts...)
			var (
				b   metastorage.Backend
				err error
			)
			require.NotPanics(t, func() { b, err = sqlitemeta.NewFactory(opts...).Create() })
			require.Nil(t, b)
			require.ErrorIs(t, err, sqlitemeta.ErrConfig)
			require.ErrorContains(t, err, tc.want)
			// Nothing was created.
			entries, err := os.ReadDir(dir)
			require.NoError(t, err)
			require.Empty(t, entries)
		})
	}
}

func TestFactoryReportsEveryConfigErrorAtOnce(t *testing.T) {
	t.Parallel()
	_, err := sqlitemeta.NewFactory(
		sqlitemeta.WithDatabasePath(testdb.SQLitePath(t)),
		sqlitemeta.WithBusyTimeout(-1),
		sqlitemeta.WithSynchronous("MAYBE"),
		sqlitemeta.WithTableName("bad name"),
	).Create()
	require.ErrorIs(t, err, sqlitemeta.ErrConfig)
	for _, want := range []string{"WithBusyTimeout(-1)", `WithSynchronous("MAYBE")`, `"bad name"`} {
		require.ErrorContains(t, err, want)
	}
}

func TestFactoryIgnoresNilOption(t *testing.T) {
	t.Parallel()
	b, err := sqlitemeta.NewFactory(nil, sqlitemeta.WithDatabasePath(testdb.SQLitePath(t)), nil).Create()
	require.NoError(t, err)
	require.NoError(t, b.Close())
}

func TestFactoryCreatesMissingDirectories(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "a", "b", "c", "meta.db")
	b, err := sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(path)).Create()
	require.NoError(t, err)
	require.NoError(t, b.StoreMeta(context.Background(), "m", facMeta("m", metastorage.StateIncoming)))
	require.NoError(t, b.Close())
	fi, err := os.Stat(path)
	require.NoError(t, err)
	require.True(t, fi.Mode().IsRegular())
}

func TestFactoryUnusablePaths(t *testing.T) {
	t.Parallel()
	// Tests may run as root, whom permission bits do not stop: the factory
	// itself refuses paths whose mode bits forbid writing.
	t.Run("directory", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		_, err := sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(dir)).Create()
		require.ErrorIs(t, err, sqlitemeta.ErrPath)
		require.ErrorContains(t, err, "is a directory")
	})
	t.Run("read-only file", func(t *testing.T) {
		t.Parallel()
		path := testdb.SQLitePath(t)
		b, err := sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(path)).Create()
		require.NoError(t, err)
		require.NoError(t, b.StoreMeta(context.Background(), "m", facMeta("m", metastorage.StateIncoming)))
		require.NoError(t, b.Close())
		before, err := os.ReadFile(path)
		require.NoError(t, err)
		require.NoError(t, os.Chmod(path, 0o444))

		_, err = sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(path)).Create()
		require.ErrorIs(t, err, sqlitemeta.ErrPath)
		require.ErrorContains(t, err, "read-only")
		after, err := os.ReadFile(path)
		require.NoError(t, err)
		require.Equal(t, before, after, "the read-only file was changed")
	})
	t.Run("read-only directory", func(t *testing.T) {
		t.Parallel()
		dir := filepath.Join(t.TempDir(), "ro")
		require.NoError(t, os.Mkdir(dir, 0o555))
		t.Cleanup(func() { _ = os.Chmod(dir, 0o755) })
		_, err := sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(filepath.Join(dir, "meta.db"))).Create()
		require.ErrorIs(t, err, sqlitemeta.ErrPath)
		require.ErrorContains(t, err, "read-only")
		entries, err := os.ReadDir(dir)
		require.NoError(t, err)
		require.Empty(t, entries)
	})
	t.Run("parent is a regular file", func(t *testing.T) {
		t.Parallel()
		parent := filepath.Join(t.TempDir(), "file")
		require.NoError(t, os.WriteFile(parent, []byte("not a directory"), 0o644))
		path := filepath.Join(parent, "meta.db")
		_, err := sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(path)).Create()
		require.ErrorIs(t, err, sqlitemeta.ErrPath)
		require.ErrorContains(t, err, path)
		got, err := os.ReadFile(parent)
		require.NoError(t, err)
		require.Equal(t, "not a directory", string(got))
	})
}

// Several queues share one SQLite file through WithTableName without seeing
// each other's messages or counts.
func TestFactoryTablesShareAFile(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := testdb.SQLitePath(t)
	open := func(opts ...sqlitemeta.Option) *sqlitemeta.Repository {
		r, err := sqlitemeta.NewFactory(append([]sqlitemeta.Option{sqlitemeta.WithDatabasePath(path)}, opts...)...).Open(ctx)
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, r.Close()) })
		return r
	}
	a := open(sqlitemeta.WithTableName("queue_a"))
	b := open(sqlitemeta.WithTableName("queue_b"))
	def := open()
	require.Equal(t, "queue_a", a.TableName())
	require.Equal(t, "queue_b", b.TableName())
	require.Equal(t, sqlitemeta.DefaultTableName, def.TableName())

	for _, id := range []string{"a1", "a2", "a3"} {
		require.NoError(t, a.StoreMeta(ctx, id, facMeta(id, metastorage.StateIncoming)))
	}
	for _, id := range []string{"b1", "b2"} {
		require.NoError(t, b.StoreMeta(ctx, id, facMeta(id, metastorage.StateDeferred)))
	}
	// The same ID in both queues is two messages.
	require.NoError(t, a.StoreMeta(ctx, "shared", facMeta("shared", metastorage.StateIncoming)))
	require.NoError(t, b.StoreMeta(ctx, "shared", facMeta("shared", metastorage.StateBounce)))

	require.EqualValues(t, 4, a.GetStateCount(metastorage.StateIncoming))
	require.Zero(t, a.GetStateCount(metastorage.StateDeferred))
	require.Zero(t, b.GetStateCount(metastorage.StateIncoming))
	require.EqualValues(t, 2, b.GetStateCount(metastorage.StateDeferred))
	require.EqualValues(t, 1, b.GetStateCount(metastorage.StateBounce))
	for st := metastorage.StateIncoming; st <= metastorage.StateArchived; st++ {
		require.Zero(t, def.GetStateCount(st))
	}

	list, err := a.ListMessages(ctx, metastorage.StateIncoming, metastorage.MessageListOptions{})
	require.NoError(t, err)
	require.ElementsMatch(t, []string{"a1", "a2", "a3", "shared"}, list.MessageIDs)
	list, err = b.ListMessages(ctx, metastorage.StateIncoming, metastorage.MessageListOptions{})
	require.NoError(t, err)
	require.Empty(t, list.MessageIDs)

	_, err = b.GetMeta(ctx, "a1")
	require.ErrorIs(t, err, metastorage.ErrMessageNotFound)
	require.Equal(t, metastorage.ErrMessageNotFound, b.MoveToState(ctx, "a1", metastorage.StateIncoming, metastorage.StateActive))
	require.ErrorIs(t, b.DeleteMeta(ctx, "a2"), metastorage.ErrMessageNotFound)

	require.NoError(t, a.MoveToState(ctx, "shared", metastorage.StateIncoming, metastorage.StateActive))
	require.NoError(t, a.DeleteMeta(ctx, "shared"))
	md, err := b.GetMeta(ctx, "shared")
	require.NoError(t, err)
	require.Equal(t, metastorage.StateBounce, md.State)
	require.EqualValues(t, 3, a.GetStateCount(metastorage.StateIncoming))
	require.Zero(t, a.GetStateCount(metastorage.StateActive))
	require.EqualValues(t, 1, b.GetStateCount(metastorage.StateBounce))

	it, err := b.NewMessageIterator(ctx, metastorage.StateDeferred, 1)
	require.NoError(t, err)
	var seen []string
	for {
		md, _, err := it.Next(ctx)
		require.NoError(t, err)
		if md.ID == "" {
			break
		}
		seen = append(seen, md.ID)
	}
	require.NoError(t, it.Close())
	require.ElementsMatch(t, []string{"b1", "b2"}, seen)
}

// WithDB uses the application's *gorm.DB, and Close leaves it open.
func TestFactoryWithDBLeavesTheDatabaseOpen(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	db, err := gorm.Open(sqlite.Open(testdb.SQLitePath(t)), &gorm.Config{Logger: logger.Discard})
	require.NoError(t, err)
	pool, err := db.DB()
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, pool.Close()) })

	b, err := sqlitemeta.NewFactory(sqlitemeta.WithDB(db), sqlitemeta.WithTableName("app_queue")).Create()
	require.NoError(t, err)
	r := b.(*sqlitemeta.Repository)
	require.Equal(t, "sqlite", r.Dialect())
	require.NoError(t, b.StoreMeta(ctx, "m", facMeta("m", metastorage.StateIncoming)))
	require.NoError(t, b.Close())
	require.ErrorIs(t, b.StoreMeta(ctx, "n", facMeta("n", metastorage.StateIncoming)), metastorage.ErrBackendClosed)

	require.NoError(t, pool.PingContext(ctx))
	var n int64
	require.NoError(t, db.Table("app_queue").Count(&n).Error)
	require.EqualValues(t, 1, n)
}

// TestFactoryCheckpointsInBackground shows that committed writes reach the
// database file without the writer checkpointing: a hundred small commits
// stay far below the writer's own automatic checkpoint threshold, so only
// the background checkpointer can copy them out of the WAL.
func TestFactoryCheckpointsInBackground(t *testing.T) {
	t.Parallel()
	path := testdb.SQLitePath(t)
	r := facOpen(t, sqlitemeta.WithDatabasePath(path))
	size := func() int64 {
		fi, err := os.Stat(path)
		require.NoError(t, err)
		return fi.Size()
	}
	before := size()
	ctx := context.Background()
	for i := range 100 {
		require.NoError(t, r.StoreMeta(ctx, fmt.Sprintf("ckpt-%03d", i), facMeta(fmt.Sprintf("ckpt-%03d", i), metastorage.StateIncoming)))
	}
	wal, err := os.Stat(path + "-wal")
	require.NoError(t, err)
	require.NotZero(t, wal.Size(), "the commits went to the WAL")
	require.Eventually(t, func() bool { return size() > before }, 10*time.Second, 10*time.Millisecond,
		"the database file never grew past %d bytes: nothing was checkpointed", before)
	n, err := r.StateCount(ctx, metastorage.StateIncoming)
	require.NoError(t, err)
	require.Equal(t, int64(100), n)
}

// holdReadConns takes n connections of r's read pool at once, as n
// concurrent readers do, gives them back and returns the pool's stats.
func holdReadConns(t *testing.T, r *sqlitemeta.Repository, n int) sql.DBStats {
	t.Helper()
	pool, err := r.DB().DB()
	require.NoError(t, err)
	conns := make([]*sql.Conn, n)
	for i := range conns {
		conns[i], err = pool.Conn(context.Background())
		require.NoError(t, err)
		require.NoError(t, conns[i].PingContext(context.Background()))
	}
	for _, c := range conns {
		require.NoError(t, c.Close())
	}
	return pool.Stats()
}

// The read connections opened for concurrent readers (RetrySpool's
// workers read every message they handle) stay open for the next ones:
// closing them on the way back and opening them again cost a new SQLite
// connection, its schema read and its statements compiled, per read.
func TestFactoryReadPoolKeepsItsConnections(t *testing.T) {
	t.Parallel()
	st := holdReadConns(t, facOpen(t), sqlitemeta.DefaultMaxConnections)
	require.Zero(t, st.MaxIdleClosed)
	require.Equal(t, sqlitemeta.DefaultMaxConnections, st.Idle)

	// The default follows WithMaxConnections.
	st = holdReadConns(t, facOpen(t, sqlitemeta.WithMaxConnections(16)), 16)
	require.Zero(t, st.MaxIdleClosed)
	require.Equal(t, 16, st.Idle)

	// WithMaxIdleConns still caps them.
	st = holdReadConns(t, facOpen(t, sqlitemeta.WithMaxIdleConns(1)), 4)
	require.EqualValues(t, 3, st.MaxIdleClosed)
	require.Equal(t, 1, st.Idle)
}
