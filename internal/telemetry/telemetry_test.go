package telemetry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

var (
	errNotFound = errors.New("message not found")
	errBusy     = errors.New("database is locked")
	errBroken   = errors.New("disk I/O error")
)

func classify(err error) string {
	switch {
	case err == nil:
		return OutcomeOK
	case errors.Is(err, errNotFound):
		return OutcomeNotFound
	case errors.Is(err, errBusy):
		return OutcomeBusy
	}
	return OutcomeError
}

// rig is a T on an SDK meter, an in-memory span recorder and a JSON log.
type rig struct {
	t      *T
	reader *sdkmetric.ManualReader
	spans  *tracetest.SpanRecorder
	logs   *bytes.Buffer
}

func newRig(t *testing.T, slow time.Duration) *rig {
	t.Helper()
	r := &rig{reader: sdkmetric.NewManualReader(), spans: tracetest.NewSpanRecorder(), logs: &bytes.Buffer{}}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(r.reader))
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(r.spans))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()); _ = tp.Shutdown(context.Background()) })
	var err error
	r.t, err = New(Config{
		Logger:        slog.New(slog.NewJSONHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelInfo})),
		MeterProvider: mp, TracerProvider: tp, SlowThreshold: slow,
		Engine: "sqlite", Table: "messages", Outcome: classify,
	})
	require.NoError(t, err)
	require.NotNil(t, r.t)
	return r
}

func (r *rig) collect(t *testing.T) map[string]metricdata.Metrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(t, r.reader.Collect(context.Background(), &rm))
	out := map[string]metricdata.Metrics{}
	for _, sm := range rm.ScopeMetrics {
		require.Equal(t, ScopeName, sm.Scope.Name)
		for _, m := range sm.Metrics {
			out[m.Name] = m
		}
	}
	return out
}

// logLines decodes the JSON log lines.
func (r *rig) logLines(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(r.logs.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &m), line)
		out = append(out, m)
	}
	return out
}

func attrsOf(set attribute.Set) map[string]string {
	out := map[string]string{}
	for _, kv := range set.ToSlice() {
		out[string(kv.Key)] = kv.Value.Emit()
	}
	return out
}

func TestNothingSetIsNil(t *testing.T) {
	tel, err := New(Config{Engine: "sqlite", Table: "messages"})
	require.NoError(t, err)
	require.Nil(t, tel)
	// Every method works on the nil *T.
	ctx, call := tel.Start(context.Background(), "GetMeta", "a")
	require.NotNil(t, ctx)
	call.End(errBroken)
	tel.GroupCommit(3, time.Millisecond, nil)
	tel.BusyWait("StoreMeta", time.Millisecond, errBusy)
	tel.Retry("StoreMeta", 1, errBroken)
	tel.Checkpoint(true, 10, 5, nil)
	tel.Log(ctx, slog.LevelError, "x")
	unregister, err := tel.ObserveQueue(func(context.Context) (QueueSnapshot, error) { return QueueSnapshot{}, nil })
	require.NoError(t, err)
	require.NoError(t, unregister())
}

func TestNilAllocatesNothing(t *testing.T) {
	var tel *T
	ctx := context.Background()
	err := errBroken
	allocs := testing.AllocsPerRun(1000, func() {
		c, call := tel.Start(ctx, "MoveToState", "msg-1")
		_ = c
		call.End(err)
		tel.GroupCommit(8, time.Millisecond, nil)
		tel.BusyWait("StoreMeta", time.Millisecond, nil)
		tel.Retry("StoreMeta", 1, err)
		tel.Checkpoint(false, 10, 10, nil)
	})
	require.Zero(t, allocs)
}

// A logger alone at Info allocates nothing for a call that went well.
func TestLoggerOnlyQuietCallAllocatesNothing(t *testing.T) {
	tel, err := New(Config{Logger: slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil)), Engine: "sqlite", Table: "m"})
	require.NoError(t, err)
	ctx := context.Background()
	allocs := testing.AllocsPerRun(1000, func() {
		_, call := tel.Start(ctx, "GetMeta", "msg-1")
		call.End(nil)
	})
	require.Zero(t, allocs)
}

func TestCallMetrics(t *testing.T) {
	r := newRig(t, 0)
	ctx := context.Background()
	for range 3 {
		_, c := r.t.Start(ctx, "MoveToState", "a")
		c.End(nil)
	}
	_, c := r.t.Start(ctx, "GetMeta", "b")
	c.End(errNotFound)
	_, c = r.t.Start(ctx, "StoreMeta", "c")
	c.End(errBroken)

	m := r.collect(t)
	d, ok := m[MetricOperationDuration]
	require.True(t, ok, "no %s", MetricOperationDuration)
	require.Equal(t, "s", d.Unit)
	h, ok := d.Data.(metricdata.Histogram[float64])
	require.True(t, ok, "%T", d.Data)
	counts := map[string]uint64{}
	for _, p := range h.DataPoints {
		a := attrsOf(p.Attributes)
		require.Equal(t, "sqlite", a["db.system.name"])
		require.Equal(t, "messages", a["db.collection.name"])
		key := a["db.operation.name"] + "/" + a["retryspool.outcome"] + "/" + a["error.type"]
		counts[key] += p.Count
		require.GreaterOrEqual(t, p.Sum, 0.0)
	}
	require.Equal(t, map[string]uint64{
		"MoveToState/ok/":             3,
		"GetMeta/not_found/not_found": 1,
		"StoreMeta/error/error":       1,
	}, counts)
}

func TestCallSpans(t *testing.T) {
	r := newRig(t, 0)
	ctx, c := r.t.Start(context.Background(), "MoveToState", "msg-7")
	require.True(t, trace.SpanFromContext(ctx).SpanContext().IsValid(), "the context carries the span")
	c.End(nil)
	_, c = r.t.Start(context.Background(), "Stats", "")
	c.End(errBroken)

	spans := r.spans.Ended()
	require.Len(t, spans, 2)
	ok, failed := spans[0], spans[1]
	require.Equal(t, "MoveToState messages", ok.Name())
	require.Equal(t, trace.SpanKindClient, ok.SpanKind())
	a := attrsOf(attribute.NewSet(ok.Attributes()...))
	require.Equal(t, map[string]string{
		"db.system.name": "sqlite", "db.collection.name": "messages",
		"db.operation.name": "MoveToState", "retryspool.message.id": "msg-7",
	}, a)
	require.Equal(t, codes.Unset, ok.Status().Code)
	require.Empty(t, ok.Events())

	require.Equal(t, "Stats messages", failed.Name())
	fa := attrsOf(attribute.NewSet(failed.Attributes()...))
	require.NotContains(t, fa, "retryspool.message.id")
	require.Equal(t, "error", fa["error.type"])
	require.Equal(t, codes.Error, failed.Status().Code)
	require.Len(t, failed.Events(), 1)
	require.Equal(t, "exception", failed.Events()[0].Name)
}

func TestCallLogs(t *testing.T) {
	r := newRig(t, time.Nanosecond) // every call is slow
	ctx := context.Background()
	_, c := r.t.Start(ctx, "GetMeta", "gone")
	c.End(errNotFound) // Debug: not logged at Info... but slow: Warn
	_, c = r.t.Start(ctx, "StoreMeta", "x")
	c.End(errBroken)
	_, c = r.t.Start(ctx, "StoreMeta", "y")
	c.End(errBusy)
	lines := r.logLines(t)
	require.Len(t, lines, 3)
	require.Equal(t, "WARN", lines[0]["level"])
	require.Equal(t, "slow call", lines[0]["msg"])
	require.Equal(t, "GetMeta", lines[0]["operation"])
	require.Equal(t, "sqlite", lines[0]["engine"])
	require.Equal(t, "messages", lines[0]["table"])
	require.Equal(t, "gone", lines[0]["message_id"])
	require.Contains(t, lines[0], "duration")
	require.Equal(t, "message not found", lines[0]["error"])
	require.Equal(t, "ERROR", lines[1]["level"])
	require.Equal(t, "disk I/O error", lines[1]["error"])
	require.Equal(t, "WARN", lines[2]["level"])
	require.Equal(t, "busy", lines[2]["outcome"])
}

func TestQuietAtInfo(t *testing.T) {
	r := newRig(t, time.Hour)
	ctx := context.Background()
	for range 10 {
		_, c := r.t.Start(ctx, "MoveToState", "a")
		c.End(nil)
	}
	_, c := r.t.Start(ctx, "GetMeta", "a")
	c.End(errNotFound) // a normal answer, not a failure of the store
	r.t.GroupCommit(4, time.Millisecond, nil)
	r.t.BusyWait("StoreMeta", time.Millisecond, nil)
	r.t.Checkpoint(false, 100, 100, nil)
	r.t.Checkpoint(true, 100, 10, nil)
	require.Empty(t, r.logs.String())
}

func TestWriterAndCheckpointMetrics(t *testing.T) {
	r := newRig(t, 0)
	r.t.GroupCommit(1, time.Millisecond, nil)
	r.t.GroupCommit(40, 2*time.Millisecond, nil)
	r.t.GroupCommit(3, time.Millisecond, errBroken)
	r.t.BusyWait("StoreMeta", 5*time.Millisecond, nil)
	r.t.BusyWait("StoreMeta", time.Second, errBusy)
	r.t.Retry("ClaimMessages", 1, errors.New("deadlock detected"))
	r.t.Retry("ClaimMessages", 2, errors.New("deadlock detected"))
	r.t.Checkpoint(false, 120, 120, nil)
	r.t.Checkpoint(true, 15000, 30, nil)
	r.t.Checkpoint(false, 0, 0, errBroken)

	m := r.collect(t)
	size := m[MetricGroupCommitSize].Data.(metricdata.Histogram[int64])
	require.Len(t, size.DataPoints, 1)
	require.EqualValues(t, 3, size.DataPoints[0].Count)
	require.EqualValues(t, 44, size.DataPoints[0].Sum)

	gt := m[MetricGroupCommitTime].Data.(metricdata.Histogram[float64])
	byOutcome := map[string]uint64{}
	for _, p := range gt.DataPoints {
		byOutcome[attrsOf(p.Attributes)["retryspool.outcome"]] += p.Count
	}
	require.Equal(t, map[string]uint64{"ok": 2, "error": 1}, byOutcome)

	bw := m[MetricBusyWaits].Data.(metricdata.Histogram[float64])
	byOutcome = map[string]uint64{}
	for _, p := range bw.DataPoints {
		require.Equal(t, "StoreMeta", attrsOf(p.Attributes)["db.operation.name"])
		byOutcome[attrsOf(p.Attributes)["retryspool.outcome"]] += p.Count
	}
	require.Equal(t, map[string]uint64{"ok": 1, "busy": 1}, byOutcome)

	rt := m[MetricRetries].Data.(metricdata.Sum[int64])
	var retries int64
	for _, p := range rt.DataPoints {
		require.Equal(t, "ClaimMessages", attrsOf(p.Attributes)["db.operation.name"])
		retries += p.Value
	}
	require.EqualValues(t, 2, retries)

	ck := m[MetricCheckpoints].Data.(metricdata.Sum[int64])
	got := map[string]int64{}
	for _, p := range ck.DataPoints {
		got[attrsOf(p.Attributes)["retryspool.outcome"]] += p.Value
	}
	require.Equal(t, map[string]int64{"ok": 1, "busy": 1, "error": 1}, got)
	pages := m[MetricCheckpointPages].Data.(metricdata.Sum[int64])
	require.EqualValues(t, 150, pages.DataPoints[0].Value)
	wal := m[MetricWALPages].Data.(metricdata.Gauge[int64])
	require.EqualValues(t, 15000, wal.DataPoints[0].Value)

	lines := r.logLines(t)
	var msgs []string
	for _, l := range lines {
		msgs = append(msgs, l["level"].(string)+" "+l["msg"].(string))
	}
	require.Equal(t, []string{
		"ERROR group commit failed",
		"WARN gave up waiting for the database lock",
		"INFO transaction retried",
		"INFO transaction retried",
		"WARN checkpoint busy, WAL growing",
		"ERROR checkpoint failed",
	}, msgs)
}

func TestObserveQueue(t *testing.T) {
	r := newRig(t, 0)
	created := time.Now().Add(-90 * time.Second)
	calls := 0
	unregister, err := r.t.ObserveQueue(func(context.Context) (QueueSnapshot, error) {
		calls++
		return QueueSnapshot{States: []StateSnapshot{
			{State: "incoming", Count: 7, Oldest: created},
			{State: "active"},
		}, Due: 3}, nil
	})
	require.NoError(t, err)

	m := r.collect(t)
	require.Equal(t, 1, calls)
	msgs := m[MetricMessages].Data.(metricdata.Gauge[int64])
	byState := map[string]int64{}
	for _, p := range msgs.DataPoints {
		a := attrsOf(p.Attributes)
		require.Equal(t, "sqlite", a["db.system.name"])
		byState[a["retryspool.state"]] = p.Value
	}
	require.Equal(t, map[string]int64{"incoming": 7, "active": 0}, byState)
	ages := map[string]float64{}
	for _, p := range m[MetricOldestAge].Data.(metricdata.Gauge[float64]).DataPoints {
		ages[attrsOf(p.Attributes)["retryspool.state"]] = p.Value
	}
	require.GreaterOrEqual(t, ages["incoming"], 90.0)
	require.Less(t, ages["incoming"], 3600.0)
	require.Zero(t, ages["active"])
	require.EqualValues(t, 3, m[MetricDue].Data.(metricdata.Gauge[int64]).DataPoints[0].Value)

	require.NoError(t, unregister())
	require.NoError(t, unregister(), "twice is fine")
	m = r.collect(t)
	require.Equal(t, 1, calls, "unregistered: the snapshot is not read again")
	if g, ok := m[MetricMessages]; ok {
		require.Empty(t, g.Data.(metricdata.Gauge[int64]).DataPoints)
	}
}

func TestObserveQueueError(t *testing.T) {
	r := newRig(t, 0)
	_, err := r.t.ObserveQueue(func(context.Context) (QueueSnapshot, error) {
		return QueueSnapshot{}, errBroken
	})
	require.NoError(t, err)
	var rm metricdata.ResourceMetrics
	require.Error(t, r.reader.Collect(context.Background(), &rm))
	require.Contains(t, r.logs.String(), "queue gauges not read")
}

func TestLogAttachesEngineAndTable(t *testing.T) {
	r := newRig(t, 0)
	r.t.Log(context.Background(), slog.LevelInfo, "schema migrated", slog.Int("from", 1), slog.Int("to", 2))
	lines := r.logLines(t)
	require.Len(t, lines, 1)
	require.Equal(t, "schema migrated", lines[0]["msg"])
	require.Equal(t, "sqlite", lines[0]["engine"])
	require.Equal(t, "messages", lines[0]["table"])
	require.EqualValues(t, 2, lines[0]["to"])
}

func TestDefaultOutcome(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	tel, err := New(Config{MeterProvider: sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)), Engine: "postgresql", Table: "q"})
	require.NoError(t, err)
	_, c := tel.Start(context.Background(), "GetMeta", "x")
	c.End(errNotFound)
	var rm metricdata.ResourceMetrics
	require.NoError(t, reader.Collect(context.Background(), &rm))
	p := rm.ScopeMetrics[0].Metrics[0].Data.(metricdata.Histogram[float64]).DataPoints[0]
	require.Equal(t, "error", attrsOf(p.Attributes)["retryspool.outcome"])
	require.Equal(t, "postgresql", attrsOf(p.Attributes)["db.system.name"])
}

func BenchmarkCall(b *testing.B) {
	ctx := context.Background()
	run := func(b *testing.B, tel *T) {
		b.ReportAllocs()
		for b.Loop() {
			_, c := tel.Start(ctx, "MoveToState", "msg-1")
			c.End(nil)
		}
	}
	b.Run("nil", func(b *testing.B) { run(b, nil) })
	b.Run("sdk", func(b *testing.B) {
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
		tp := sdktrace.NewTracerProvider() // sampled spans, no exporter
		tel, err := New(Config{MeterProvider: mp, TracerProvider: tp, Engine: "sqlite", Table: "messages"})
		require.NoError(b, err)
		run(b, tel)
	})
}

func BenchmarkCallParts(b *testing.B) {
	ctx := context.Background()
	run := func(b *testing.B, tel *T) {
		b.ReportAllocs()
		for b.Loop() {
			_, c := tel.Start(ctx, "MoveToState", "msg-1")
			c.End(nil)
		}
	}
	b.Run("meter", func(b *testing.B) {
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
		tel, _ := New(Config{MeterProvider: mp, Engine: "sqlite", Table: "messages"})
		run(b, tel)
	})
	b.Run("tracer", func(b *testing.B) {
		tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(tracetest.NewNoopExporter()))
		tel, _ := New(Config{TracerProvider: tp, Engine: "sqlite", Table: "messages"})
		run(b, tel)
	})
}
