package workload_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/bench/workload"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/testdb"
)

// tracker records the progress calls of a run.
type tracker struct {
	mu          sync.Mutex
	calls       int
	last, total int
	backwards   bool
}

func (tr *tracker) progress(done, total int) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if done < tr.last {
		tr.backwards = true
	}
	tr.calls++
	tr.last, tr.total = done, total
}

// checkReport checks that every phase ran the right number of operations,
// at non-zero rates on both sides, with consistent ratios and latencies.
func checkReport(t *testing.T, rep *workload.Report, n int, queue bool) {
	t.Helper()
	due := (n + 1) / 2
	want := []struct {
		op  string
		ops int
	}{
		{"enqueue", n}, {"claim", 2 * n}, {"defer", n}, {"retry-due", due},
		{"archive", due}, {"delete", n - due},
	}
	if queue {
		want = append(want, struct {
			op  string
			ops int
		}{"queue-e2e", n}, struct {
			op  string
			ops int
		}{"queue-e2e-fs", n})
	}
	require.Len(t, rep.Results, len(want))
	for i, w := range want {
		r := rep.Results[i]
		require.Equal(t, w.op, r.Op)
		require.Equal(t, w.ops, r.Ops, r.Op)
		require.Positive(t, r.OpsPerSec, r.Op)
		require.Positive(t, r.P50, r.Op)
		require.LessOrEqual(t, r.P50, r.P99, r.Op)
		switch r.Op {
		case "queue-e2e", "queue-e2e-fs":
			checkQueue(t, r, n)
			if r.Op == "queue-e2e-fs" {
				require.Zero(t, r.FloorOpsPerSec)
				require.Zero(t, r.Ratio)
				require.Empty(t, r.Baseline)
				continue
			}
			// The filesystem backend is queue-e2e's floor.
			require.Equal(t, "queue-e2e-fs", r.Baseline)
			require.Equal(t, rep.Results[i+1].OpsPerSec, r.FloorOpsPerSec)
		default:
			require.Nil(t, r.Queue, r.Op)
			require.Empty(t, r.Baseline, r.Op)
		}
		require.Positive(t, r.FloorOpsPerSec, r.Op)
		require.InDelta(t, r.OpsPerSec/r.FloorOpsPerSec, r.Ratio, 1e-9, r.Op)
	}

	var buf bytes.Buffer
	require.NoError(t, rep.WriteTable(&buf))
	tables := strings.Split(strings.TrimSpace(buf.String()), "\n\n")
	lines := strings.Split(tables[0], "\n")
	require.Len(t, lines, 1+len(want))
	require.True(t, strings.HasPrefix(lines[0], "op "))
	for i, w := range want {
		require.True(t, strings.HasPrefix(lines[i+1], w.op+" "), lines[i+1])
	}
	if !queue {
		require.Len(t, tables, 1)
		return
	}
	require.Len(t, tables, 2)
	lines = strings.Split(tables[1], "\n")
	require.Equal(t, []string{"queue", "enqueued", "handled", "twice", "left", "peak_rss"}, strings.Fields(lines[0]))
	require.Len(t, lines, 3)
	for i, op := range []string{"queue-e2e", "queue-e2e-fs"} {
		f := strings.Fields(lines[i+1])
		require.Equal(t, []string{op, strconv.Itoa(n), strconv.Itoa(n), "0", "0"}, f[:5], lines[i+1])
	}
}

// checkQueue checks that a queue run handled every message exactly once
// and left none in its metadata store.
func checkQueue(t *testing.T, r workload.Result, n int) {
	t.Helper()
	require.NotNil(t, r.Queue, r.Op)
	require.Equal(t, workload.QueueCheck{Enqueued: n, Handled: n, PeakRSS: r.Queue.PeakRSS}, *r.Queue, r.Op)
	if runtime.GOOS == "linux" {
		require.Greater(t, r.Queue.PeakRSS, int64(1<<20), r.Op)
	}
}

func TestRunSQLite(t *testing.T) {
	t.Parallel()
	const n = 200
	path := filepath.Join(t.TempDir(), "sub", "meta.db")
	tr := &tracker{}
	rep, err := workload.Run(context.Background(), workload.Config{
		Path: path, Messages: n, Workers: 4, Queue: true,
	}, tr.progress)
	require.NoError(t, err)
	checkReport(t, rep, n, true)

	require.Equal(t, "sqlite", rep.Config.Engine)
	require.Equal(t, "NORMAL", rep.Config.Synchronous)
	require.Equal(t, "wal", rep.Settings["journal_mode"])
	require.Equal(t, "1", rep.Settings["synchronous (writer)"]) // NORMAL
	require.Equal(t, "30000", rep.Settings["busy_timeout"])
	require.Contains(t, rep.Settings, "queue")
	for k, v := range rep.Settings {
		require.NotContains(t, v, "error", k)
	}

	require.False(t, tr.backwards)
	require.Positive(t, tr.calls)
	require.Equal(t, tr.total, tr.last)

	// The library's file stays, holding what the workload left: the
	// retried messages archived, nothing else. The temporary files
	// beside it are gone.
	entries, err := os.ReadDir(filepath.Dir(path))
	require.NoError(t, err)
	for _, e := range entries {
		require.True(t, strings.HasPrefix(e.Name(), "meta.db"), e.Name())
	}
	r, err := sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(path)).Open(context.Background())
	require.NoError(t, err)
	defer r.Close()
	for s := metastorage.StateIncoming; s <= metastorage.StateArchived; s++ {
		want := int64(0)
		if s == metastorage.StateArchived {
			want = (n + 1) / 2
		}
		require.Equal(t, want, r.GetStateCount(s), s.String())
	}

	// A second run on the same file counts from what is already there.
	rep, err = workload.Run(context.Background(), workload.Config{
		Path: path, Messages: 11, Workers: 3, Synchronous: "full",
	}, nil)
	require.NoError(t, err)
	checkReport(t, rep, 11, false)
	require.Equal(t, "2", rep.Settings["synchronous (writer)"]) // FULL
	require.Equal(t, int64((n+1)/2+6), r.GetStateCount(metastorage.StateArchived))
}

func TestRunServers(t *testing.T) {
	t.Parallel()
	for _, e := range testdb.Servers() {
		t.Run(e.Name, func(t *testing.T) {
			t.Parallel()
			if e.Skip != "" {
				t.Skip(e.Skip)
			}
			const n = 200
			rep, err := workload.Run(context.Background(), workload.Config{
				Engine: e.Name, DSN: e.DSN, Messages: n, Workers: 4, Queue: true,
			}, nil)
			require.NoError(t, err)
			checkReport(t, rep, n, true)
			require.Equal(t, e.Name, rep.Settings["engine"])
			for k, v := range rep.Settings {
				require.NotContains(t, v, "error", k)
			}
		})
	}
}

func TestRunRejectsBadConfig(t *testing.T) {
	t.Parallel()
	for name, cfg := range map[string]workload.Config{
		"engine":      {Engine: "oracle"},
		"no dsn":      {Engine: "postgres"},
		"sqlite dsn":  {DSN: "host=x"},
		"messages":    {Messages: -1},
		"workers":     {Workers: -2},
		"synchronous": {Synchronous: "sometimes"},
	} {
		_, err := workload.Run(context.Background(), cfg, nil)
		require.Error(t, err, name)
	}
}

func TestRunCancelled(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := workload.Run(ctx, workload.Config{Messages: 50}, nil)
	require.ErrorIs(t, err, context.Canceled)
}
