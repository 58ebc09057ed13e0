package telemetry_test

// End-to-end: the store's options feed a real store, whose calls come out
// as metrics, spans and logs.

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/telemetry"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/testdb"
)

// syncBuffer is a log sink safe for the store's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(b.buf.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(l), &m), l)
		out = append(out, m)
	}
	return out
}

// observed is everything a store emitted.
type observed struct {
	reader *sdkmetric.ManualReader
	spans  *tracetest.SpanRecorder
	logs   *syncBuffer
	opts   []sqlitemeta.Option
}

func newObserved(t *testing.T, level slog.Level, slow time.Duration) *observed {
	o := &observed{reader: sdkmetric.NewManualReader(), spans: tracetest.NewSpanRecorder(), logs: &syncBuffer{}}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(o.reader))
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(o.spans))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()); _ = tp.Shutdown(context.Background()) })
	o.opts = []sqlitemeta.Option{
		sqlitemeta.WithLogger(slog.New(slog.NewJSONHandler(o.logs, &slog.HandlerOptions{Level: level}))),
		sqlitemeta.WithMeterProvider(mp), sqlitemeta.WithTracerProvider(tp), sqlitemeta.WithSlowThreshold(slow),
	}
	return o
}

func (o *observed) metrics(t *testing.T) map[string]metricdata.Metrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(t, o.reader.Collect(context.Background(), &rm))
	out := map[string]metricdata.Metrics{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			out[m.Name] = m
		}
	}
	return out
}

func attrs(set attribute.Set) map[string]string {
	out := map[string]string{}
	for _, kv := range set.ToSlice() {
		out[string(kv.Key)] = kv.Value.Emit()
	}
	return out
}

// engineCase opens a store on one engine with the options.
type engineCase struct {
	name   string // db.system.name
	engine testdb.Engine
}

func engineCases() []engineCase {
	var out []engineCase
	for _, e := range testdb.Engines() {
		name := map[string]string{"sqlite": "sqlite", "postgres": "postgresql", "mysql": "mysql"}[e.Name]
		out = append(out, engineCase{name: name, engine: e})
	}
	return out
}

func (c engineCase) open(t *testing.T, opts ...sqlitemeta.Option) (*sqlitemeta.Repository, string) {
	t.Helper()
	if c.engine.Skip != "" {
		t.Skip(c.engine.Skip)
	}
	table := "messages"
	if c.engine.Name == "sqlite" {
		opts = append(opts, sqlitemeta.WithDatabasePath(testdb.SQLitePath(t)))
	} else {
		db := c.engine.Open(t)
		table = c.engine.Table(t, db)
		opts = append(opts, sqlitemeta.WithDB(db), sqlitemeta.WithTableName(table))
	}
	r, err := sqlitemeta.NewFactory(opts...).Open(context.Background())
	require.NoError(t, err)
	return r, table
}

func TestSlowThresholdValidated(t *testing.T) {
	_, err := sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(testdb.SQLitePath(t)),
		sqlitemeta.WithSlowThreshold(-time.Second)).Create()
	require.ErrorIs(t, err, sqlitemeta.ErrConfig)
	require.Contains(t, err.Error(), "WithSlowThreshold")
}

func TestStoreEmits(t *testing.T) {
	for _, c := range engineCases() {
		t.Run(c.engine.Name, func(t *testing.T) {
			o := newObserved(t, slog.LevelInfo, time.Hour)
			r, table := c.open(t, o.opts...)
			ctx := context.Background()
			md := metastorage.MessageMetadata{ID: "m1", State: metastorage.StateIncoming, Created: time.Now(), Updated: time.Now()}
			require.NoError(t, r.StoreMeta(ctx, "m1", md))
			require.NoError(t, r.MoveToState(ctx, "m1", metastorage.StateIncoming, metastorage.StateActive))
			require.ErrorIs(t, r.MoveToState(ctx, "m1", metastorage.StateIncoming, metastorage.StateActive), metastorage.ErrStateConflict)
			_, err := r.GetMeta(ctx, "nosuch")
			require.ErrorIs(t, err, metastorage.ErrMessageNotFound)

			// Metrics: one duration per call, by operation and outcome.
			m := o.metrics(t)
			d, ok := m[telemetry.MetricOperationDuration]
			require.True(t, ok, "no %s among %v", telemetry.MetricOperationDuration, keys(m))
			got := map[string]uint64{}
			for _, p := range d.Data.(metricdata.Histogram[float64]).DataPoints {
				a := attrs(p.Attributes)
				require.Equal(t, c.name, a["db.system.name"])
				require.Equal(t, table, a["db.collection.name"])
				got[a["db.operation.name"]+" "+a["retryspool.outcome"]] += p.Count
			}
			require.EqualValues(t, 1, got["StoreMeta ok"], "%v", got)
			require.EqualValues(t, 1, got["MoveToState ok"], "%v", got)
			require.EqualValues(t, 1, got["MoveToState conflict"], "%v", got)
			require.EqualValues(t, 1, got["GetMeta not_found"], "%v", got)
			if c.engine.Name == "sqlite" {
				gs, ok := m[telemetry.MetricGroupCommitSize]
				require.True(t, ok, "no group commits recorded")
				var writes int64
				for _, p := range gs.Data.(metricdata.Histogram[int64]).DataPoints {
					writes += p.Sum
				}
				require.GreaterOrEqual(t, writes, int64(3), "each write is in a group commit")
			}

			// Spans: one per call, the message ID on it, errors recorded.
			byName := map[string][]sdktrace.ReadOnlySpan{}
			for _, s := range o.spans.Ended() {
				byName[s.Name()] = append(byName[s.Name()], s)
			}
			moves := byName["MoveToState "+table]
			require.Len(t, moves, 2, "spans: %v", keys(byName))
			a := attrs(attribute.NewSet(moves[0].Attributes()...))
			require.Equal(t, "m1", a["retryspool.message.id"])
			require.Equal(t, c.name, a["db.system.name"])
			require.Equal(t, "MoveToState", a["db.operation.name"])
			require.Equal(t, codes.Unset, moves[0].Status().Code)
			require.Equal(t, codes.Error, moves[1].Status().Code)
			require.Equal(t, "conflict", attrs(attribute.NewSet(moves[1].Attributes()...))["error.type"])
			require.Len(t, byName["GetMeta "+table], 1)

			// Logs: nothing at Info for the calls (not found and conflict
			// are answers, not failures).
			require.NoError(t, r.Close())
			for _, l := range o.logs.lines(t) {
				require.NotContains(t, []string{"StoreMeta", "MoveToState", "GetMeta"}, l["operation"], "logged at %v: %v", l["level"], l)
				require.Equal(t, c.name, l["engine"], l)
			}
		})
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestStoreSlowCallsLogged(t *testing.T) {
	o := newObserved(t, slog.LevelInfo, time.Nanosecond)
	r, _ := engineCases()[0].open(t, o.opts...)
	ctx := context.Background()
	require.NoError(t, r.StoreMeta(ctx, "slow", metastorage.MessageMetadata{ID: "slow", Created: time.Now()}))
	require.NoError(t, r.Close())
	var slow []map[string]any
	for _, l := range o.logs.lines(t) {
		if l["msg"] == "slow call" {
			slow = append(slow, l)
		}
	}
	require.NotEmpty(t, slow)
	require.Equal(t, "WARN", slow[0]["level"])
	require.Equal(t, "StoreMeta", slow[0]["operation"])
	require.Equal(t, "messages", slow[0]["table"])
	require.Equal(t, "sqlite", slow[0]["engine"])
	require.Contains(t, slow[0], "duration")
}

func TestStoreQueueGauges(t *testing.T) {
	for _, c := range engineCases() {
		t.Run(c.engine.Name, func(t *testing.T) {
			o := newObserved(t, slog.LevelWarn, 0)
			r, _ := c.open(t, o.opts...)
			ctx := context.Background()
			now := time.Now()
			var recs []metastorage.MessageMetadata
			for i := range 30 {
				st := metastorage.QueueState(i % 3) // incoming, active, deferred
				md := metastorage.MessageMetadata{ID: "g" + string(rune('A'+i)), State: st,
					Created: now.Add(-time.Duration(i+1) * time.Minute), Updated: now}
				if st == metastorage.StateDeferred {
					md.NextRetry = now.Add(time.Duration(i%2*2-1) * time.Hour) // half due
				}
				recs = append(recs, md)
			}
			require.NoError(t, r.StoreMetaBatch(ctx, recs))
			stats, err := r.Stats(ctx)
			require.NoError(t, err)

			m := o.metrics(t)
			g, ok := m[telemetry.MetricMessages]
			require.True(t, ok, "no %s among %v", telemetry.MetricMessages, keys(m))
			counts := map[string]int64{}
			for _, p := range g.Data.(metricdata.Gauge[int64]).DataPoints {
				counts[attrs(p.Attributes)["retryspool.state"]] = p.Value
			}
			for _, s := range stats {
				require.Equal(t, s.Count, counts[s.State.String()], s.State.String())
			}
			ages := map[string]float64{}
			for _, p := range m[telemetry.MetricOldestAge].Data.(metricdata.Gauge[float64]).DataPoints {
				ages[attrs(p.Attributes)["retryspool.state"]] = p.Value
			}
			// The oldest incoming message (i = 27) was created 28 minutes ago.
			require.InDelta(t, time.Since(stats[metastorage.StateIncoming].Oldest).Seconds(), ages["incoming"], 30)
			require.Zero(t, ages["hold"])
			due := m[telemetry.MetricDue].Data.(metricdata.Gauge[int64]).DataPoints
			require.Len(t, due, 1)
			dueNow, err := r.DueMessages(ctx, time.Now(), 1000)
			require.NoError(t, err)
			require.EqualValues(t, len(dueNow), due[0].Value)
			require.EqualValues(t, 5, due[0].Value)

			// Close unregisters the gauges.
			require.NoError(t, r.Close())
			m = o.metrics(t)
			if g, ok := m[telemetry.MetricMessages]; ok {
				require.Empty(t, g.Data.(metricdata.Gauge[int64]).DataPoints)
			}
		})
	}
}

// With nothing set, a store's calls allocate what they allocated without
// telemetry: the nil *T adds nothing (see telemetry_test.go); this checks
// that an SDK meter and tracer add a bounded number per call.
func TestStoreCallAllocations(t *testing.T) {
	ctx := context.Background()
	measure := func(opts ...sqlitemeta.Option) float64 {
		r, _ := engineCases()[0].open(t, opts...)
		defer r.Close()
		require.NoError(t, r.StoreMeta(ctx, "a", metastorage.MessageMetadata{ID: "a", Created: time.Now()}))
		return testing.AllocsPerRun(200, func() {
			if _, err := r.GetMeta(ctx, "a"); err != nil {
				t.Fatal(err)
			}
		})
	}
	off := measure()
	o := newObserved(t, slog.LevelInfo, 0)
	on := measure(o.opts...)
	t.Logf("allocations per GetMeta: %.0f with nothing set, %.0f with an SDK meter, tracer and logger", off, on)
	require.Less(t, on-off, 40.0)
}
