package systemtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"gorm.io/gorm"
	"schneider.vip/retryspool"
	datafs "schneider.vip/retryspool/storage/data/filesystem"
	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/testdb"
)

// These tests run the real RetrySpool queue with filesystem data storage and
// this metadata backend, as applications do, on every engine.

// e2eTimeout bounds every wait for the queue. It is a deadline against a
// hang, not a speed requirement.
const (
	e2eTimeout = 30 * time.Second
	e2eTick    = 10 * time.Millisecond
)

// e2eOutcomeHeader tells the test handler what to do with a message.
const e2eOutcomeHeader = "x-test-outcome"

const (
	e2eOK          = "ok"           // deliver
	e2eRetryOnce   = "retry-once"   // fail temporarily once, then deliver
	e2eRetryAlways = "retry-always" // always fail temporarily
	e2eFail        = "fail"         // fail permanently
)

const (
	e2eTemporary = "451 4.2.1 mailbox busy, try again later"
	e2ePermanent = "550 5.1.1 no such user"
)

// e2eEngines runs fn as a parallel subtest on SQLite and, when their DSNs
// are set, on PostgreSQL and MariaDB/MySQL; otherwise those subtests are
// skipped with the reason.
func e2eEngines(t *testing.T, fn func(t *testing.T, e testdb.Engine)) {
	t.Helper()
	for _, e := range testdb.Engines() {
		t.Run(e.Name, func(t *testing.T) {
			if e.Skip != "" {
				t.Skip(e.Skip)
			}
			t.Parallel()
			fn(t, e)
		})
	}
}

// e2eStore is the metadata database of one test: the backend options a
// queue uses, an inspector (a second backend on the same database) that
// reads what the queue stored, and an audit table that a transition hook of
// the queue's backend fills inside each state change's transaction.
type e2eStore struct {
	opts    []sqlitemeta.Option
	inspect *sqlitemeta.Repository
	dataDir string
	audit   string
}

// e2eAuditRow is one committed state change, written by a transition hook
// through the change's transaction.
type e2eAuditRow struct {
	Seq       uint64 `gorm:"column:seq;primaryKey;autoIncrement"`
	MessageID string `gorm:"column:message_id;size:255;not null"`
	FromState int    `gorm:"column:from_state;not null"`
	ToState   int    `gorm:"column:to_state;not null"`
	Created   bool   `gorm:"column:created;not null"`
}

func newE2EStore(t *testing.T, e testdb.Engine) *e2eStore {
	t.Helper()
	ctx := context.Background()
	s := &e2eStore{dataDir: t.TempDir(), audit: "e2e_audit"}
	var server *gorm.DB
	if e.Name == "sqlite" {
		s.opts = []sqlitemeta.Option{sqlitemeta.WithDatabasePath(testdb.SQLitePath(t))}
	} else {
		server = e.Open(t)
		table := e.Table(t, server)
		s.opts = []sqlitemeta.Option{sqlitemeta.WithDB(server), sqlitemeta.WithTableName(table)}
		s.audit = table + "_audit"
	}
	inspect, err := sqlitemeta.NewFactory(s.opts...).Open(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, inspect.Close()) })
	s.inspect = inspect
	createAuditTable(t, inspect, server, s.audit)
	return s
}

// createAuditTable creates an e2eAuditRow table beside r's tables, in a
// write transaction of r, and drops it at the end of the test when it lives
// on a server (a SQLite file goes with its temporary directory).
func createAuditTable(t *testing.T, r *sqlitemeta.Repository, server *gorm.DB, name string) {
	t.Helper()
	require.NoError(t, r.Transaction(context.Background(), func(tx *gorm.DB) error {
		return tx.Table(name).AutoMigrate(&e2eAuditRow{})
	}))
	if server != nil {
		t.Cleanup(func() { require.NoError(t, server.Migrator().DropTable(name)) })
	}
}

// auditHook records a state change in the change's own transaction, so the
// audit holds exactly the committed changes, even when a transaction is
// rolled back or run again.
func (s *e2eStore) auditHook(_ context.Context, tr sqlitemeta.Transition) error {
	return tr.Tx.Table(s.audit).Create(&e2eAuditRow{
		MessageID: tr.MessageID, FromState: int(tr.From), ToState: int(tr.To), Created: tr.Created,
	}).Error
}

// history returns the committed state changes of id, oldest first, as
// "created:incoming" or "incoming->active".
func (s *e2eStore) history(t *testing.T, id string) []string {
	t.Helper()
	var rows []e2eAuditRow
	require.NoError(t, s.inspect.DB().Table(s.audit).Where("message_id = ?", id).Order("seq").Find(&rows).Error)
	out := make([]string, 0, len(rows))
	for _, r := range rows {
		from, to := metastorage.QueueState(r.FromState), metastorage.QueueState(r.ToState)
		if r.Created {
			out = append(out, "created:"+to.String())
		} else {
			out = append(out, from.String()+"->"+to.String())
		}
	}
	return out
}

// newQueue builds a queue on the store. Every queue's backend carries the
// audit hook, then extra hooks.
func (s *e2eStore) newQueue(t *testing.T, hooks []sqlitemeta.TransitionHook, opts ...retryspool.Option) retryspool.Queue {
	t.Helper()
	mopts := append(append([]sqlitemeta.Option(nil), s.opts...), sqlitemeta.WithTransitionHook(s.auditHook))
	for _, h := range hooks {
		mopts = append(mopts, sqlitemeta.WithTransitionHook(h))
	}
	base := []retryspool.Option{
		retryspool.WithDataStorage(datafs.NewFactory(s.dataDir)),
		retryspool.WithMetaStorage(sqlitemeta.NewFactory(mopts...)),
		retryspool.WithProcessInterval(time.Second),
	}
	q := retryspool.New(append(base, opts...)...)
	t.Cleanup(func() { require.NoError(t, q.Close()) })
	return q
}

// counts reads the six per-state counts through the inspector.
func (s *e2eStore) counts(t *testing.T) map[metastorage.QueueState]int64 {
	t.Helper()
	out := map[metastorage.QueueState]int64{}
	for st := metastorage.StateIncoming; st <= metastorage.StateArchived; st++ {
		n, err := s.inspect.StateCount(context.Background(), st)
		require.NoError(t, err)
		out[st] = n
	}
	return out
}

// count reads one state's count, or -1 on error; for conditions polled
// outside the test goroutine.
func (s *e2eStore) count(state metastorage.QueueState) int64 {
	n, err := s.inspect.StateCount(context.Background(), state)
	if err != nil {
		return -1
	}
	return n
}

func e2eCounts(incoming, active, deferred, hold, bounce, archived int64) map[metastorage.QueueState]int64 {
	return map[metastorage.QueueState]int64{
		metastorage.StateIncoming: incoming, metastorage.StateActive: active,
		metastorage.StateDeferred: deferred, metastorage.StateHold: hold,
		metastorage.StateBounce: bounce, metastorage.StateArchived: archived,
	}
}

// gone reports whether id has no metadata left.
func (s *e2eStore) gone(id string) bool {
	_, err := s.inspect.GetMeta(context.Background(), id)
	return errors.Is(err, metastorage.ErrMessageNotFound)
}

// inState reports whether id is stored in state.
func (s *e2eStore) inState(id string, state metastorage.QueueState) bool {
	md, err := s.inspect.GetMeta(context.Background(), id)
	return err == nil && md.State == state
}

// e2eDeliveryError carries the message ID to the retry policy.
type e2eDeliveryError struct {
	id, text string
}

func (e *e2eDeliveryError) Error() string { return e.text }

// e2ePolicy retries after a fixed delay, up to the message's MaxAttempts,
// and remembers the NextRetry it gave each message.
type e2ePolicy struct {
	delay time.Duration
	mu    sync.Mutex
	next  map[string][]time.Time
}

func newE2EPolicy(delay time.Duration) *e2ePolicy {
	return &e2ePolicy{delay: delay, next: map[string][]time.Time{}}
}

func (p *e2ePolicy) NextRetry(_ int, err error) time.Time {
	at := time.Now().Add(p.delay)
	var de *e2eDeliveryError
	if errors.As(err, &de) {
		p.mu.Lock()
		p.next[de.id] = append(p.next[de.id], at)
		p.mu.Unlock()
	}
	return at
}

func (p *e2ePolicy) ShouldRetry(attempts, maxAttempts int, err error) bool {
	return attempts < maxAttempts && !retryspool.IsPermanent(err)
}

func (p *e2ePolicy) nextRetries(id string) []time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]time.Time(nil), p.next[id]...)
}

// e2eCall is what one handler call saw.
type e2eCall struct {
	at       time.Time
	metadata retryspool.MessageMetadata
	body     string
}

// e2eHandler delivers, defers or fails messages as their outcome header
// says, and records every call. It notices a message handled twice at once,
// by any queue that shares it.
type e2eHandler struct {
	name string
	// together, when set, holds each call until two calls run at once,
	// which proves that several workers process messages concurrently.
	together bool
	// crash ends the worker goroutine inside the handler, as when the
	// process dies while delivering: the queue does nothing after it.
	crash bool
	// ignoreOutcome makes every call succeed, as a bounce handler that
	// sends its notice does.
	ignoreOutcome bool

	mu        sync.Mutex
	calls     map[string][]e2eCall
	delivered map[string]int
	inflight  map[string]int
	overlaps  []string
	running   int
	met       chan struct{}
	metOnce   sync.Once
	notMet    bool
}

func newE2EHandler(name string) *e2eHandler {
	return &e2eHandler{
		name:      name,
		calls:     map[string][]e2eCall{},
		delivered: map[string]int{},
		inflight:  map[string]int{},
		met:       make(chan struct{}),
	}
}

func (h *e2eHandler) Name() string                     { return h.name }
func (h *e2eHandler) CanHandle(map[string]string) bool { return true }

func (h *e2eHandler) Handle(_ context.Context, msg retryspool.Message, data retryspool.MessageReader) error {
	body, readErr := io.ReadAll(data)
	now := time.Now()

	h.mu.Lock()
	h.inflight[msg.ID]++
	if h.inflight[msg.ID] > 1 {
		h.overlaps = append(h.overlaps, msg.ID)
	}
	h.running++
	if h.running >= 2 {
		h.metOnce.Do(func() { close(h.met) })
	}
	h.calls[msg.ID] = append(h.calls[msg.ID], e2eCall{at: now, metadata: msg.Metadata, body: string(body)})
	attempt := len(h.calls[msg.ID])
	h.mu.Unlock()

	if h.crash {
		runtime.Goexit()
	}
	if h.together {
		select {
		case <-h.met:
		case <-time.After(e2eTimeout):
			h.mu.Lock()
			h.notMet = true
			h.mu.Unlock()
		}
	}

	h.mu.Lock()
	defer h.mu.Unlock()
	h.inflight[msg.ID]--
	h.running--
	if readErr != nil {
		return retryspool.NewRetryableError(&e2eDeliveryError{id: msg.ID, text: "read body: " + readErr.Error()})
	}
	outcome := msg.Metadata.Headers[e2eOutcomeHeader]
	if h.ignoreOutcome {
		outcome = e2eOK
	}
	switch outcome {
	case e2eRetryOnce:
		if attempt == 1 {
			return retryspool.NewRetryableError(&e2eDeliveryError{id: msg.ID, text: e2eTemporary})
		}
	case e2eRetryAlways:
		return retryspool.NewRetryableError(&e2eDeliveryError{id: msg.ID, text: e2eTemporary})
	case e2eFail:
		return retryspool.NewPermanentError(errors.New(e2ePermanent))
	}
	h.delivered[msg.ID]++
	return nil
}

func (h *e2eHandler) callsOf(id string) []e2eCall {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]e2eCall(nil), h.calls[id]...)
}

func (h *e2eHandler) deliveredOf(id string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.delivered[id]
}

func (h *e2eHandler) totalCalls() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, c := range h.calls {
		n += len(c)
	}
	return n
}

// requireSound fails on a message handled twice at once or a concurrency
// barrier that was never met.
func (h *e2eHandler) requireSound(t *testing.T) {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	require.Empty(t, h.overlaps, "messages handled by two workers at once")
	require.False(t, h.notMet, "two handler calls never ran at the same time")
}

// enqueue adds a message with the given outcome and returns its ID.
func e2eEnqueue(t *testing.T, q retryspool.Queue, outcome, body string) string {
	t.Helper()
	id, err := q.Enqueue(context.Background(), map[string]string{e2eOutcomeHeader: outcome, "to": "user@example.com"}, strings.NewReader(body))
	require.NoError(t, err)
	return id
}

// e2eDeferredGate is a transition hook that stops the given message's move
// from Deferred to Active inside its transaction until released, so that a
// test can read the message while it is still deferred and due.
type e2eDeferredGate struct {
	id      string
	reached chan time.Time
	release chan struct{}
	once    sync.Once
}

func newE2EDeferredGate(id string) *e2eDeferredGate {
	return &e2eDeferredGate{id: id, reached: make(chan time.Time, 1), release: make(chan struct{})}
}

func (g *e2eDeferredGate) hook(_ context.Context, tr sqlitemeta.Transition) error {
	if tr.From != metastorage.StateDeferred || tr.To != metastorage.StateActive || tr.MessageID != g.id {
		return nil
	}
	g.once.Do(func() { g.reached <- time.Now() })
	select {
	case <-g.release:
		return nil
	case <-time.After(e2eTimeout):
		return errors.New("deferred gate never released")
	}
}

func TestE2EDeliverRetryBounce(t *testing.T) {
	t.Parallel()
	e2eEngines(t, func(t *testing.T, e testdb.Engine) {
		ctx := context.Background()
		s := newE2EStore(t, e)
		h := newE2EHandler("deliver")
		policy := newE2EPolicy(150 * time.Millisecond)
		// The gate must know the ID before the message can be deferred,
		// so that message is enqueued with a chosen ID.
		retryOnce := "retry-once-" + testdb.UniqueName("m")
		gate := newE2EDeferredGate(retryOnce)
		q := s.newQueue(t, []sqlitemeta.TransitionHook{gate.hook},
			retryspool.WithActiveHandler(h),
			retryspool.WithRetryPolicy(policy),
			retryspool.WithMaxAttempts(2),
			retryspool.WithMaxConcurrency(3),
		)
		require.NoError(t, q.Start(ctx))

		var okIDs []string
		bodies := map[string]string{}
		for i := range 4 {
			id := e2eEnqueue(t, q, e2eOK, fmt.Sprintf("hello %d", i))
			okIDs = append(okIDs, id)
			bodies[id] = fmt.Sprintf("hello %d", i)
		}
		_, err := q.Enqueue(retryspool.ContextWithMessageID(ctx, retryOnce),
			map[string]string{e2eOutcomeHeader: e2eRetryOnce}, strings.NewReader("retry me"))
		require.NoError(t, err)
		failed := e2eEnqueue(t, q, e2eFail, "bounce me")
		exhausted := e2eEnqueue(t, q, e2eRetryAlways, "give up on me")

		// The retried message, read while still deferred at the moment
		// the queue claims it again.
		var claimedAt time.Time
		select {
		case claimedAt = <-gate.reached:
		case <-time.After(e2eTimeout):
			t.Fatal("the deferred message was never claimed for its retry")
		}
		md, err := s.inspect.GetMeta(ctx, retryOnce)
		require.NoError(t, err)
		require.Equal(t, metastorage.StateDeferred, md.State)
		require.Equal(t, 1, md.Attempts)
		require.Equal(t, 2, md.MaxAttempts)
		require.Equal(t, e2eTemporary, md.LastError)
		next := policy.nextRetries(retryOnce)
		require.Len(t, next, 1)
		require.True(t, md.NextRetry.Equal(next[0]), "stored NextRetry %v, policy gave %v", md.NextRetry, next[0])
		require.False(t, claimedAt.Before(md.NextRetry), "claimed for retry at %v, before NextRetry %v", claimedAt, md.NextRetry)
		list, err := s.inspect.ListMessages(ctx, metastorage.StateDeferred, metastorage.MessageListOptions{})
		require.NoError(t, err)
		require.Contains(t, list.MessageIDs, retryOnce)
		close(gate.release)

		require.Eventually(t, func() bool {
			for _, id := range append(okIDs, retryOnce) {
				if !s.gone(id) {
					return false
				}
			}
			return s.inState(failed, metastorage.StateBounce) && s.inState(exhausted, metastorage.StateBounce)
		}, e2eTimeout, e2eTick)
		h.requireSound(t)

		for _, id := range okIDs {
			require.Equal(t, 1, h.deliveredOf(id), id)
			calls := h.callsOf(id)
			require.Len(t, calls, 1, id)
			require.Equal(t, bodies[id], calls[0].body)
			require.Equal(t, []string{"created:incoming", "incoming->active"}, s.history(t, id))
		}

		calls := h.callsOf(retryOnce)
		require.Len(t, calls, 2)
		require.Equal(t, 1, h.deliveredOf(retryOnce))
		require.Equal(t, 1, calls[1].metadata.Attempts)
		require.Equal(t, e2eTemporary, calls[1].metadata.LastError)
		require.False(t, calls[1].at.Before(calls[1].metadata.NextRetry), "retried before NextRetry")
		require.Equal(t, "retry me", calls[1].body)
		require.Equal(t, []string{
			"created:incoming", "incoming->active", "active->deferred", "deferred->active",
		}, s.history(t, retryOnce))

		md, err = s.inspect.GetMeta(ctx, failed)
		require.NoError(t, err)
		require.Equal(t, 1, md.Attempts)
		require.Equal(t, e2ePermanent, md.LastError)
		require.Len(t, h.callsOf(failed), 1)
		require.Zero(t, h.deliveredOf(failed))
		require.Equal(t, []string{"created:incoming", "incoming->active", "active->bounce"}, s.history(t, failed))

		md, err = s.inspect.GetMeta(ctx, exhausted)
		require.NoError(t, err)
		require.Equal(t, 2, md.Attempts)
		require.Equal(t, e2eTemporary, md.LastError)
		calls = h.callsOf(exhausted)
		require.Len(t, calls, 2)
		require.False(t, calls[1].at.Before(calls[1].metadata.NextRetry), "retried before NextRetry")
		require.Equal(t, []string{
			"created:incoming", "incoming->active", "active->deferred", "deferred->active", "active->bounce",
		}, s.history(t, exhausted))

		require.Equal(t, e2eCounts(0, 0, 0, 0, 2, 0), s.counts(t))
		n, err := q.GetStateCount(ctx, retryspool.StateBounce)
		require.NoError(t, err)
		require.EqualValues(t, 2, n)
	})
}

func TestE2EArchive(t *testing.T) {
	t.Parallel()
	e2eEngines(t, func(t *testing.T, e testdb.Engine) {
		ctx := context.Background()
		s := newE2EStore(t, e)
		h := newE2EHandler("deliver")
		bounce := newE2EHandler("bounce")
		bounce.ignoreOutcome = true
		q := s.newQueue(t, nil,
			retryspool.WithActiveHandler(h),
			retryspool.WithBounceHandler(bounce),
			retryspool.WithArchiveSuccess(true),
			retryspool.WithArchiveBounce(true),
			retryspool.WithMaxConcurrency(2),
		)
		require.NoError(t, q.Start(ctx))
		ok1 := e2eEnqueue(t, q, e2eOK, "first")
		ok2 := e2eEnqueue(t, q, e2eOK, "second")
		failed := e2eEnqueue(t, q, e2eFail, "third")

		ids := []string{ok1, ok2, failed}
		require.Eventually(t, func() bool {
			for _, id := range ids {
				if !s.inState(id, metastorage.StateArchived) {
					return false
				}
			}
			return true
		}, e2eTimeout, e2eTick)
		h.requireSound(t)

		for id, body := range map[string]string{ok1: "first", ok2: "second"} {
			md, err := s.inspect.GetMeta(ctx, id)
			require.NoError(t, err)
			require.Zero(t, md.Attempts)
			require.Empty(t, md.LastError)
			require.Equal(t, 1, h.deliveredOf(id))
			require.Equal(t, []string{"created:incoming", "incoming->active", "active->archived"}, s.history(t, id))
			// Archived messages keep their data.
			_, r, err := q.GetMessage(ctx, id)
			require.NoError(t, err)
			got, err := io.ReadAll(r)
			require.NoError(t, r.Close())
			require.NoError(t, err)
			require.Equal(t, body, string(got))
		}

		// The bounced message went through the bounce handler, which
		// saw why it failed, before it was archived.
		md, err := s.inspect.GetMeta(ctx, failed)
		require.NoError(t, err)
		require.Equal(t, 1, md.Attempts)
		require.Equal(t, e2ePermanent, md.LastError)
		calls := bounce.callsOf(failed)
		require.Len(t, calls, 1)
		require.Equal(t, e2ePermanent, calls[0].metadata.LastError)
		require.Equal(t, "third", calls[0].body)
		require.Equal(t, []string{
			"created:incoming", "incoming->active", "active->bounce", "bounce->active", "active->archived",
		}, s.history(t, failed))

		require.Equal(t, e2eCounts(0, 0, 0, 0, 0, 3), s.counts(t))
		list, err := s.inspect.ListMessages(ctx, metastorage.StateArchived, metastorage.MessageListOptions{})
		require.NoError(t, err)
		require.Equal(t, 3, list.Total)
		require.ElementsMatch(t, ids, list.MessageIDs)
	})
}

// The queue archives a bounced message with WithArchiveBounce when the
// bounce handler runs on it through ProcessMessage. (Its scheduler moves a
// bounced message to Active before processing it, so there the message
// counts as a success and WithArchiveSuccess decides; TestE2EArchive covers
// that path.)
func TestE2EArchiveBounceProcessMessage(t *testing.T) {
	t.Parallel()
	e2eEngines(t, func(t *testing.T, e testdb.Engine) {
		ctx := context.Background()
		s := newE2EStore(t, e)
		h := newE2EHandler("deliver")
		bounce := newE2EHandler("bounce")
		bounce.ignoreOutcome = true
		q := s.newQueue(t, nil, retryspool.WithArchiveBounce(true))

		id := e2eEnqueue(t, q, e2eFail, "no such user")
		require.NoError(t, q.ProcessMessage(ctx, id, h))
		require.True(t, s.inState(id, metastorage.StateBounce))
		require.Equal(t, e2eCounts(0, 0, 0, 0, 1, 0), s.counts(t))

		require.NoError(t, q.ProcessMessage(ctx, id, bounce))
		md, err := s.inspect.GetMeta(ctx, id)
		require.NoError(t, err)
		require.Equal(t, metastorage.StateArchived, md.State)
		require.Equal(t, e2ePermanent, md.LastError)
		require.Len(t, bounce.callsOf(id), 1)
		require.Equal(t, []string{
			"created:incoming", "incoming->active", "active->bounce", "bounce->active", "active->archived",
		}, s.history(t, id))
		require.Equal(t, e2eCounts(0, 0, 0, 0, 0, 1), s.counts(t))
	})
}

func TestE2ERecoverAfterCrash(t *testing.T) {
	t.Parallel()
	e2eEngines(t, func(t *testing.T, e testdb.Engine) {
		ctx := context.Background()
		s := newE2EStore(t, e)

		// The first queue dies inside the handler of the two messages its
		// two workers take; the third, already claimed, waits in its work
		// queue. All three are left Active in the database.
		crashing := newE2EHandler("crashing")
		crashing.crash = true
		q1 := s.newQueue(t, nil, retryspool.WithActiveHandler(crashing), retryspool.WithMaxConcurrency(2))
		ids := []string{
			e2eEnqueue(t, q1, e2eOK, "one"),
			e2eEnqueue(t, q1, e2eOK, "two"),
			e2eEnqueue(t, q1, e2eOK, "three"),
		}
		require.NoError(t, q1.Start(ctx))
		require.Eventually(t, func() bool {
			return crashing.totalCalls() == 2 && s.count(metastorage.StateActive) == 3
		}, e2eTimeout, e2eTick)
		require.NoError(t, q1.Close())
		require.Equal(t, e2eCounts(0, 3, 0, 0, 0, 0), s.counts(t))

		// A new queue on the same storage recovers them on Start and
		// delivers each exactly once.
		h := newE2EHandler("deliver")
		q2 := s.newQueue(t, nil, retryspool.WithActiveHandler(h), retryspool.WithMaxConcurrency(2))
		require.NoError(t, q2.Start(ctx))
		require.Eventually(t, func() bool {
			for _, id := range ids {
				if !s.gone(id) {
					return false
				}
			}
			return true
		}, e2eTimeout, e2eTick)
		h.requireSound(t)
		for i, id := range ids {
			require.Equal(t, 1, h.deliveredOf(id), id)
			calls := h.callsOf(id)
			require.Len(t, calls, 1, id)
			require.Equal(t, []string{"one", "two", "three"}[i], calls[0].body)
			require.Equal(t, []string{
				"created:incoming", "incoming->active", "active->incoming", "incoming->active",
			}, s.history(t, id))
		}
		require.Equal(t, e2eCounts(0, 0, 0, 0, 0, 0), s.counts(t))
	})
}

func TestE2EConcurrentWorkersDeliverOnce(t *testing.T) {
	t.Parallel()
	e2eEngines(t, func(t *testing.T, e testdb.Engine) {
		ctx := context.Background()
		s := newE2EStore(t, e)
		// One handler shared by two queues on the same storage, as two
		// processes would be: it sees any message handled twice at once.
		h := newE2EHandler("deliver")
		h.together = true
		// Start moves every Active message back to Incoming: a queue
		// started while the other is delivering would take messages from
		// it. The messages here are all new, so both start without
		// recovery.
		opts := []retryspool.Option{
			retryspool.WithActiveHandler(h),
			retryspool.WithMaxConcurrency(3),
			retryspool.WithDisableRecovery(true),
		}
		qa := s.newQueue(t, nil, opts...)
		qb := s.newQueue(t, nil, opts...)

		const n = 40
		ids := make([]string, n)
		for i := range ids {
			ids[i] = e2eEnqueue(t, qa, e2eOK, fmt.Sprintf("message %d", i))
		}
		require.Equal(t, e2eCounts(n, 0, 0, 0, 0, 0), s.counts(t))
		require.NoError(t, qa.Start(ctx))
		require.NoError(t, qb.Start(ctx))

		require.Eventually(t, func() bool {
			return h.totalCalls() >= n && s.count(metastorage.StateIncoming) == 0 && s.count(metastorage.StateActive) == 0
		}, e2eTimeout, e2eTick)
		h.requireSound(t)
		for i, id := range ids {
			require.True(t, s.gone(id), id)
			require.Equal(t, 1, h.deliveredOf(id), id)
			calls := h.callsOf(id)
			require.Len(t, calls, 1, id)
			require.Equal(t, fmt.Sprintf("message %d", i), calls[0].body)
			require.Equal(t, []string{"created:incoming", "incoming->active"}, s.history(t, id))
		}
		require.Equal(t, n, h.totalCalls())
		require.Equal(t, e2eCounts(0, 0, 0, 0, 0, 0), s.counts(t))
	})
}
