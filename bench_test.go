package sqlite_test

// Benchmarks of the library ("lib") beside the raw database/sql baseline of
// internal/bench/floor ("floor"), on the same SQLite engine, schema and pragmas,
// measured in the same run. .ci/bench runs them and prints, per benchmark, the
// median ns/op of both and floor_ns/lib_ns (the library's speed as a
// multiple of the floor's).
//
// Every benchmark opens fresh temporary files and populates them before
// the timer starts. Parallel benchmarks name their goroutine count: with
// GOMAXPROCS=2, SetParallelism(4) gives 8 goroutines and (32) gives 64.
// BENCH_SCALE=0 leaves out the 1,000,000-message data set of BenchmarkScale
// (built in about 20 s on two cores); TEST_POSTGRES_DSN / TEST_MYSQL_DSN
// add BenchmarkServer.
//
// The floor's SQLite pool has one connection (floor.DefaultMaxOpenConns),
// its fastest setting for concurrent writers: with more, they meet
// SQLITE_BUSY and sleep in SQLite's busy handler. BENCH_FLOOR_CONNS=n
// gives it n connections instead. The floor runs on the plain glebarez
// driver, "sqlite"; BENCH_FLOOR_DRIVER=retryspool-sqlite puts it on the
// library's statement-caching driver instead.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/bench/floor"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/testdb"
)

// benchBackend is what the single-operation benchmarks call; the library's
// Repository and floor.DB both have these methods.
type benchBackend interface {
	StoreMeta(ctx context.Context, id string, md metastorage.MessageMetadata) error
	UpdateMeta(ctx context.Context, id string, md metastorage.MessageMetadata) error
	MoveToState(ctx context.Context, id string, from, to metastorage.QueueState) error
	GetMeta(ctx context.Context, id string) (metastorage.MessageMetadata, error)
}

var (
	_ benchBackend = (*sqlitemeta.Repository)(nil)
	_ benchBackend = (*floor.DB)(nil)
)

var benchBase = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

func benchID(i int) string { return "msg-" + strconv.Itoa(i) }

// benchRecord is a typical RetrySpool record: a few headers, a retry
// policy, times with nanoseconds.
func benchRecord(i int, state metastorage.QueueState) metastorage.MessageMetadata {
	created := benchBase.Add(time.Duration(i) * time.Millisecond)
	return metastorage.MessageMetadata{
		ID: benchID(i), State: state, MaxAttempts: 5,
		NextRetry: created.Add(time.Hour), Created: created, Updated: created,
		Size: 2048, Priority: 5, RetryPolicyName: "default",
		Headers: map[string]string{
			"from": "sender@example.org", "to": "rcpt@example.net",
			"subject": "benchmark message", "x-trace": strconv.Itoa(i),
		},
	}
}

func openBenchLib(b *testing.B, path, sync string) *sqlitemeta.Repository {
	b.Helper()
	r, err := sqlitemeta.NewFactory(
		sqlitemeta.WithDatabasePath(path), sqlitemeta.WithSynchronous(sync),
	).Open(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := r.Close(); err != nil {
			b.Error(err)
		}
	})
	return r
}

func openBenchFloor(b *testing.B, path, sync string) *floor.DB {
	b.Helper()
	conns, _ := strconv.Atoi(os.Getenv("BENCH_FLOOR_CONNS"))
	f, err := floor.Open(context.Background(), floor.Config{
		Path: path, Synchronous: sync, MaxOpenConns: conns, Driver: os.Getenv("BENCH_FLOOR_DRIVER"),
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := f.Close(); err != nil {
			b.Error(err)
		}
	})
	return f
}

// libAndFloor runs fn as sub-benchmarks "lib" and "floor", each on a fresh
// SQLite file with the given synchronous mode.
func libAndFloor(b *testing.B, sync string, fn func(b *testing.B, be benchBackend)) {
	b.Run("lib", func(b *testing.B) {
		fn(b, openBenchLib(b, filepath.Join(b.TempDir(), "lib.db"), sync))
	})
	b.Run("floor", func(b *testing.B) {
		fn(b, openBenchFloor(b, filepath.Join(b.TempDir(), "floor.db"), sync))
	})
}

// populate stores n records in state with be's own batch store, before
// the timer starts.
func populate(b *testing.B, be benchBackend, n int, state metastorage.QueueState) {
	b.Helper()
	ctx := context.Background()
	mds := make([]metastorage.MessageMetadata, n)
	for i := range mds {
		mds[i] = benchRecord(i, state)
	}
	var err error
	switch x := be.(type) {
	case *sqlitemeta.Repository:
		err = x.StoreMetaBatch(ctx, mds)
	case *floor.DB:
		err = x.StoreMetaBatch(ctx, mds)
	}
	if err != nil {
		b.Fatal(err)
	}
}

func reportOps(b *testing.B, unit string) {
	if s := b.Elapsed().Seconds(); s > 0 {
		b.ReportMetric(float64(b.N)/s, unit)
	}
}

// writerCounts are the goroutine counts of the parallel write benchmarks.
var writerCounts = []int{8, 64}

// runParallel runs body on goroutines goroutines (rounded up to a multiple
// of GOMAXPROCS). setup, called before the timer starts, learns the exact
// number.
func runParallel(b *testing.B, goroutines int, setup func(g int), body func(pb *testing.PB)) {
	procs := runtime.GOMAXPROCS(0)
	p := max(1, (goroutines+procs-1)/procs)
	setup(p * procs)
	b.SetParallelism(p)
	b.ResetTimer()
	b.RunParallel(body)
	b.StopTimer()
}

// writeBench runs op under synchronous NORMAL and FULL, from one caller
// ("seq") and from each of writerCounts goroutines, on the library and on
// the floor. prepare runs before the timer with the number of callers; op
// gets its caller's number (from 0) and the caller's call count.
func writeBench(b *testing.B, prepare func(b *testing.B, be benchBackend, callers int),
	op func(ctx context.Context, be benchBackend, caller, i int) error) {
	ctx := context.Background()
	for _, sync := range []string{"NORMAL", "FULL"} {
		b.Run(sync, func(b *testing.B) {
			b.Run("seq", func(b *testing.B) {
				libAndFloor(b, sync, func(b *testing.B, be benchBackend) {
					prepare(b, be, 1)
					b.ResetTimer()
					for i := 0; i < b.N; i++ {
						if err := op(ctx, be, 0, i); err != nil {
							b.Fatal(err)
						}
					}
					b.StopTimer()
					reportOps(b, "ops/s")
				})
			})
			for _, g := range writerCounts {
				b.Run(strconv.Itoa(g), func(b *testing.B) {
					libAndFloor(b, sync, func(b *testing.B, be benchBackend) {
						var callers atomic.Int64
						runParallel(b, g, func(n int) { prepare(b, be, n) }, func(pb *testing.PB) {
							caller := int(callers.Add(1) - 1)
							for i := 0; pb.Next(); i++ {
								if err := op(ctx, be, caller, i); err != nil {
									b.Error(err)
									return
								}
							}
						})
						reportOps(b, "ops/s")
					})
				})
			}
		})
	}
}

// seqBench stores m records in state, then times op for i from 0 to
// b.N-1, one call after the other.
func seqBench(b *testing.B, be benchBackend, m int, state metastorage.QueueState, op func(ctx context.Context, i int) error) {
	ctx := context.Background()
	populate(b, be, m, state)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := op(ctx, i); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	reportOps(b, "ops/s")
}

// BenchmarkStoreMeta creates new records: sequentially and from 8 and 64
// goroutines, with synchronous NORMAL and FULL.
func BenchmarkStoreMeta(b *testing.B) {
	rec := benchRecord(0, metastorage.StateIncoming)
	var next atomic.Int64
	writeBench(b, func(*testing.B, benchBackend, int) { next.Store(0) },
		func(ctx context.Context, be benchBackend, _, _ int) error {
			md := rec
			md.ID = benchID(int(next.Add(1)))
			return be.StoreMeta(ctx, md.ID, md)
		})
}

// BenchmarkUpdateMeta rewrites whole records, changing their state each
// time as RetrySpool does after a delivery attempt.
func BenchmarkUpdateMeta(b *testing.B) {
	const m = 1000
	libAndFloor(b, "NORMAL", func(b *testing.B, be benchBackend) {
		recs := make([]metastorage.MessageMetadata, m)
		for i := range recs {
			recs[i] = benchRecord(i, metastorage.StateActive)
		}
		seqBench(b, be, m, metastorage.StateActive, func(ctx context.Context, i int) error {
			md := &recs[i%m]
			md.Attempts++
			md.LastError = "451 try again later"
			md.State = metastorage.StateDeferred
			if (i/m)%2 == 1 {
				md.State = metastorage.StateActive
			}
			return be.UpdateMeta(ctx, md.ID, *md)
		})
	})
}

// BenchmarkMoveToState claims messages (incoming to active, then back):
// sequentially and from 8 and 64 goroutines, each owning its messages, with
// synchronous NORMAL and FULL.
func BenchmarkMoveToState(b *testing.B) {
	const perCaller = 200
	writeBench(b, func(b *testing.B, be benchBackend, callers int) {
		populate(b, be, callers*perCaller, metastorage.StateIncoming)
	}, func(ctx context.Context, be benchBackend, caller, i int) error {
		from, to := metastorage.StateIncoming, metastorage.StateActive
		if (i/perCaller)%2 == 1 {
			from, to = to, from
		}
		return be.MoveToState(ctx, benchID(caller*perCaller+i%perCaller), from, to)
	})
}

// BenchmarkGetMeta reads whole records, headers decoded.
func BenchmarkGetMeta(b *testing.B) {
	const m = 1000
	libAndFloor(b, "NORMAL", func(b *testing.B, be benchBackend) {
		seqBench(b, be, m, metastorage.StateIncoming, func(ctx context.Context, i int) error {
			md, err := be.GetMeta(ctx, benchID(i%m))
			if err == nil && len(md.Headers) != 4 {
				err = fmt.Errorf("headers: %v", md.Headers)
			}
			return err
		})
	})
}

// BenchmarkGetMetaParallel reads records from 8 goroutines at once, as
// RetrySpool's workers do, each reading every message it handles twice.
func BenchmarkGetMetaParallel(b *testing.B) {
	const m = 1000
	ctx := context.Background()
	libAndFloor(b, "NORMAL", func(b *testing.B, be benchBackend) {
		populate(b, be, m, metastorage.StateIncoming)
		var callers atomic.Int64
		runParallel(b, 8, func(int) {}, func(pb *testing.PB) {
			for i := int(callers.Add(1)) * 127; pb.Next(); i++ {
				md, err := be.GetMeta(ctx, benchID(i%m))
				if err == nil && len(md.Headers) != 4 {
					err = fmt.Errorf("headers: %v", md.Headers)
				}
				if err != nil {
					b.Error(err)
					return
				}
			}
		})
		reportOps(b, "ops/s")
	})
}

// nextFunc is an iterator's Next.
type nextFunc func(ctx context.Context) (metastorage.MessageMetadata, bool, error)

// iterate walks 10,000 incoming messages in batches of 100, as RetrySpool's
// scheduler does, starting over at the end; one op is one message.
func iterate(b *testing.B, newIter func() nextFunc) {
	ctx := context.Background()
	next := newIter()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		md, ok, err := next(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if !ok {
			next = newIter()
			i--
			continue
		}
		if md.ID == "" {
			b.Fatal("empty message")
		}
	}
	b.StopTimer()
	reportOps(b, "msgs/s")
}

// BenchmarkIterate walks a state with the iterator; one op is one message.
func BenchmarkIterate(b *testing.B) {
	const m, batch = 10000, 100
	ctx := context.Background()
	b.Run("lib", func(b *testing.B) {
		r := openBenchLib(b, filepath.Join(b.TempDir(), "lib.db"), "NORMAL")
		populate(b, r, m, metastorage.StateIncoming)
		iterate(b, func() nextFunc {
			it, err := r.NewMessageIterator(ctx, metastorage.StateIncoming, batch)
			if err != nil {
				b.Fatal(err)
			}
			return it.Next
		})
	})
	b.Run("floor", func(b *testing.B) {
		f := openBenchFloor(b, filepath.Join(b.TempDir(), "floor.db"), "NORMAL")
		populate(b, f, m, metastorage.StateIncoming)
		iterate(b, func() nextFunc { return f.NewIterator(metastorage.StateIncoming, batch).Next })
	})
}

// listFirstPage and stateCount are the read operations of the list and
// count benchmarks, for either side.
type readOps struct {
	listFirstPage func(ctx context.Context, state metastorage.QueueState, limit int) (int, int64, error)
	stateCount    func(ctx context.Context, state metastorage.QueueState) (int64, error)
	getMeta       func(ctx context.Context, id string) (metastorage.MessageMetadata, error)
	due           func(ctx context.Context, now time.Time, limit int) (int, error)
}

func libReads(r *sqlitemeta.Repository) readOps {
	return readOps{
		listFirstPage: func(ctx context.Context, s metastorage.QueueState, limit int) (int, int64, error) {
			res, err := r.ListMessages(ctx, s, metastorage.MessageListOptions{Limit: limit})
			return len(res.MessageIDs), int64(res.Total), err
		},
		// GetStateCount is the contract's call; it has no error.
		stateCount: func(_ context.Context, s metastorage.QueueState) (int64, error) {
			return r.GetStateCount(s), nil
		},
		getMeta: r.GetMeta,
		due: func(ctx context.Context, now time.Time, limit int) (int, error) {
			mds, err := r.DueMessages(ctx, now, limit)
			return len(mds), err
		},
	}
}

func floorReads(f *floor.DB) readOps {
	return readOps{
		listFirstPage: func(ctx context.Context, s metastorage.QueueState, limit int) (int, int64, error) {
			ids, total, err := f.ListPage(ctx, s, limit, 0)
			return len(ids), total, err
		},
		stateCount: f.StateCount,
		getMeta:    f.GetMeta,
		due: func(ctx context.Context, now time.Time, limit int) (int, error) {
			mds, err := f.DueMessages(ctx, now, limit)
			return len(mds), err
		},
	}
}

func benchList(b *testing.B, ops readOps, state metastorage.QueueState, total int64) {
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		n, t, err := ops.listFirstPage(ctx, state, 100)
		if err != nil {
			b.Fatal(err)
		}
		if n != 100 || t != total {
			b.Fatalf("page of %d, total %d; want 100, %d", n, t, total)
		}
	}
	b.StopTimer()
	reportOps(b, "ops/s")
}

func benchCount(b *testing.B, ops readOps, state metastorage.QueueState, total int64) {
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		n, err := ops.stateCount(ctx, state)
		if err != nil {
			b.Fatal(err)
		}
		if n != total {
			b.Fatalf("count %d, want %d", n, total)
		}
	}
	b.StopTimer()
	reportOps(b, "ops/s")
}

// BenchmarkListMessages reads the first page (100 IDs and the total) of a
// state of 10,000 messages.
func BenchmarkListMessages(b *testing.B) {
	const m = 10000
	populatedPair(b, m, func(b *testing.B, ops readOps, _ claimFunc, _ int) {
		benchList(b, ops, metastorage.StateIncoming, m)
	})
}

// BenchmarkGetStateCount reads the count of a state of 10,000 messages.
func BenchmarkGetStateCount(b *testing.B) {
	const m = 10000
	populatedPair(b, m, func(b *testing.B, ops readOps, _ claimFunc, _ int) {
		benchCount(b, ops, metastorage.StateIncoming, m)
	})
}

// populatedPair runs fn on the library and on the floor, each on a fresh
// file (synchronous NORMAL) holding m incoming messages, with that side's
// reads, claim and claim batch size (the library's 100, the floor's
// floor.BatchSize).
func populatedPair(b *testing.B, m int, fn func(b *testing.B, ops readOps, claim claimFunc, batch int)) {
	b.Run("lib", func(b *testing.B) {
		r := openBenchLib(b, filepath.Join(b.TempDir(), "lib.db"), "NORMAL")
		populate(b, r, m, metastorage.StateIncoming)
		fn(b, libReads(r), libClaim(r), 100)
	})
	b.Run("floor", func(b *testing.B) {
		f := openBenchFloor(b, filepath.Join(b.TempDir(), "floor.db"), "NORMAL")
		populate(b, f, m, metastorage.StateIncoming)
		fn(b, floorReads(f), floorClaim(f), floor.BatchSize)
	})
}

// claimFunc claims up to n messages from one state to another and returns
// how many it moved.
type claimFunc func(ctx context.Context, from, to metastorage.QueueState, n int) (int, error)

func libClaim(r *sqlitemeta.Repository) claimFunc {
	return func(ctx context.Context, from, to metastorage.QueueState, n int) (int, error) {
		mds, err := r.ClaimMessages(ctx, from, to, n)
		return len(mds), err
	}
}

func floorClaim(f *floor.DB) claimFunc {
	return func(ctx context.Context, from, to metastorage.QueueState, n int) (int, error) {
		mds, err := f.Claim(ctx, from, to, n)
		return len(mds), err
	}
}

// benchClaim claims messages in batches of batch until b.N messages have
// moved; one op is one message. When the source state runs dry the
// direction turns, so every claim moves messages of a populated state.
func benchClaim(b *testing.B, claim claimFunc, from, to metastorage.QueueState, batch int) {
	ctx := context.Background()
	b.ResetTimer()
	for done := 0; done < b.N; {
		n := min(batch, b.N-done)
		got, err := claim(ctx, from, to, n)
		if err != nil {
			b.Fatal(err)
		}
		done += got
		if got < n {
			from, to = to, from
		}
	}
	b.StopTimer()
	reportOps(b, "msgs/s")
}

// BenchmarkClaim claims from 10,000 incoming messages: the library's
// ClaimMessages in batches of 100 beside the floor's SELECT and one
// MoveToState UPDATE per message, 1,000 per transaction. One op is one
// message.
func BenchmarkClaim(b *testing.B) {
	populatedPair(b, 10000, func(b *testing.B, _ readOps, claim claimFunc, batch int) {
		benchClaim(b, claim, metastorage.StateIncoming, metastorage.StateActive, batch)
	})
}

// scaleDue is how many deferred messages of a scale data set are due.
const scaleDue = 1000

// scaleSet is a data set of BenchmarkScale: n deferred messages due in the
// future plus scaleDue due ones, on one file open through the library and
// through the floor.
type scaleSet struct {
	n   int
	lib *sqlitemeta.Repository
	flo *floor.DB
}

// scaleSets builds each data set once per BenchmarkScale run.
type scaleSets struct {
	b    *testing.B
	dir  string
	mu   sync.Mutex
	sets map[int]*scaleSet
}

func (s *scaleSets) get(b *testing.B, n int) *scaleSet {
	s.mu.Lock()
	defer s.mu.Unlock()
	if set, ok := s.sets[n]; ok {
		return set
	}
	ctx := context.Background()
	path := filepath.Join(s.dir, fmt.Sprintf("scale-%d.db", n))
	r, err := sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(path)).Open(ctx)
	if err != nil {
		b.Fatal(err)
	}
	// Closed when BenchmarkScale ends, after every sub-benchmark.
	s.b.Cleanup(func() { _ = r.Close() })
	start := time.Now()
	const chunk = 10000
	mds := make([]metastorage.MessageMetadata, 0, chunk)
	for i := 0; i < n+scaleDue; i++ {
		md := benchRecord(i, metastorage.StateDeferred)
		if i >= n {
			// The due ones are the newest, so claims by age never
			// take them, and due since a while.
			md.NextRetry = benchBase.Add(-time.Duration(i-n+1) * time.Second)
		} else {
			md.NextRetry = time.Now().Add(24*time.Hour + time.Duration(i)*time.Millisecond)
		}
		mds = append(mds, md)
		if len(mds) == chunk || i == n+scaleDue-1 {
			if err := r.StoreMetaBatch(ctx, mds); err != nil {
				b.Fatal(err)
			}
			mds = mds[:0]
		}
	}
	b.Logf("built %d deferred messages (%d due) in %s", n+scaleDue, scaleDue, time.Since(start).Round(time.Millisecond))
	f, err := floor.Open(ctx, floor.Config{Path: path})
	if err != nil {
		b.Fatal(err)
	}
	s.b.Cleanup(func() { _ = f.Close() })
	set := &scaleSet{n: n, lib: r, flo: f}
	s.sets[n] = set
	return set
}

// restore puts every active message of the set back to deferred (their
// NextRetry is unchanged), undoing claims.
func (set *scaleSet) restore(b *testing.B) {
	if _, err := set.flo.SQL().Exec("UPDATE messages SET state = 2 WHERE state = 1"); err != nil {
		b.Fatal(err)
	}
}

var scaleSizes = []struct {
	name string
	n    int
	big  bool
}{{"10k", 10_000, false}, {"100k", 100_000, false}, {"1M", 1_000_000, true}}

// BenchmarkScale repeats list, count, get, claim and due-fetch operations on
// data sets of 10,000, 100,000 and 1,000,000 (unless BENCH_SCALE=0)
// deferred messages, each with 1,000 more that are due. Each data set is built once
// per run with StoreMetaBatch, in a temporary directory removed at the end.
func BenchmarkScale(b *testing.B) {
	sets := &scaleSets{b: b, dir: b.TempDir(), sets: map[int]*scaleSet{}}
	sizes := func(b *testing.B, fn func(b *testing.B, set func(b *testing.B) *scaleSet)) {
		for _, sz := range scaleSizes {
			b.Run(sz.name, func(b *testing.B) {
				if sz.big && os.Getenv("BENCH_SCALE") == "0" {
					b.Skip("BENCH_SCALE=0 leaves out the 1,000,000-message data set")
				}
				fn(b, func(b *testing.B) *scaleSet { return sets.get(b, sz.n) })
			})
		}
	}
	both := func(b *testing.B, fn func(b *testing.B, set *scaleSet, ops readOps)) {
		sizes(b, func(b *testing.B, set func(b *testing.B) *scaleSet) {
			b.Run("lib", func(b *testing.B) { s := set(b); fn(b, s, libReads(s.lib)) })
			b.Run("floor", func(b *testing.B) { s := set(b); fn(b, s, floorReads(s.flo)) })
		})
	}
	total := func(set *scaleSet) int64 { return int64(set.n + scaleDue) }

	b.Run("ListMessages", func(b *testing.B) {
		both(b, func(b *testing.B, set *scaleSet, ops readOps) {
			benchList(b, ops, metastorage.StateDeferred, total(set))
		})
	})
	b.Run("GetStateCount", func(b *testing.B) {
		both(b, func(b *testing.B, set *scaleSet, ops readOps) {
			benchCount(b, ops, metastorage.StateDeferred, total(set))
		})
	})
	b.Run("GetMeta", func(b *testing.B) {
		both(b, func(b *testing.B, set *scaleSet, ops readOps) {
			ctx := context.Background()
			rng := rand.New(rand.NewPCG(1, 2))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := ops.getMeta(ctx, benchID(rng.IntN(set.n+scaleDue))); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			reportOps(b, "ops/s")
		})
	})
	b.Run("DueMessages", func(b *testing.B) {
		both(b, func(b *testing.B, set *scaleSet, ops readOps) {
			ctx := context.Background()
			now := time.Now()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				n, err := ops.due(ctx, now, 100)
				if err != nil {
					b.Fatal(err)
				}
				if n != 100 {
					b.Fatalf("%d due, want 100", n)
				}
			}
			b.StopTimer()
			reportOps(b, "ops/s")
		})
	})
	b.Run("Claim", func(b *testing.B) {
		sizes(b, func(b *testing.B, set func(b *testing.B) *scaleSet) {
			b.Run("lib", func(b *testing.B) {
				s := set(b)
				b.Cleanup(func() { s.restore(b) })
				benchClaim(b, libClaim(s.lib), metastorage.StateDeferred, metastorage.StateActive, 100)
			})
			b.Run("floor", func(b *testing.B) {
				s := set(b)
				b.Cleanup(func() { s.restore(b) })
				benchClaim(b, floorClaim(s.flo), metastorage.StateDeferred, metastorage.StateActive, floor.BatchSize)
			})
		})
	})
	// One op walks the whole deferred state, 1,000 messages a page. The
	// resident memory at the start and its peak during the walk show that
	// memory is bounded by the page, not by the state (Linux only).
	b.Run("Iterate", func(b *testing.B) {
		walk := func(b *testing.B, set *scaleSet, newIter func() nextFunc) {
			ctx := context.Background()
			var before, peak int64
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				n := 0
				rssBefore, rssPeak, ok := peakRSS(func() {
					next := newIter()
					for {
						_, more, err := next(ctx)
						if err != nil {
							b.Fatal(err)
						}
						if !more {
							return
						}
						n++
					}
				})
				if n != set.n+scaleDue {
					b.Fatalf("walked %d messages, want %d", n, set.n+scaleDue)
				}
				if ok {
					before, peak = max(before, rssBefore), max(peak, rssPeak)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)*float64(set.n+scaleDue)/b.Elapsed().Seconds(), "msgs/s")
			if peak > 0 {
				b.ReportMetric(float64(before)/(1<<20), "MB-rss-start")
				b.ReportMetric(float64(peak)/(1<<20), "MB-rss-peak")
			}
		}
		sizes(b, func(b *testing.B, set func(b *testing.B) *scaleSet) {
			b.Run("lib", func(b *testing.B) {
				s := set(b)
				walk(b, s, func() nextFunc {
					it, err := s.lib.NewMessageIterator(context.Background(), metastorage.StateDeferred, 1000)
					if err != nil {
						b.Fatal(err)
					}
					return it.Next
				})
			})
			b.Run("floor", func(b *testing.B) {
				s := set(b)
				walk(b, s, func() nextFunc { return s.flo.NewIterator(metastorage.StateDeferred, 1000).Next })
			})
		})
	})
	// ClaimDue has no floor: it is the library's due claim, 100 at a time
	// from the due ones, put back outside the timer when they run out.
	b.Run("ClaimDue", func(b *testing.B) {
		sizes(b, func(b *testing.B, set func(b *testing.B) *scaleSet) {
			b.Run("lib", func(b *testing.B) {
				s := set(b)
				ctx := context.Background()
				b.Cleanup(func() { s.restore(b) })
				now := time.Now()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					mds, err := s.lib.ClaimDue(ctx, now, 100)
					if err != nil {
						b.Fatal(err)
					}
					if len(mds) < 100 {
						b.StopTimer()
						s.restore(b)
						b.StartTimer()
						if len(mds) == 0 {
							i--
						}
					}
				}
				b.StopTimer()
				reportOps(b, "ops/s")
			})
		})
	})
}

// BenchmarkServer runs the single-operation benchmarks on PostgreSQL and
// MySQL/MariaDB, each on a fresh table, when TEST_POSTGRES_DSN /
// TEST_MYSQL_DSN are set. The floor uses the same database/sql pool.
func BenchmarkServer(b *testing.B) {
	for _, e := range testdb.Servers() {
		b.Run(e.Name, func(b *testing.B) {
			if e.Skip != "" {
				b.Skip(e.Skip)
			}
			pair := func(b *testing.B, fn func(b *testing.B, be benchBackend)) {
				open := func(b *testing.B) (*sqlitemeta.Repository, *floor.DB) {
					db := e.Open(b)
					table := e.Table(b, db)
					r, err := sqlitemeta.NewFactory(sqlitemeta.WithDB(db), sqlitemeta.WithTableName(table)).Open(context.Background())
					if err != nil {
						b.Fatal(err)
					}
					b.Cleanup(func() { _ = r.Close() })
					pool, err := db.DB()
					if err != nil {
						b.Fatal(err)
					}
					f, err := floor.New(pool, e.Name, table)
					if err != nil {
						b.Fatal(err)
					}
					return r, f
				}
				b.Run("lib", func(b *testing.B) { r, _ := open(b); fn(b, r) })
				b.Run("floor", func(b *testing.B) { _, f := open(b); fn(b, f) })
			}
			b.Run("StoreMeta", func(b *testing.B) {
				pair(b, func(b *testing.B, be benchBackend) {
					ctx := context.Background()
					md := benchRecord(0, metastorage.StateIncoming)
					b.ResetTimer()
					for i := 0; i < b.N; i++ {
						md.ID = benchID(i)
						if err := be.StoreMeta(ctx, md.ID, md); err != nil {
							b.Fatal(err)
						}
					}
					b.StopTimer()
					reportOps(b, "ops/s")
				})
			})
			for _, g := range writerCounts {
				b.Run("StoreMeta/"+strconv.Itoa(g), func(b *testing.B) {
					pair(b, func(b *testing.B, be benchBackend) {
						ctx := context.Background()
						md := benchRecord(0, metastorage.StateIncoming)
						var next atomic.Int64
						runParallel(b, g, func(int) {}, func(pb *testing.PB) {
							md := md
							for pb.Next() {
								md.ID = benchID(int(next.Add(1)))
								if err := be.StoreMeta(ctx, md.ID, md); err != nil {
									b.Error(err)
									return
								}
							}
						})
						reportOps(b, "ops/s")
					})
				})
			}
			const m = 200
			b.Run("UpdateMeta", func(b *testing.B) {
				pair(b, func(b *testing.B, be benchBackend) {
					seqBench(b, be, m, metastorage.StateActive, func(ctx context.Context, i int) error {
						md := benchRecord(i%m, metastorage.StateDeferred)
						md.Attempts = i
						if (i/m)%2 == 1 {
							md.State = metastorage.StateActive
						}
						return be.UpdateMeta(ctx, md.ID, md)
					})
				})
			})
			b.Run("MoveToState", func(b *testing.B) {
				pair(b, func(b *testing.B, be benchBackend) {
					seqBench(b, be, m, metastorage.StateIncoming, func(ctx context.Context, i int) error {
						from, to := metastorage.StateIncoming, metastorage.StateActive
						if (i/m)%2 == 1 {
							from, to = to, from
						}
						return be.MoveToState(ctx, benchID(i%m), from, to)
					})
				})
			})
			b.Run("GetMeta", func(b *testing.B) {
				pair(b, func(b *testing.B, be benchBackend) {
					seqBench(b, be, m, metastorage.StateIncoming, func(ctx context.Context, i int) error {
						_, err := be.GetMeta(ctx, benchID(i%m))
						return err
					})
				})
			})
			b.Run("Iterate", func(b *testing.B) {
				const m, batch = 2000, 100
				ctx := context.Background()
				pair(b, func(b *testing.B, be benchBackend) {
					populate(b, be, m, metastorage.StateIncoming)
					switch x := be.(type) {
					case *sqlitemeta.Repository:
						iterate(b, func() nextFunc {
							it, err := x.NewMessageIterator(ctx, metastorage.StateIncoming, batch)
							if err != nil {
								b.Fatal(err)
							}
							return it.Next
						})
					case *floor.DB:
						iterate(b, func() nextFunc { return x.NewIterator(metastorage.StateIncoming, batch).Next })
					}
				})
			})
		})
	}
}

// peakRSS runs fn and returns the process's resident memory before it and
// at its peak during it, in bytes, from the kernel's high-water mark, which
// it resets first. ok is false where /proc does not offer that.
func peakRSS(fn func()) (before, peak int64, ok bool) {
	runtime.GC()
	debug.FreeOSMemory()
	// "5" resets VmHWM to the current resident size (Linux 4.0+).
	reset := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
	before, _ = procStatusKB("VmRSS")
	fn()
	peak, err := procStatusKB("VmHWM")
	if reset != nil || err != nil || before == 0 {
		return 0, 0, false
	}
	return before << 10, peak << 10, true
}

// procStatusKB reads one "Name:   123 kB" line of /proc/self/status.
func procStatusKB(name string) (int64, error) {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, name+":"); ok {
			return strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
		}
	}
	return 0, fmt.Errorf("%s not in /proc/self/status", name)
}

// BenchmarkTelemetry measures what observing the store costs, on the
// sequential benchmarks: "off" is the store with no logger, meter or
// tracer; "sdk" has the OpenTelemetry SDK's meter (a reader that is never
// collected: every call still updates its histograms) and tracer (every
// span sampled, batched to an exporter that drops them). The two run one
// after the other in each round of .ci/bench (BENCH=Telemetry), so that
// noise hits both alike; compare their ns/op.
func BenchmarkTelemetry(b *testing.B) {
	const m = 1000
	variants := []struct {
		name string
		opts func(b *testing.B) []sqlitemeta.Option
	}{
		{"off", func(*testing.B) []sqlitemeta.Option { return nil }},
		{"sdk", func(b *testing.B) []sqlitemeta.Option {
			mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
			tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(tracetest.NewNoopExporter()))
			b.Cleanup(func() {
				_ = tp.Shutdown(context.Background())
				_ = mp.Shutdown(context.Background())
			})
			return []sqlitemeta.Option{sqlitemeta.WithMeterProvider(mp), sqlitemeta.WithTracerProvider(tp)}
		}},
	}
	open := func(b *testing.B, opts []sqlitemeta.Option) *sqlitemeta.Repository {
		b.Helper()
		opts = append([]sqlitemeta.Option{sqlitemeta.WithDatabasePath(filepath.Join(b.TempDir(), "lib.db"))}, opts...)
		r, err := sqlitemeta.NewFactory(opts...).Open(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = r.Close() })
		return r
	}
	ops := []struct {
		name string
		run  func(b *testing.B, r *sqlitemeta.Repository)
	}{
		{"StoreMeta", func(b *testing.B, r *sqlitemeta.Repository) {
			rec := benchRecord(0, metastorage.StateIncoming)
			var next atomic.Int64
			seqBench(b, r, 0, metastorage.StateIncoming, func(ctx context.Context, _ int) error {
				md := rec
				md.ID = benchID(int(next.Add(1)))
				return r.StoreMeta(ctx, md.ID, md)
			})
		}},
		{"MoveToState", func(b *testing.B, r *sqlitemeta.Repository) {
			seqBench(b, r, m, metastorage.StateIncoming, func(ctx context.Context, i int) error {
				from, to := metastorage.StateIncoming, metastorage.StateActive
				if (i/m)%2 == 1 {
					from, to = to, from
				}
				return r.MoveToState(ctx, benchID(i%m), from, to)
			})
		}},
		{"GetMeta", func(b *testing.B, r *sqlitemeta.Repository) {
			seqBench(b, r, m, metastorage.StateIncoming, func(ctx context.Context, i int) error {
				_, err := r.GetMeta(ctx, benchID(i%m))
				return err
			})
		}},
	}
	for _, op := range ops {
		b.Run(op.name, func(b *testing.B) {
			for _, v := range variants {
				b.Run(v.name, func(b *testing.B) {
					b.ReportAllocs()
					op.run(b, open(b, v.opts(b)))
				})
			}
		})
	}
}
