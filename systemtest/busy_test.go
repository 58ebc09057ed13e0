package systemtest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gosqlite "github.com/glebarez/go-sqlite"
	glebarez "github.com/glebarez/sqlite"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
	sqlite3 "modernc.org/sqlite/lib"
	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/sqlitedriver"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/fixture"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/proc"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/testdb"
)

// These tests put two OS processes on one SQLite file: the test and a
// child (the test binary again, see main_test.go). The child holds the
// write lock on command, inside a Transaction, while the parent writes.

// busyKind classifies an error seen while another process holds or
// contends for the write lock. Only ErrBusy that reaches the driver's
// SQLITE_BUSY, ErrStateConflict, or nothing, are acceptable; "locked" or
// "busy" never appears without ErrBusy.
func busyKind(err error) (string, error) {
	switch {
	case err == nil:
		return "ok", nil
	case errors.Is(err, metastorage.ErrStateConflict):
		return "conflict", nil
	case errors.Is(err, sqlitemeta.ErrBusy):
		code, ok := busyDriverCode(err)
		if !ok {
			return "", fmt.Errorf("ErrBusy without the driver's error: %w", err)
		}
		if code&0xff != sqlite3.SQLITE_BUSY {
			return "", fmt.Errorf("ErrBusy with SQLite code %d: %w", code, err)
		}
		return "busy", nil
	}
	msg := strings.ToLower(err.Error())
	if strings.Contains(msg, "locked") || strings.Contains(msg, "busy") {
		return "", fmt.Errorf("lock error without ErrBusy: %w", err)
	}
	return "", err
}

// busyDriverCode finds the SQLite driver's error in err's chain and returns
// its extended result code. The factory's files are opened with the
// library's own driver (internal/sqlitedriver), a *gorm.DB of the
// application may use the glebarez driver; both errors carry Code().
func busyDriverCode(err error) (int, bool) {
	var ge *gosqlite.Error
	if errors.As(err, &ge) {
		return ge.Code(), true
	}
	var de *sqlitedriver.Error
	if errors.As(err, &de) {
		return de.Code(), true
	}
	return 0, false
}

// busyChild runs the child's side: a write load of its own, and commands
// from stdin: "race <prefix> <n>", "hold", "release", "pause" (end the
// background load), "quit".
func busyChild() error {
	ctx := context.Background()
	opts := []sqlitemeta.Option{sqlitemeta.WithDatabasePath(proc.Param(paramDB))}
	if ms := proc.Param(paramBusyTimeout); ms != "" {
		n, err := strconv.Atoi(ms)
		if err != nil {
			return err
		}
		opts = append(opts, sqlitemeta.WithBusyTimeout(n))
	}
	r, err := sqlitemeta.NewFactory(opts...).Open(ctx)
	if err != nil {
		return err
	}
	errc := make(chan error, 16)
	var stop atomic.Bool
	var load sync.WaitGroup
	for g := 0; g < 2; g++ {
		load.Add(1)
		go func() {
			defer load.Done()
			for i := 0; !stop.Load(); i++ {
				id := fmt.Sprintf("child-load-%d-%d", g, i)
				if _, err := busyKind(r.StoreMeta(ctx, id, fixture.Sample(id, metastorage.StateIncoming, i))); err != nil {
					errc <- err
					return
				}
				time.Sleep(time.Millisecond)
			}
		}()
	}
	proc.Say("READY")
	release := make(chan struct{})
	held := make(chan error, 1)
	for {
		line := proc.Command()
		select {
		case err := <-errc:
			return err
		default:
		}
		f := strings.Fields(line)
		switch {
		case len(f) == 3 && f[0] == "race":
			n, _ := strconv.Atoi(f[2])
			proc.Say("RACING")
			var wg sync.WaitGroup
			for w := 0; w < 4; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := w; i < n; i += 4 {
						id := fmt.Sprintf("%s-%d", f[1], i)
						kind, err := busyKind(r.MoveToState(ctx, id, metastorage.StateIncoming, metastorage.StateActive))
						if err != nil {
							errc <- err
							return
						}
						proc.Say("RACE " + id + " " + kind)
					}
				}()
			}
			wg.Wait()
			proc.Say("RACED")
		case len(f) == 1 && f[0] == "hold":
			go func() {
				held <- r.Transaction(ctx, func(tx *gorm.DB) error {
					if err := r.WithTx(tx).StoreMeta(ctx, "held", fixture.Sample("held", metastorage.StateHold, 1)); err != nil {
						return err
					}
					proc.Say("HOLD")
					<-release
					return nil
				})
			}()
		case len(f) == 1 && f[0] == "release":
			release <- struct{}{}
			if err := <-held; err != nil {
				return err
			}
			proc.Say("RELEASED")
		case len(f) == 1 && f[0] == "pause":
			// The background load stops, so that the lock is free
			// for the parent: SQLite's lock is not fair, and a busy
			// timeout of 200 ms may miss every gap between this
			// process's commits.
			stop.Store(true)
			load.Wait()
			proc.Say("PAUSED")
		case len(f) == 1 && f[0] == "quit":
			stop.Store(true)
			load.Wait()
			select {
			case err := <-errc:
				return err
			default:
			}
			if err := r.Close(); err != nil {
				return err
			}
			proc.Say("BYE")
			return nil
		default:
			return fmt.Errorf("unknown command %q", line)
		}
	}
}

// untilNotBusy runs a setup write again while it fails with ErrBusy: with
// a 200 ms busy timeout and another process writing all the time, a write
// may miss every gap between that process's commits (SQLite's lock is not
// fair), and the setup is not what these tests are about.
func untilNotBusy(write func() error) error {
	var err error
	for range 50 {
		if err = write(); !errors.Is(err, sqlitemeta.ErrBusy) {
			return err
		}
	}
	return err
}

// busyRace stores n messages in incoming and lets both processes claim
// each of them with MoveToState at once: exactly one claim may win, and
// the state must say so.
func busyRace(t *testing.T, parent *sqlitemeta.Repository, c *proc.Child, prefix string, n int) map[string]int {
	t.Helper()
	ctx := context.Background()
	var batch []metastorage.MessageMetadata
	for i := 0; i < n; i++ {
		md := fixture.Sample(fmt.Sprintf("%s-%d", prefix, i), metastorage.StateIncoming, i)
		batch = append(batch, md)
	}
	require.NoError(t, untilNotBusy(func() error { return parent.StoreMetaBatch(ctx, batch) }))

	c.Tell(t, fmt.Sprintf("race %s %d", prefix, n))
	c.WaitLine(t, "RACING")
	var mu sync.Mutex
	parentKind := map[string]string{}
	var wg sync.WaitGroup
	var bad atomic.Pointer[error]
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := n - 1 - w; i >= 0; i -= 4 { // from the other end
				id := fmt.Sprintf("%s-%d", prefix, i)
				kind, err := busyKind(parent.MoveToState(ctx, id, metastorage.StateIncoming, metastorage.StateActive))
				if err != nil {
					bad.Store(&err)
					return
				}
				mu.Lock()
				parentKind[id] = kind
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if p := bad.Load(); p != nil {
		require.NoError(t, *p)
	}
	c.WaitLine(t, "RACED")
	childKind := map[string]string{}
	for _, l := range c.Lines() {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "RACE" && strings.HasPrefix(f[1], prefix+"-") {
			childKind[f[1]] = f[2]
		}
	}

	stats := map[string]int{}
	for _, md := range batch {
		p, ch := parentKind[md.ID], childKind[md.ID]
		require.NotEmpty(t, p, md.ID)
		require.NotEmpty(t, ch, md.ID)
		wins := 0
		if p == "ok" {
			wins++
			stats["parent wins"]++
		}
		if ch == "ok" {
			wins++
			stats["child wins"]++
		}
		if p == "busy" || ch == "busy" {
			stats["busy"]++
			require.LessOrEqual(t, wins, 1, "%s claimed twice", md.ID)
		} else {
			require.Equal(t, 1, wins, "%s: parent %s, child %s", md.ID, p, ch)
		}
		got, err := parent.GetMeta(ctx, md.ID)
		require.NoError(t, err)
		if wins == 1 {
			require.Equal(t, metastorage.StateActive, got.State, md.ID)
		} else {
			require.Equal(t, metastorage.StateIncoming, got.State, md.ID)
		}
	}
	return stats
}

// busyLoad writes from the parent until stopped and counts the outcomes;
// any outcome other than those of busyKind fails the test.
func busyLoad(t *testing.T, r *sqlitemeta.Repository) (stop func() map[string]int) {
	ctx := context.Background()
	var (
		halt  atomic.Bool
		wg    sync.WaitGroup
		mu    sync.Mutex
		kinds = map[string]int{}
		errs  []error
	)
	for g := 0; g < 2; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !halt.Load(); i++ {
				id := fmt.Sprintf("parent-load-%d-%d", g, i)
				kind, err := busyKind(r.StoreMeta(ctx, id, fixture.Sample(id, metastorage.StateIncoming, i)))
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				}
				kinds[kind]++
				mu.Unlock()
				if err != nil {
					return
				}
				time.Sleep(time.Millisecond)
			}
		}()
	}
	return func() map[string]int {
		halt.Store(true)
		wg.Wait()
		require.Empty(t, errs)
		return kinds
	}
}

// TestBusyShortTimeout: with a 200 ms busy timeout, a write that waits
// for the lock another process holds fails after the timeout with ErrBusy,
// which unwraps to the driver's SQLITE_BUSY; reads go on; after the lock
// is released, writes succeed again.
func TestBusyShortTimeout(t *testing.T) {
	t.Parallel()
	const timeout = 200 * time.Millisecond
	ctx := context.Background()
	path := testdb.SQLitePath(t)
	parent := openFile(t, path, sqlitemeta.WithBusyTimeout(int(timeout/time.Millisecond)))
	c := proc.Start(t, "busy child", roleBusy, map[string]string{paramDB: path})
	c.WaitLine(t, "READY")
	stopLoad := busyLoad(t, parent)

	race := busyRace(t, parent, c, "race", 200)

	require.NoError(t, untilNotBusy(func() error {
		return parent.StoreMeta(ctx, "readable", fixture.Sample("readable", metastorage.StateDeferred, 1))
	}))
	c.Tell(t, "hold")
	c.WaitLine(t, "HOLD")
	for _, op := range []struct {
		name string
		call func() error
	}{
		{"StoreMeta", func() error {
			return parent.StoreMeta(ctx, "blocked", fixture.Sample("blocked", metastorage.StateIncoming, 2))
		}},
		{"MoveToState", func() error {
			return parent.MoveToState(ctx, "readable", metastorage.StateDeferred, metastorage.StateActive)
		}},
		{"StoreMetaBatch", func() error {
			return parent.StoreMetaBatch(ctx, []metastorage.MessageMetadata{fixture.Sample("blocked-2", metastorage.StateIncoming, 3)})
		}},
	} {
		start := time.Now()
		err := op.call()
		waited := time.Since(start)
		kind, kerr := busyKind(err)
		require.NoError(t, kerr, op.name)
		require.Equal(t, "busy", kind, "%s while another process holds the write lock: %v", op.name, err)
		// Not a speed requirement: the error may come only after the
		// timeout has run out.
		require.GreaterOrEqual(t, waited, timeout*9/10, "%s gave up before the busy timeout", op.name)
		t.Logf("%s: %v after %s", op.name, err, waited)
	}
	// The same through an application's own *gorm.DB on the glebarez
	// driver (WithDB): ErrBusy reaches its *sqlite.Error.
	app, err := gorm.Open(glebarez.Open("file:"+path+"?_pragma=busy_timeout(200)&_pragma=journal_mode(WAL)"), &gorm.Config{Logger: logger.Discard})
	require.NoError(t, err)
	appDB, err := app.DB()
	require.NoError(t, err)
	defer appDB.Close()
	viaApp, err := sqlitemeta.NewFactory(sqlitemeta.WithDB(app)).Open(ctx)
	require.NoError(t, err)
	defer viaApp.Close()
	start := time.Now()
	err = viaApp.StoreMeta(ctx, "blocked-app", fixture.Sample("blocked-app", metastorage.StateIncoming, 4))
	waited := time.Since(start)
	require.ErrorIs(t, err, sqlitemeta.ErrBusy)
	var ge *gosqlite.Error
	require.ErrorAs(t, err, &ge)
	require.Equal(t, sqlite3.SQLITE_BUSY, ge.Code()&0xff)
	require.GreaterOrEqual(t, waited, timeout*9/10)

	// Readers are not blocked by a writer in WAL mode.
	md, err := parent.GetMeta(ctx, "readable")
	require.NoError(t, err)
	require.Equal(t, metastorage.StateDeferred, md.State)
	_, err = parent.ListMessages(ctx, metastorage.StateDeferred, metastorage.MessageListOptions{})
	require.NoError(t, err)
	// The held transaction's write is not visible before it commits.
	_, err = parent.GetMeta(ctx, "held")
	require.ErrorIs(t, err, metastorage.ErrMessageNotFound)

	c.Tell(t, "release")
	c.WaitLine(t, "RELEASED")
	c.Tell(t, "pause")
	c.WaitLine(t, "PAUSED")
	require.NoError(t, parent.StoreMeta(ctx, "blocked", fixture.Sample("blocked", metastorage.StateIncoming, 2)))
	require.NoError(t, parent.MoveToState(ctx, "readable", metastorage.StateDeferred, metastorage.StateActive))
	_, err = parent.GetMeta(ctx, "held")
	require.NoError(t, err)

	load := stopLoad()
	c.Tell(t, "quit")
	c.WaitLine(t, "BYE")
	c.Finish(t)
	fixture.RequireCounts(t, parent)
	fixture.RequireIntegrity(t, parent.DB())
	t.Logf("race: %v; parent load outcomes: %v", race, load)
}

// TestBusyDefaultTimeout: with the default busy timeout (30 s), a write
// waits for the lock another process holds and succeeds once it is
// released; no caller sees ErrBusy.
func TestBusyDefaultTimeout(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path := testdb.SQLitePath(t)
	parent := openFile(t, path)
	c := proc.Start(t, "busy child", roleBusy, map[string]string{paramDB: path})
	c.WaitLine(t, "READY")
	stopLoad := busyLoad(t, parent)

	race := busyRace(t, parent, c, "race", 200)
	require.Zero(t, race["busy"], "no ErrBusy within the default timeout")

	c.Tell(t, "hold")
	c.WaitLine(t, "HOLD")
	done := make(chan error, 1)
	go func() {
		done <- parent.StoreMeta(ctx, "waited", fixture.Sample("waited", metastorage.StateIncoming, 1))
	}()
	// The write cannot finish while the child holds the lock.
	time.Sleep(150 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("a write finished while another process held the write lock: %v", err)
	default:
	}
	c.Tell(t, "release")
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(fixture.Wait):
		t.Fatal("the waiting write did not finish after the lock was released")
	}
	c.WaitLine(t, "RELEASED")
	for _, id := range []string{"waited", "held"} {
		_, err := parent.GetMeta(ctx, id)
		require.NoError(t, err, id)
	}

	load := stopLoad()
	require.Zero(t, load["busy"], "no ErrBusy within the default timeout")
	c.Tell(t, "quit")
	c.WaitLine(t, "BYE")
	c.Finish(t)
	fixture.RequireCounts(t, parent)
	fixture.RequireIntegrity(t, parent.DB())
	t.Logf("race: %v; parent load outcomes: %v", race, load)
}
