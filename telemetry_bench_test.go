package sqlite_test

import (
	"context"
	"path/filepath"
	"sync/atomic"
	"testing"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
)

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
