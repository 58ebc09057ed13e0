package repository_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"gorm.io/gorm"
	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/fixture"
)

// errHookVeto is what the refusing hooks of these tests return.
var errHookVeto = errors.New("refused by the test hook")

// hookEnv is one test's database, with the table name known before the
// backend is opened so that hooks can query it, and an audit table beside
// it.
type hookEnv struct {
	*dbEnv
	audit string
}

func newHookEnv(t *testing.T, e *dbEnv) *hookEnv {
	t.Helper()
	e.withTable("hooked")
	return &hookEnv{dbEnv: e, audit: e.table + "_audit"}
}

// open opens a backend on the environment's table with the given options
// and creates the audit table.
func (h *hookEnv) open(t *testing.T, opts ...sqlitemeta.Option) *sqlitemeta.Repository {
	t.Helper()
	r := h.dbEnv.open(t, opts...)
	createAuditTable(t, r, h.server, h.audit)
	return r
}

// auditRow is one committed state change, written by a transition hook
// through the change's transaction.
type auditRow struct {
	Seq       uint64 `gorm:"column:seq;primaryKey;autoIncrement"`
	MessageID string `gorm:"column:message_id;size:255;not null"`
	FromState int    `gorm:"column:from_state;not null"`
	ToState   int    `gorm:"column:to_state;not null"`
	Created   bool   `gorm:"column:created;not null"`
}

// createAuditTable creates an auditRow table beside r's tables, in a write
// transaction of r, and drops it at the end of the test when it lives on a
// server (a SQLite file goes with its temporary directory).
func createAuditTable(t *testing.T, r *sqlitemeta.Repository, server *gorm.DB, name string) {
	t.Helper()
	require.NoError(t, r.Transaction(context.Background(), func(tx *gorm.DB) error {
		return tx.Table(name).AutoMigrate(&auditRow{})
	}))
	if server != nil {
		t.Cleanup(func() { require.NoError(t, server.Migrator().DropTable(name)) })
	}
}

// stateCounts are the six per-state counts, in the order of the states.
func stateCounts(incoming, active, deferred, hold, bounce, archived int64) map[metastorage.QueueState]int64 {
	return map[metastorage.QueueState]int64{
		metastorage.StateIncoming: incoming, metastorage.StateActive: active,
		metastorage.StateDeferred: deferred, metastorage.StateHold: hold,
		metastorage.StateBounce: bounce, metastorage.StateArchived: archived,
	}
}

// auditHook writes the transition into the audit table through the
// change's transaction.
func (h *hookEnv) auditHook(_ context.Context, tr sqlitemeta.Transition) error {
	return tr.Tx.Table(h.audit).Create(&auditRow{
		MessageID: tr.MessageID, FromState: int(tr.From), ToState: int(tr.To), Created: tr.Created,
	}).Error
}

// audited returns the message IDs in the audit table, in order.
func (h *hookEnv) audited(t *testing.T, r *sqlitemeta.Repository) []string {
	t.Helper()
	var rows []auditRow
	require.NoError(t, r.DB().Table(h.audit).Order("seq").Find(&rows).Error)
	out := make([]string, 0, len(rows))
	for _, row := range rows {
		out = append(out, fmt.Sprintf("%s %s->%s", row.MessageID,
			metastorage.QueueState(row.FromState), metastorage.QueueState(row.ToState)))
	}
	return out
}

// seenTransition is a Transition as a hook saw it, with the state its
// transaction showed for the message, read through Tx.
type seenTransition struct {
	ID       string
	From, To metastorage.QueueState
	Created  bool
	Stored   metastorage.QueueState
}

// hookLog records every transition it is called for.
type hookLog struct {
	table string
	mu    sync.Mutex
	seen  []seenTransition
	err   error
}

func (l *hookLog) hook(ctx context.Context, tr sqlitemeta.Transition) error {
	var stored int
	err := tr.Tx.WithContext(ctx).Raw("SELECT state FROM "+l.table+" WHERE id = ?", tr.MessageID).Row().Scan(&stored)
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil && l.err == nil {
		l.err = fmt.Errorf("read through Tx: %w", err)
	}
	l.seen = append(l.seen, seenTransition{
		ID: tr.MessageID, From: tr.From, To: tr.To, Created: tr.Created, Stored: metastorage.QueueState(stored),
	})
	return nil
}

func (l *hookLog) take(t *testing.T) []seenTransition {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	require.NoError(t, l.err)
	out := l.seen
	l.seen = nil
	return out
}

// hookMeta is a record in state with distinct times.
func hookMeta(id string, state metastorage.QueueState, created time.Time) metastorage.MessageMetadata {
	return metastorage.MessageMetadata{
		ID: id, State: state, MaxAttempts: 5, Created: created, Updated: created,
		NextRetry: created, Headers: map[string]string{"to": "user@example.com"},
	}
}

func hookRequireState(t *testing.T, r *sqlitemeta.Repository, id string, want metastorage.QueueState) metastorage.MessageMetadata {
	t.Helper()
	md, err := r.GetMeta(context.Background(), id)
	require.NoError(t, err)
	require.Equal(t, want, md.State, "state of %s", id)
	return md
}

func hookRequireCounts(t *testing.T, r *sqlitemeta.Repository, want map[metastorage.QueueState]int64) {
	t.Helper()
	for st := metastorage.StateIncoming; st <= metastorage.StateArchived; st++ {
		n, err := r.StateCount(context.Background(), st)
		require.NoError(t, err)
		require.Equal(t, want[st], n, "count of %s", st)
	}
}

func TestHookSeesEveryStateChange(t *testing.T) {
	t.Parallel()
	forColumns(t, true, func(t *testing.T, c column, newEnv func(t *testing.T) *dbEnv) {
		ctx := context.Background()
		env := newHookEnv(t, newEnv(t))
		log := &hookLog{table: env.table}
		r := env.open(t, sqlitemeta.WithTransitionHook(log.hook))
		base := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)

		md := hookMeta("m1", metastorage.StateIncoming, base)
		require.NoError(t, r.StoreMeta(ctx, "m1", md))
		require.Equal(t, []seenTransition{{ID: "m1", From: metastorage.StateIncoming, To: metastorage.StateIncoming, Created: true, Stored: metastorage.StateIncoming}}, log.take(t))

		// Rewriting a record without changing its state is no transition.
		md.Attempts = 1
		require.NoError(t, r.StoreMeta(ctx, "m1", md))
		require.Empty(t, log.take(t))

		require.NoError(t, r.MoveToState(ctx, "m1", metastorage.StateIncoming, metastorage.StateActive))
		require.Equal(t, []seenTransition{{ID: "m1", From: metastorage.StateIncoming, To: metastorage.StateActive, Stored: metastorage.StateActive}}, log.take(t))

		// A move to the same state and a lost compare-and-swap change nothing.
		require.NoError(t, r.MoveToState(ctx, "m1", metastorage.StateActive, metastorage.StateActive))
		require.Equal(t, metastorage.ErrStateConflict, r.MoveToState(ctx, "m1", metastorage.StateIncoming, metastorage.StateDeferred))
		require.Equal(t, metastorage.ErrMessageNotFound, r.MoveToState(ctx, "nope", metastorage.StateIncoming, metastorage.StateActive))
		require.Empty(t, log.take(t))

		md.State, md.Attempts = metastorage.StateActive, 2
		require.NoError(t, r.UpdateMeta(ctx, "m1", md))
		require.Empty(t, log.take(t))

		md.State, md.LastError = metastorage.StateDeferred, "451 try later"
		require.NoError(t, r.UpdateMeta(ctx, "m1", md))
		require.Equal(t, []seenTransition{{ID: "m1", From: metastorage.StateActive, To: metastorage.StateDeferred, Stored: metastorage.StateDeferred}}, log.take(t))

		md.State = metastorage.StateHold
		require.NoError(t, r.StoreMeta(ctx, "m1", md))
		require.Equal(t, []seenTransition{{ID: "m1", From: metastorage.StateDeferred, To: metastorage.StateHold, Stored: metastorage.StateHold}}, log.take(t))

		require.NoError(t, r.DeleteMeta(ctx, "m1"))
		require.Empty(t, log.take(t))
	})
}

func TestHookFiresPerMessageForBatchesAndClaims(t *testing.T) {
	t.Parallel()
	forColumns(t, true, func(t *testing.T, c column, newEnv func(t *testing.T) *dbEnv) {
		ctx := context.Background()
		env := newHookEnv(t, newEnv(t))
		log := &hookLog{table: env.table}
		r := env.open(t, sqlitemeta.WithTransitionHook(log.hook))
		base := time.Now().Add(-time.Hour).UTC()

		var batch []metastorage.MessageMetadata
		for i := range 3 {
			batch = append(batch, hookMeta(fmt.Sprintf("in-%d", i), metastorage.StateIncoming, base.Add(time.Duration(i)*time.Second)))
		}
		require.NoError(t, r.StoreMetaBatch(ctx, batch))
		var want []seenTransition
		for _, md := range batch {
			want = append(want, seenTransition{ID: md.ID, From: metastorage.StateIncoming, To: metastorage.StateIncoming, Created: true, Stored: metastorage.StateIncoming})
		}
		require.ElementsMatch(t, want, log.take(t))

		claimed, err := r.ClaimMessages(ctx, metastorage.StateIncoming, metastorage.StateActive, 2)
		require.NoError(t, err)
		require.Len(t, claimed, 2)
		require.Equal(t, []seenTransition{
			{ID: "in-0", From: metastorage.StateIncoming, To: metastorage.StateActive, Stored: metastorage.StateActive},
			{ID: "in-1", From: metastorage.StateIncoming, To: metastorage.StateActive, Stored: metastorage.StateActive},
		}, log.take(t))

		due1 := hookMeta("due-1", metastorage.StateDeferred, base)
		due1.NextRetry = time.Now().Add(-2 * time.Minute)
		due2 := hookMeta("due-2", metastorage.StateDeferred, base)
		due2.NextRetry = time.Now().Add(-time.Minute)
		later := hookMeta("later", metastorage.StateDeferred, base)
		later.NextRetry = time.Now().Add(time.Hour)
		require.NoError(t, r.StoreMetaBatch(ctx, []metastorage.MessageMetadata{due1, due2, later}))
		require.Len(t, log.take(t), 3)

		claimed, err = r.ClaimDue(ctx, time.Now(), 10)
		require.NoError(t, err)
		require.Len(t, claimed, 2)
		require.Equal(t, []seenTransition{
			{ID: "due-1", From: metastorage.StateDeferred, To: metastorage.StateActive, Stored: metastorage.StateActive},
			{ID: "due-2", From: metastorage.StateDeferred, To: metastorage.StateActive, Stored: metastorage.StateActive},
		}, log.take(t))
		hookRequireCounts(t, r, stateCounts(1, 4, 1, 0, 0, 0))
	})
}

func TestHookWriteCommitsWithTheChange(t *testing.T) {
	t.Parallel()
	forColumns(t, true, func(t *testing.T, c column, newEnv func(t *testing.T) *dbEnv) {
		ctx := context.Background()
		env := newHookEnv(t, newEnv(t))
		r := env.open(t, sqlitemeta.WithTransitionHook(env.auditHook))
		now := time.Now()

		require.NoError(t, r.StoreMeta(ctx, "a", hookMeta("a", metastorage.StateIncoming, now)))
		require.NoError(t, r.MoveToState(ctx, "a", metastorage.StateIncoming, metastorage.StateActive))
		md := hookRequireState(t, r, "a", metastorage.StateActive)
		md.State = metastorage.StateArchived
		require.NoError(t, r.UpdateMeta(ctx, "a", md))
		require.Equal(t, []string{"a incoming->incoming", "a incoming->active", "a active->archived"}, env.audited(t, r))
	})
}

func TestHookErrorRollsBackTheChange(t *testing.T) {
	t.Parallel()
	forColumns(t, true, func(t *testing.T, c column, newEnv func(t *testing.T) *dbEnv) {
		ctx := context.Background()
		env := newHookEnv(t, newEnv(t))
		// The hook writes its audit row first, then refuses every move to
		// Bounce and the creation of IDs starting with "veto": its own
		// write must vanish with the change.
		veto := func(ctx context.Context, tr sqlitemeta.Transition) error {
			if err := env.auditHook(ctx, tr); err != nil {
				return err
			}
			if tr.To == metastorage.StateBounce || (tr.Created && strings.HasPrefix(tr.MessageID, "veto")) {
				return errHookVeto
			}
			return nil
		}
		r := env.open(t, sqlitemeta.WithTransitionHook(veto))
		now := time.Now()

		require.NoError(t, r.StoreMeta(ctx, "m", hookMeta("m", metastorage.StateIncoming, now)))
		require.NoError(t, r.MoveToState(ctx, "m", metastorage.StateIncoming, metastorage.StateActive))
		want := []string{"m incoming->incoming", "m incoming->active"}
		require.Equal(t, want, env.audited(t, r))
		counts := stateCounts(0, 1, 0, 0, 0, 0)

		err := r.MoveToState(ctx, "m", metastorage.StateActive, metastorage.StateBounce)
		require.ErrorIs(t, err, errHookVeto)
		require.NotErrorIs(t, err, metastorage.ErrStateConflict)

		md := hookMeta("m", metastorage.StateBounce, now)
		md.Attempts, md.LastError = 5, "550 no such user"
		require.ErrorIs(t, r.UpdateMeta(ctx, "m", md), errHookVeto)
		require.ErrorIs(t, r.StoreMeta(ctx, "m", md), errHookVeto)
		got := hookRequireState(t, r, "m", metastorage.StateActive)
		require.Zero(t, got.Attempts)
		require.Empty(t, got.LastError)

		require.ErrorIs(t, r.StoreMeta(ctx, "veto-new", hookMeta("veto-new", metastorage.StateIncoming, now)), errHookVeto)
		_, err = r.GetMeta(ctx, "veto-new")
		require.ErrorIs(t, err, metastorage.ErrMessageNotFound)

		// One refused message rolls back a whole claim.
		require.NoError(t, r.StoreMetaBatch(ctx, []metastorage.MessageMetadata{
			hookMeta("c1", metastorage.StateDeferred, now), hookMeta("c2", metastorage.StateDeferred, now.Add(time.Second)),
		}))
		want = append(want, "c1 deferred->deferred", "c2 deferred->deferred")
		counts[metastorage.StateDeferred] = 2
		_, err = r.ClaimMessages(ctx, metastorage.StateDeferred, metastorage.StateBounce, 10)
		require.ErrorIs(t, err, errHookVeto)
		hookRequireState(t, r, "c1", metastorage.StateDeferred)
		hookRequireState(t, r, "c2", metastorage.StateDeferred)

		hookRequireCounts(t, r, counts)
		require.Equal(t, want, env.audited(t, r))

		// The backend stays usable after refusals.
		require.NoError(t, r.MoveToState(ctx, "m", metastorage.StateActive, metastorage.StateArchived))
		hookRequireState(t, r, "m", metastorage.StateArchived)
	})
}

// Under SQLite's group commit many concurrent writes share one transaction,
// each under its own savepoint: a refused write must fail alone, with its
// hook's write, and every other write must commit. The server engines run
// the same test with a transaction per write.
func TestHookErrorsUnderConcurrentMoves(t *testing.T) {
	t.Parallel()
	forColumns(t, true, func(t *testing.T, c column, newEnv func(t *testing.T) *dbEnv) {
		ctx := context.Background()
		env := newHookEnv(t, newEnv(t))
		const n = 120
		ids := make([]string, n)
		refused := map[string]bool{}
		for i := range ids {
			ids[i] = fmt.Sprintf("msg-%03d", i)
			refused[ids[i]] = i%3 == 1
		}
		// The first move waits in its hook until every mover has called
		// MoveToState, so that the others queue up behind it and share
		// the next transactions.
		var (
			entered   atomic.Int32
			firstOnce sync.Once
			txMu      sync.Mutex
			txs       = map[gorm.ConnPool]int{}
		)
		veto := func(ctx context.Context, tr sqlitemeta.Transition) error {
			if tr.Created {
				return env.auditHook(ctx, tr)
			}
			firstOnce.Do(func() {
				for entered.Load() < n {
					runtime.Gosched()
				}
				time.Sleep(20 * time.Millisecond)
			})
			txMu.Lock()
			txs[tr.Tx.Statement.ConnPool]++
			txMu.Unlock()
			if err := env.auditHook(ctx, tr); err != nil {
				return err
			}
			if refused[tr.MessageID] {
				return errHookVeto
			}
			return nil
		}
		r := env.open(t, sqlitemeta.WithTransitionHook(veto))
		now := time.Now()
		var batch []metastorage.MessageMetadata
		for i, id := range ids {
			batch = append(batch, hookMeta(id, metastorage.StateIncoming, now.Add(time.Duration(i))))
		}
		require.NoError(t, r.StoreMetaBatch(ctx, batch))

		errs := make([]error, n)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for i, id := range ids {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				entered.Add(1)
				errs[i] = r.MoveToState(ctx, id, metastorage.StateIncoming, metastorage.StateActive)
			}()
		}
		close(start)
		wg.Wait()

		var wantAudit []string
		moved := int64(0)
		for i, id := range ids {
			if refused[id] {
				require.ErrorIs(t, errs[i], errHookVeto, id)
				hookRequireState(t, r, id, metastorage.StateIncoming)
				continue
			}
			require.NoError(t, errs[i], id)
			hookRequireState(t, r, id, metastorage.StateActive)
			wantAudit = append(wantAudit, id+" incoming->active")
			moved++
		}
		hookRequireCounts(t, r, stateCounts(n-moved, moved, 0, 0, 0, 0))

		var got []string
		for _, line := range env.audited(t, r) {
			if strings.HasSuffix(line, "incoming->active") {
				got = append(got, line)
			}
		}
		require.ElementsMatch(t, wantAudit, got)

		if c.groupCommit {
			// Group commit did share transactions between moves.
			require.Less(t, len(txs), n, "every move ran in a transaction of its own")
		}
	})
}

func TestStrictTransitionsEnforced(t *testing.T) {
	t.Parallel()
	forColumns(t, true, func(t *testing.T, c column, newEnv func(t *testing.T) *dbEnv) {
		ctx := context.Background()
		env := newHookEnv(t, newEnv(t))
		r := env.open(t, sqlitemeta.WithStrictTransitions())
		now := time.Now()

		counts := map[metastorage.QueueState]int64{}
		for _, from := range fixture.States {
			for _, to := range fixture.States {
				if from == to {
					continue
				}
				id := from.String() + "-" + to.String()
				// Creating a message in any state is not a move.
				require.NoError(t, r.StoreMeta(ctx, id, hookMeta(id, from, now)), id)
				err := r.MoveToState(ctx, id, from, to)
				if fixture.DiagramAllows(from, to) {
					require.NoError(t, err, id)
					hookRequireState(t, r, id, to)
					counts[to]++
					continue
				}
				require.ErrorIs(t, err, metastorage.ErrInvalidState, id)
				hookRequireState(t, r, id, from)
				counts[from]++
			}
		}
		hookRequireCounts(t, r, counts)

		// UpdateMeta and StoreMeta that change state follow the same rule.
		md := hookMeta("u", metastorage.StateIncoming, now)
		require.NoError(t, r.StoreMeta(ctx, "u", md))
		md.State, md.Attempts = metastorage.StateArchived, 3
		require.ErrorIs(t, r.UpdateMeta(ctx, "u", md), metastorage.ErrInvalidState)
		require.ErrorIs(t, r.StoreMeta(ctx, "u", md), metastorage.ErrInvalidState)
		got := hookRequireState(t, r, "u", metastorage.StateIncoming)
		require.Zero(t, got.Attempts)
		md.State = metastorage.StateActive
		require.NoError(t, r.UpdateMeta(ctx, "u", md))
		hookRequireState(t, r, "u", metastorage.StateActive)
	})
}

func TestStrictTransitionsOffByDefault(t *testing.T) {
	t.Parallel()
	forColumns(t, true, func(t *testing.T, c column, newEnv func(t *testing.T) *dbEnv) {
		ctx := context.Background()
		env := newHookEnv(t, newEnv(t))
		r := env.open(t)
		require.NoError(t, r.StoreMeta(ctx, "m", hookMeta("m", metastorage.StateIncoming, time.Now())))
		require.False(t, sqlitemeta.AllowedTransition(metastorage.StateIncoming, metastorage.StateArchived))
		require.NoError(t, r.MoveToState(ctx, "m", metastorage.StateIncoming, metastorage.StateArchived))
		require.NoError(t, r.MoveToState(ctx, "m", metastorage.StateArchived, metastorage.StateDeferred))
		hookRequireState(t, r, "m", metastorage.StateDeferred)
	})
}
