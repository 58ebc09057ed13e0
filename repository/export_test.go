package repository

import (
	"context"
	"testing"
	"time"
)

// SetSettleTimeout shortens how long a write waits to learn its outcome,
// for the length of a test.
func SetSettleTimeout(tb testing.TB, d time.Duration) {
	old := settleTimeout
	settleTimeout = d
	tb.Cleanup(func() { settleTimeout = old })
}

// PruneFence prunes the write fence now.
func (r *Repository) PruneFence(ctx context.Context) error { return r.pruneFence(ctx) }

// Stamp returns a write's stamp as if it had been made at t.
func Stamp(t time.Time) int64 { return stampBefore(t) | 1 }
