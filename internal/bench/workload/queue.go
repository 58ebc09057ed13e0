package workload

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"schneider.vip/retryspool"
	datafs "schneider.vip/retryspool/storage/data/filesystem"
	metastorage "schneider.vip/retryspool/storage/meta"
	metafs "schneider.vip/retryspool/storage/meta/filesystem"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
)

// queueStall is how long the queue may go without handling a message
// before the run fails.
const queueStall = 60 * time.Second

// The results of the queue runs: on this store, and on RetrySpool's
// filesystem metadata backend, the one users switch from.
const (
	QueueOp   = "queue-e2e"
	QueueFSOp = "queue-e2e-fs"
)

// QueueCheck is what a queue run counted, from the handler and from the
// metadata store: every message handled exactly once and none left.
type QueueCheck struct {
	Enqueued int   // messages the queue accepted
	Handled  int   // distinct messages the handler completed
	Twice    int   // completions of a message already handled
	Left     int64 // messages the metadata store held at the end, in any state
	PeakRSS  int64 // the process's peak resident memory during the run, in bytes; 0 where unknown
}

// queueHandler succeeds for every message and records when each was
// handled.
type queueHandler struct {
	mu      sync.Mutex
	handled map[string]time.Time
	twice   []string
	count   atomic.Int64
	wake    chan struct{}
}

func (h *queueHandler) Handle(_ context.Context, msg retryspool.Message, data retryspool.MessageReader) error {
	if _, err := io.Copy(io.Discard, data); err != nil {
		return err
	}
	now := time.Now()
	h.mu.Lock()
	if _, dup := h.handled[msg.ID]; dup {
		h.twice = append(h.twice, msg.ID)
	} else {
		h.handled[msg.ID] = now
	}
	h.mu.Unlock()
	h.count.Add(1)
	select {
	case h.wake <- struct{}{}:
	default:
	}
	return nil
}

func (h *queueHandler) Name() string                     { return "workload" }
func (h *queueHandler) CanHandle(map[string]string) bool { return true }

// queueBackend is a metadata backend the queue runs on.
type queueBackend struct {
	op   string
	meta func(ctx context.Context, dir string) metastorage.Factory
}

// queueBackends are this store (a fresh SQLite file, or a fresh table on
// a server engine) and RetrySpool's filesystem metadata backend, with
// fsync unless cfg.Synchronous is OFF.
func queueBackends(cfg Config, e *env) []queueBackend {
	return []queueBackend{
		{QueueOp, func(ctx context.Context, dir string) metastorage.Factory {
			if e.db != nil {
				return sqlitemeta.NewFactory(sqlitemeta.WithDB(e.db), sqlitemeta.WithTableName(e.table(ctx)))
			}
			return sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(filepath.Join(dir, "meta.db")),
				sqlitemeta.WithSynchronous(cfg.Synchronous))
		}},
		{QueueFSOp, func(_ context.Context, dir string) metastorage.Factory {
			return metafs.NewFactory(filepath.Join(dir, "meta")).WithDisableSync(cfg.Synchronous == "OFF")
		}},
	}
}

func queueSettings(cfg Config) map[string]string {
	fsync := "fsync of every file and directory written"
	if cfg.Synchronous == "OFF" {
		fsync = "no fsync (synchronous OFF)"
	}
	return map[string]string{
		"queue":        fmt.Sprintf("retryspool v0.0.16, filesystem data storage, %d workers, immediate trigger", cfg.Workers),
		"queue-e2e-fs": "the same queue on retryspool's filesystem metadata backend v0.0.6, " + fsync,
	}
}

// runQueues runs the queue on each backend in turn and returns the
// results: queue-e2e with queue-e2e-fs as its floor, then queue-e2e-fs.
func runQueues(ctx context.Context, cfg Config, e *env, p *progress) ([]Result, error) {
	var runs []phaseResult
	for _, b := range queueBackends(cfg, e) {
		r, err := runQueue(ctx, cfg, e, p, b)
		if err != nil {
			return nil, fmt.Errorf("workload: %s: %w", b.op, err)
		}
		runs = append(runs, r)
	}
	store, fs := result(QueueOp, runs[0], &runs[1]), result(QueueFSOp, runs[1], nil)
	store.Baseline = QueueFSOp
	store.Queue, fs.Queue = runs[0].queue, runs[1].queue
	return []Result{store, fs}, nil
}

// runQueue sends cfg.Messages messages through the real queue on a fresh
// metadata backend and measures from the first enqueue until the last
// message is handled and its metadata gone.
func runQueue(ctx context.Context, cfg Config, e *env, p *progress, b queueBackend) (phaseResult, error) {
	var res phaseResult
	dir, err := os.MkdirTemp(e.tmpDir(), ".retryspool-queue-*")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)

	h := &queueHandler{handled: make(map[string]time.Time, cfg.Messages), wake: make(chan struct{}, 1)}
	ids := queueIDs(cfg.Messages)
	enqueued := make([]time.Time, cfg.Messages)
	body := bytes.Repeat([]byte("x"), 1024)
	peak := startPeakRSS()

	q, err := newQueue(dir, b.meta(ctx, dir), h, cfg.Workers)
	if err != nil {
		return res, err
	}
	defer q.Close()
	if err := q.Start(ctx); err != nil {
		return res, err
	}

	start := time.Now()
	accepted, err := forEach(ctx, cfg.Workers, cfg.Messages, nil, func(ctx context.Context, i int) error {
		enqueued[i] = time.Now()
		_, err := q.Enqueue(retryspool.ContextWithMessageID(ctx, ids[i]),
			map[string]string{"to": "rcpt@example.net", "subject": "workload"}, bytes.NewReader(body))
		return err
	})
	if err != nil {
		return res, fmt.Errorf("enqueue: %w", err)
	}

	// Wait for every message to be handled and its metadata deleted.
	last, lastChange := int64(-1), time.Now()
	var left int64
	for {
		n := h.count.Load()
		if n != last {
			p.add(int(n - max(last, 0)))
			last, lastChange = n, time.Now()
		}
		if n >= int64(cfg.Messages) {
			if left, err = queueLeft(ctx, q); err != nil {
				return res, err
			}
			if left == 0 {
				break
			}
		}
		if time.Since(lastChange) > queueStall {
			return res, fmt.Errorf("no progress for %s: %d of %d messages handled", queueStall, n, cfg.Messages)
		}
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-h.wake:
		case <-time.After(20 * time.Millisecond):
		}
	}
	res.elapsed = time.Since(start)

	h.mu.Lock()
	defer h.mu.Unlock()
	res.queue = &QueueCheck{Enqueued: accepted.ops, Handled: len(h.handled), Twice: len(h.twice), Left: left, PeakRSS: peak()}
	if len(h.twice) > 0 {
		return res, fmt.Errorf("%d messages handled twice, e.g. %s", len(h.twice), h.twice[0])
	}
	if len(h.handled) != cfg.Messages {
		return res, fmt.Errorf("%d messages handled, want %d", len(h.handled), cfg.Messages)
	}
	for i := range enqueued {
		done, ok := h.handled[ids[i]]
		if !ok {
			return res, fmt.Errorf("message %d was not handled", i)
		}
		res.lat = append(res.lat, done.Sub(enqueued[i]))
	}
	res.ops = cfg.Messages
	if err := q.Stop(ctx); err != nil {
		return res, err
	}
	return res, nil
}

// queueIDs returns n message IDs shaped like the ones RetrySpool makes
// itself (random UUIDs). Its filesystem data storage shards the data files
// by the first two characters of the ID and lists a shard's directory on
// every delete, so IDs sharing a prefix would put every message into one
// directory and make each delete cost what the queue holds.
func queueIDs(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		h := randomHex(16)
		ids[i] = strings.Join([]string{h[:8], h[8:12], h[12:16], h[16:20], h[20:]}, "-")
	}
	return ids
}

// keepShards makes the directory of every shard of RetrySpool's
// filesystem data storage for IDs starting with two hex digits, each
// holding a file of its own. That storage removes a shard's directory when
// its last data file goes, and a store into the same shard that has just
// made the directory then fails to create its file (no such file or
// directory); with the directories kept, the queue runs measure the
// metadata backends and not that race.
func keepShards(data string) error {
	const hex = "0123456789abcdef"
	for _, a := range hex {
		for _, b := range hex {
			shard := filepath.Join(data, string(a)+string(b))
			if err := os.MkdirAll(shard, 0o750); err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(shard, ".keep"), nil, 0o600); err != nil {
				return err
			}
		}
	}
	return nil
}

func newQueue(dir string, meta metastorage.Factory, h retryspool.Handler, workers int) (q retryspool.Queue, err error) {
	data := filepath.Join(dir, "data")
	if err := keepShards(data); err != nil {
		return nil, fmt.Errorf("open queue: %w", err)
	}
	// retryspool.New panics when a storage cannot be opened.
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("open queue: %v", r)
		}
	}()
	return retryspool.New(
		retryspool.WithDataStorage(datafs.NewFactory(data)),
		retryspool.WithMetaStorage(meta),
		retryspool.WithActiveHandler(h),
		retryspool.WithMaxConcurrency(workers),
		retryspool.WithConcurrentProcessors(workers),
		retryspool.WithMaxActiveMessages(max(50, 8*workers)),
		retryspool.WithMaxIncomingBatch(max(100, 8*workers)),
		retryspool.WithMessageBatchSize(100),
		retryspool.WithProcessInterval(time.Second),
	), nil
}

// queueLeft counts the messages still in the queue, in any state.
func queueLeft(ctx context.Context, q retryspool.Queue) (int64, error) {
	var left int64
	for _, s := range []retryspool.QueueState{
		retryspool.StateIncoming, retryspool.StateActive, retryspool.StateDeferred,
		retryspool.StateHold, retryspool.StateBounce, retryspool.StateArchived,
	} {
		n, err := q.GetStateCount(ctx, s)
		if err != nil {
			return 0, errors.Join(fmt.Errorf("count %v", s), err)
		}
		left += n
	}
	return left, nil
}

// tmpDir is where the run's temporary files go.
func (e *env) tmpDir() string {
	if e.tmp != "" {
		return e.tmp
	}
	return os.TempDir()
}
