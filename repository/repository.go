// Package repository maps the GORM model to RetrySpool's metastorage
// contract. It is the only package that queries the database, and it serves
// SQLite, PostgreSQL and MySQL/MariaDB with the same code: what differs
// between engines lives in dialect.go.
package repository

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"gorm.io/gorm"
	metastorage "schneider.vip/retryspool/storage/meta"

	"schneider.vip/retryspool/storage/meta/sqlite/model"
)

// Compile-time checks that the repository is a complete backend.
var (
	_ metastorage.Backend             = (*Repository)(nil)
	_ metastorage.StateCounterBackend = (*Repository)(nil)
)

const (
	// DefaultListLimit is the page size ListMessages uses when
	// MessageListOptions.Limit is 0.
	DefaultListLimit = 1000
	// MaxListLimit is the largest page ListMessages returns.
	MaxListLimit = 100000
	// DefaultBatchSize is the iterator's batch size when the caller asks
	// for 0 or less.
	DefaultBatchSize = 100
	// MaxBatchSize caps the iterator's batch, which bounds its memory.
	MaxBatchSize = 10000
	// maxTableName leaves room for the derived index and trigger names
	// within PostgreSQL's 63-byte identifier limit.
	maxTableName = 40
	// maxTxAttempts bounds the reruns of a transaction that a server
	// engine aborted for a deadlock.
	maxTxAttempts = 5
)

var tableNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// CheckTableName accepts names of letters, digits and underscores that do
// not start with a digit, at most 40 bytes, so that a table name never
// carries SQL.
func CheckTableName(name string) error {
	if len(name) == 0 || len(name) > maxTableName || !tableNameRE.MatchString(name) {
		return fmt.Errorf("%w: table name %q must match %s and be at most %d bytes",
			ErrInvalidInput, name, tableNameRE, maxTableName)
	}
	return nil
}

// Config configures a Repository.
type Config struct {
	// TableName is the message table; DefaultTableName when empty. The
	// counters live in <TableName>_counts.
	TableName string
	// Writer, when set, is a *gorm.DB limited to one connection through
	// which every write goes, in group-committed transactions. It is what
	// the SQLite factory uses; leave it nil for server engines.
	Writer *gorm.DB
	// MaxGroupCommit caps how many writes share one commit (default 256).
	MaxGroupCommit int
	// BusyTimeout is the busy timeout the Writer's connection was opened
	// with. With it, the writer bounds each write's whole wait for the lock
	// (in the queue and at BEGIN) by the timeout, instead of letting a
	// write queued behind a waiting batch wait a second timeout.
	BusyTimeout time.Duration
	// Checkpoint, when set with Writer, is the pool on which a goroutine
	// runs PASSIVE WAL checkpoints after the writer's commits, so that
	// copying the WAL back into the database (and its fsyncs) happens
	// beside the writes instead of inside a commit. Open the Writer with a
	// raised wal_autocheckpoint: its own automatic checkpoint then only
	// bounds the WAL when the background one falls behind.
	Checkpoint *gorm.DB
	// Hooks run inside the transaction of every state change.
	Hooks []Hook
	// OnClose runs once from Close, after the last call has returned; it
	// closes what the caller opened for the repository.
	OnClose func() error
	// SkipMigrate trusts that the schema is current.
	SkipMigrate bool
}

// Repository implements metastorage.Backend and StateCounterBackend on a
// GORM database. It is safe for concurrent use.
type Repository struct {
	db     *gorm.DB     // reads, and writes when there is no writer
	tx     *gorm.DB     // set on views made by WithTx: everything runs in it
	writer *groupWriter // set for SQLite files opened by this library
	d      dialect
	t      tables
	q      queries
	f      fastStmts
	hooks  []Hook
	life   *lifecycle
}

// New returns a repository on db, creating or upgrading the schema unless
// cfg.SkipMigrate is set. db may be SQLite, PostgreSQL or MySQL/MariaDB;
// Close does not close it (use cfg.OnClose for that).
func New(ctx context.Context, db *gorm.DB, cfg Config) (*Repository, error) {
	if db == nil {
		return nil, fmt.Errorf("%w: nil *gorm.DB", ErrInvalidInput)
	}
	if cfg.TableName == "" {
		cfg.TableName = model.DefaultTableName
	}
	if err := CheckTableName(cfg.TableName); err != nil {
		return nil, err
	}
	if cfg.MaxGroupCommit < 0 {
		return nil, fmt.Errorf("%w: MaxGroupCommit %d is negative", ErrInvalidInput, cfg.MaxGroupCommit)
	}
	for i, h := range cfg.Hooks {
		if h == nil {
			return nil, fmt.Errorf("%w: hook %d is nil", ErrInvalidInput, i)
		}
	}
	d, err := dialectFor(db)
	if err != nil {
		return nil, err
	}
	r := &Repository{
		db:    db.Session(&gorm.Session{NewDB: true, SkipDefaultTransaction: true}),
		d:     d,
		t:     tables{messages: cfg.TableName, counts: cfg.TableName + "_counts"},
		hooks: append([]Hook(nil), cfg.Hooks...),
		life:  newLifecycle(cfg.OnClose),
	}
	r.q = buildQueries(d, r.t)
	r.f = buildFast(d, r.q)
	if cfg.Writer != nil {
		r.writer = newGroupWriter(cfg.Writer.Session(&gorm.Session{NewDB: true, SkipDefaultTransaction: true}), cfg.MaxGroupCommit, cfg.BusyTimeout)
		if cfg.Checkpoint != nil {
			r.writer.ckpt = newCheckpointer(cfg.Checkpoint)
		}
		r.life.closers = append([]func() error{r.writer.close}, r.life.closers...)
	}
	if !cfg.SkipMigrate {
		if err := r.migrate(ctx); err != nil {
			_ = r.Close()
			return nil, err
		}
	}
	return r, nil
}

// WithTx returns a view of the repository whose every call runs inside the
// caller's transaction tx, so that metadata commits or rolls back with the
// caller's own writes. Each write of the view runs under a savepoint: a
// failed call leaves tx usable. The view must not outlive tx, and its
// Close does nothing.
func (r *Repository) WithTx(tx *gorm.DB) *Repository {
	v := *r
	v.tx = tx.Session(&gorm.Session{NewDB: true, SkipDefaultTransaction: true})
	v.writer = nil
	return &v
}

// Transaction runs fn in one write transaction of the repository and commits
// it when fn returns nil. Inside fn, r.WithTx(tx) stores and moves metadata
// in that transaction, beside the caller's own statements on tx. On a SQLite
// file this transaction is the one writer's, so fn should be short.
func (r *Repository) Transaction(ctx context.Context, fn func(tx *gorm.DB) error) error {
	ctx, done, err := r.enterLong(ctx)
	if err != nil {
		return err
	}
	defer done()
	return r.closedOr(r.write(ctx, fn))
}

// DB returns the *gorm.DB the repository reads from.
func (r *Repository) DB() *gorm.DB { return r.db }

// TableName is the message table.
func (r *Repository) TableName() string { return r.t.messages }

// Dialect names the engine: "sqlite", "postgres" or "mysql".
func (r *Repository) Dialect() string { return r.d.name }

// queries are the statements of one table, built once.
type queries struct {
	upsert, update, cas, state, stateLock, exists, get, del, count string
	iterFirst, iterNext, sinceCount                                string
	claimIDs, claimDueIDs, claimUpdate, byIDs, due                 string
	upsertHead, upsertTail                                         string
}

// upsertN is the upsert of n rows in one statement.
func (q queries) upsertN(n int) string {
	if n == 1 {
		return q.upsert
	}
	one := "(" + placeholders(len(columns)) + ")"
	return q.upsertHead + strings.TrimSuffix(strings.Repeat(one+", ", n), ", ") + " " + q.upsertTail
}

func buildQueries(d dialect, t tables) queries {
	m, c := d.ident(t.messages), d.ident(t.counts)
	sets := make([]string, 0, len(columns)-1)
	for _, col := range columns[1:] {
		sets = append(sets, col+" = ?")
	}
	// The due queries name state 2 (deferred) literally: SQLite uses a
	// partial index only when the query's WHERE implies the index's.
	due := "state = 2 AND next_retry <= ? ORDER BY next_retry, id LIMIT ?"
	return queries{
		upsertHead:  "INSERT INTO " + m + " (" + columnList + ") VALUES ",
		upsertTail:  d.upsertClause(),
		claimIDs:    "SELECT id FROM " + m + " WHERE state = ? ORDER BY created, id LIMIT ?" + d.skipLocked,
		claimDueIDs: "SELECT id FROM " + m + " WHERE " + due + d.skipLocked,
		// "state + 0" keeps SQLite from scanning the whole state through
		// the (state, created) index instead of looking the IDs up.
		claimUpdate: "UPDATE " + m + " SET state = ?, updated = ? WHERE id IN ? AND state + 0 = ?",
		byIDs:       "SELECT " + columnList + " FROM " + m + " WHERE id IN ?",
		due:         "SELECT " + columnList + " FROM " + m + " WHERE " + due,
		upsert:      "INSERT INTO " + m + " (" + columnList + ") VALUES (" + placeholders(len(columns)) + ") " + d.upsertClause(),
		update:      "UPDATE " + m + " SET " + strings.Join(sets, ", ") + " WHERE id = ?",
		cas:         "UPDATE " + m + " SET state = ?, updated = ? WHERE id = ? AND state = ?",
		state:       "SELECT state FROM " + m + " WHERE id = ?",
		stateLock:   "SELECT state FROM " + m + " WHERE id = ?" + d.forUpdate,
		exists:      "SELECT COUNT(*) FROM " + m + " WHERE id = ?",
		get:         "SELECT " + columnList + " FROM " + m + " WHERE id = ?",
		del:         "DELETE FROM " + m + " WHERE id = ?",
		count:       "SELECT COALESCE(SUM(n), 0) FROM " + c + " WHERE state = ?",
		iterFirst:   "SELECT " + columnList + " FROM " + m + " WHERE state = ? ORDER BY created, id LIMIT ?",
		iterNext:    "SELECT " + columnList + " FROM " + m + " WHERE state = ? AND created >= ? AND (created > ? OR id > ?) ORDER BY created, id LIMIT ?",
		sinceCount:  "SELECT COUNT(*) FROM " + m + " WHERE state = ? AND created >= ?",
	}
}

func placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?, ", n), ", ")
}

// reader is the handle for reads: the caller's transaction on a WithTx view,
// the read pool otherwise.
func (r *Repository) reader(ctx context.Context) *gorm.DB {
	if r.tx != nil {
		return r.tx.WithContext(ctx)
	}
	return r.db.WithContext(ctx)
}

// write runs fn in a write transaction: the caller's (under a savepoint) on
// a WithTx view, a group commit on a SQLite file, a transaction of its own
// otherwise, run again if the server aborts it for a deadlock.
func (r *Repository) write(ctx context.Context, fn func(tx *gorm.DB) error) error {
	switch {
	case r.tx != nil:
		return r.tx.WithContext(ctx).Transaction(fn)
	case r.writer != nil:
		return r.writer.do(ctx, r.life.ctx.Done(), fn)
	}
	return retry(ctx, func() error { return r.db.WithContext(ctx).Transaction(fn, r.d.writeTx) })
}

// retry runs attempt again, up to maxTxAttempts times in all, while the
// server aborts it for a deadlock or serialization failure and ctx lasts.
func retry(ctx context.Context, attempt func() error) error {
	var err error
	for range maxTxAttempts {
		if err = attempt(); !isRetryable(err) || ctx.Err() != nil {
			return err
		}
	}
	return err
}

// writeOne is write for an fn whose first statement is its only write
// when no hook is registered (what follows only reads, to tell why nothing
// changed). Such a statement is atomic on its own, triggers included, so
// on a server engine it runs without a transaction around it: one round
// trip instead of three. Elsewhere it is write.
func (r *Repository) writeOne(ctx context.Context, fn func(tx *gorm.DB) error) error {
	if r.tx != nil || r.writer != nil || len(r.hooks) > 0 {
		return r.write(ctx, fn)
	}
	return retry(ctx, func() error { return fn(r.db.WithContext(ctx)) })
}

// StoreMeta creates or replaces the whole record of messageID.
func (r *Repository) StoreMeta(ctx context.Context, messageID string, metadata metastorage.MessageMetadata) error {
	rw, err := toRow(messageID, metadata)
	if err != nil {
		return fmt.Errorf("store meta: %w", err)
	}
	ctx, done, err := r.enterWrite(ctx)
	if err != nil {
		return err
	}
	defer done()
	err = r.writeOne(ctx, func(tx *gorm.DB) error { return r.storeTx(ctx, tx, rw) })
	if err != nil {
		return fmt.Errorf("store meta %q: %w", messageID, r.closedOr(err))
	}
	return nil
}

func (r *Repository) storeTx(ctx context.Context, tx *gorm.DB, rw row) error {
	if len(r.hooks) == 0 {
		_, err := execW(tx, r.f.upsert, rw.args...)
		return err
	}
	from, found, err := r.lockedState(tx, string(rw.m.ID))
	if err != nil {
		return err
	}
	if _, err := execW(tx, r.f.upsert, rw.args...); err != nil {
		return err
	}
	to := metastorage.QueueState(rw.m.State)
	switch {
	case !found:
		return r.runHooks(ctx, tx, Transition{MessageID: string(rw.m.ID), From: to, To: to, Created: true})
	case from != to:
		return r.runHooks(ctx, tx, Transition{MessageID: string(rw.m.ID), From: from, To: to})
	}
	return nil
}

// UpdateMeta replaces the whole record of an existing message, State
// included; an unknown ID gives ErrMessageNotFound.
func (r *Repository) UpdateMeta(ctx context.Context, messageID string, metadata metastorage.MessageMetadata) error {
	rw, err := toRow(messageID, metadata)
	if err != nil {
		return fmt.Errorf("update meta: %w", err)
	}
	ctx, done, err := r.enterWrite(ctx)
	if err != nil {
		return err
	}
	defer done()
	err = r.writeOne(ctx, func(tx *gorm.DB) error { return r.updateTx(ctx, tx, rw) })
	if err != nil {
		return fmt.Errorf("update meta %q: %w", messageID, r.closedOr(err))
	}
	return nil
}

func (r *Repository) updateTx(ctx context.Context, tx *gorm.DB, rw row) error {
	id := string(rw.m.ID)
	var from metastorage.QueueState
	if len(r.hooks) > 0 {
		var found bool
		var err error
		if from, found, err = r.lockedState(tx, id); err != nil {
			return err
		} else if !found {
			return metastorage.ErrMessageNotFound
		}
	}
	args := append(rw.args[1:len(rw.args):len(rw.args)], id)
	res, err := execW(tx, r.f.update, args...)
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n == 0 {
		// MySQL counts an UPDATE that changes nothing as zero rows.
		if found, err := r.exists(tx, id); err != nil {
			return err
		} else if !found {
			return metastorage.ErrMessageNotFound
		}
	}
	to := metastorage.QueueState(rw.m.State)
	if len(r.hooks) > 0 && from != to {
		return r.runHooks(ctx, tx, Transition{MessageID: id, From: from, To: to})
	}
	return nil
}

// DeleteMeta removes a record; an unknown ID gives ErrMessageNotFound.
func (r *Repository) DeleteMeta(ctx context.Context, messageID string) error {
	if err := checkID(messageID); err != nil {
		return fmt.Errorf("delete meta: %w", err)
	}
	ctx, done, err := r.enterWrite(ctx)
	if err != nil {
		return err
	}
	defer done()
	err = r.writeOne(ctx, func(tx *gorm.DB) error {
		res, err := execW(tx, r.f.del, messageID)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return metastorage.ErrMessageNotFound
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("delete meta %q: %w", messageID, r.closedOr(err))
	}
	return nil
}

// MoveToState is one atomic compare-and-swap: it moves the message to
// toState only if it is in fromState. Losers get the bare
// metastorage.ErrStateConflict and unknown IDs the bare ErrMessageNotFound,
// so that callers may compare with ==. fromState == toState succeeds, and
// changes nothing, exactly when the message is in that state.
func (r *Repository) MoveToState(ctx context.Context, messageID string, fromState, toState metastorage.QueueState) error {
	if err := checkID(messageID); err != nil {
		return fmt.Errorf("move to state: %w", err)
	}
	if err := checkState(fromState); err != nil {
		return err
	}
	if err := checkState(toState); err != nil {
		return err
	}
	ctx, done, err := r.enterWrite(ctx)
	if err != nil {
		return err
	}
	defer done()
	if fromState == toState {
		state, found, err := r.readState(r.queryR(ctx, r.f.state, messageID))
		switch {
		case err != nil:
			return fmt.Errorf("move to state %q: %w", messageID, r.closedOr(err))
		case !found:
			return metastorage.ErrMessageNotFound
		case state != fromState:
			return metastorage.ErrStateConflict
		}
		return nil
	}
	now := time.Now().UnixNano()
	err = r.writeOne(ctx, func(tx *gorm.DB) error {
		res, err := execW(tx, r.f.cas, int(toState), now, messageID, int(fromState))
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			_, found, err := r.readState(queryW(tx, r.f.state, messageID))
			switch {
			case err != nil:
				return err
			case !found:
				return metastorage.ErrMessageNotFound
			}
			return metastorage.ErrStateConflict
		}
		return r.runHooks(ctx, tx, Transition{MessageID: messageID, From: fromState, To: toState})
	})
	switch {
	case err == nil:
		return nil
	case err == metastorage.ErrStateConflict || err == metastorage.ErrMessageNotFound:
		return err
	}
	return fmt.Errorf("move to state %q: %w", messageID, r.closedOr(err))
}

// GetMeta returns the record of messageID.
func (r *Repository) GetMeta(ctx context.Context, messageID string) (metastorage.MessageMetadata, error) {
	if err := checkID(messageID); err != nil {
		return metastorage.MessageMetadata{}, fmt.Errorf("get meta: %w", err)
	}
	ctx, done, err := r.enter(ctx)
	if err != nil {
		return metastorage.MessageMetadata{}, err
	}
	defer done()
	md, err := r.get(ctx, messageID)
	if err != nil {
		return metastorage.MessageMetadata{}, fmt.Errorf("get meta %q: %w", messageID, r.closedOr(err))
	}
	return md, nil
}

func (r *Repository) get(ctx context.Context, id string) (metastorage.MessageMetadata, error) {
	rows, err := r.queryR(ctx, r.f.get, id)
	if err != nil {
		return metastorage.MessageMetadata{}, err
	}
	defer rows.Close()
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return metastorage.MessageMetadata{}, err
		}
		return metastorage.MessageMetadata{}, metastorage.ErrMessageNotFound
	}
	md, err := scanMessage(rows)
	if err != nil {
		return metastorage.MessageMetadata{}, err
	}
	return md, rows.Close()
}

// GetStateCount returns the exact number of messages in state, read from
// the trigger-maintained counters (a lookup of at most 16 rows, whatever the
// table's size). The contract gives it no error: on failure it returns 0.
func (r *Repository) GetStateCount(state metastorage.QueueState) int64 {
	n, err := r.StateCount(context.Background(), state)
	if err != nil {
		return 0
	}
	return n
}

// StateCount is GetStateCount with a context and an error.
func (r *Repository) StateCount(ctx context.Context, state metastorage.QueueState) (int64, error) {
	if err := checkState(state); err != nil {
		return 0, err
	}
	ctx, done, err := r.enter(ctx)
	if err != nil {
		return 0, err
	}
	defer done()
	rows, err := r.queryR(ctx, r.f.count, int(state))
	var n int64
	if err == nil {
		err = scanOne(rows, &n)
	}
	if err != nil {
		return 0, fmt.Errorf("count %s: %w", state, r.closedOr(err))
	}
	return n, nil
}

// Close stops the repository: calls in flight return (those waiting for the
// database with ErrBackendClosed), later calls return ErrBackendClosed, and
// what the repository opened is closed. Close twice is not an error. On a
// WithTx view Close does nothing.
func (r *Repository) Close() error {
	if r.tx != nil {
		return nil
	}
	return r.life.close()
}

// lockedState reads the state of id inside a write transaction, locking the
// row on engines with row locks.
func (r *Repository) lockedState(tx *gorm.DB, id string) (metastorage.QueueState, bool, error) {
	return r.readState(queryW(tx, r.f.stateLock, id))
}

// readState reads the one state column a query selected, if any row.
func (r *Repository) readState(rows *sql.Rows, err error) (metastorage.QueueState, bool, error) {
	if err != nil {
		return 0, false, err
	}
	var s int
	if err := scanOne(rows, &s); err == sql.ErrNoRows {
		return 0, false, nil
	} else if err != nil {
		return 0, false, err
	}
	return metastorage.QueueState(s), true, nil
}

// scanOne scans the first row into dest and closes rows; no row gives
// sql.ErrNoRows.
func scanOne(rows *sql.Rows, dest ...any) error {
	defer rows.Close()
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return err
		}
		return sql.ErrNoRows
	}
	if err := rows.Scan(dest...); err != nil {
		return err
	}
	return rows.Close()
}

func (r *Repository) exists(tx *gorm.DB, id string) (bool, error) {
	rows, err := queryW(tx, r.f.exists, id)
	var n int64
	if err == nil {
		err = scanOne(rows, &n)
	}
	return n > 0, err
}

// lifecycle is shared by a repository and its WithTx views.
type lifecycle struct {
	mu      sync.RWMutex // held for reading by every call in flight
	closed  atomic.Bool
	ctx     context.Context // cancelled by Close
	cancel  context.CancelFunc
	closers []func() error
	once    sync.Once
	err     error
}

func newLifecycle(onClose func() error) *lifecycle {
	ctx, cancel := context.WithCancel(context.Background())
	l := &lifecycle{ctx: ctx, cancel: cancel}
	if onClose != nil {
		l.closers = append(l.closers, onClose)
	}
	return l
}

func (l *lifecycle) isClosed() bool { return l.closed.Load() }

// enter admits a call: it fails with ErrBackendClosed after Close and
// otherwise returns the function that ends the call; Close waits for every
// call in flight to end. The context is returned as it came: use enter for
// calls that cannot block for long, enterLong for the others.
func (r *Repository) enter(ctx context.Context) (context.Context, func(), error) {
	l := r.life
	if ctx == nil {
		ctx = context.Background()
	}
	if l.closed.Load() {
		return nil, nil, metastorage.ErrBackendClosed
	}
	l.mu.RLock()
	if l.closed.Load() {
		l.mu.RUnlock()
		return nil, nil, metastorage.ErrBackendClosed
	}
	if err := ctx.Err(); err != nil {
		l.mu.RUnlock()
		return nil, nil, err
	}
	return ctx, l.mu.RUnlock, nil
}

// enterLong is enter for calls that may wait (for locks, for a long scan):
// their context is also cancelled by Close, so that they return instead of
// holding Close up.
func (r *Repository) enterLong(ctx context.Context) (context.Context, func(), error) {
	ctx, done, err := r.enter(ctx)
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(r.life.ctx, cancel)
	return ctx, func() {
		stop()
		cancel()
		done()
	}, nil
}

// enterWrite admits a single-record write. On a SQLite file the group
// writer itself gives up waiting when Close is called, so the cheap enter
// suffices; elsewhere the write may wait on a row lock.
func (r *Repository) enterWrite(ctx context.Context) (context.Context, func(), error) {
	if r.writer != nil && r.tx == nil {
		return r.enter(ctx)
	}
	return r.enterLong(ctx)
}

func (l *lifecycle) close() error {
	l.once.Do(func() {
		l.closed.Store(true)
		l.cancel()
		l.mu.Lock() // wait for the calls in flight
		defer l.mu.Unlock()
		var errs []error
		for _, c := range l.closers {
			if err := c(); err != nil {
				errs = append(errs, err)
			}
		}
		l.err = errors.Join(errs...)
	})
	return l.err
}
