package repository_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	metastorage "schneider.vip/retryspool/storage/meta"
	fsmeta "schneider.vip/retryspool/storage/meta/filesystem"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/fixture"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/testdb"
	"schneider.vip/retryspool/storage/meta/sqlite/repository"
)

// openFile opens a SQLite file with the factory and closes it when the
// test ends.
func openFile(t testing.TB, path string, opts ...sqlitemeta.Option) *sqlitemeta.Repository {
	t.Helper()
	r, err := sqlitemeta.NewFactory(append([]sqlitemeta.Option{sqlitemeta.WithDatabasePath(path)}, opts...)...).Open(context.Background())
	require.NoError(t, err)
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// openEngine opens a backend on an engine of testdb: a SQLite file, or a
// fresh table on a server engine.
func openEngine(t *testing.T, e testdb.Engine, opts ...sqlitemeta.Option) *sqlitemeta.Repository {
	t.Helper()
	if e.Name == "sqlite" {
		return openFile(t, testdb.SQLitePath(t), opts...)
	}
	db := e.Open(t)
	table := e.Table(t, db)
	r, err := sqlitemeta.NewFactory(append([]sqlitemeta.Option{sqlitemeta.WithDB(db), sqlitemeta.WithTableName(table)}, opts...)...).Open(context.Background())
	require.NoError(t, err)
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// forEngines runs fn on every engine, skipping the server engines whose
// DSN is not set, with the reason.
func forEngines(t *testing.T, fn func(t *testing.T, e testdb.Engine)) {
	t.Helper()
	for _, e := range testdb.Engines() {
		t.Run(e.Name, func(t *testing.T) {
			if e.Skip != "" {
				t.Skip(e.Skip)
			}
			t.Parallel()
			fn(t, e)
		})
	}
}

// fsSource fills RetrySpool's filesystem meta backend with perState
// messages in each of the six states, and returns it with its records as
// it gives them back.
func fsSource(t *testing.T, perState int) (*fsmeta.Backend, string, map[string]metastorage.MessageMetadata) {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	src, err := fsmeta.NewBackendWithOptions(dir, true, false)
	require.NoError(t, err)
	t.Cleanup(func() { _ = src.Close() })
	want := map[string]metastorage.MessageMetadata{}
	n := 0
	for _, s := range fixture.States {
		for i := 0; i < perState; i++ {
			n++
			id := fmt.Sprintf("fs-%s-%03d", s, i)
			md := fixture.Sample(id, s, n)
			require.NoError(t, src.StoreMeta(ctx, id, md))
			got, err := src.GetMeta(ctx, id)
			require.NoError(t, err)
			// The filesystem backend keeps every field but Updated, which
			// its StoreMeta sets to the time of the call.
			fixture.RequireSameMeta(t, md, got, true)
			require.False(t, got.Updated.Equal(md.Updated))
			want[id] = got
		}
	}
	return src, dir, want
}

func requireCopied(t *testing.T, dst *sqlitemeta.Repository, want map[string]metastorage.MessageMetadata) {
	t.Helper()
	got := fixture.All(t, dst)
	require.Len(t, got, len(want))
	for id, w := range want {
		g, ok := got[id]
		require.True(t, ok, "message %q not copied", id)
		fixture.RequireSameMeta(t, w, g, false)
	}
	counts := fixture.RequireCounts(t, dst)
	for _, s := range fixture.States {
		n := int64(0)
		for _, w := range want {
			if w.State == s {
				n++
			}
		}
		require.Equal(t, n, counts[s], "messages in %s", s)
	}
}

func TestCopyFromFilesystemBackend(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	src, _, want := fsSource(t, 9)
	dst := openFile(t, testdb.SQLitePath(t))

	var progress [][2]int64
	rep, err := repository.Copy(ctx, src, dst, repository.CopyOptions{
		BatchSize: 4,
		Progress:  func(copied, total int64) { progress = append(progress, [2]int64{copied, total}) },
	})
	require.NoError(t, err)
	require.Equal(t, int64(54), rep.Copied)
	for _, s := range fixture.States {
		require.Equal(t, int64(9), rep.PerState[s], "copied in %s", s)
	}
	// Batches of 4 over 9 messages a state: 4, 4, 1, six times.
	require.Len(t, progress, 18)
	for i, p := range progress {
		require.Equal(t, int64(54), p[1], "total")
		if i > 0 {
			require.Greater(t, p[0], progress[i-1][0], "progress must grow")
		}
	}
	require.Equal(t, int64(54), progress[len(progress)-1][0])
	requireCopied(t, dst, want)

	// A rerun replaces every record with itself.
	rep, err = repository.Copy(ctx, src, dst, repository.CopyOptions{})
	require.NoError(t, err)
	require.Equal(t, int64(54), rep.Copied)
	requireCopied(t, dst, want)
}

func TestCopyInterruptedThenResumed(t *testing.T) {
	t.Parallel()
	src, _, want := fsSource(t, 10)
	dst := openFile(t, testdb.SQLitePath(t))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rep, err := repository.Copy(ctx, src, dst, repository.CopyOptions{
		BatchSize: 3,
		Progress: func(copied, _ int64) {
			if copied >= 20 {
				cancel()
			}
		},
	})
	require.ErrorIs(t, err, context.Canceled)
	require.GreaterOrEqual(t, rep.Copied, int64(20))
	require.Less(t, rep.Copied, int64(60))
	// Exactly what the report counts was written, in whole batches.
	var inDst int64
	for _, n := range fixture.RequireCounts(t, dst) {
		inDst += n
	}
	require.Equal(t, rep.Copied, inDst)

	rep, err = repository.Copy(context.Background(), src, dst, repository.CopyOptions{BatchSize: 3})
	require.NoError(t, err)
	require.Equal(t, int64(60), rep.Copied)
	requireCopied(t, dst, want)
}

func TestCopyVerificationNamesDifferences(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	src, _, want := fsSource(t, 5)
	dst := openFile(t, testdb.SQLitePath(t))

	// Another writer on the destination, between the last batch and the
	// verification: it deletes one message, moves one and rewrites a field
	// of a third. The copy must not report success.
	const (
		deleted = "fs-incoming-001"
		moved   = "fs-deferred-002"
		changed = "fs-archived-004"
	)
	rep, err := repository.Copy(ctx, src, dst, repository.CopyOptions{
		BatchSize: 100,
		Progress: func(copied, total int64) {
			if copied != total {
				return
			}
			require.NoError(t, dst.DeleteMeta(ctx, deleted))
			require.NoError(t, dst.MoveToState(ctx, moved, metastorage.StateDeferred, metastorage.StateActive))
			md := want[changed]
			md.Attempts = 99
			require.NoError(t, dst.UpdateMeta(ctx, changed, md))
		},
	})
	require.ErrorIs(t, err, repository.ErrCopyMismatch)
	require.Equal(t, int64(30), rep.Copied)
	msg := err.Error()
	require.Contains(t, msg, "3 difference(s)")
	require.Contains(t, msg, fmt.Sprintf("message %q (incoming in the source) is missing", deleted))
	require.Contains(t, msg, fmt.Sprintf("message %q is deferred in the source but active in the destination", moved))
	require.Contains(t, msg, fmt.Sprintf("message %q (archived) differs in Attempts", changed))

	// A rerun repairs the destination.
	_, err = repository.Copy(ctx, src, dst, repository.CopyOptions{})
	require.NoError(t, err)
	requireCopied(t, dst, want)
}

func TestCopyRefusesWhatItCannotStore(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("time out of range", func(t *testing.T) {
		t.Parallel()
		src, err := fsmeta.NewBackendWithOptions(t.TempDir(), true, false)
		require.NoError(t, err)
		defer src.Close()
		md := fixture.Sample("far-future", metastorage.StateDeferred, 1)
		md.NextRetry = time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC)
		require.NoError(t, src.StoreMeta(ctx, md.ID, md))
		dst := openFile(t, testdb.SQLitePath(t))
		rep, err := repository.Copy(ctx, src, dst, repository.CopyOptions{})
		require.ErrorIs(t, err, sqlitemeta.ErrInvalidInput)
		require.Contains(t, err.Error(), `"far-future"`)
		require.Zero(t, rep.Copied)
		_, err = dst.GetMeta(ctx, md.ID)
		require.ErrorIs(t, err, metastorage.ErrMessageNotFound)
	})

	t.Run("record in another state than its listing", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		src, err := fsmeta.NewBackendWithOptions(dir, true, false)
		require.NoError(t, err)
		defer src.Close()
		md := fixture.Sample("misfiled", metastorage.StateActive, 2)
		require.NoError(t, src.StoreMeta(ctx, md.ID, md))
		// A crash of the filesystem backend between writing a record and
		// moving its file leaves such a record behind.
		require.NoError(t, os.Rename(filepath.Join(dir, "active", "misfiled.json"), filepath.Join(dir, "incoming", "misfiled.json")))
		dst := openFile(t, testdb.SQLitePath(t))
		_, err = repository.Copy(ctx, src, dst, repository.CopyOptions{})
		require.ErrorIs(t, err, sqlitemeta.ErrInvalidInput)
		require.Contains(t, err.Error(), `source lists message "misfiled" in state incoming but its record says active`)
	})

	t.Run("options", func(t *testing.T) {
		t.Parallel()
		dst := openFile(t, testdb.SQLitePath(t))
		_, err := repository.Copy(ctx, nil, dst, repository.CopyOptions{})
		require.ErrorIs(t, err, sqlitemeta.ErrInvalidInput)
		_, err = repository.Copy(ctx, dst, dst, repository.CopyOptions{BatchSize: -1})
		require.ErrorIs(t, err, sqlitemeta.ErrInvalidInput)
		_, err = repository.Copy(ctx, dst, dst, repository.CopyOptions{BatchSize: repository.MaxBatchSize + 1})
		require.ErrorIs(t, err, sqlitemeta.ErrInvalidInput)
	})
}

// TestCopyBetweenEngines copies from a SQLite file, which counts with
// GetStateCount, into every engine.
func TestCopyBetweenEngines(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	src := openFile(t, testdb.SQLitePath(t))
	want := map[string]metastorage.MessageMetadata{}
	var records []metastorage.MessageMetadata
	for i := 0; i < 120; i++ {
		md := fixture.Sample(fmt.Sprintf("eng-%03d", i), fixture.States[i%6], i)
		md.Created, md.Updated, md.NextRetry = md.Created.UTC(), md.Updated.UTC(), md.NextRetry.UTC()
		records = append(records, md)
		want[md.ID] = md
	}
	require.NoError(t, src.StoreMetaBatch(ctx, records))
	forEngines(t, func(t *testing.T, e testdb.Engine) {
		dst := openEngine(t, e)
		var last [2]int64
		rep, err := repository.Copy(ctx, src, dst, repository.CopyOptions{BatchSize: 50, Progress: func(c, tot int64) { last = [2]int64{c, tot} }})
		require.NoError(t, err)
		require.Equal(t, int64(120), rep.Copied)
		require.Equal(t, [2]int64{120, 120}, last)
		got := fixture.All(t, dst)
		require.Len(t, got, 120)
		for id, w := range want {
			fixture.RequireSameMeta(t, w, got[id], false)
		}
		for _, s := range fixture.States {
			require.Equal(t, int64(20), dst.GetStateCount(s))
		}
	})
}
