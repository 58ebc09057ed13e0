package repository

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	glebarez "github.com/glebarez/sqlite"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
	metastorage "schneider.vip/retryspool/storage/meta"

	"schneider.vip/retryspool/storage/meta/sqlite/internal/sqlitedriver"
)

// writerFixture is a group writer on a SQLite file with a table kv, not
// yet started, so that a test can queue requests first and have them run
// as one batch.
type writerFixture struct {
	w      *groupWriter
	path   string
	reads  *sql.DB // another pool on the same file
	cancel context.CancelFunc
}

func openPool(t *testing.T, path string, busyMillis int) (*gorm.DB, *sql.DB) {
	t.Helper()
	dsn := fmt.Sprintf("file:%s?_pragma=busy_timeout(%d)&_pragma=journal_mode(WAL)", path, busyMillis)
	db, err := gorm.Open(&glebarez.Dialector{DriverName: sqlitedriver.DriverName, DSN: dsn},
		&gorm.Config{Logger: logger.Discard, SkipDefaultTransaction: true})
	require.NoError(t, err)
	pool, err := db.DB()
	require.NoError(t, err)
	t.Cleanup(func() { pool.Close() })
	return db, pool
}

// newWriterFixture opens the file; the writer waits wait for the lock in
// all, and its connection's own busy timeout is busyMillis.
func newWriterFixture(t *testing.T, wait time.Duration, busyMillis int) *writerFixture {
	t.Helper()
	path := filepath.Join(t.TempDir(), "w.db")
	db, pool := openPool(t, path, busyMillis)
	pool.SetMaxOpenConns(1)
	_, err := pool.Exec("CREATE TABLE kv (k TEXT PRIMARY KEY, v INTEGER NOT NULL)")
	require.NoError(t, err)
	own, err := pool.Conn(context.Background())
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	f := &writerFixture{path: path, cancel: cancel}
	f.w = newGroupWriter(ctx, own, nil, db, 64, wait, nil)
	_, f.reads = openPool(t, path, 5000)
	t.Cleanup(func() {
		cancel()
		require.NoError(t, f.w.close())
	})
	return f
}

// insert is a write of key k.
func insert(k string) func(c conn) error {
	return func(c conn) error {
		_, err := c.exec("INSERT INTO kv (k, v) VALUES (?, 1)", k)
		return err
	}
}

// keys lists what is committed.
func (f *writerFixture) keys(t *testing.T) []string {
	t.Helper()
	rows, err := f.reads.Query("SELECT k FROM kv ORDER BY k")
	require.NoError(t, err)
	defer rows.Close()
	var out []string
	for rows.Next() {
		var k string
		require.NoError(t, rows.Scan(&k))
		out = append(out, k)
	}
	require.NoError(t, rows.Err())
	return out
}

// queue runs each fn through the writer from a goroutine of its own and
// returns once all are queued; wait then returns their errors, in order.
func (f *writerFixture) queue(t *testing.T, ctx context.Context, fns ...func(c conn) error) (wait func() []error) {
	t.Helper()
	errs := make([]error, len(fns))
	var wg sync.WaitGroup
	before := len(f.w.reqs)
	for i, fn := range fns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = f.w.do(ctx, fn)
		}()
		// One at a time, so that the batch keeps their order.
		require.Eventually(t, func() bool { return len(f.w.reqs) == before+i+1 }, 10*time.Second, time.Millisecond)
	}
	return func() []error {
		wg.Wait()
		return errs
	}
}

func TestWriterSomeFunctionsOfAGroupFail(t *testing.T) {
	t.Parallel()
	f := newWriterFixture(t, 5*time.Second, 5000)
	boom := errors.New("boom")
	var seen []int64 // rows each successful write sees: the batch shares one transaction
	fns := make([]func(c conn) error, 10)
	for i := range fns {
		k := fmt.Sprintf("k%02d", i)
		fns[i] = func(c conn) error {
			if err := insert(k)(c); err != nil {
				return err
			}
			if i%3 == 1 {
				return fmt.Errorf("write %d: %w", i, boom)
			}
			var n int64
			if err := c.scalar("SELECT COUNT(*) FROM kv", nil, &n); err != nil {
				return err
			}
			seen = append(seen, n)
			return nil
		}
	}
	wait := f.queue(t, context.Background(), fns...)
	f.w.start()
	errs := wait()
	var want []string
	for i, err := range errs {
		if i%3 == 1 {
			require.ErrorIs(t, err, boom, "write %d fails alone", i)
			continue
		}
		require.NoError(t, err, "write %d", i)
		want = append(want, fmt.Sprintf("k%02d", i))
	}
	require.Equal(t, want, f.keys(t), "the failed writes left nothing, the others committed")
	require.Equal(t, []int64{1, 2, 3, 4, 5, 6, 7}, seen, "each write saw the earlier ones of its group, and none of a failed one")
}

func TestWriterContextCancelledBeforeTaken(t *testing.T) {
	t.Parallel()
	f := newWriterFixture(t, 5*time.Second, 5000)
	ctx, cancel := context.WithCancel(context.Background())
	var ran atomic.Bool
	wait := f.queue(t, ctx, func(c conn) error { ran.Store(true); return insert("gone")(c) })
	cancel()
	errs := wait() // the caller gives up before the writer runs
	require.ErrorIs(t, errs[0], context.Canceled)
	f.w.start()
	require.NoError(t, f.w.do(context.Background(), insert("next")))
	require.False(t, ran.Load(), "an abandoned request never runs")
	require.Equal(t, []string{"next"}, f.keys(t))
}

func TestWriterContextCancelledAfterTaken(t *testing.T) {
	t.Parallel()
	f := newWriterFixture(t, 5*time.Second, 5000)
	f.w.start()
	ctx, cancel := context.WithCancel(context.Background())
	inside, release := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- f.w.do(ctx, func(c conn) error {
			close(inside)
			<-release
			return insert("kept")(c)
		})
	}()
	<-inside
	cancel()
	close(release)
	require.NoError(t, <-done, "once taken, a write runs to the end and reports its outcome")
	require.Equal(t, []string{"kept"}, f.keys(t))
}

func TestWriterRollbackToFails(t *testing.T) {
	t.Parallel()
	f := newWriterFixture(t, 5*time.Second, 5000)
	wait := f.queue(t, context.Background(),
		insert("a"),
		func(c conn) error {
			if err := insert("b")(c); err != nil {
				return err
			}
			// Releasing the group's savepoint makes ROLLBACK TO fail.
			if _, err := c.exec("RELEASE gc"); err != nil {
				return err
			}
			return errors.New("fails after releasing the savepoint")
		},
		insert("c"),
	)
	f.w.start()
	errs := wait()
	for i, err := range errs {
		require.Error(t, err, "write %d: nothing of the group may commit", i)
	}
	require.Empty(t, f.keys(t))
	require.NoError(t, f.w.do(context.Background(), insert("after")), "the writer goes on with a new transaction")
	require.Equal(t, []string{"after"}, f.keys(t))
}

func TestWriterHookPanics(t *testing.T) {
	t.Parallel()
	f := newWriterFixture(t, 5*time.Second, 5000)
	wait := f.queue(t, context.Background(),
		insert("a"),
		func(c conn) error {
			if err := insert("b")(c); err != nil {
				return err
			}
			panic("hook bug")
		},
		insert("c"),
	)
	f.w.start()
	errs := wait()
	require.NoError(t, errs[0])
	require.ErrorContains(t, errs[1], "hook bug")
	require.NoError(t, errs[2])
	require.Equal(t, []string{"a", "c"}, f.keys(t), "the panicking write left nothing, the others committed")
}

// holdLock takes the write lock on another connection until release is
// called.
func holdLock(t *testing.T, path string) (release func()) {
	t.Helper()
	_, pool := openPool(t, path, 5000)
	c, err := pool.Conn(context.Background())
	require.NoError(t, err)
	_, err = c.ExecContext(context.Background(), "BEGIN IMMEDIATE")
	require.NoError(t, err)
	var once sync.Once
	release = func() {
		once.Do(func() {
			_, err := c.ExecContext(context.Background(), "ROLLBACK")
			require.NoError(t, err)
			require.NoError(t, c.Close())
		})
	}
	t.Cleanup(release)
	return release
}

func TestWriterSecondConnectionHoldsTheLock(t *testing.T) {
	t.Parallel()
	// The connection's own busy timeout is short, the store's wait
	// longer: the writer keeps trying until the request's time is up.
	f := newWriterFixture(t, 300*time.Millisecond, 10)
	f.w.start()
	release := holdLock(t, f.path)

	err := f.w.do(context.Background(), insert("busy"))
	require.ErrorIs(t, err, ErrBusy, "a write that cannot get the lock in its time fails with ErrBusy")

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.w.do(ctx, insert("cancelled")) }()
	cancel()
	require.ErrorIs(t, <-done, context.Canceled, "a caller may give up while the writer waits for the lock")

	release()
	require.NoError(t, f.w.do(context.Background(), insert("free")))
	require.Equal(t, []string{"free"}, f.keys(t))
}

func TestWriterCloseWithRequestsQueued(t *testing.T) {
	t.Parallel()
	// Writes may wait an hour for the lock, and the connection's busy
	// timeout is an hour too: only Close ends the wait.
	f := newWriterFixture(t, time.Hour, 3600_000)
	f.w.start()
	holdLock(t, f.path)
	errs := make(chan error, 5)
	for i := range 5 {
		go func() { errs <- f.w.do(context.Background(), insert(fmt.Sprint(i))) }()
	}
	require.Eventually(t, func() bool { return len(f.w.reqs) > 0 }, 10*time.Second, time.Millisecond,
		"the first write waits for the lock while the others queue")
	f.cancel() // what the store's Close does first
	closed := make(chan error, 1)
	go func() { closed <- f.w.close() }()
	for range 5 {
		select {
		case err := <-errs:
			require.ErrorIs(t, err, metastorage.ErrBackendClosed)
		case <-time.After(30 * time.Second):
			t.Fatal("a write still waits for the lock after Close")
		}
	}
	require.NoError(t, <-closed)
}

func TestHookCallingTheStoreFailsAtOnce(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "hook.db")
	db, _ := openPool(t, path, 5000)
	var r *Repository
	var inner error
	hook := func(ctx context.Context, tr Transition) error {
		inner = r.StoreMeta(ctx, "other", metastorage.MessageMetadata{ID: "other", State: metastorage.StateIncoming})
		return inner
	}
	var err error
	r, err = New(context.Background(), db, Config{Hooks: []Hook{hook}})
	require.NoError(t, err)
	t.Cleanup(func() { r.Close() })

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err = r.StoreMeta(ctx, "m", metastorage.MessageMetadata{ID: "m", State: metastorage.StateIncoming})
	require.ErrorIs(t, inner, ErrReentrantCall, "the hook's call is refused at once")
	require.ErrorIs(t, err, ErrReentrantCall, "and fails the change")
	require.NoError(t, ctx.Err(), "without waiting for the context to end")
	_, err = r.GetMeta(context.Background(), "m")
	require.ErrorIs(t, err, metastorage.ErrMessageNotFound, "the change rolled back")
}
