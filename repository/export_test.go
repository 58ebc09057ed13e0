package repository

import (
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
