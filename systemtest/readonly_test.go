package systemtest

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
)

// These tests run WithReadOnly in this process, whatever its user; the
// spoolmeta tests (cmd/spoolmeta/readonly_test.go) run the same as a user
// who cannot write the spool. What holds here even as root, whose
// permission bypass would let any open succeed: the file is unchanged,
// no file appears beside it, and every write fails.

func openReadOnly(t *testing.T, path string) *sqlitemeta.Repository {
	t.Helper()
	r, err := sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(path), sqlitemeta.WithReadOnly()).Open(context.Background())
	require.NoError(t, err)
	return r
}

// TestReadOnlyStoppedQueue: no -wal beside the file (the queue is
// stopped): the file is opened immutable, creates nothing, changes
// nothing, refuses writes.
func TestReadOnlyStoppedQueue(t *testing.T) {
	t.Parallel()
	path := tempDB(t)
	makeFile(t, path, 60)
	require.NoError(t, os.Chmod(path, 0o444))
	require.NoError(t, os.Chmod(filepath.Dir(path), 0o555))
	t.Cleanup(func() { os.Chmod(filepath.Dir(path), 0o755) })
	before := sha(t, path)

	r := openReadOnly(t, path)
	ctx := context.Background()
	md, err := r.GetMeta(ctx, message(7).ID)
	require.NoError(t, err)
	require.Equal(t, message(7).LastError, md.LastError)
	require.EqualValues(t, 10, r.GetStateCount(metastorage.StateIncoming))
	stats, err := r.Stats(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 10, stats[metastorage.StateArchived].Count)
	require.Empty(t, sidecarsOf(path), "a read-only open creates no file")

	require.ErrorIs(t, r.StoreMeta(ctx, message(1000).ID, message(1000)), sqlitemeta.ErrReadOnly, "writes fail")
	require.ErrorIs(t, r.MoveToState(ctx, message(0).ID, metastorage.StateIncoming, metastorage.StateActive), sqlitemeta.ErrReadOnly)
	require.NoError(t, r.Close())
	require.Equal(t, before, sha(t, path))
	require.Empty(t, sidecarsOf(path))
}

// TestReadOnlyRunningQueue: while the queue runs (-wal and -shm exist), a
// read-only open sees what the queue commits, also after it opened.
func TestReadOnlyRunningQueue(t *testing.T) {
	t.Parallel()
	path := tempDB(t)
	makeFile(t, path, 60)
	ctx := context.Background()
	w, err := sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(path)).Open(ctx)
	require.NoError(t, err)
	defer w.Close()
	require.NoError(t, w.StoreMeta(ctx, "late-1", metastorage.MessageMetadata{State: metastorage.StateHold, Created: time.Now()}))
	require.FileExists(t, path+"-wal")

	r := openReadOnly(t, path)
	defer r.Close()
	_, err = r.GetMeta(ctx, "late-1")
	require.NoError(t, err)
	require.NoError(t, w.StoreMeta(ctx, "late-2", metastorage.MessageMetadata{State: metastorage.StateHold, Created: time.Now()}))
	_, err = r.GetMeta(ctx, "late-2")
	require.NoError(t, err, "a commit after the read-only open is seen")
	require.EqualValues(t, 12, r.GetStateCount(metastorage.StateHold))
	require.ErrorIs(t, r.DeleteMeta(ctx, "late-1"), sqlitemeta.ErrReadOnly)
}

// TestReadOnlyRefusals: a missing file, an empty one, one without the
// table: refused, and nothing is created.
func TestReadOnlyRefusals(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	open := func(path string) error {
		r, err := sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(path), sqlitemeta.WithReadOnly()).Open(context.Background())
		if err == nil {
			r.Close()
		}
		return err
	}
	missing := filepath.Join(dir, "missing.db")
	require.ErrorIs(t, open(missing), sqlitemeta.ErrPath)
	require.ErrorIs(t, open(missing), os.ErrNotExist)
	require.NoFileExists(t, missing)

	empty := filepath.Join(dir, "empty.db")
	require.NoError(t, os.WriteFile(empty, nil, 0o600))
	require.ErrorIs(t, open(empty), sqlitemeta.ErrNotDatabase)

	other := filepath.Join(dir, "other.db")
	makeFile(t, other, 1)
	r, err := sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(other), sqlitemeta.WithTableName("elsewhere"), sqlitemeta.WithReadOnly()).Open(context.Background())
	if err == nil {
		r.Close()
	}
	require.ErrorIs(t, err, os.ErrNotExist)
	require.Empty(t, sidecarsOf(other))
	require.Empty(t, sidecarsOf(empty))
}

// TestWithDBRefusesFileOptions: the options of the file the factory
// opens cannot apply to a database handed in; asking for them is an
// ErrConfig that names each.
func TestWithDBRefusesFileOptions(t *testing.T) {
	t.Parallel()
	r, err := sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(tempDB(t))).Open(context.Background())
	require.NoError(t, err)
	defer r.Close()
	db := r.DB()
	opts := map[string]sqlitemeta.Option{
		"WithDatabasePath":   sqlitemeta.WithDatabasePath("x.db"),
		"WithSynchronous":    sqlitemeta.WithSynchronous("FULL"),
		"WithJournalMode":    sqlitemeta.WithJournalMode("WAL"),
		"WithWALMode":        sqlitemeta.WithWALMode(true),
		"WithBusyTimeout":    sqlitemeta.WithBusyTimeout(1000),
		"WithCacheSize":      sqlitemeta.WithCacheSize(100),
		"WithForeignKeys":    sqlitemeta.WithForeignKeys(true),
		"WithAutoVacuum":     sqlitemeta.WithAutoVacuum("NONE"),
		"WithMaxConnections": sqlitemeta.WithMaxConnections(3),
		"WithMaxIdleConns":   sqlitemeta.WithMaxIdleConns(1),
		"WithMaxGroupCommit": sqlitemeta.WithMaxGroupCommit(8),
		"WithReadOnly":       sqlitemeta.WithReadOnly(),
		"WithIntegrityCheck": sqlitemeta.WithIntegrityCheck(true),
	}
	all := []sqlitemeta.Option{sqlitemeta.WithDB(db)}
	for name, o := range opts {
		_, err := sqlitemeta.NewFactory(sqlitemeta.WithDB(db), o).Create()
		require.ErrorIs(t, err, sqlitemeta.ErrConfig, name)
		require.Contains(t, err.Error(), name)
		all = append(all, o)
	}
	_, err = sqlitemeta.NewFactory(all...).Create()
	require.ErrorIs(t, err, sqlitemeta.ErrConfig)
	for name := range opts {
		require.Contains(t, err.Error(), name, "every conflicting option is named")
	}
	b, err := sqlitemeta.NewFactory(sqlitemeta.WithDB(db), sqlitemeta.WithTableName("other_queue")).Create()
	require.NoError(t, err, "the options of the queue itself go with WithDB")
	require.NoError(t, b.Close())
}
