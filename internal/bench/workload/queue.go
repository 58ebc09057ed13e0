package workload

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"schneider.vip/retryspool"
	datafs "schneider.vip/retryspool/storage/data/filesystem"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
)

// queueStall is how long the queue may go without handling a message
// before the run fails.
const queueStall = 60 * time.Second

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

func queueSettings(cfg Config) map[string]string {
	return map[string]string{
		"queue": fmt.Sprintf("retryspool v0.0.16, filesystem data storage, %d workers, immediate trigger", cfg.Workers),
	}
}

// runQueue sends cfg.Messages messages through the real queue on a fresh
// database (SQLite file) or table (server engines) and measures from the
// first enqueue until the last message is handled and its metadata gone.
func runQueue(ctx context.Context, cfg Config, e *env, p *progress) (phaseResult, error) {
	var res phaseResult
	dir, err := os.MkdirTemp(e.tmpDir(), ".retryspool-queue-*")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)

	opts := []sqlitemeta.Option{sqlitemeta.WithDatabasePath(filepath.Join(dir, "meta.db")), sqlitemeta.WithSynchronous(cfg.Synchronous)}
	if e.db != nil {
		opts = []sqlitemeta.Option{sqlitemeta.WithDB(e.db), sqlitemeta.WithTableName(e.table(ctx))}
	}
	h := &queueHandler{handled: make(map[string]time.Time, cfg.Messages), wake: make(chan struct{}, 1)}
	q, err := newQueue(dir, sqlitemeta.NewFactory(opts...), h, cfg.Workers)
	if err != nil {
		return res, err
	}
	defer q.Close()
	if err := q.Start(ctx); err != nil {
		return res, err
	}

	body := bytes.Repeat([]byte("x"), 1024)
	prefix := randomHex(6)
	enqueued := make([]time.Time, cfg.Messages)
	start := time.Now()
	_, err = forEach(ctx, cfg.Workers, cfg.Messages, nil, func(ctx context.Context, i int) error {
		id := prefix + "-" + strconv.Itoa(i)
		enqueued[i] = time.Now()
		_, err := q.Enqueue(retryspool.ContextWithMessageID(ctx, id),
			map[string]string{"to": "rcpt@example.net", "subject": "workload"}, bytes.NewReader(body))
		return err
	})
	if err != nil {
		return res, fmt.Errorf("enqueue: %w", err)
	}

	// Wait for every message to be handled and its metadata deleted.
	last, lastChange := int64(-1), time.Now()
	for {
		n := h.count.Load()
		if n != last {
			p.add(int(n - max(last, 0)))
			last, lastChange = n, time.Now()
		}
		if n >= int64(cfg.Messages) {
			left, err := queueLeft(ctx, q)
			if err != nil {
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
	if len(h.twice) > 0 {
		return res, fmt.Errorf("%d messages handled twice, e.g. %s", len(h.twice), h.twice[0])
	}
	if len(h.handled) != cfg.Messages {
		return res, fmt.Errorf("%d messages handled, want %d", len(h.handled), cfg.Messages)
	}
	for i := range enqueued {
		done, ok := h.handled[prefix+"-"+strconv.Itoa(i)]
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

func newQueue(dir string, meta *sqlitemeta.Factory, h retryspool.Handler, workers int) (q retryspool.Queue, err error) {
	// retryspool.New panics when a storage cannot be opened.
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("open queue: %v", r)
		}
	}()
	return retryspool.New(
		retryspool.WithDataStorage(datafs.NewFactory(filepath.Join(dir, "data"))),
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
