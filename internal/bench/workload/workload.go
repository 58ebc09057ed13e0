// Package workload runs a realistic RetrySpool workload against the
// metadata store and, in the same run, against the raw database/sql floor
// of internal/bench/floor, and reports per-operation rates and latencies.
//
// The phases follow a message's life in a Postfix-style queue, each run by
// Config.Workers goroutines:
//
//   - enqueue: StoreMeta of Messages new incoming records.
//   - claim: MoveToState incoming to active, every message raced for by
//     two workers; exactly one must win and the other get
//     ErrStateConflict. Ops counts both attempts.
//   - defer: UpdateMeta of every record to deferred after a failed
//     attempt, with NextRetry in the past for half of them and in the
//     future for the other half.
//   - retry-due: claims of up to 100 due messages to active, workers
//     racing, until none is due (the library's ClaimDue; the floor's SELECT
//     plus one MoveToState UPDATE per message, in one transaction). Ops
//     counts messages; p50 and p99 are per call.
//   - archive: UpdateMeta of the retried messages to archived.
//   - delete: DeleteMeta of the messages still deferred.
//
// After every phase the per-state counts are checked against what the phase
// must have done, so a report is only produced for a consistent run. With
// Config.Queue, Messages more messages then go through the real RetrySpool
// queue (filesystem data storage, a handler that succeeds), once on this
// store and once on RetrySpool's filesystem metadata backend: "queue-e2e"
// and "queue-e2e-fs" report end-to-end messages per second and
// enqueue-to-handled latency, "queue-e2e" with the filesystem backend's
// rate as its floor. Config.QueueOnly leaves out the phases.
package workload

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"gorm.io/driver/mysql"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/bench/floor"
	"schneider.vip/retryspool/storage/meta/sqlite/repository"
)

// Defaults of Config.
const (
	DefaultEngine      = "sqlite"
	DefaultMessages    = 10000
	DefaultWorkers     = 8
	DefaultSynchronous = "NORMAL"
	// dueBatch is how many due messages one retry-due call claims.
	dueBatch = 100
)

// Config chooses the engine and the size of the workload.
type Config struct {
	Engine      string // "sqlite" (default), "postgres", "mysql"
	Path        string // SQLite file; empty = a temp file removed afterwards
	DSN         string // for postgres/mysql
	Messages    int    // default 10000
	Workers     int    // concurrent workers, default 8
	Synchronous string // SQLite synchronous mode, default NORMAL
	Queue       bool   // also run the workload through the real retryspool queue (v0.0.16)
	QueueOnly   bool   // run only the queue, not the phases; implies Queue
}

// Result is one operation of the workload.
type Result struct {
	Op             string // e.g. "enqueue", "claim", "defer", "retry-due", "archive", "delete", "queue-e2e"
	Ops            int
	OpsPerSec      float64
	P50, P99       time.Duration
	FloorOpsPerSec float64 // same op on the raw floor in the same run (0 when not applicable)
	Ratio          float64 // OpsPerSec / FloorOpsPerSec (0 when no floor)
	// Baseline names what FloorOpsPerSec measured when it is another
	// result rather than the floor: QueueFSOp for QueueOp.
	Baseline string
	Queue    *QueueCheck // the queue runs' counts; nil for the phases
}

// Report is the outcome of Run.
type Report struct {
	Config   Config
	Settings map[string]string // engine settings in force, read back from the database where possible
	Results  []Result
}

func (c *Config) normalize() error {
	c.Engine = strings.ToLower(c.Engine)
	switch c.Engine {
	case "":
		c.Engine = DefaultEngine
	case "sqlite", "postgres", "mysql":
	case "mariadb":
		c.Engine = "mysql"
	default:
		return fmt.Errorf("workload: unknown engine %q (want sqlite, postgres or mysql)", c.Engine)
	}
	if c.Engine != "sqlite" && c.DSN == "" {
		return fmt.Errorf("workload: engine %s needs a DSN", c.Engine)
	}
	if c.Engine == "sqlite" && c.DSN != "" {
		return errors.New("workload: a DSN is for postgres or mysql; give SQLite a Path")
	}
	if c.Messages == 0 {
		c.Messages = DefaultMessages
	}
	if c.Workers == 0 {
		c.Workers = DefaultWorkers
	}
	if c.QueueOnly {
		c.Queue = true
	}
	if c.Messages < 1 || c.Workers < 1 {
		return fmt.Errorf("workload: Messages (%d) and Workers (%d) must be positive", c.Messages, c.Workers)
	}
	c.Synchronous = strings.ToUpper(c.Synchronous)
	switch c.Synchronous {
	case "":
		c.Synchronous = DefaultSynchronous
	case "OFF", "NORMAL", "FULL", "EXTRA":
	default:
		return fmt.Errorf("workload: unknown synchronous mode %q (want OFF, NORMAL, FULL or EXTRA)", c.Synchronous)
	}
	return nil
}

// Run runs the workload on the library and on the floor, then, with
// cfg.Queue, through the real queue. progress, when not nil, is called from
// one goroutine at a time with the operations done so far, ending with
// done == total.
func Run(ctx context.Context, cfg Config, progress func(done, total int)) (*Report, error) {
	if err := cfg.normalize(); err != nil {
		return nil, err
	}
	n := cfg.Messages
	due := (n + 1) / 2
	total := 2 * (n + 2*n + n + due + due + (n - due))
	if cfg.QueueOnly {
		total = 0
	}
	if cfg.Queue {
		total += 2 * n
	}
	prog := newProgress(progress, total)
	defer prog.stop()

	e, err := openEnv(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer e.close()

	rep := &Report{Config: cfg, Settings: e.settings(ctx)}
	if !cfg.QueueOnly {
		res, err := runPhases(ctx, cfg, e, prog)
		if err != nil {
			return nil, err
		}
		rep.Results = append(rep.Results, res...)
	}
	if cfg.Queue {
		res, err := runQueues(ctx, cfg, e, prog)
		if err != nil {
			return nil, err
		}
		rep.Results = append(rep.Results, res...)
		for k, v := range queueSettings(cfg) {
			rep.Settings[k] = v
		}
	}
	prog.finish()
	return rep, nil
}

// runPhases runs every phase on the library and on the floor, checking the
// counts after each.
func runPhases(ctx context.Context, cfg Config, e *env, prog *progress) ([]Result, error) {
	sides := []*side{
		{name: "lib", store: e.lib, n: cfg.Messages},
		{name: "floor", store: e.flo, n: cfg.Messages},
	}
	for _, s := range sides {
		if err := s.prepare(ctx); err != nil {
			return nil, err
		}
	}
	var results []Result
	for _, ph := range phases {
		var res [2]phaseResult
		for i, s := range sides {
			r, err := ph.run(ctx, cfg.Workers, s, prog)
			if err != nil {
				return nil, fmt.Errorf("workload: %s on %s: %w", ph.op, s.name, err)
			}
			if err := s.check(ctx, ph.op); err != nil {
				return nil, err
			}
			res[i] = r
		}
		results = append(results, result(ph.op, res[0], &res[1]))
	}
	return results, nil
}

// phaseResult is what one side measured in one phase.
type phaseResult struct {
	ops     int
	elapsed time.Duration
	lat     []time.Duration
	queue   *QueueCheck // queue runs only
}

func (r phaseResult) rate() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.ops) / r.elapsed.Seconds()
}

func result(op string, lib phaseResult, flo *phaseResult) Result {
	slices.Sort(lib.lat)
	res := Result{
		Op: op, Ops: lib.ops, OpsPerSec: lib.rate(),
		P50: percentile(lib.lat, 50), P99: percentile(lib.lat, 99),
	}
	if flo != nil {
		res.FloorOpsPerSec = flo.rate()
		if res.FloorOpsPerSec > 0 {
			res.Ratio = res.OpsPerSec / res.FloorOpsPerSec
		}
	}
	return res
}

// percentile of sorted latencies, nearest rank.
func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := (len(sorted)*p + 99) / 100
	return sorted[min(max(i-1, 0), len(sorted)-1)]
}

// store is what the phases call: the library's Repository, or the floor.
type store interface {
	StoreMeta(ctx context.Context, id string, md metastorage.MessageMetadata) error
	UpdateMeta(ctx context.Context, id string, md metastorage.MessageMetadata) error
	MoveToState(ctx context.Context, id string, from, to metastorage.QueueState) error
	DeleteMeta(ctx context.Context, id string) error
	ClaimDue(ctx context.Context, now time.Time, limit int) ([]metastorage.MessageMetadata, error)
	StateCount(ctx context.Context, state metastorage.QueueState) (int64, error)
}

var (
	_ store = (*sqlitemeta.Repository)(nil)
	_ store = (*floor.DB)(nil)
)

// side is one store run through the phases, with the records it holds
// and the counts it must show.
type side struct {
	name  string
	store store
	n     int
	recs  []metastorage.MessageMetadata
	base  [6]int64 // counts before the workload
	want  [6]int64 // counts the workload added
}

// prepare builds the records, under IDs no earlier run used, and reads the
// counts the database already has.
func (s *side) prepare(ctx context.Context) error {
	prefix := randomHex(6)
	now := time.Now().UTC()
	s.recs = make([]metastorage.MessageMetadata, s.n)
	for i := range s.recs {
		s.recs[i] = metastorage.MessageMetadata{
			ID: prefix + "-" + strconv.Itoa(i), State: metastorage.StateIncoming,
			MaxAttempts: 10, NextRetry: now, Created: now, Updated: now,
			Size: 4096, Priority: 5, RetryPolicyName: "default",
			Headers: map[string]string{
				"from": "sender@example.org", "to": fmt.Sprintf("rcpt%d@example.net", i),
				"subject": "workload", "message-id": "<" + prefix + strconv.Itoa(i) + "@example.org>",
			},
		}
	}
	for st := range s.base {
		n, err := s.store.StateCount(ctx, metastorage.QueueState(st))
		if err != nil {
			return fmt.Errorf("workload: %s: count: %w", s.name, err)
		}
		s.base[st] = n
	}
	return nil
}

// check compares every state's count with what the phases so far must
// have left.
func (s *side) check(ctx context.Context, after string) error {
	for st := range s.want {
		n, err := s.store.StateCount(ctx, metastorage.QueueState(st))
		if err != nil {
			return fmt.Errorf("workload: %s after %s: count: %w", s.name, after, err)
		}
		if want := s.base[st] + s.want[st]; n != want {
			return fmt.Errorf("workload: %s after %s: %d messages %s, want %d",
				s.name, after, n, metastorage.QueueState(st), want)
		}
	}
	return nil
}

func (s *side) shift(from, to metastorage.QueueState, n int) {
	s.want[from] -= int64(n)
	s.want[to] += int64(n)
}

type phase struct {
	op  string
	run func(ctx context.Context, workers int, s *side, p *progress) (phaseResult, error)
}

var phases = []phase{
	{"enqueue", func(ctx context.Context, workers int, s *side, p *progress) (phaseResult, error) {
		r, err := forEach(ctx, workers, s.n, p, func(ctx context.Context, i int) error {
			return s.store.StoreMeta(ctx, s.recs[i].ID, s.recs[i])
		})
		s.want[metastorage.StateIncoming] += int64(r.ops)
		return r, err
	}},
	{"claim", func(ctx context.Context, workers int, s *side, p *progress) (phaseResult, error) {
		var won, lost atomic.Int64
		r, err := forEach(ctx, workers, 2*s.n, p, func(ctx context.Context, i int) error {
			err := s.store.MoveToState(ctx, s.recs[i/2].ID, metastorage.StateIncoming, metastorage.StateActive)
			switch {
			case err == nil:
				won.Add(1)
			case errors.Is(err, metastorage.ErrStateConflict):
				lost.Add(1)
			default:
				return err
			}
			return nil
		})
		if err != nil {
			return r, err
		}
		if won.Load() != int64(s.n) || lost.Load() != int64(s.n) {
			return r, fmt.Errorf("%d claims won and %d lost, want %d and %d", won.Load(), lost.Load(), s.n, s.n)
		}
		s.shift(metastorage.StateIncoming, metastorage.StateActive, s.n)
		return r, nil
	}},
	{"defer", func(ctx context.Context, workers int, s *side, p *progress) (phaseResult, error) {
		now := time.Now().UTC()
		r, err := forEach(ctx, workers, s.n, p, func(ctx context.Context, i int) error {
			md := &s.recs[i]
			md.State, md.Attempts, md.Updated = metastorage.StateDeferred, 1, now
			md.LastError = "451 4.7.1 try again later"
			md.NextRetry = now.Add(-time.Minute)
			if i%2 == 1 {
				md.NextRetry = now.Add(time.Hour)
			}
			return s.store.UpdateMeta(ctx, md.ID, *md)
		})
		s.shift(metastorage.StateActive, metastorage.StateDeferred, r.ops)
		return r, err
	}},
	{"retry-due", func(ctx context.Context, workers int, s *side, p *progress) (phaseResult, error) {
		r, err := untilEmpty(ctx, workers, p, func(ctx context.Context) (int, error) {
			mds, err := s.store.ClaimDue(ctx, time.Now(), dueBatch)
			return len(mds), err
		})
		s.shift(metastorage.StateDeferred, metastorage.StateActive, r.ops)
		if err == nil && r.ops != (s.n+1)/2 {
			err = fmt.Errorf("%d due messages claimed, want %d", r.ops, (s.n+1)/2)
		}
		return r, err
	}},
	{"archive", func(ctx context.Context, workers int, s *side, p *progress) (phaseResult, error) {
		now := time.Now().UTC()
		r, err := forEach(ctx, workers, (s.n+1)/2, p, func(ctx context.Context, i int) error {
			md := &s.recs[2*i] // the due ones, retried and delivered
			md.State, md.Attempts, md.Updated, md.LastError = metastorage.StateArchived, 2, now, ""
			return s.store.UpdateMeta(ctx, md.ID, *md)
		})
		s.shift(metastorage.StateActive, metastorage.StateArchived, r.ops)
		return r, err
	}},
	{"delete", func(ctx context.Context, workers int, s *side, p *progress) (phaseResult, error) {
		r, err := forEach(ctx, workers, s.n/2, p, func(ctx context.Context, i int) error {
			return s.store.DeleteMeta(ctx, s.recs[2*i+1].ID) // the ones still deferred
		})
		s.want[metastorage.StateDeferred] -= int64(r.ops)
		return r, err
	}},
}

// forEach calls op for 0..n-1 from workers goroutines and measures each
// call. On an error it stops handing out work and returns the first error;
// ops counts the calls that succeeded.
func forEach(ctx context.Context, workers, n int, p *progress, op func(ctx context.Context, i int) error) (phaseResult, error) {
	var next atomic.Int64
	return parallel(ctx, workers, p, func(ctx context.Context) (int, bool, error) {
		i := int(next.Add(1) - 1)
		if i >= n {
			return 0, false, nil
		}
		return 1, true, op(ctx, i)
	})
}

// untilEmpty calls op from workers goroutines until it reports that it did
// nothing; op returns how many messages it handled.
func untilEmpty(ctx context.Context, workers int, p *progress, op func(ctx context.Context) (int, error)) (phaseResult, error) {
	return parallel(ctx, workers, p, func(ctx context.Context) (int, bool, error) {
		n, err := op(ctx)
		return n, n > 0, err
	})
}

// parallel runs step on workers goroutines until every step reports no
// more work (more == false) or one fails. A step that does work counts ops
// and its latency.
func parallel(ctx context.Context, workers int, p *progress, step func(ctx context.Context) (ops int, more bool, err error)) (phaseResult, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		res     phaseResult
		firstEr error
	)
	start := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var lat []time.Duration
			ops := 0
			defer func() {
				mu.Lock()
				res.lat = append(res.lat, lat...)
				res.ops += ops
				mu.Unlock()
			}()
			for ctx.Err() == nil {
				t0 := time.Now()
				n, more, err := step(ctx)
				d := time.Since(t0)
				if err != nil {
					mu.Lock()
					if firstEr == nil {
						firstEr = err
					}
					mu.Unlock()
					cancel()
					return
				}
				if !more {
					return
				}
				ops += n
				lat = append(lat, d)
				p.add(n)
			}
		}()
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	if firstEr == nil {
		firstEr = ctx.Err()
	}
	return res, firstEr
}

// progress reports the operations done from one goroutine, a few times a
// second.
type progress struct {
	fn    func(done, total int)
	total int
	done  atomic.Int64
	quit  chan struct{}
	wg    sync.WaitGroup
	once  sync.Once
}

func newProgress(fn func(done, total int), total int) *progress {
	p := &progress{fn: fn, total: total, quit: make(chan struct{})}
	if fn == nil {
		return p
	}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-p.quit:
				return
			case <-t.C:
				p.fn(min(int(p.done.Load()), p.total), p.total)
			}
		}
	}()
	return p
}

func (p *progress) add(n int) {
	if p != nil {
		p.done.Add(int64(n))
	}
}

func (p *progress) stop() {
	p.once.Do(func() {
		close(p.quit)
		p.wg.Wait()
	})
}

// finish stops the ticker and reports completion.
func (p *progress) finish() {
	p.stop()
	if p.fn != nil {
		p.fn(p.total, p.total)
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// env is the library and the floor, opened on the configured engine.
type env struct {
	cfg     Config
	lib     *sqlitemeta.Repository
	flo     *floor.DB
	db      *gorm.DB // server engines: the pool both sides use
	tmp     string   // SQLite: directory of the temporary files
	closers []func()
}

func (e *env) close() {
	for i := len(e.closers) - 1; i >= 0; i-- {
		e.closers[i]()
	}
}

func openEnv(ctx context.Context, cfg Config) (_ *env, err error) {
	e := &env{cfg: cfg}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	if cfg.Engine == "sqlite" {
		// The floor's file sits beside the library's, on the same file
		// system.
		dir := os.TempDir()
		if cfg.Path != "" {
			dir = filepath.Dir(cfg.Path)
			if err := os.MkdirAll(dir, 0o750); err != nil {
				return nil, fmt.Errorf("workload: %w", err)
			}
		}
		if e.tmp, err = os.MkdirTemp(dir, ".retryspool-workload-*"); err != nil {
			return nil, fmt.Errorf("workload: %w", err)
		}
		e.closers = append(e.closers, func() { _ = os.RemoveAll(e.tmp) })
		path := cfg.Path
		if path == "" {
			path = filepath.Join(e.tmp, "meta.db")
		}
		if e.lib, err = sqlitemeta.NewFactory(
			sqlitemeta.WithDatabasePath(path), sqlitemeta.WithSynchronous(cfg.Synchronous),
		).Open(ctx); err != nil {
			return nil, fmt.Errorf("workload: open library: %w", err)
		}
		e.closers = append(e.closers, func() { _ = e.lib.Close() })
		if e.flo, err = floor.Open(ctx, floor.Config{
			Path: filepath.Join(e.tmp, "floor.db"), Synchronous: cfg.Synchronous,
		}); err != nil {
			return nil, fmt.Errorf("workload: open floor: %w", err)
		}
		e.closers = append(e.closers, func() { _ = e.flo.Close() })
		return e, nil
	}

	if e.db, err = openServer(cfg); err != nil {
		return nil, err
	}
	pool, err := e.db.DB()
	if err != nil {
		return nil, fmt.Errorf("workload: %w", err)
	}
	e.closers = append(e.closers, func() { _ = pool.Close() })
	libTable, floorTable := e.table(ctx), e.table(ctx)
	if e.lib, err = sqlitemeta.NewFactory(sqlitemeta.WithDB(e.db), sqlitemeta.WithTableName(libTable)).Open(ctx); err != nil {
		return nil, fmt.Errorf("workload: open library: %w", err)
	}
	e.closers = append(e.closers, func() { _ = e.lib.Close() })
	// The floor's table gets the library's schema, then the library lets
	// go of it.
	schema, err := sqlitemeta.NewFactory(sqlitemeta.WithDB(e.db), sqlitemeta.WithTableName(floorTable)).Open(ctx)
	if err != nil {
		return nil, fmt.Errorf("workload: create floor schema: %w", err)
	}
	if err := schema.Close(); err != nil {
		return nil, fmt.Errorf("workload: create floor schema: %w", err)
	}
	if e.flo, err = floor.New(pool, cfg.Engine, floorTable); err != nil {
		return nil, err
	}
	return e, nil
}

// openServer opens a PostgreSQL or MySQL/MariaDB pool with room for every
// worker.
func openServer(cfg Config) (*gorm.DB, error) {
	var d gorm.Dialector
	if cfg.Engine == "postgres" {
		d = postgres.Open(cfg.DSN)
	} else {
		d = mysql.Open(cfg.DSN)
	}
	db, err := gorm.Open(d, &gorm.Config{Logger: logger.Discard, SkipDefaultTransaction: true})
	if err != nil {
		return nil, fmt.Errorf("workload: open %s: %w", cfg.Engine, err)
	}
	pool, err := db.DB()
	if err != nil {
		return nil, fmt.Errorf("workload: open %s: %w", cfg.Engine, err)
	}
	pool.SetMaxOpenConns(cfg.Workers + 4)
	pool.SetMaxIdleConns(cfg.Workers + 4)
	return db, nil
}

// table returns a fresh table name on a server engine, dropped at the end.
func (e *env) table(ctx context.Context) string {
	name := "wl_" + randomHex(6)
	e.closers = append(e.closers, func() {
		_ = repository.Drop(context.WithoutCancel(ctx), e.db, name)
	})
	return name
}

// settings reads back the settings in force.
func (e *env) settings(ctx context.Context) map[string]string {
	s := map[string]string{
		"engine":      e.cfg.Engine,
		"workers":     strconv.Itoa(e.cfg.Workers),
		"messages":    strconv.Itoa(e.cfg.Messages),
		"floor":       "database/sql, one statement per transaction, no group commit",
		"retry batch": strconv.Itoa(dueBatch),
	}
	// read stores the first of the queries that answers.
	read := func(db *gorm.DB, key string, queries ...string) {
		var v string
		var err error
		for _, q := range queries {
			if err = db.WithContext(ctx).Raw(q).Row().Scan(&v); err == nil {
				break
			}
		}
		if err != nil {
			v = "error: " + err.Error()
		}
		s[key] = v
	}
	switch e.cfg.Engine {
	case "sqlite":
		for _, p := range []string{"journal_mode", "synchronous", "busy_timeout", "cache_size", "foreign_keys", "auto_vacuum"} {
			read(e.lib.DB(), p, "PRAGMA "+p)
		}
		// synchronous matters where the commits happen: the writer.
		_ = e.lib.Transaction(ctx, func(tx *gorm.DB) error {
			read(tx, "synchronous (writer)", "PRAGMA synchronous")
			return nil
		})
		read(e.lib.DB(), "sqlite_version", "SELECT sqlite_version()")
		if pool, err := e.lib.DB().DB(); err == nil {
			s["read pool"] = strconv.Itoa(pool.Stats().MaxOpenConnections) + " connections"
		}
		s["write connections"] = "1"
		s["group commit"] = "up to " + strconv.Itoa(sqlitemeta.DefaultMaxGroupCommit) + " writes per transaction"
		s["floor pool"] = strconv.Itoa(e.flo.SQL().Stats().MaxOpenConnections) + " connection(s), synchronous " + e.cfg.Synchronous
	case "postgres":
		read(e.db, "server_version", "SHOW server_version")
		read(e.db, "synchronous_commit", "SHOW synchronous_commit")
		read(e.db, "fsync", "SHOW fsync")
		read(e.db, "default_transaction_isolation", "SHOW default_transaction_isolation")
		read(e.db, "max_connections", "SHOW max_connections")
	case "mysql":
		read(e.db, "version", "SELECT VERSION()")
		read(e.db, "innodb_flush_log_at_trx_commit", "SELECT @@innodb_flush_log_at_trx_commit")
		read(e.db, "sync_binlog", "SELECT @@sync_binlog")
		// MySQL 8 and MariaDB 11.1+ say transaction_isolation, older
		// MariaDB tx_isolation.
		read(e.db, "transaction_isolation", "SELECT @@transaction_isolation", "SELECT @@tx_isolation")
		read(e.db, "max_connections", "SELECT @@max_connections")
	}
	if e.db != nil {
		if pool, err := e.db.DB(); err == nil {
			s["pool"] = strconv.Itoa(pool.Stats().MaxOpenConnections) + " connections, shared by library and floor"
		}
	}
	return s
}

// WriteTable writes the results as an aligned table whose headers are
// single words: op, ops, ops_per_s, p50, p99, floor_ops_per_s, ratio.
func (r *Report) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "op\tops\tops_per_s\tp50\tp99\tfloor_ops_per_s\tratio")
	for _, res := range r.Results {
		floorRate, ratio := "-", "-"
		if res.FloorOpsPerSec > 0 {
			floorRate = strconv.FormatFloat(res.FloorOpsPerSec, 'f', 0, 64)
			ratio = strconv.FormatFloat(res.Ratio, 'f', 2, 64) + "x"
		}
		fmt.Fprintf(tw, "%s\t%d\t%.0f\t%s\t%s\t%s\t%s\n", res.Op, res.Ops, res.OpsPerSec,
			roundLatency(res.P50), roundLatency(res.P99), floorRate, ratio)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	return r.writeQueueTable(w)
}

// writeQueueTable writes, under the results of the queue runs, what each
// counted: queue, enqueued, handled, twice, left, peak_rss.
func (r *Report) writeQueueTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	header := false
	for _, res := range r.Results {
		q := res.Queue
		if q == nil {
			continue
		}
		if !header {
			fmt.Fprintln(tw, "\nqueue\tenqueued\thandled\ttwice\tleft\tpeak_rss")
			header = true
		}
		rss := "-"
		if q.PeakRSS > 0 {
			rss = strconv.FormatFloat(float64(q.PeakRSS)/1e6, 'f', 1, 64) + " MB"
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%s\n", res.Op, q.Enqueued, q.Handled, q.Twice, q.Left, rss)
	}
	return tw.Flush()
}

func roundLatency(d time.Duration) time.Duration {
	switch {
	case d >= time.Second:
		return d.Round(time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(100 * time.Nanosecond)
}
