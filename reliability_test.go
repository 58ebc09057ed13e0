package sqlite_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"gorm.io/gorm"
	metastorage "schneider.vip/retryspool/storage/meta"
	fsmeta "schneider.vip/retryspool/storage/meta/filesystem"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/testdb"
	"schneider.vip/retryspool/storage/meta/sqlite/repository"
)

// These tests cover the copy and backup tools and closing under load.
// The helpers prefixed rel are shared by the crash, legacy, hostile, fuzz
// and busy tests of this package.

// relWait bounds every wait in these tests: a deadline against a hang, not
// a speed requirement.
const relWait = 60 * time.Second

var relStates = []metastorage.QueueState{
	metastorage.StateIncoming, metastorage.StateActive, metastorage.StateDeferred,
	metastorage.StateHold, metastorage.StateBounce, metastorage.StateArchived,
}

// relOpen opens a SQLite file with the factory and closes it when the test
// ends.
func relOpen(t testing.TB, path string, opts ...sqlitemeta.Option) *sqlitemeta.Repository {
	t.Helper()
	r, err := sqlitemeta.NewFactory(append([]sqlitemeta.Option{sqlitemeta.WithDatabasePath(path)}, opts...)...).Open(context.Background())
	require.NoError(t, err)
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// relOpenEngine opens a backend on an engine of testdb: a SQLite file, or
// a fresh table on a server engine.
func relOpenEngine(t *testing.T, e testdb.Engine, opts ...sqlitemeta.Option) *sqlitemeta.Repository {
	t.Helper()
	if e.Name == "sqlite" {
		return relOpen(t, testdb.SQLitePath(t), opts...)
	}
	db := e.Open(t)
	table := e.Table(t, db)
	r, err := sqlitemeta.NewFactory(append([]sqlitemeta.Option{sqlitemeta.WithDB(db), sqlitemeta.WithTableName(table)}, opts...)...).Open(context.Background())
	require.NoError(t, err)
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// relEngines runs fn on every engine, skipping the server engines whose
// DSN is not set, with the reason.
func relEngines(t *testing.T, fn func(t *testing.T, e testdb.Engine)) {
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

// relSHA256 hashes a file.
func relSHA256(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	h := sha256.New()
	_, err = io.Copy(h, f)
	require.NoError(t, err)
	return hex.EncodeToString(h.Sum(nil))
}

// relSQLCounts counts the messages per state with plain SQL.
func relSQLCounts(t testing.TB, r *sqlitemeta.Repository) map[metastorage.QueueState]int64 {
	t.Helper()
	rows, err := r.DB().Raw("SELECT state, COUNT(*) FROM " + r.TableName() + " GROUP BY state").Rows()
	require.NoError(t, err)
	defer rows.Close()
	out := map[metastorage.QueueState]int64{}
	for rows.Next() {
		var s int
		var n int64
		require.NoError(t, rows.Scan(&s, &n))
		out[metastorage.QueueState(s)] = n
	}
	require.NoError(t, rows.Err())
	return out
}

// relRequireCounts checks that the trigger-kept counters equal COUNT(*)
// per state, and returns the counts.
func relRequireCounts(t testing.TB, r *sqlitemeta.Repository) map[metastorage.QueueState]int64 {
	t.Helper()
	want := relSQLCounts(t, r)
	for _, s := range relStates {
		require.Equal(t, want[s], r.GetStateCount(s), "GetStateCount(%s) against COUNT(*)", s)
	}
	return want
}

// relRequireIntegrity runs PRAGMA integrity_check on a SQLite database.
func relRequireIntegrity(t testing.TB, db *gorm.DB) {
	t.Helper()
	var res []string
	require.NoError(t, db.Raw("PRAGMA integrity_check").Scan(&res).Error)
	require.Equal(t, []string{"ok"}, res)
}

// relAll reads every message through the iterators, and checks that no
// message is listed in two states or in a state its record does not say.
func relAll(t testing.TB, r metastorage.Backend) map[string]metastorage.MessageMetadata {
	t.Helper()
	ctx := context.Background()
	out := map[string]metastorage.MessageMetadata{}
	for _, s := range relStates {
		it, err := r.NewMessageIterator(ctx, s, 1000)
		require.NoError(t, err)
		for {
			md, _, err := it.Next(ctx)
			require.NoError(t, err)
			if md.ID == "" {
				break
			}
			require.Equal(t, s, md.State, "message %q listed in %s", md.ID, s)
			_, dup := out[md.ID]
			require.False(t, dup, "message %q listed twice", md.ID)
			out[md.ID] = md
		}
		require.NoError(t, it.Close())
	}
	return out
}

// relRequireSameMeta compares two records field by field, times as
// instants.
func relRequireSameMeta(t testing.TB, want, got metastorage.MessageMetadata, skipUpdated bool) {
	t.Helper()
	require.Equal(t, want.ID, got.ID)
	require.Equal(t, want.State, got.State, "State of %q", want.ID)
	require.Equal(t, want.Attempts, got.Attempts, "Attempts of %q", want.ID)
	require.Equal(t, want.MaxAttempts, got.MaxAttempts, "MaxAttempts of %q", want.ID)
	require.True(t, want.NextRetry.Equal(got.NextRetry), "NextRetry of %q: want %v, got %v", want.ID, want.NextRetry, got.NextRetry)
	require.True(t, want.Created.Equal(got.Created), "Created of %q: want %v, got %v", want.ID, want.Created, got.Created)
	if !skipUpdated {
		require.True(t, want.Updated.Equal(got.Updated), "Updated of %q: want %v, got %v", want.ID, want.Updated, got.Updated)
	}
	require.Equal(t, want.LastError, got.LastError, "LastError of %q", want.ID)
	require.Equal(t, want.Size, got.Size, "Size of %q", want.ID)
	require.Equal(t, want.Priority, got.Priority, "Priority of %q", want.ID)
	require.Equal(t, want.Headers, got.Headers, "Headers of %q", want.ID) // nil and empty differ
	require.Equal(t, want.RetryPolicyName, got.RetryPolicyName, "RetryPolicyName of %q", want.ID)
}

// relSample builds a record with every field set, varied by n.
func relSample(id string, state metastorage.QueueState, n int) metastorage.MessageMetadata {
	loc := time.FixedZone("UTC+2", 2*3600)
	md := metastorage.MessageMetadata{
		ID:              id,
		State:           state,
		Attempts:        n % 4,
		MaxAttempts:     5 + n%3,
		Created:         time.Date(2024, 3, 1, 10, 0, 0, 123456789+n, loc),
		Updated:         time.Date(2024, 3, 2, 11, 0, 0, 987654321-n, time.UTC),
		LastError:       fmt.Sprintf("451 4.2.1 mailbox busy (%d) — réessayer", n),
		Size:            int64(n)*1024 + 7,
		Priority:        n%7 - 3,
		RetryPolicyName: []string{"", "default", "aggressive"}[n%3],
	}
	if n%2 == 0 {
		md.NextRetry = time.Date(2024, 3, 3, 12, 0, 0, n, time.UTC)
	}
	switch n % 3 {
	case 0: // nil headers
	case 1:
		md.Headers = map[string]string{}
	case 2:
		md.Headers = map[string]string{"from": "a@example.org", "x-n": fmt.Sprint(n), "subject": "Grüße <&>"}
	}
	return md
}

// relFSSource fills RetrySpool's filesystem meta backend with perState
// messages in each of the six states, and returns it with its records as
// it gives them back.
func relFSSource(t *testing.T, perState int) (*fsmeta.Backend, string, map[string]metastorage.MessageMetadata) {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	src, err := fsmeta.NewBackendWithOptions(dir, true, false)
	require.NoError(t, err)
	t.Cleanup(func() { _ = src.Close() })
	want := map[string]metastorage.MessageMetadata{}
	n := 0
	for _, s := range relStates {
		for i := 0; i < perState; i++ {
			n++
			id := fmt.Sprintf("fs-%s-%03d", s, i)
			md := relSample(id, s, n)
			require.NoError(t, src.StoreMeta(ctx, id, md))
			got, err := src.GetMeta(ctx, id)
			require.NoError(t, err)
			// The filesystem backend keeps every field but Updated, which
			// its StoreMeta sets to the time of the call.
			relRequireSameMeta(t, md, got, true)
			require.False(t, got.Updated.Equal(md.Updated))
			want[id] = got
		}
	}
	return src, dir, want
}

func relRequireCopied(t *testing.T, dst *sqlitemeta.Repository, want map[string]metastorage.MessageMetadata) {
	t.Helper()
	got := relAll(t, dst)
	require.Len(t, got, len(want))
	for id, w := range want {
		g, ok := got[id]
		require.True(t, ok, "message %q not copied", id)
		relRequireSameMeta(t, w, g, false)
	}
	counts := relRequireCounts(t, dst)
	for _, s := range relStates {
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
	src, _, want := relFSSource(t, 9)
	dst := relOpen(t, testdb.SQLitePath(t))

	var progress [][2]int64
	rep, err := repository.Copy(ctx, src, dst, repository.CopyOptions{
		BatchSize: 4,
		Progress:  func(copied, total int64) { progress = append(progress, [2]int64{copied, total}) },
	})
	require.NoError(t, err)
	require.Equal(t, int64(54), rep.Copied)
	for _, s := range relStates {
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
	relRequireCopied(t, dst, want)

	// A rerun replaces every record with itself.
	rep, err = repository.Copy(ctx, src, dst, repository.CopyOptions{})
	require.NoError(t, err)
	require.Equal(t, int64(54), rep.Copied)
	relRequireCopied(t, dst, want)
}

func TestCopyInterruptedThenResumed(t *testing.T) {
	t.Parallel()
	src, _, want := relFSSource(t, 10)
	dst := relOpen(t, testdb.SQLitePath(t))

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
	for _, n := range relRequireCounts(t, dst) {
		inDst += n
	}
	require.Equal(t, rep.Copied, inDst)

	rep, err = repository.Copy(context.Background(), src, dst, repository.CopyOptions{BatchSize: 3})
	require.NoError(t, err)
	require.Equal(t, int64(60), rep.Copied)
	relRequireCopied(t, dst, want)
}

func TestCopyVerificationNamesDifferences(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	src, _, want := relFSSource(t, 5)
	dst := relOpen(t, testdb.SQLitePath(t))

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
	relRequireCopied(t, dst, want)
}

func TestCopyRefusesWhatItCannotStore(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	t.Run("time out of range", func(t *testing.T) {
		t.Parallel()
		src, err := fsmeta.NewBackendWithOptions(t.TempDir(), true, false)
		require.NoError(t, err)
		defer src.Close()
		md := relSample("far-future", metastorage.StateDeferred, 1)
		md.NextRetry = time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC)
		require.NoError(t, src.StoreMeta(ctx, md.ID, md))
		dst := relOpen(t, testdb.SQLitePath(t))
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
		md := relSample("misfiled", metastorage.StateActive, 2)
		require.NoError(t, src.StoreMeta(ctx, md.ID, md))
		// A crash of the filesystem backend between writing a record and
		// moving its file leaves such a record behind.
		require.NoError(t, os.Rename(filepath.Join(dir, "active", "misfiled.json"), filepath.Join(dir, "incoming", "misfiled.json")))
		dst := relOpen(t, testdb.SQLitePath(t))
		_, err = repository.Copy(ctx, src, dst, repository.CopyOptions{})
		require.ErrorIs(t, err, sqlitemeta.ErrInvalidInput)
		require.Contains(t, err.Error(), `source lists message "misfiled" in state incoming but its record says active`)
	})

	t.Run("options", func(t *testing.T) {
		t.Parallel()
		dst := relOpen(t, testdb.SQLitePath(t))
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
	src := relOpen(t, testdb.SQLitePath(t))
	want := map[string]metastorage.MessageMetadata{}
	var records []metastorage.MessageMetadata
	for i := 0; i < 120; i++ {
		md := relSample(fmt.Sprintf("eng-%03d", i), relStates[i%6], i)
		md.Created, md.Updated, md.NextRetry = md.Created.UTC(), md.Updated.UTC(), md.NextRetry.UTC()
		records = append(records, md)
		want[md.ID] = md
	}
	require.NoError(t, src.StoreMetaBatch(ctx, records))
	relEngines(t, func(t *testing.T, e testdb.Engine) {
		dst := relOpenEngine(t, e)
		var last [2]int64
		rep, err := repository.Copy(ctx, src, dst, repository.CopyOptions{BatchSize: 50, Progress: func(c, tot int64) { last = [2]int64{c, tot} }})
		require.NoError(t, err)
		require.Equal(t, int64(120), rep.Copied)
		require.Equal(t, [2]int64{120, 120}, last)
		got := relAll(t, dst)
		require.Len(t, got, 120)
		for id, w := range want {
			relRequireSameMeta(t, w, got[id], false)
		}
		for _, s := range relStates {
			require.Equal(t, int64(20), dst.GetStateCount(s))
		}
	})
}

func TestBackupWhileWriting(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	r := relOpen(t, filepath.Join(dir, "live.db"))

	var seed []metastorage.MessageMetadata
	for i := 0; i < 300; i++ {
		seed = append(seed, relSample(fmt.Sprintf("seed-%03d", i), relStates[i%6], i))
	}
	require.NoError(t, r.StoreMetaBatch(ctx, seed))

	// Eight writers store, move and rewrite messages until told to stop.
	// Each records the IDs whose StoreMeta had returned nil.
	var (
		stop    atomic.Bool
		wg      sync.WaitGroup
		mu      sync.Mutex
		stored  []string
		writes  atomic.Int64
		errs    = make(chan error, 8)
		started = make(chan struct{})
		once    sync.Once
	)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				id := fmt.Sprintf("w%d-%05d", g, i)
				md := relSample(id, metastorage.StateIncoming, i)
				if err := r.StoreMeta(ctx, id, md); err != nil {
					errs <- err
					return
				}
				mu.Lock()
				stored = append(stored, id)
				mu.Unlock()
				if err := r.MoveToState(ctx, id, metastorage.StateIncoming, metastorage.StateActive); err != nil {
					errs <- err
					return
				}
				md.State, md.Attempts = metastorage.StateDeferred, 1
				if err := r.UpdateMeta(ctx, id, md); err != nil {
					errs <- err
					return
				}
				if writes.Add(3) > 60 {
					once.Do(func() { close(started) })
				}
			}
		}()
	}
	select {
	case <-started:
	case err := <-errs:
		t.Fatal(err)
	case <-time.After(relWait):
		t.Fatal("writers made no progress")
	}
	mu.Lock()
	before := append([]string(nil), stored...)
	mu.Unlock()
	atBackup := writes.Load()

	backup := filepath.Join(dir, "backup.db")
	require.NoError(t, r.Backup(ctx, backup))
	afterBackup := writes.Load()
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	t.Logf("writes before the backup: %d, during it: %d", atBackup, afterBackup-atBackup)

	live := relAll(t, r)
	b := relOpen(t, backup)
	relRequireIntegrity(t, b.DB())
	relRequireCounts(t, b)
	inBackup := relAll(t, b)
	for _, md := range seed {
		got, ok := inBackup[md.ID]
		require.True(t, ok, "seeded %q missing from the backup", md.ID)
		relRequireSameMeta(t, md, got, false)
	}
	// Every write acknowledged before the backup began is in it.
	for _, id := range before {
		_, ok := inBackup[id]
		require.True(t, ok, "%q was stored before the backup but is not in it", id)
	}
	// The backup holds nothing the live database never had.
	for id := range inBackup {
		_, ok := live[id]
		require.True(t, ok, "%q is in the backup but not in the live database", id)
	}

	// An existing path is never overwritten.
	require.NoError(t, b.Close())
	sum := relSHA256(t, backup)
	err := r.Backup(ctx, backup)
	require.ErrorIs(t, err, sqlitemeta.ErrInvalidInput)
	require.ErrorIs(t, err, os.ErrExist)
	require.Equal(t, sum, relSHA256(t, backup))
	empty := filepath.Join(dir, "empty")
	require.NoError(t, os.WriteFile(empty, nil, 0o600))
	require.ErrorIs(t, r.Backup(ctx, empty), os.ErrExist)

	// A failed backup leaves no file behind.
	missingDir := filepath.Join(dir, "no", "such", "dir", "b.db")
	require.Error(t, r.Backup(ctx, missingDir))
	_, err = os.Stat(missingDir)
	require.ErrorIs(t, err, os.ErrNotExist)

	// A view inside a transaction cannot vacuum.
	require.NoError(t, r.Transaction(ctx, func(tx *gorm.DB) error {
		require.ErrorIs(t, r.WithTx(tx).Backup(ctx, filepath.Join(dir, "tx.db")), sqlitemeta.ErrInvalidInput)
		return nil
	}))

	require.NoError(t, r.Close())
	require.ErrorIs(t, r.Backup(ctx, filepath.Join(dir, "closed.db")), metastorage.ErrBackendClosed)
	_, err = os.Stat(filepath.Join(dir, "closed.db"))
	require.ErrorIs(t, err, os.ErrNotExist)
}

func TestBackupOnServerEngines(t *testing.T) {
	t.Parallel()
	for _, e := range testdb.Servers() { // SQLite: TestBackupWhileWriting
		t.Run(e.Name, func(t *testing.T) {
			if e.Skip != "" {
				t.Skip(e.Skip)
			}
			t.Parallel()
			r := relOpenEngine(t, e)
			path := filepath.Join(t.TempDir(), "b.db")
			err := r.Backup(context.Background(), path)
			require.ErrorIs(t, err, sqlitemeta.ErrInvalidInput)
			require.Contains(t, err.Error(), "server's own tools")
			_, err = os.Stat(path)
			require.ErrorIs(t, err, os.ErrNotExist)
		})
	}
}

// relCloseOps are the calls TestCloseUnderLoad makes, each with the
// errors it may return besides nil and ErrBackendClosed.
var relCloseOps = []func(ctx context.Context, r *sqlitemeta.Repository, g, i int) error{
	func(ctx context.Context, r *sqlitemeta.Repository, g, i int) error {
		id := fmt.Sprintf("c%d-%d", g, i)
		return r.StoreMeta(ctx, id, relSample(id, metastorage.StateIncoming, i))
	},
	func(ctx context.Context, r *sqlitemeta.Repository, g, i int) error {
		_, err := r.GetMeta(ctx, fmt.Sprintf("seed-%03d", i%100))
		return err
	},
	func(ctx context.Context, r *sqlitemeta.Repository, g, i int) error {
		id := fmt.Sprintf("c%d-%d", g, i-1)
		md := relSample(id, metastorage.StateDeferred, i)
		return r.UpdateMeta(ctx, id, md)
	},
	func(ctx context.Context, r *sqlitemeta.Repository, g, i int) error {
		return r.MoveToState(ctx, fmt.Sprintf("seed-%03d", i%100), metastorage.StateIncoming, metastorage.StateActive)
	},
	func(ctx context.Context, r *sqlitemeta.Repository, g, i int) error {
		return r.DeleteMeta(ctx, fmt.Sprintf("c%d-%d", g, i-3))
	},
	func(ctx context.Context, r *sqlitemeta.Repository, g, i int) error {
		_, err := r.ListMessages(ctx, metastorage.StateIncoming, metastorage.MessageListOptions{Limit: 20, SortBy: "priority"})
		return err
	},
	func(ctx context.Context, r *sqlitemeta.Repository, g, i int) error {
		it, err := r.NewMessageIterator(ctx, metastorage.StateIncoming, 7)
		if err != nil {
			return err
		}
		defer it.Close()
		for k := 0; k < 20; k++ {
			md, _, err := it.Next(ctx)
			if err != nil || md.ID == "" {
				return err
			}
		}
		return nil
	},
	func(ctx context.Context, r *sqlitemeta.Repository, g, i int) error {
		_ = r.GetStateCount(metastorage.StateActive) // no error to report; must not block
		_, err := r.StateCount(ctx, metastorage.StateIncoming)
		return err
	},
	func(ctx context.Context, r *sqlitemeta.Repository, g, i int) error {
		batch := []metastorage.MessageMetadata{
			relSample(fmt.Sprintf("b%d-%d-a", g, i), metastorage.StateIncoming, i),
			relSample(fmt.Sprintf("b%d-%d-b", g, i), metastorage.StateDeferred, i),
		}
		return r.StoreMetaBatch(ctx, batch)
	},
	func(ctx context.Context, r *sqlitemeta.Repository, g, i int) error {
		_, err := r.ClaimMessages(ctx, metastorage.StateIncoming, metastorage.StateActive, 3)
		return err
	},
	func(ctx context.Context, r *sqlitemeta.Repository, g, i int) error {
		_, err := r.ClaimDue(ctx, time.Now(), 3)
		return err
	},
	func(ctx context.Context, r *sqlitemeta.Repository, g, i int) error {
		_, err := r.DueMessages(ctx, time.Now(), 5)
		return err
	},
	func(ctx context.Context, r *sqlitemeta.Repository, g, i int) error {
		return r.Transaction(ctx, func(tx *gorm.DB) error {
			id := fmt.Sprintf("t%d-%d", g, i)
			return r.WithTx(tx).StoreMeta(ctx, id, relSample(id, metastorage.StateHold, i))
		})
	},
}

// relCloseAllowed reports whether err is an outcome a caller may see while
// the backend closes.
func relCloseAllowed(err error) bool {
	return err == nil ||
		errors.Is(err, metastorage.ErrBackendClosed) ||
		errors.Is(err, metastorage.ErrMessageNotFound) ||
		errors.Is(err, metastorage.ErrStateConflict)
}

// TestCloseUnderLoad closes a SQLite backend while 32 goroutines call
// every operation. It is not parallel, so that the goroutine check sees
// only this test's goroutines.
func TestCloseUnderLoad(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	for round := 0; round < 3; round++ {
		path := filepath.Join(t.TempDir(), "close.db")
		relCloseUnderLoad(t, func() *sqlitemeta.Repository {
			r, err := sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(path)).Open(context.Background())
			require.NoError(t, err)
			return r
		})
		r := relOpen(t, path)
		relRequireIntegrity(t, r.DB())
		require.NoError(t, r.Close())
	}
	goleak.VerifyNone(t, ignore)
}

// TestCloseUnderLoadServerEngines closes backends on an application's
// *gorm.DB (WithDB) under load: Close leaves that database open, and calls
// in flight end with ErrBackendClosed just the same.
func TestCloseUnderLoadServerEngines(t *testing.T) {
	t.Parallel()
	for _, e := range testdb.Servers() { // SQLite: TestCloseUnderLoad
		t.Run(e.Name, func(t *testing.T) {
			if e.Skip != "" {
				t.Skip(e.Skip)
			}
			t.Parallel()
			db := e.Open(t)
			table := e.Table(t, db)
			relCloseUnderLoad(t, func() *sqlitemeta.Repository {
				r, err := sqlitemeta.NewFactory(sqlitemeta.WithDB(db), sqlitemeta.WithTableName(table)).Open(context.Background())
				require.NoError(t, err)
				return r
			})
			require.NoError(t, db.Exec("SELECT 1").Error, "Close must leave the application's database open")
		})
	}
}

// relCloseUnderLoad runs every operation from 32 goroutines on a backend
// from open, closes it in the middle, and checks what the callers saw and
// that the data is consistent afterwards.
func relCloseUnderLoad(t *testing.T, open func() *sqlitemeta.Repository) {
	ctx := context.Background()
	r := open()
	var seed []metastorage.MessageMetadata
	for i := 0; i < 100; i++ {
		md := relSample(fmt.Sprintf("seed-%03d", i), metastorage.StateIncoming, i)
		md.NextRetry = time.Time{}
		seed = append(seed, md)
	}
	require.NoError(t, r.StoreMetaBatch(ctx, seed))

	const goroutines = 32
	var (
		wg       sync.WaitGroup
		calls    atomic.Int64
		closed   atomic.Bool // set once Close has returned
		mu       sync.Mutex
		bad      []string
		sawClose atomic.Int64
	)
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			afterClose := 0
			for i := 0; afterClose < 3; i++ {
				done := closed.Load()
				err := relCloseOps[(g+i)%len(relCloseOps)](ctx, r, g, i)
				calls.Add(1)
				switch {
				case !relCloseAllowed(err):
					mu.Lock()
					bad = append(bad, fmt.Sprintf("op %d: %v", (g+i)%len(relCloseOps), err))
					mu.Unlock()
				case done && !errors.Is(err, metastorage.ErrBackendClosed):
					mu.Lock()
					bad = append(bad, fmt.Sprintf("op %d after Close returned: %v", (g+i)%len(relCloseOps), err))
					mu.Unlock()
				}
				if errors.Is(err, metastorage.ErrBackendClosed) {
					sawClose.Add(1)
					if !done {
						time.Sleep(time.Millisecond) // Close is waiting for the calls in flight
					}
				}
				if done {
					afterClose++
				}
			}
		}()
	}
	// Let the load build up, then close in the middle of it.
	deadline := time.Now().Add(relWait)
	for calls.Load() < 400 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	require.NoError(t, r.Close())
	closed.Store(true)
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(relWait):
		t.Fatalf("calls still running %s after Close", relWait)
	}
	require.Empty(t, bad)
	require.GreaterOrEqual(t, sawClose.Load(), int64(goroutines*3))
	require.NoError(t, r.Close(), "Close twice")
	t.Logf("%d calls, %d of them answered ErrBackendClosed", calls.Load(), sawClose.Load())

	// Everything the load wrote is consistent.
	r2 := open()
	relRequireCounts(t, r2)
	require.NoError(t, r2.Close())
}
