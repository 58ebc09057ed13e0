package systemtest

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"gorm.io/driver/mysql"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/proc"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/testdb"
	"schneider.vip/retryspool/storage/meta/sqlite/metatest"
)

// forEngines runs fn as a subtest per engine: SQLite always, PostgreSQL
// and MariaDB/MySQL when their DSN is set (skipped with the reason
// otherwise).
func forEngines(t *testing.T, fn func(t *testing.T, e testdb.Engine)) {
	for _, e := range testdb.Engines() {
		t.Run(e.Name, func(t *testing.T) {
			if e.Skip != "" {
				t.Skip(e.Skip)
			}
			fn(t, e)
		})
	}
}

// openFactory opens a repository with the factory.
func openFactory(t *testing.T, opts ...sqlitemeta.Option) *sqlitemeta.Repository {
	t.Helper()
	r, err := sqlitemeta.NewFactory(opts...).Open(context.Background())
	require.NoError(t, err)
	return r
}

// sharedQueue is one queue that several repositories or processes use at
// once: a SQLite file, or a table on a server engine. open opens one more
// repository on it; path and table tell a child process where it is.
type sharedQueue struct {
	path  string   // SQLite file
	db    *gorm.DB // server engines
	table string
}

func newSharedQueue(t *testing.T, e testdb.Engine) *sharedQueue {
	st := &sharedQueue{}
	if e.Name == "sqlite" {
		st.path = testdb.SQLitePath(t)
		return st
	}
	st.db = e.Open(t)
	st.table = e.Table(t, st.db)
	return st
}

// open opens a repository on the shared queue, with a connection pool of
// its own on SQLite.
func (st *sharedQueue) open(t *testing.T) *sqlitemeta.Repository {
	t.Helper()
	var r *sqlitemeta.Repository
	if st.path != "" {
		r = openFactory(t, sqlitemeta.WithDatabasePath(st.path))
	} else {
		r = openFactory(t, sqlitemeta.WithDB(st.db), sqlitemeta.WithTableName(st.table))
	}
	t.Cleanup(func() { require.NoError(t, r.Close()) })
	return r
}

// raceMoves has workers goroutines claim the messages ids from Incoming to
// Active with MoveToState, tries goroutines at once on each message (the
// IDs are handed out tries times in a row). It returns the IDs this process
// won, and fails on any loss other than the bare ErrStateConflict.
func raceMoves(ctx context.Context, b metastorage.Backend, ids []string, workers, tries int) (won []string, conflicts int64, err error) {
	var next, lost atomic.Int64
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)-1) / tries
				if i >= len(ids) {
					return
				}
				switch err := b.MoveToState(ctx, ids[i], metastorage.StateIncoming, metastorage.StateActive); {
				case err == nil:
					mu.Lock()
					won = append(won, ids[i])
					mu.Unlock()
				case err == metastorage.ErrStateConflict: //nolint:errorlint // the bare sentinel is the contract
					lost.Add(1)
				default:
					errs <- fmt.Errorf("move %q: %w", ids[i], err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return won, lost.Load(), <-errs
}

// raceClaims has workers goroutines claim batches of batch messages from
// Incoming to Active with ClaimMessages until none is left, and returns the
// IDs this process claimed.
func raceClaims(ctx context.Context, r *sqlitemeta.Repository, workers, batch int) ([]string, error) {
	var mu sync.Mutex
	var won []string
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mds, err := r.ClaimMessages(ctx, metastorage.StateIncoming, metastorage.StateActive, batch)
				if err != nil {
					errs <- err
					return
				}
				if len(mds) == 0 {
					return
				}
				mu.Lock()
				for _, md := range mds {
					won = append(won, md.ID)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	return won, <-errs
}

// raceID is the ID of the i-th message of the race tests.
func raceID(i int) string { return fmt.Sprintf("race-%05d", i) }

// raceIDs are the messages of the race tests, stored in Incoming.
func raceIDs(t *testing.T, r *sqlitemeta.Repository, n int) []string {
	t.Helper()
	ids := make([]string, n)
	recs := make([]metastorage.MessageMetadata, n)
	for i := range n {
		ids[i] = raceID(i)
		recs[i] = metatest.Message(ids[i], metastorage.StateIncoming, time.Unix(1700000000, int64(i)))
	}
	require.NoError(t, r.StoreMetaBatch(context.Background(), recs))
	return ids
}

// requireClaimedOnce checks that the winners of all racers together are
// every message exactly once, and that the counts agree.
func requireClaimedOnce(t *testing.T, r *sqlitemeta.Repository, ids []string, won ...[]string) {
	t.Helper()
	seen := make(map[string]int, len(ids))
	total := 0
	for who, w := range won {
		for _, id := range w {
			seen[id]++
			require.Equal(t, 1, seen[id], "%q claimed twice (the second time by racer %d)", id, who)
		}
		total += len(w)
	}
	for _, id := range ids {
		require.Equal(t, 1, seen[id], "%q not claimed", id)
	}
	require.Equal(t, len(ids), total)
	require.Equal(t, int64(0), r.GetStateCount(metastorage.StateIncoming))
	require.Equal(t, int64(len(ids)), r.GetStateCount(metastorage.StateActive))
	res, err := r.ListMessages(context.Background(), metastorage.StateActive, metastorage.MessageListOptions{Limit: len(ids) + 1})
	require.NoError(t, err)
	require.Equal(t, len(ids), res.Total)
	require.ElementsMatch(t, ids, res.MessageIDs)
}

// Parameters of the race children.
const (
	childEngine  = "ENGINE"
	childDSN     = "DSN"
	childPath    = "PATH"
	childTable   = "TABLE"
	childWorkers = "WORKERS"
	childIDs     = "IDS"
)

// TestProcessRace has two processes, each with its own connection pool and
// 24 goroutines, claim 2,000 messages from Incoming to Active on one
// database: with MoveToState (every message raced by several goroutines of
// both processes) and with ClaimMessages batches. Every message must be
// claimed exactly once, and the counts must be exact afterwards.
func TestProcessRace(t *testing.T) {
	forEngines(t, func(t *testing.T, e testdb.Engine) {
		for _, role := range []string{roleMove, roleClaim} {
			t.Run(role, func(t *testing.T) { processRace(t, e, role) })
		}
	})
}

func processRace(t *testing.T, e testdb.Engine, role string) {
	const (
		processes = 2
		messages  = 2000
		workers   = 24
	)
	st := newSharedQueue(t, e)
	r := st.open(t)
	ids := raceIDs(t, r, messages)
	params := map[string]string{
		childEngine: e.Name, childDSN: e.DSN, childPath: st.path, childTable: st.table,
		childWorkers: strconv.Itoa(workers), childIDs: strconv.Itoa(messages),
	}
	children := make([]*proc.Child, processes)
	for i := range children {
		children[i] = proc.Start(t, fmt.Sprintf("%s child %d", role, i), role, params)
	}
	for _, c := range children {
		c.WaitReady(t)
	}
	for _, c := range children {
		c.Go(t)
	}
	won := make([][]string, processes)
	for i, c := range children {
		for _, res := range c.Finish(t) {
			if id, ok := strings.CutPrefix(res, "won "); ok {
				won[i] = append(won[i], id)
			} else if res != proc.ReadyLine {
				t.Logf("child %d: %s", i, res)
			}
		}
	}
	requireClaimedOnce(t, r, ids, won...)
	t.Logf("%s on %s: the processes won %d and %d", role, e.Name, len(won[0]), len(won[1]))
}

// raceChild is the main function of a race child.
func raceChild(role string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	workers, err := strconv.Atoi(proc.Param(childWorkers))
	if err != nil {
		return err
	}
	n, err := strconv.Atoi(proc.Param(childIDs))
	if err != nil {
		return err
	}
	var opts []sqlitemeta.Option
	if proc.Param(childEngine) == "sqlite" {
		opts = append(opts, sqlitemeta.WithDatabasePath(proc.Param(childPath)))
	} else {
		var d gorm.Dialector
		if proc.Param(childEngine) == "postgres" {
			d = postgres.Open(proc.Param(childDSN))
		} else {
			d = mysql.Open(proc.Param(childDSN))
		}
		db, err := gorm.Open(d, &gorm.Config{Logger: logger.Discard, SkipDefaultTransaction: true})
		if err != nil {
			return err
		}
		pool, err := db.DB()
		if err != nil {
			return err
		}
		defer pool.Close()
		pool.SetMaxOpenConns(workers)
		opts = append(opts, sqlitemeta.WithDB(db), sqlitemeta.WithTableName(proc.Param(childTable)))
	}
	r, err := sqlitemeta.NewFactory(opts...).Open(ctx)
	if err != nil {
		return err
	}
	defer r.Close()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = raceID(i)
	}
	if err := proc.Ready(); err != nil {
		return err
	}
	var won []string
	var conflicts int64
	switch role {
	case roleMove:
		won, conflicts, err = raceMoves(ctx, r, ids, workers, 3)
	case roleClaim:
		won, err = raceClaims(ctx, r, workers, 7)
	default:
		err = fmt.Errorf("unknown role %q", role)
	}
	if err != nil {
		return err
	}
	for _, id := range won {
		proc.Say("won " + id)
	}
	proc.Say(fmt.Sprintf("stats: won %d, lost %d races", len(won), conflicts))
	return r.Close()
}

// TestConformanceTwoFactoriesOneFile has two backends, each with its own
// connection pools and group writer, race over one SQLite file.
func TestConformanceTwoFactoriesOneFile(t *testing.T) {
	t.Parallel()
	st := newSharedQueue(t, testdb.Engines()[0])
	a, b := st.open(t), st.open(t)
	ids := raceIDs(t, a, 1000)
	ctx := context.Background()
	var wonA, wonB []string
	var errA, errB error
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); wonA, _, errA = raceMoves(ctx, a, ids, 12, 3) }()
	go func() { defer wg.Done(); wonB, _, errB = raceMoves(ctx, b, ids, 12, 3) }()
	wg.Wait()
	require.NoError(t, errA)
	require.NoError(t, errB)
	requireClaimedOnce(t, a, ids, wonA, wonB)
	requireClaimedOnce(t, b, ids, wonA, wonB)
	t.Logf("first backend won %d, second %d", len(wonA), len(wonB))
}

// TestConformanceSQLiteReadsDuringWrite reads through new connections of
// the read pool while an application transaction on the same file holds
// the write lock: in WAL mode readers never wait for the writer, so no read
// may fail with ErrBusy, however short the busy timeout.
func TestConformanceSQLiteReadsDuringWrite(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	r := openFactory(t, sqlitemeta.WithDatabasePath(testdb.SQLitePath(t)), sqlitemeta.WithBusyTimeout(50), sqlitemeta.WithMaxIdleConns(0))
	t.Cleanup(func() { require.NoError(t, r.Close()) })
	ids := raceIDs(t, r, 10)
	tx := r.DB().Begin()
	require.NoError(t, tx.Error)
	defer tx.Rollback()
	require.NoError(t, r.WithTx(tx).MoveToState(ctx, ids[0], metastorage.StateIncoming, metastorage.StateHold))

	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			md, err := r.GetMeta(ctx, ids[i])
			if err == nil && md.State != metastorage.StateIncoming {
				err = fmt.Errorf("%s is %s before the commit", md.ID, md.State)
			}
			if err == nil {
				_, err = r.ListMessages(ctx, metastorage.StateIncoming, metastorage.MessageListOptions{})
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.NoError(t, tx.Commit().Error)
	require.Equal(t, int64(1), r.GetStateCount(metastorage.StateHold))
}
