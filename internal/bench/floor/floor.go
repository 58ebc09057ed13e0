// Package floor is the raw database/sql baseline that the library's
// benchmarks are measured against: the same operations as the metadata
// store, on the same SQLite engine (modernc.org/sqlite through the plain
// github.com/glebarez/go-sqlite driver, "sqlite", by default; the server
// driver behind an application's pool on PostgreSQL and MySQL) and the same
// schema, written the way a plain raw-SQL backend would write them.
//
// Every write is one statement in its own transaction (BEGIN IMMEDIATE on
// SQLite, then COMMIT; on the server engines run again after a deadlock,
// at READ COMMITTED on MySQL), with no validation beyond what the database
// does, no statement cache and no group commit; reads are single statements on
// the pool, outside any transaction, except the list page, whose page and
// total are read in one read-only transaction as the library does. The
// batched operations (StoreMetaBatch, MoveToStateBatch, Claim) run the same
// statements, one per message, in one transaction per batch.
//
// The schema is not written here: Open creates it by opening the library
// once on the file (and closing it), so the table, its indexes and the
// count triggers are exactly the library's.
package floor

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	// The pure-Go SQLite driver the library uses; it registers "sqlite".
	_ "github.com/glebarez/go-sqlite"
	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
)

// Defaults, the same as the library's.
const (
	DefaultTable        = sqlitemeta.DefaultTableName
	DefaultSynchronous  = sqlitemeta.DefaultSynchronous
	DefaultBusyTimeout  = sqlitemeta.DefaultBusyTimeout
	DefaultCacheSize    = sqlitemeta.DefaultCacheSize
	DefaultMaxOpenConns = 1
	// DefaultDriver is the glebarez driver, which compiles every statement
	// it runs, as plain database/sql code on it does.
	DefaultDriver = "sqlite"
	// BatchSize is how many statements the batched operations put in one
	// transaction.
	BatchSize = 1000
)

// Config opens a SQLite file.
type Config struct {
	Path        string // the database file
	Table       string // DefaultTable when empty
	Synchronous string // OFF, NORMAL, FULL or EXTRA; DefaultSynchronous when empty
	BusyTimeout int    // milliseconds; DefaultBusyTimeout when 0
	CacheSize   int    // KiB per connection; DefaultCacheSize when 0
	// MaxOpenConns caps the pool; DefaultMaxOpenConns when 0. One
	// connection is what a plain SQLite backend uses for writers: with
	// more, concurrent writers meet SQLITE_BUSY and wait in SQLite's busy
	// handler, which sleeps in steps of milliseconds.
	MaxOpenConns int
	// Driver is the database/sql driver name; DefaultDriver when empty.
	// Any driver that takes the glebarez DSN form will do, such as the
	// library's own (internal/sqlitedriver), to separate what the driver
	// gains from what the library does.
	Driver string
}

// DB is the baseline backend.
type DB struct {
	db     *sql.DB
	owned  bool
	q      queries
	txOpts *sql.TxOptions // write transactions
}

// Open creates the library's schema on cfg.Path (by opening the library on
// it once) and opens the file on a plain database/sql pool with the same
// pragmas as the library's defaults.
func Open(ctx context.Context, cfg Config) (*DB, error) {
	if cfg.Table == "" {
		cfg.Table = DefaultTable
	}
	if cfg.Synchronous == "" {
		cfg.Synchronous = DefaultSynchronous
	}
	if cfg.BusyTimeout == 0 {
		cfg.BusyTimeout = DefaultBusyTimeout
	}
	if cfg.CacheSize == 0 {
		cfg.CacheSize = DefaultCacheSize
	}
	if cfg.MaxOpenConns == 0 {
		cfg.MaxOpenConns = DefaultMaxOpenConns
	}
	if cfg.Driver == "" {
		cfg.Driver = DefaultDriver
	}
	lib, err := sqlitemeta.NewFactory(
		sqlitemeta.WithDatabasePath(cfg.Path),
		sqlitemeta.WithTableName(cfg.Table),
		sqlitemeta.WithSynchronous(cfg.Synchronous),
	).Open(ctx)
	if err != nil {
		return nil, fmt.Errorf("floor: create schema: %w", err)
	}
	if err := lib.Close(); err != nil {
		return nil, fmt.Errorf("floor: create schema: %w", err)
	}
	db, err := sql.Open(cfg.Driver, DSN(cfg))
	if err != nil {
		return nil, fmt.Errorf("floor: %w", err)
	}
	db.SetMaxOpenConns(cfg.MaxOpenConns)
	db.SetMaxIdleConns(cfg.MaxOpenConns)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("floor: %w", err)
	}
	f, err := New(db, "sqlite", cfg.Table)
	if err != nil {
		db.Close()
		return nil, err
	}
	f.owned = true
	return f, nil
}

// DSN is the driver DSN Open uses: the library's pragmas, in the library's
// order, and BEGIN IMMEDIATE for write transactions (read-only
// transactions begin plainly).
func DSN(cfg Config) string {
	q := []string{
		"_pragma=" + url.QueryEscape("busy_timeout("+strconv.Itoa(cfg.BusyTimeout)+")"),
		"_pragma=" + url.QueryEscape("auto_vacuum(INCREMENTAL)"),
		"_pragma=" + url.QueryEscape("journal_mode(WAL)"),
		"_pragma=" + url.QueryEscape("synchronous("+cfg.Synchronous+")"),
		"_pragma=" + url.QueryEscape("cache_size(-"+strconv.Itoa(cfg.CacheSize)+")"),
		"_pragma=" + url.QueryEscape("foreign_keys(1)"),
		"_txlock=immediate",
	}
	path := strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23").Replace(filepath.ToSlash(cfg.Path))
	return "file:" + path + "?" + strings.Join(q, "&")
}

// New wraps an open pool of engine ("sqlite", "postgres" or "mysql") whose
// table already has the library's schema. Close does not close db.
func New(db *sql.DB, engine, table string) (*DB, error) {
	if table == "" {
		table = DefaultTable
	}
	d, ok := dialects[engine]
	if !ok {
		return nil, fmt.Errorf("floor: unknown engine %q", engine)
	}
	return &DB{db: db, q: buildQueries(d, table), txOpts: d.txOpts}, nil
}

// SQL returns the pool.
func (f *DB) SQL() *sql.DB { return f.db }

// Close closes the pool if Open opened it.
func (f *DB) Close() error {
	if f.owned {
		return f.db.Close()
	}
	return nil
}

var columns = []string{
	"id", "state", "attempts", "max_attempts", "next_retry", "created",
	"updated", "last_error", "size", "priority", "headers", "retry_policy_name",
}

type dialect struct {
	txOpts     *sql.TxOptions
	quote      string
	dollar     bool // $1, $2... instead of ?
	upsert     func(cols []string) string
	skipLocked string
}

var dialects = map[string]dialect{
	"sqlite": {quote: `"`, upsert: onConflict},
	"postgres": {quote: `"`, dollar: true, upsert: onConflict,
		skipLocked: " FOR UPDATE SKIP LOCKED"},
	// InnoDB's default REPEATABLE READ takes gap locks on the ranges that
	// claims scan, and concurrent claimers then deadlock over and over;
	// READ COMMITTED takes none, the usual setting for SKIP LOCKED queues.
	"mysql": {quote: "`", skipLocked: " FOR UPDATE SKIP LOCKED",
		txOpts: &sql.TxOptions{Isolation: sql.LevelReadCommitted},
		upsert: func(cols []string) string {
			set := make([]string, len(cols))
			for i, c := range cols {
				set[i] = c + " = VALUES(" + c + ")"
			}
			return "ON DUPLICATE KEY UPDATE " + strings.Join(set, ", ")
		}},
}

func onConflict(cols []string) string {
	set := make([]string, len(cols))
	for i, c := range cols {
		set[i] = c + " = excluded." + c
	}
	return "ON CONFLICT (id) DO UPDATE SET " + strings.Join(set, ", ")
}

type queries struct {
	upsert, update, cas, exists, get, del, count  string
	iterFirst, iterNext, listPage, due, claimPick string
	claimDuePick                                  string
}

func buildQueries(d dialect, table string) queries {
	m := d.quote + table + d.quote
	c := d.quote + table + "_counts" + d.quote
	cols := strings.Join(columns, ", ")
	marks := strings.TrimSuffix(strings.Repeat("?, ", len(columns)), ", ")
	sets := make([]string, 0, len(columns)-1)
	for _, col := range columns[1:] {
		sets = append(sets, col+" = ?")
	}
	q := queries{
		upsert:    "INSERT INTO " + m + " (" + cols + ") VALUES (" + marks + ") " + d.upsert(columns[1:]),
		update:    "UPDATE " + m + " SET " + strings.Join(sets, ", ") + " WHERE id = ?",
		cas:       "UPDATE " + m + " SET state = ?, updated = ? WHERE id = ? AND state = ?",
		exists:    "SELECT COUNT(*) FROM " + m + " WHERE id = ?",
		get:       "SELECT " + cols + " FROM " + m + " WHERE id = ?",
		del:       "DELETE FROM " + m + " WHERE id = ?",
		count:     "SELECT COALESCE(SUM(n), 0) FROM " + c + " WHERE state = ?",
		iterFirst: "SELECT " + cols + " FROM " + m + " WHERE state = ? ORDER BY created, id LIMIT ?",
		iterNext:  "SELECT " + cols + " FROM " + m + " WHERE state = ? AND created >= ? AND (created > ? OR id > ?) ORDER BY created, id LIMIT ?",
		listPage:  "SELECT id FROM " + m + " WHERE state = ? ORDER BY created, id LIMIT ? OFFSET ?",
		due:       "SELECT " + cols + " FROM " + m + " WHERE state = 2 AND next_retry <= ? ORDER BY next_retry, id LIMIT ?",
		claimPick: "SELECT " + cols + " FROM " + m + " WHERE state = ? ORDER BY created, id LIMIT ?" + d.skipLocked,
	}
	q.claimDuePick = q.due + d.skipLocked
	if d.dollar {
		for _, p := range []*string{&q.upsert, &q.update, &q.cas, &q.exists, &q.get, &q.del, &q.count,
			&q.iterFirst, &q.iterNext, &q.listPage, &q.due, &q.claimPick, &q.claimDuePick} {
			*p = dollars(*p)
		}
	}
	return q
}

// dollars numbers the placeholders for PostgreSQL.
func dollars(s string) string {
	var b strings.Builder
	n := 0
	for _, r := range s {
		if r == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

const zeroTime = math.MinInt64

func encodeTime(t time.Time) int64 {
	if t.IsZero() {
		return zeroTime
	}
	return t.UnixNano()
}

func decodeTime(n int64) time.Time {
	if n == zeroTime {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

// args are the column values of md in the order of columns.
func args(id string, md metastorage.MessageMetadata) ([]any, error) {
	var headers any
	if md.Headers != nil {
		b, err := json.Marshal(md.Headers)
		if err != nil {
			return nil, err
		}
		headers = string(b)
	}
	return []any{
		id, int(md.State), md.Attempts, md.MaxAttempts, encodeTime(md.NextRetry),
		encodeTime(md.Created), encodeTime(md.Updated), md.LastError, md.Size,
		md.Priority, headers, md.RetryPolicyName,
	}, nil
}

type scanner interface{ Scan(dest ...any) error }

func scan(s scanner) (metastorage.MessageMetadata, error) {
	var (
		md                       metastorage.MessageMetadata
		id                       string
		state                    int
		next, created, updated   int64
		headers                  sql.NullString
		lastError, retryPolicy   string
		attempts, maxA, priority int
		size                     int64
	)
	if err := s.Scan(&id, &state, &attempts, &maxA, &next, &created, &updated,
		&lastError, &size, &priority, &headers, &retryPolicy); err != nil {
		return md, err
	}
	md = metastorage.MessageMetadata{
		ID: id, State: metastorage.QueueState(state), Attempts: attempts,
		MaxAttempts: maxA, NextRetry: decodeTime(next), Created: decodeTime(created),
		Updated: decodeTime(updated), LastError: lastError, Size: size,
		Priority: priority, RetryPolicyName: retryPolicy,
	}
	if headers.Valid {
		md.Headers = map[string]string{}
		if err := json.Unmarshal([]byte(headers.String), &md.Headers); err != nil {
			return md, err
		}
	}
	return md, nil
}

// maxTxAttempts bounds the reruns of a transaction that a server engine
// aborted for a deadlock, as any backend on those engines must do.
const maxTxAttempts = 10

// tx runs fn in a write transaction and commits it, running it again when
// the server aborted it for a deadlock or a serialization failure.
func (f *DB) tx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	var err error
	for attempt := 0; attempt < maxTxAttempts; attempt++ {
		if err = f.tx1(ctx, fn); !retryable(err) || ctx.Err() != nil {
			return err
		}
	}
	return err
}

func (f *DB) tx1(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := f.db.BeginTx(ctx, f.txOpts)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}

// retryable reports PostgreSQL's deadlock_detected and
// serialization_failure, and MySQL's deadlock and lock wait timeout.
func retryable(err error) bool {
	if err == nil {
		return false
	}
	var pg interface{ SQLState() string }
	if errors.As(err, &pg) {
		return pg.SQLState() == "40P01" || pg.SQLState() == "40001"
	}
	msg := err.Error()
	return strings.Contains(msg, "Error 1213 ") || strings.Contains(msg, "Error 1205 ")
}

// StoreMeta creates or replaces a record: one upsert in one transaction.
func (f *DB) StoreMeta(ctx context.Context, id string, md metastorage.MessageMetadata) error {
	a, err := args(id, md)
	if err != nil {
		return err
	}
	return f.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, f.q.upsert, a...)
		return err
	})
}

// StoreMetaBatch stores records (each under its own ID), BatchSize upserts
// per transaction.
func (f *DB) StoreMetaBatch(ctx context.Context, mds []metastorage.MessageMetadata) error {
	for start := 0; start < len(mds); start += BatchSize {
		chunk := mds[start:min(start+BatchSize, len(mds))]
		err := f.tx(ctx, func(tx *sql.Tx) error {
			for _, md := range chunk {
				a, err := args(md.ID, md)
				if err != nil {
					return err
				}
				if _, err := tx.ExecContext(ctx, f.q.upsert, a...); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// UpdateMeta rewrites an existing record: one UPDATE in one transaction.
func (f *DB) UpdateMeta(ctx context.Context, id string, md metastorage.MessageMetadata) error {
	a, err := args(id, md)
	if err != nil {
		return err
	}
	a = append(a[1:], id)
	return f.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, f.q.update, a...)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil {
			return err
		} else if n == 0 {
			return f.missing(ctx, tx, id, nil)
		}
		return nil
	})
}

// missing tells, after an UPDATE matched no row, whether id is absent
// (ErrMessageNotFound) or present (otherwise, which is nil for UpdateMeta
// on MySQL, where an unchanged row counts as no row).
func (f *DB) missing(ctx context.Context, tx *sql.Tx, id string, otherwise error) error {
	var n int64
	if err := tx.QueryRowContext(ctx, f.q.exists, id).Scan(&n); err != nil {
		return err
	}
	if n == 0 {
		return metastorage.ErrMessageNotFound
	}
	return otherwise
}

// MoveToState is one compare-and-swap UPDATE in one transaction;
// ErrStateConflict or ErrMessageNotFound when it matches no row.
func (f *DB) MoveToState(ctx context.Context, id string, from, to metastorage.QueueState) error {
	now := time.Now().UnixNano()
	return f.tx(ctx, func(tx *sql.Tx) error { return f.cas(ctx, tx, id, from, to, now) })
}

func (f *DB) cas(ctx context.Context, tx *sql.Tx, id string, from, to metastorage.QueueState, now int64) error {
	res, err := tx.ExecContext(ctx, f.q.cas, int(to), now, id, int(from))
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n == 0 {
		return f.missing(ctx, tx, id, metastorage.ErrStateConflict)
	}
	return nil
}

// MoveToStateBatch runs MoveToState's statement for each ID, BatchSize per
// transaction, and returns how many moved; IDs not in from are skipped.
func (f *DB) MoveToStateBatch(ctx context.Context, ids []string, from, to metastorage.QueueState) (int, error) {
	moved := 0
	for start := 0; start < len(ids); start += BatchSize {
		chunk := ids[start:min(start+BatchSize, len(ids))]
		n := 0
		now := time.Now().UnixNano()
		err := f.tx(ctx, func(tx *sql.Tx) error {
			n = 0
			for _, id := range chunk {
				switch err := f.cas(ctx, tx, id, from, to, now); {
				case err == nil:
					n++
				case errors.Is(err, metastorage.ErrStateConflict), errors.Is(err, metastorage.ErrMessageNotFound):
				default:
					return err
				}
			}
			return nil
		})
		if err != nil {
			return moved, err
		}
		moved += n
	}
	return moved, nil
}

// Claim moves up to limit messages, oldest first, from one state to
// another in one transaction: one SELECT of the records, then MoveToState's
// UPDATE for each. It returns the records as they are after the move.
func (f *DB) Claim(ctx context.Context, from, to metastorage.QueueState, limit int) ([]metastorage.MessageMetadata, error) {
	return f.claim(ctx, from, to, f.q.claimPick, int(from), limit)
}

// ClaimDue is Claim for the deferred messages whose NextRetry is at or
// before now, earliest first, moved to Active.
func (f *DB) ClaimDue(ctx context.Context, now time.Time, limit int) ([]metastorage.MessageMetadata, error) {
	return f.claim(ctx, metastorage.StateDeferred, metastorage.StateActive, f.q.claimDuePick, encodeTime(now), limit)
}

func (f *DB) claim(ctx context.Context, from, to metastorage.QueueState, pick string, key any, limit int) ([]metastorage.MessageMetadata, error) {
	var out []metastorage.MessageMetadata
	err := f.tx(ctx, func(tx *sql.Tx) error {
		out = out[:0]
		rows, err := tx.QueryContext(ctx, pick, key, limit)
		if err != nil {
			return err
		}
		for rows.Next() {
			md, err := scan(rows)
			if err != nil {
				rows.Close()
				return err
			}
			out = append(out, md)
		}
		if err := rows.Close(); err != nil {
			return err
		}
		if err := rows.Err(); err != nil {
			return err
		}
		now := time.Now().UnixNano()
		for i := range out {
			if err := f.cas(ctx, tx, out[i].ID, from, to, now); err != nil {
				return err
			}
			out[i].State, out[i].Updated = to, decodeTime(now)
		}
		return nil
	})
	return out, err
}

// DeleteMeta deletes a record: one DELETE in one transaction.
func (f *DB) DeleteMeta(ctx context.Context, id string) error {
	return f.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, f.q.del, id)
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
}

// GetMeta reads a record: one SELECT, every column scanned, headers decoded.
func (f *DB) GetMeta(ctx context.Context, id string) (metastorage.MessageMetadata, error) {
	md, err := scan(f.db.QueryRowContext(ctx, f.q.get, id))
	if errors.Is(err, sql.ErrNoRows) {
		return md, metastorage.ErrMessageNotFound
	}
	return md, err
}

// StateCount reads the trigger-maintained count of a state.
func (f *DB) StateCount(ctx context.Context, state metastorage.QueueState) (int64, error) {
	var n int64
	err := f.db.QueryRowContext(ctx, f.q.count, int(state)).Scan(&n)
	return n, err
}

// ListPage returns one page of the IDs in state, oldest first, and the
// total in that state, read in one read-only transaction.
func (f *DB) ListPage(ctx context.Context, state metastorage.QueueState, limit, offset int) ([]string, int64, error) {
	tx, err := f.db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, 0, err
	}
	defer tx.Rollback() //nolint:errcheck // read-only: nothing to lose
	rows, err := tx.QueryContext(ctx, f.q.listPage, int(state), limit, offset)
	if err != nil {
		return nil, 0, err
	}
	ids := make([]string, 0, limit)
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return nil, 0, err
		}
		ids = append(ids, id)
	}
	if err := rows.Close(); err != nil {
		return nil, 0, err
	}
	if err := rows.Err(); err != nil {
		return nil, 0, err
	}
	var total int64
	if err := tx.QueryRowContext(ctx, f.q.count, int(state)).Scan(&total); err != nil {
		return nil, 0, err
	}
	return ids, total, tx.Commit()
}

// DueMessages returns up to limit deferred messages whose NextRetry is at
// or before now, earliest first.
func (f *DB) DueMessages(ctx context.Context, now time.Time, limit int) ([]metastorage.MessageMetadata, error) {
	rows, err := f.db.QueryContext(ctx, f.q.due, encodeTime(now), limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []metastorage.MessageMetadata
	for rows.Next() {
		md, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, md)
	}
	return out, rows.Err()
}

// Iterator walks a state in (created, id) order, one keyset query per
// batch, like the library's.
type Iterator struct {
	f         *DB
	state     metastorage.QueueState
	batch     int
	buf       []metastorage.MessageMetadata
	pos       int
	started   bool
	lastKey   int64
	lastID    string
	exhausted bool
}

// NewIterator returns an iterator over state with the given batch size.
func (f *DB) NewIterator(state metastorage.QueueState, batch int) *Iterator {
	return &Iterator{f: f, state: state, batch: batch}
}

// Next returns the next message, or false at the end.
func (it *Iterator) Next(ctx context.Context) (metastorage.MessageMetadata, bool, error) {
	if it.pos == len(it.buf) {
		if it.exhausted {
			return metastorage.MessageMetadata{}, false, nil
		}
		if err := it.fetch(ctx); err != nil {
			return metastorage.MessageMetadata{}, false, err
		}
		if len(it.buf) == 0 {
			return metastorage.MessageMetadata{}, false, nil
		}
	}
	md := it.buf[it.pos]
	it.pos++
	return md, true, nil
}

func (it *Iterator) fetch(ctx context.Context) error {
	var rows *sql.Rows
	var err error
	if it.started {
		rows, err = it.f.db.QueryContext(ctx, it.f.q.iterNext, int(it.state), it.lastKey, it.lastKey, it.lastID, it.batch)
	} else {
		rows, err = it.f.db.QueryContext(ctx, it.f.q.iterFirst, int(it.state), it.batch)
	}
	if err != nil {
		return err
	}
	defer rows.Close()
	it.buf, it.pos = it.buf[:0], 0
	for rows.Next() {
		md, err := scan(rows)
		if err != nil {
			return err
		}
		it.buf = append(it.buf, md)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if n := len(it.buf); n > 0 {
		it.lastKey, it.lastID, it.started = encodeTime(it.buf[n-1].Created), it.buf[n-1].ID, true
	}
	it.exhausted = len(it.buf) < it.batch
	return nil
}
