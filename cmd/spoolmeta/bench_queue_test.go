package main

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// TestBenchQueue runs the real queue on this store and on RetrySpool's
// filesystem metadata backend and checks that each handled every message
// exactly once, by the handler's counts and by what each store holds
// afterwards.
func TestBenchQueue(t *testing.T) {
	t.Parallel()
	const n = 120
	var out struct {
		Queue   bool `json:"queue"`
		Results []struct {
			Op             string  `json:"op"`
			Ops            int     `json:"ops"`
			OpsPerSec      float64 `json:"ops_per_sec"`
			P50ns          int64   `json:"p50_ns"`
			FloorOpsPerSec float64 `json:"floor_ops_per_sec"`
			Ratio          float64 `json:"ratio"`
			Baseline       string  `json:"baseline"`
			Queue          *struct {
				Enqueued     int   `json:"enqueued"`
				Handled      int   `json:"handled"`
				HandledTwice int   `json:"handled_twice"`
				Left         int64 `json:"left"`
			} `json:"queue"`
		} `json:"results"`
	}
	okJSON(t, &out, "bench", "--queue", "--messages", "120", "--workers", "3")
	require.True(t, out.Queue)
	byOp := map[string]int{}
	for i, r := range out.Results {
		byOp[r.Op] = i
	}
	require.Contains(t, byOp, "enqueue")
	require.Contains(t, byOp, "queue-e2e")
	require.Contains(t, byOp, "queue-e2e-fs")
	for _, op := range []string{"queue-e2e", "queue-e2e-fs"} {
		r := out.Results[byOp[op]]
		require.Equal(t, n, r.Ops, op)
		require.Positive(t, r.OpsPerSec, op)
		require.Positive(t, r.P50ns, op)
		require.NotNil(t, r.Queue, op)
		require.Equal(t, n, r.Queue.Enqueued, op)
		require.Equal(t, n, r.Queue.Handled, op)
		require.Zero(t, r.Queue.HandledTwice, op)
		require.Zero(t, r.Queue.Left, op)
	}
	store, fs := out.Results[byOp["queue-e2e"]], out.Results[byOp["queue-e2e-fs"]]
	require.Equal(t, "queue-e2e-fs", store.Baseline)
	require.Equal(t, fs.OpsPerSec, store.FloorOpsPerSec)
	require.InDelta(t, store.OpsPerSec/fs.OpsPerSec, store.Ratio, 1e-9)
	require.Zero(t, fs.FloorOpsPerSec)

	// --queue-only leaves out the phases; the text names both backends
	// and counts what each handled.
	text := ok(t, "bench", "--queue-only", "--messages", "30", "--workers", "2")
	require.NotContains(t, text, "\nenqueue ")
	require.Regexp(t, `\nqueue-e2e +30 +\d+ .* \d+\.\d\dx\n`, text)
	require.Regexp(t, `\nqueue-e2e-fs +30 +\d+ .* - +-\n`, text)
	require.Regexp(t, `\nqueue-e2e +30 +30 +0 +0 `, text)
	require.Regexp(t, `\nqueue-e2e-fs +30 +30 +0 +0 `, text)
	require.Contains(t, text, "queue-e2e-fs, the same queue on RetrySpool's filesystem")
}
