// Package telemetry is the store's logging, metrics and tracing: structured
// logs through log/slog, and OpenTelemetry instruments and spans through
// the metric and trace APIs. Everything is opt-in: a nil *T does nothing,
// allocates nothing and costs a nil check per call.
//
// What is emitted, and at which level:
//
//   - Every call of the store's API (Start ... End): a span named
//     "<operation> <table>" of kind client with the database attributes of
//     the semantic conventions and the message ID, its error recorded; one
//     measurement of db.client.operation.duration (seconds) with
//     db.system.name, db.collection.name, db.operation.name,
//     retryspool.outcome and, on failure, error.type. Logs: nothing at Info
//     for a call that went well; Debug for every call; Warn for a call
//     slower than SlowThreshold or refused as busy; Error for a call that
//     failed for another reason than the caller's input or the queue's
//     state (not found, conflict, invalid and closed stay at Debug: the
//     caller gets them and they are part of a queue's normal life).
//   - Group commits of the SQLite writer: batch size and commit latency;
//     a failed commit is logged at Error.
//   - Waits for another connection's lock: count and duration; a wait that
//     ended in ErrBusy is logged at Warn, one longer than SlowThreshold at
//     Info.
//   - Transactions run again after a deadlock or serialization failure:
//     a counter, and a log line at Info.
//   - WAL checkpoints: count by result, pages copied, WAL size; a failed
//     checkpoint is logged at Error, a busy one at Debug, or at Warn when
//     the WAL has grown past WALWarnPages.
//   - Observable gauges of the queue: messages per state, age of the oldest
//     message per state, due deferred messages.
package telemetry

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
)

// ScopeName is the instrumentation scope of the meter and the tracer.
const ScopeName = "schneider.vip/retryspool/storage/meta/sqlite"

// Names of the instruments.
const (
	// MetricOperationDuration is the semantic conventions' database client
	// histogram; its count is the number of calls.
	MetricOperationDuration = "db.client.operation.duration"
	MetricGroupCommitSize   = "retryspool.meta.group_commit.size"
	MetricGroupCommitTime   = "retryspool.meta.group_commit.duration"
	MetricBusyWaits         = "retryspool.meta.busy_wait.duration"
	MetricRetries           = "retryspool.meta.retries"
	MetricCheckpoints       = "retryspool.meta.checkpoints"
	MetricCheckpointPages   = "retryspool.meta.checkpoint.pages"
	MetricWALPages          = "retryspool.meta.wal.pages"
	MetricMessages          = "retryspool.meta.messages"
	MetricOldestAge         = "retryspool.meta.oldest_age"
	MetricDue               = "retryspool.meta.due"
	MetricSettled           = "retryspool.meta.settled"
)

// Attribute keys of our own; the database ones are the semantic
// conventions'.
const (
	AttrOutcome   = attribute.Key("retryspool.outcome")
	AttrState     = attribute.Key("retryspool.state")
	AttrMessageID = attribute.Key("retryspool.message.id")
)

// Outcomes, as Config.Outcome returns them.
const (
	OutcomeOK       = "ok"
	OutcomeNotFound = "not_found"
	OutcomeConflict = "conflict"
	OutcomeBusy     = "busy"
	OutcomeClosed   = "closed"
	OutcomeInvalid  = "invalid"
	OutcomeError    = "error"
)

// WALWarnPages is the size of the WAL, in pages, from which a busy
// checkpoint is logged at Warn: checkpoints are then falling behind
// (the write connection checkpoints by itself from 4,000 pages).
const WALWarnPages = 10000

// Buckets of the histograms.
var (
	// durationBuckets are the semantic conventions' advice for
	// db.client.operation.duration, with finer steps below 10 ms where an
	// embedded database lives.
	durationBuckets = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}
	batchBuckets    = []float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512}
)

// Config chooses what to emit. With Logger, MeterProvider and
// TracerProvider all nil, New returns a nil *T.
type Config struct {
	Logger         *slog.Logger
	MeterProvider  metric.MeterProvider
	TracerProvider trace.TracerProvider
	// SlowThreshold logs calls that take longer, at Warn; 0 turns it off.
	SlowThreshold time.Duration
	// Engine is the database engine as OpenTelemetry's db.system.name
	// names it: "sqlite", "postgresql" or "mysql" (MariaDB included).
	Engine string
	// Table is the message table.
	Table string
	// Outcome classifies a call's error for the outcome attribute: "ok"
	// for nil, else one of "not_found", "conflict", "busy", "closed",
	// "invalid", "error". When nil, every error is "error".
	Outcome func(err error) string
}

// T emits the store's telemetry. The nil *T is valid and does nothing.
type T struct {
	cfg    Config
	log    *slog.Logger // nil: no logs
	tracer trace.Tracer // nil: no spans
	meter  metric.Meter // nil: no metrics

	base     []attribute.KeyValue // db.system.name, db.collection.name
	baseSet  metric.MeasurementOption
	baseRec  []metric.RecordOption
	logAttrs [2]slog.Attr // engine, table

	opDuration  metric.Float64Histogram
	groupSize   metric.Int64Histogram
	groupTime   metric.Float64Histogram
	busyWaits   metric.Float64Histogram
	retries     metric.Int64Counter
	settled     metric.Int64Counter
	checkpoints metric.Int64Counter
	ckptPages   metric.Int64Counter
	walPages    metric.Int64Gauge
	messages    metric.Int64ObservableGauge
	oldestAge   metric.Float64ObservableGauge
	due         metric.Int64ObservableGauge

	mu   sync.RWMutex
	sets map[setKey]*attrSet
}

// attrSet is a cached attribute set, as the options the instruments take
// (a slice made once: passing one option would allocate per call), and the
// span name of its operation.
type attrSet struct {
	rec  []metric.RecordOption
	add  []metric.AddOption
	span string // "<operation> <table>"
}

// setKey names a cached attribute set: an operation and an outcome.
type setKey struct{ op, outcome string }

// New returns the telemetry of cfg, or nil when cfg asks for nothing.
func New(cfg Config) (*T, error) {
	if cfg.Logger == nil && cfg.MeterProvider == nil && cfg.TracerProvider == nil {
		return nil, nil
	}
	t := &T{cfg: cfg, log: cfg.Logger, sets: map[setKey]*attrSet{}}
	if t.cfg.Outcome == nil {
		t.cfg.Outcome = func(err error) string {
			if err == nil {
				return OutcomeOK
			}
			return OutcomeError
		}
	}
	t.base = []attribute.KeyValue{semconv.DBSystemNameKey.String(cfg.Engine), semconv.DBCollectionName(cfg.Table)}
	t.baseSet = metric.WithAttributeSet(attribute.NewSet(t.base...))
	t.baseRec = []metric.RecordOption{t.baseSet}
	t.logAttrs = [2]slog.Attr{slog.String("engine", cfg.Engine), slog.String("table", cfg.Table)}
	if cfg.TracerProvider != nil {
		t.tracer = cfg.TracerProvider.Tracer(ScopeName)
	}
	if cfg.MeterProvider != nil {
		if err := t.instruments(cfg.MeterProvider.Meter(ScopeName)); err != nil {
			return nil, err
		}
	}
	return t, nil
}

func (t *T) instruments(m metric.Meter) error {
	var err error
	t.meter = m
	if t.opDuration, err = m.Float64Histogram(MetricOperationDuration, metric.WithUnit("s"),
		metric.WithDescription("Duration of the store's calls, by operation and outcome."),
		metric.WithExplicitBucketBoundaries(durationBuckets...)); err != nil {
		return err
	}
	if t.groupSize, err = m.Int64Histogram(MetricGroupCommitSize, metric.WithUnit("{write}"),
		metric.WithDescription("Writes sharing one SQLite commit."),
		metric.WithExplicitBucketBoundaries(batchBuckets...)); err != nil {
		return err
	}
	if t.groupTime, err = m.Float64Histogram(MetricGroupCommitTime, metric.WithUnit("s"),
		metric.WithDescription("Time from BEGIN to COMMIT of a group commit."),
		metric.WithExplicitBucketBoundaries(durationBuckets...)); err != nil {
		return err
	}
	if t.busyWaits, err = m.Float64Histogram(MetricBusyWaits, metric.WithUnit("s"),
		metric.WithDescription("Waits for another connection's or process's lock, by outcome."),
		metric.WithExplicitBucketBoundaries(durationBuckets...)); err != nil {
		return err
	}
	if t.retries, err = m.Int64Counter(MetricRetries, metric.WithUnit("{retry}"),
		metric.WithDescription("Transactions run again after the server aborted them (deadlock, serialization failure).")); err != nil {
		return err
	}
	if t.settled, err = m.Int64Counter(MetricSettled, metric.WithUnit("{write}"),
		metric.WithDescription("Writes whose connection died on the way, by what checking the write fence found (landed, not_landed, unknown).")); err != nil {
		return err
	}
	if t.checkpoints, err = m.Int64Counter(MetricCheckpoints, metric.WithUnit("{checkpoint}"),
		metric.WithDescription("WAL checkpoints, by outcome (ok, busy, error).")); err != nil {
		return err
	}
	if t.ckptPages, err = m.Int64Counter(MetricCheckpointPages, metric.WithUnit("{page}"),
		metric.WithDescription("WAL pages copied back into the database file by checkpoints.")); err != nil {
		return err
	}
	if t.walPages, err = m.Int64Gauge(MetricWALPages, metric.WithUnit("{page}"),
		metric.WithDescription("Size of the WAL at the last checkpoint.")); err != nil {
		return err
	}
	if t.messages, err = m.Int64ObservableGauge(MetricMessages, metric.WithUnit("{message}"),
		metric.WithDescription("Messages per state, from the store's counters.")); err != nil {
		return err
	}
	if t.oldestAge, err = m.Float64ObservableGauge(MetricOldestAge, metric.WithUnit("s"),
		metric.WithDescription("Age of the oldest message per state (by Created); 0 when the state is empty.")); err != nil {
		return err
	}
	if t.due, err = m.Int64ObservableGauge(MetricDue, metric.WithUnit("{message}"),
		metric.WithDescription("Deferred messages whose next retry is due.")); err != nil {
		return err
	}
	return nil
}

// set returns the attribute set of op and outcome, built once.
func (t *T) set(op, outcome string) *attrSet {
	k := setKey{op, outcome}
	t.mu.RLock()
	a, ok := t.sets[k]
	t.mu.RUnlock()
	if ok {
		return a
	}
	attrs := append(append(make([]attribute.KeyValue, 0, len(t.base)+3), t.base...), AttrOutcome.String(outcome))
	if op != "" {
		attrs = append(attrs, semconv.DBOperationName(op))
	}
	if outcome != OutcomeOK && outcome != "" {
		attrs = append(attrs, semconv.ErrorTypeKey.String(outcome))
	}
	o := metric.WithAttributeSet(attribute.NewSet(attrs...))
	a = &attrSet{rec: []metric.RecordOption{o}, add: []metric.AddOption{o}, span: op + " " + t.cfg.Table}
	t.mu.Lock()
	t.sets[k] = a
	t.mu.Unlock()
	return a
}

// Call is one call of the store's API in flight, between Start and End.
type Call struct {
	t     *T
	ctx   context.Context
	op    string
	id    string
	start time.Time
	span  trace.Span
}

// Start begins a call of operation op (the method's name, e.g.
// "MoveToState") on message id ("" when the call has none). The returned
// context carries the call's span, if any.
func (t *T) Start(ctx context.Context, op, id string) (context.Context, Call) {
	if t == nil {
		return ctx, Call{}
	}
	c := Call{t: t, op: op, id: id}
	if t.tracer != nil {
		attrs := make([]attribute.KeyValue, 0, len(t.base)+2)
		attrs = append(append(attrs, t.base...), semconv.DBOperationName(op))
		if id != "" {
			attrs = append(attrs, AttrMessageID.String(id))
		}
		ctx, c.span = t.tracer.Start(ctx, t.set(op, "").span,
			trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
	}
	c.ctx = ctx
	c.start = time.Now()
	return ctx, c
}

// End ends the call with its outcome.
func (c Call) End(err error) {
	t := c.t
	if t == nil {
		return
	}
	took := time.Since(c.start)
	outcome := t.cfg.Outcome(err)
	if t.meter != nil {
		t.opDuration.Record(context.Background(), took.Seconds(), t.set(c.op, outcome).rec...)
	}
	if c.span != nil {
		if err != nil {
			c.span.SetAttributes(semconv.ErrorTypeKey.String(outcome))
			c.span.RecordError(err)
			c.span.SetStatus(codes.Error, outcome)
		}
		c.span.End()
	}
	if t.log == nil {
		return
	}
	slow := t.cfg.SlowThreshold > 0 && took > t.cfg.SlowThreshold
	level, msg := slog.LevelDebug, "call"
	switch {
	case outcome == OutcomeError:
		level, msg = slog.LevelError, "call failed"
	case outcome == OutcomeBusy:
		level, msg = slog.LevelWarn, "call refused: database busy"
	case slow:
		level, msg = slog.LevelWarn, "slow call"
	}
	if !t.log.Enabled(c.ctx, level) {
		return
	}
	attrs := make([]slog.Attr, 0, 8)
	attrs = append(attrs, slog.String("operation", c.op), t.logAttrs[0], t.logAttrs[1],
		slog.Duration("duration", took), slog.String("outcome", outcome))
	if c.id != "" {
		attrs = append(attrs, slog.String("message_id", c.id))
	}
	if slow {
		attrs = append(attrs, slog.Duration("slow_threshold", t.cfg.SlowThreshold))
	}
	if err != nil {
		attrs = append(attrs, slog.Any("error", err))
	}
	t.log.LogAttrs(c.ctx, level, msg, attrs...)
}

// GroupCommit records one group commit of the SQLite writer: how many
// writes shared it, how long BEGIN to COMMIT took, and its error.
func (t *T) GroupCommit(size int, took time.Duration, err error) {
	if t == nil {
		return
	}
	outcome := t.cfg.Outcome(err)
	if t.meter != nil {
		ctx := context.Background()
		t.groupSize.Record(ctx, int64(size), t.baseRec...)
		t.groupTime.Record(ctx, took.Seconds(), t.set("", outcome).rec...)
	}
	if t.log != nil && err != nil {
		t.logAttrs2(context.Background(), slog.LevelError, "group commit failed",
			slog.Int("writes", size), slog.Duration("duration", took), slog.String("outcome", outcome), slog.Any("error", err))
	}
}

// BusyWait records a wait for another connection's or process's lock.
func (t *T) BusyWait(op string, waited time.Duration, err error) {
	if t == nil {
		return
	}
	outcome := t.cfg.Outcome(err)
	if t.meter != nil {
		t.busyWaits.Record(context.Background(), waited.Seconds(), t.set(op, outcome).rec...)
	}
	if t.log == nil {
		return
	}
	level, msg := slog.LevelDebug, "waited for the database lock"
	switch {
	case err != nil:
		level, msg = slog.LevelWarn, "gave up waiting for the database lock"
	case t.cfg.SlowThreshold > 0 && waited > t.cfg.SlowThreshold:
		level = slog.LevelInfo
	}
	attrs := []slog.Attr{slog.String("operation", op), slog.Duration("duration", waited)}
	if err != nil {
		attrs = append(attrs, slog.Any("error", err))
	}
	t.logAttrs2(context.Background(), level, msg, attrs...)
}

// Retry records a transaction run again after the server aborted it (a
// deadlock or serialization failure).
func (t *T) Retry(op string, attempt int, err error) {
	if t == nil {
		return
	}
	if t.meter != nil {
		t.retries.Add(context.Background(), 1, t.set(op, t.cfg.Outcome(err)).add...)
	}
	if t.log != nil {
		t.logAttrs2(context.Background(), slog.LevelInfo, "transaction retried",
			slog.String("operation", op), slog.Int("attempt", attempt), slog.Any("error", err))
	}
}

// Checkpoint records a WAL checkpoint: SQLite's busy flag, the WAL's size
// and how many of its frames were copied back, in pages.
func (t *T) Checkpoint(busy bool, walPages, copied int, err error) {
	if t == nil {
		return
	}
	outcome := OutcomeOK
	switch {
	case err != nil:
		outcome = OutcomeError
	case busy:
		outcome = OutcomeBusy
	}
	if t.meter != nil {
		ctx := context.Background()
		t.checkpoints.Add(ctx, 1, t.set("", outcome).add...)
		if copied > 0 {
			t.ckptPages.Add(ctx, int64(copied), t.baseSet)
		}
		if err == nil && walPages >= 0 {
			t.walPages.Record(ctx, int64(walPages), t.baseSet)
		}
	}
	if t.log == nil {
		return
	}
	var level slog.Level
	msg := "checkpoint"
	switch {
	case err != nil:
		level, msg = slog.LevelError, "checkpoint failed"
	case busy && walPages >= WALWarnPages:
		level, msg = slog.LevelWarn, "checkpoint busy, WAL growing"
	case busy:
		level, msg = slog.LevelDebug, "checkpoint busy"
	default:
		return
	}
	attrs := []slog.Attr{slog.Int("wal_pages", walPages), slog.Int("copied_pages", copied)}
	if err != nil {
		attrs = append(attrs, slog.Any("error", err))
	}
	t.logAttrs2(context.Background(), level, msg, attrs...)
}

// Settled records a write whose connection died under it (cause) and what
// the check of its outcome found: "landed", "not_landed" or "unknown".
func (t *T) Settled(ctx context.Context, op, verdict string, cause error) {
	if t == nil {
		return
	}
	if t.meter != nil {
		t.settled.Add(context.Background(), 1, t.set(op, verdict).add...)
	}
	if t.log != nil {
		t.logAttrs2(ctx, slog.LevelWarn, "connection lost during a write; checked its outcome",
			slog.String("operation", op), slog.String("outcome", verdict), slog.Any("error", cause))
	}
}

// Log writes one event of the store's life (migration, upgrade, repair,
// Close) at level, with the engine and table attached.
func (t *T) Log(ctx context.Context, level slog.Level, msg string, attrs ...slog.Attr) {
	if t == nil || t.log == nil {
		return
	}
	t.logAttrs2(ctx, level, msg, attrs...)
}

// logAttrs2 logs msg with the engine and table after attrs.
func (t *T) logAttrs2(ctx context.Context, level slog.Level, msg string, attrs ...slog.Attr) {
	if t.log == nil || !t.log.Enabled(ctx, level) {
		return
	}
	all := make([]slog.Attr, 0, len(attrs)+2)
	all = append(append(all, t.logAttrs[:]...), attrs...)
	t.log.LogAttrs(ctx, level, msg, all...)
}

// StateSnapshot is what the gauges report of one state.
type StateSnapshot struct {
	State  string    // "incoming", "active", ...
	Count  int64     // messages in the state
	Oldest time.Time // Created of the oldest message; zero when empty
}

// QueueSnapshot is what the gauges report of the queue.
type QueueSnapshot struct {
	States []StateSnapshot
	Due    int64 // deferred messages whose next retry is due
}

// ObserveQueue registers the observable gauges (messages per state, age
// of the oldest message per state, due deferred messages), read through
// snapshot at each collection. The returned function unregisters them.
// Without a MeterProvider it registers nothing.
func (t *T) ObserveQueue(snapshot func(ctx context.Context) (QueueSnapshot, error)) (unregister func() error, err error) {
	if t == nil || t.meter == nil {
		return func() error { return nil }, nil
	}
	states := map[string]metric.MeasurementOption{}
	stateSet := func(s string) metric.MeasurementOption {
		o, ok := states[s]
		if !ok {
			attrs := append(append([]attribute.KeyValue(nil), t.base...), AttrState.String(s))
			o = metric.WithAttributeSet(attribute.NewSet(attrs...))
			states[s] = o
		}
		return o
	}
	var mu sync.Mutex // the SDK may collect from several readers at once
	reg, err := t.meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		snap, err := snapshot(ctx)
		if err != nil {
			t.logAttrs2(ctx, slog.LevelWarn, "queue gauges not read", slog.Any("error", err))
			return err
		}
		now := time.Now()
		mu.Lock()
		defer mu.Unlock()
		for _, s := range snap.States {
			set := stateSet(s.State)
			o.ObserveInt64(t.messages, s.Count, set)
			age := 0.0
			if !s.Oldest.IsZero() && s.Count > 0 {
				age = max(now.Sub(s.Oldest).Seconds(), 0)
			}
			o.ObserveFloat64(t.oldestAge, age, set)
		}
		o.ObserveInt64(t.due, snap.Due, t.baseSet)
		return nil
	}, t.messages, t.oldestAge, t.due)
	if err != nil {
		return nil, err
	}
	var once sync.Once
	return func() error {
		var err error
		once.Do(func() { err = reg.Unregister() })
		return err
	}, nil
}
