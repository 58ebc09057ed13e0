package systemtest

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	_ "github.com/glebarez/go-sqlite" // database/sql driver "sqlite"
	"github.com/stretchr/testify/require"
	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/fixture"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/testdb"
	"schneider.vip/retryspool/storage/meta/sqlite/repository"
)

// These tests build, with plain SQL, databases as the earlier raw-SQL
// RetrySpool SQLite backend made them, and open them with the factory.

// legacyZero is how the raw-SQL backend stored a zero time.Time: its Unix
// seconds.
var legacyZero = time.Time{}.Unix() // -62135596800

// legacyOpen opens a SQLite file through database/sql, as the raw-SQL
// backend did.
func legacyOpen(t testing.TB, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=journal_mode(WAL)&_pragma=busy_timeout(5000)")
	require.NoError(t, err)
	db.SetMaxOpenConns(1)
	return db
}

// legacyCreate makes the raw-SQL backend's table and indexes in table.
func legacyCreate(t testing.TB, db *sql.DB, table string, withPolicy bool) {
	t.Helper()
	policy := ""
	if withPolicy {
		policy = ", retry_policy_name TEXT"
	}
	for _, stmt := range []string{
		`CREATE TABLE ` + table + ` (
			id TEXT PRIMARY KEY,
			state INTEGER NOT NULL,
			attempts INTEGER NOT NULL DEFAULT 0,
			max_attempts INTEGER NOT NULL DEFAULT 3,
			next_retry INTEGER,
			created INTEGER NOT NULL,
			updated INTEGER NOT NULL,
			last_error TEXT,
			size INTEGER NOT NULL DEFAULT 0,
			priority INTEGER NOT NULL DEFAULT 5,
			headers TEXT` + policy + `)`,
		`CREATE INDEX idx_` + table + `_state_created ON ` + table + ` (state, created)`,
		`CREATE INDEX idx_` + table + `_state_priority ON ` + table + ` (state, priority DESC, created)`,
		`CREATE INDEX idx_` + table + `_next_retry ON ` + table + ` (next_retry) WHERE state = 2`,
	} {
		_, err := db.Exec(stmt)
		require.NoError(t, err)
	}
}

// legacyRow is one row of the raw-SQL backend; times are Unix seconds.
type legacyRow struct {
	id                           string
	state, attempts, maxAttempts int
	nextRetry                    sql.NullInt64
	created, updated             int64
	lastError, headers, policy   sql.NullString
	size                         int64
	priority                     int
}

func legacyInsert(t testing.TB, db *sql.DB, table string, withPolicy bool, rows []legacyRow) {
	t.Helper()
	for _, r := range rows {
		var err error
		if withPolicy {
			_, err = db.Exec(`INSERT INTO `+table+` (id, state, attempts, max_attempts, next_retry, created, updated, last_error, size, priority, headers, retry_policy_name)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, r.id, r.state, r.attempts, r.maxAttempts, r.nextRetry,
				r.created, r.updated, r.lastError, r.size, r.priority, r.headers, r.policy)
		} else {
			_, err = db.Exec(`INSERT INTO `+table+` (id, state, attempts, max_attempts, next_retry, created, updated, last_error, size, priority, headers)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, r.id, r.state, r.attempts, r.maxAttempts, r.nextRetry,
				r.created, r.updated, r.lastError, r.size, r.priority, r.headers)
		}
		require.NoError(t, err)
	}
}

// legacyWant is what a legacy row must read as after the upgrade.
func legacyWant(t testing.TB, r legacyRow, withPolicy bool) metastorage.MessageMetadata {
	t.Helper()
	tm := func(sec int64) time.Time {
		if sec == legacyZero {
			return time.Time{}
		}
		return time.Unix(sec, 0).UTC()
	}
	md := metastorage.MessageMetadata{
		ID: r.id, State: metastorage.QueueState(r.state), Attempts: r.attempts, MaxAttempts: r.maxAttempts,
		Created: tm(r.created), Updated: tm(r.updated), LastError: r.lastError.String,
		Size: r.size, Priority: r.priority,
	}
	if r.nextRetry.Valid {
		md.NextRetry = tm(r.nextRetry.Int64)
	}
	if h := r.headers.String; r.headers.Valid && h != "" && h != "null" {
		require.NoError(t, json.Unmarshal([]byte(h), &md.Headers))
	}
	if withPolicy {
		md.RetryPolicyName = r.policy.String
	}
	return md
}

// legacyBulkSQL inserts rows 1..n with a recursive CTE; legacyBulkRow is
// the same row in Go.
func legacyBulkSQL(table string, n int, withPolicy bool) string {
	cols, policy := "", ""
	if withPolicy {
		cols, policy = ", retry_policy_name", ", CASE WHEN x % 2 = 0 THEN 'policy-' || (x % 3) ELSE NULL END"
	}
	return fmt.Sprintf(`WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < %d)
		INSERT INTO %s (id, state, attempts, max_attempts, next_retry, created, updated, last_error, size, priority, headers%s)
		SELECT printf('m%%07d', x), x %% 6, x %% 5, 5,
			CASE WHEN x %% 4 = 0 THEN %d ELSE 1700000000 + x END,
			1600000000 + x, 1600000000 + 2 * x,
			CASE WHEN x %% 3 = 0 THEN NULL ELSE 'err ' || x END,
			x * 10, x %% 10,
			CASE x %% 5 WHEN 0 THEN '' WHEN 1 THEN '{}' WHEN 2 THEN NULL ELSE '{"k":"v' || x || '","to":"<a@b>"}' END%s
		FROM c`, n, table, cols, legacyZero, policy)
}

func legacyBulkRow(x int) legacyRow {
	r := legacyRow{
		id: fmt.Sprintf("m%07d", x), state: x % 6, attempts: x % 5, maxAttempts: 5,
		nextRetry: sql.NullInt64{Int64: 1700000000 + int64(x), Valid: true},
		created:   1600000000 + int64(x), updated: 1600000000 + 2*int64(x),
		size: int64(x) * 10, priority: x % 10,
	}
	if x%4 == 0 {
		r.nextRetry.Int64 = legacyZero
	}
	if x%3 != 0 {
		r.lastError = sql.NullString{String: fmt.Sprintf("err %d", x), Valid: true}
	}
	switch x % 5 {
	case 0:
		r.headers = sql.NullString{Valid: true}
	case 1:
		r.headers = sql.NullString{String: "{}", Valid: true}
	case 2:
	default:
		r.headers = sql.NullString{String: fmt.Sprintf(`{"k":"v%d","to":"<a@b>"}`, x), Valid: true}
	}
	if x%2 == 0 {
		r.policy = sql.NullString{String: fmt.Sprintf("policy-%d", x%3), Valid: true}
	}
	return r
}

// legacyBuild writes a legacy database of n bulk rows to path and closes
// it cleanly, leaving no WAL file.
func legacyBuild(t testing.TB, path string, n int, withPolicy bool) {
	t.Helper()
	db := legacyOpen(t, path)
	legacyCreate(t, db, "messages", withPolicy)
	_, err := db.Exec(legacyBulkSQL("messages", n, withPolicy))
	require.NoError(t, err)
	require.NoError(t, db.Close())
	legacyNoWAL(t, path)
}

// legacyNoWAL checks that no WAL content lies beside the database, so that
// the main file alone is the whole database.
func legacyNoWAL(t testing.TB, path string) {
	t.Helper()
	for _, suffix := range []string{"-wal", "-journal"} {
		fi, err := os.Stat(path + suffix)
		if err == nil {
			require.Zero(t, fi.Size(), "%s%s holds data", path, suffix)
		} else {
			require.ErrorIs(t, err, os.ErrNotExist)
		}
	}
}

// legacySchemaVersion reads the recorded schema version of table.
func legacySchemaVersion(t testing.TB, r *sqlitemeta.Repository, table string) int {
	t.Helper()
	var v []int
	require.NoError(t, r.DB().Raw("SELECT version FROM retryspool_schema WHERE table_name = ?", table).Scan(&v).Error)
	require.Len(t, v, 1)
	return v[0]
}

// legacyEdgeRows covers what the raw-SQL backend could leave in a row.
func legacyEdgeRows() []legacyRow {
	s := func(v string) sql.NullString { return sql.NullString{String: v, Valid: true} }
	n := func(v int64) sql.NullInt64 { return sql.NullInt64{Int64: v, Valid: true} }
	return []legacyRow{
		{id: "zero-times", state: 0, maxAttempts: 3, nextRetry: n(legacyZero), created: 1700000000, updated: 1700000000, lastError: s(""), headers: s(""), policy: s("")},
		{id: "null-next-retry", state: 1, attempts: 1, maxAttempts: 3, created: 1700000001, updated: 1700000002, headers: s("null")},
		{id: "deferred", state: 2, attempts: 2, maxAttempts: 5, nextRetry: n(1800000000), created: 1700000003, updated: 1700000004,
			lastError: s("451 4.2.1 mailbox busy — später"), size: 1 << 40, priority: 9,
			headers: s(`{"from":"a@example.org","subject":"Grüße \u00e9","x-empty":""}`), policy: s("aggressive")},
		{id: "hold", state: 3, created: 0, updated: -1, nextRetry: n(1), headers: s("{}")},
		{id: "bounce", state: 4, attempts: 7, maxAttempts: 7, created: 1700000005, updated: 1700000006, lastError: s("550 5.1.1 no such user"), priority: -3},
		{id: "archived ünïcode id", state: 5, attempts: 1, maxAttempts: 1, created: 1700000007, updated: 1700000008, headers: s(`{"k":"v"}`), policy: s("p")},
	}
}

func TestLegacyUpgrade(t *testing.T) {
	t.Parallel()
	for _, withPolicy := range []bool{false, true} {
		t.Run(fmt.Sprintf("retry_policy_name=%v", withPolicy), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			path := testdb.SQLitePath(t)
			db := legacyOpen(t, path)
			legacyCreate(t, db, "messages", withPolicy)
			edge := legacyEdgeRows()
			legacyInsert(t, db, "messages", withPolicy, edge)
			const bulk = 600
			_, err := db.Exec(legacyBulkSQL("messages", bulk, withPolicy))
			require.NoError(t, err)
			require.NoError(t, db.Close())

			r := openFile(t, path)
			require.Equal(t, repository.SchemaVersion, legacySchemaVersion(t, r, "messages"))
			all := fixture.All(t, r)
			require.Len(t, all, len(edge)+bulk)
			for _, row := range edge {
				fixture.RequireSameMeta(t, legacyWant(t, row, withPolicy), all[row.id], false)
			}
			for x := 1; x <= bulk; x++ {
				row := legacyBulkRow(x)
				fixture.RequireSameMeta(t, legacyWant(t, row, withPolicy), all[row.id], false)
			}
			// Times kept their second precision, and zero stays zero.
			require.True(t, all["zero-times"].NextRetry.IsZero())
			require.True(t, all["null-next-retry"].NextRetry.IsZero())
			require.Nil(t, all["null-next-retry"].Headers)
			require.Equal(t, map[string]string{}, all["hold"].Headers)
			require.Equal(t, time.Unix(0, 0).UTC(), all["hold"].Created)
			counts := fixture.RequireCounts(t, r)
			require.Equal(t, int64(1+bulk/6), counts[metastorage.StateIncoming])

			// The upgraded table works: writes keep the counts right.
			require.NoError(t, r.MoveToState(ctx, "deferred", metastorage.StateDeferred, metastorage.StateActive))
			require.NoError(t, r.DeleteMeta(ctx, "bounce"))
			fixture.RequireCounts(t, r)

			// Only the new indexes remain, and no copy of the old table.
			var names []string
			require.NoError(t, r.DB().Raw("SELECT name FROM sqlite_master WHERE tbl_name = 'messages' AND type = 'index' AND name NOT LIKE 'sqlite_autoindex%'").Scan(&names).Error)
			require.NotContains(t, names, "idx_messages_next_retry")
			require.Contains(t, names, "idx_messages_state_created")
			var legacyTables int64
			require.NoError(t, r.DB().Raw("SELECT COUNT(*) FROM sqlite_master WHERE name = 'messages_legacy'").Scan(&legacyTables).Error)
			require.Zero(t, legacyTables)
			fixture.RequireIntegrity(t, r.DB())
			require.NoError(t, r.Close())

			// Reopening changes nothing.
			legacyNoWAL(t, path)
			sum := fixture.SHA256(t, path)
			r2 := openFile(t, path)
			var updated []int64
			require.NoError(t, r2.DB().Raw("SELECT updated FROM retryspool_schema").Scan(&updated).Error)
			require.NoError(t, r2.Close())
			require.Equal(t, sum, fixture.SHA256(t, path), "reopening an upgraded database changed it")
			r3 := openFile(t, path)
			var again []int64
			require.NoError(t, r3.DB().Raw("SELECT updated FROM retryspool_schema").Scan(&again).Error)
			require.Equal(t, updated, again)
			require.Len(t, fixture.All(t, r3), len(edge)+bulk-1)
		})
	}
}

// TestLegacyUpgradeNamedTable upgrades a legacy table of another name,
// beside a current queue in the same file.
func TestLegacyUpgradeNamedTable(t *testing.T) {
	t.Parallel()
	path := testdb.SQLitePath(t)
	r := openFile(t, path)
	require.NoError(t, r.StoreMeta(context.Background(), "current", fixture.Sample("current", metastorage.StateHold, 1)))
	require.NoError(t, r.Close())

	db := legacyOpen(t, path)
	legacyCreate(t, db, "jobs", true)
	_, err := db.Exec(legacyBulkSQL("jobs", 50, true))
	require.NoError(t, err)
	require.NoError(t, db.Close())

	jobs := openFile(t, path, sqlitemeta.WithTableName("jobs"))
	all := fixture.All(t, jobs)
	require.Len(t, all, 50)
	for x := 1; x <= 50; x++ {
		row := legacyBulkRow(x)
		fixture.RequireSameMeta(t, legacyWant(t, row, true), all[row.id], false)
	}
	fixture.RequireCounts(t, jobs)
	require.Equal(t, repository.SchemaVersion, legacySchemaVersion(t, jobs, "jobs"))
	r = openFile(t, path)
	require.Len(t, fixture.All(t, r), 1)
	fixture.RequireCounts(t, r)
}

// legacyRefused opens path with the factory, expects want, and checks that
// the file is byte for byte as it was and that no journal was left.
func legacyRefused(t *testing.T, path string, want error, opts ...sqlitemeta.Option) error {
	t.Helper()
	legacyNoWAL(t, path)
	before := fixture.SHA256(t, path)
	_, err := sqlitemeta.NewFactory(append([]sqlitemeta.Option{sqlitemeta.WithDatabasePath(path)}, opts...)...).Create()
	require.ErrorIs(t, err, want)
	require.Equal(t, before, fixture.SHA256(t, path), "a refused database was changed")
	legacyNoWAL(t, path)
	return err
}

func TestLegacySchemaTooNew(t *testing.T) {
	t.Parallel()
	path := testdb.SQLitePath(t)
	r := openFile(t, path)
	require.NoError(t, r.StoreMeta(context.Background(), "kept", fixture.Sample("kept", metastorage.StateDeferred, 3)))
	require.NoError(t, r.Close())
	db := legacyOpen(t, path)
	_, err := db.Exec("UPDATE retryspool_schema SET version = ? WHERE table_name = 'messages'", repository.SchemaVersion+1)
	require.NoError(t, err)
	require.NoError(t, db.Close())

	err = legacyRefused(t, path, sqlitemeta.ErrSchemaTooNew)
	require.Contains(t, err.Error(), fmt.Sprintf("schema version %d", repository.SchemaVersion+1))
	// Twice, to be sure the first refusal left nothing that changes the
	// second.
	legacyRefused(t, path, sqlitemeta.ErrSchemaTooNew)
	// Another queue in the same file is still usable.
	other := openFile(t, path, sqlitemeta.WithTableName("other"))
	require.NoError(t, other.StoreMeta(context.Background(), "x", fixture.Sample("x", metastorage.StateIncoming, 1)))
}

func TestLegacyForeignTable(t *testing.T) {
	t.Parallel()
	cases := map[string][]string{
		"other shape": {`CREATE TABLE messages (id INTEGER PRIMARY KEY, body TEXT, sent_at TEXT)`,
			`INSERT INTO messages (body, sent_at) VALUES ('hello', '2024-01-01')`},
		"legacy shape plus a column": {`CREATE TABLE messages (id TEXT PRIMARY KEY, state INTEGER, attempts INTEGER, max_attempts INTEGER,
			next_retry INTEGER, created INTEGER, updated INTEGER, last_error TEXT, size INTEGER, priority INTEGER, headers TEXT, tenant TEXT)`,
			`INSERT INTO messages VALUES ('a', 0, 0, 3, 0, 1700000000, 1700000000, '', 1, 5, '', 'acme')`},
		"legacy shape missing a column": {`CREATE TABLE messages (id TEXT PRIMARY KEY, state INTEGER, attempts INTEGER, max_attempts INTEGER,
			next_retry INTEGER, created INTEGER, updated INTEGER, last_error TEXT, size INTEGER, headers TEXT)`},
	}
	for name, stmts := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			path := testdb.SQLitePath(t)
			db := legacyOpen(t, path)
			for _, s := range stmts {
				_, err := db.Exec(s)
				require.NoError(t, err)
			}
			require.NoError(t, db.Close())
			err := legacyRefused(t, path, sqlitemeta.ErrForeignTable)
			require.Contains(t, err.Error(), "choose another table name")
		})
	}

	t.Run("leftover legacy copy", func(t *testing.T) {
		t.Parallel()
		path := testdb.SQLitePath(t)
		db := legacyOpen(t, path)
		legacyCreate(t, db, "messages", false)
		legacyCreate(t, db, "messages_legacy", false)
		require.NoError(t, db.Close())
		legacyRefused(t, path, sqlitemeta.ErrForeignTable)
	})
}

// legacyState describes a legacy database file after an interrupted
// upgrade: either still wholly legacy, or wholly upgraded.
func legacyState(t *testing.T, path string, n int) string {
	t.Helper()
	db := legacyOpen(t, path)
	defer db.Close()
	var tables []string
	rows, err := db.Query("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
	require.NoError(t, err)
	for rows.Next() {
		var s string
		require.NoError(t, rows.Scan(&s))
		tables = append(tables, s)
	}
	require.NoError(t, rows.Err())
	require.NotContains(t, tables, "messages_legacy", "an upgrade left a half-done state")
	var count int
	require.NoError(t, db.QueryRow("SELECT COUNT(*) FROM messages").Scan(&count))
	require.Equal(t, n, count)
	var created int64
	require.NoError(t, db.QueryRow("SELECT created FROM messages WHERE id = 'm0000001'").Scan(&created))
	switch strings.Join(tables, ",") {
	case "messages":
		require.Equal(t, int64(1600000001), created, "legacy rows hold seconds")
		return "legacy"
	case "messages,messages_counts,retryspool_schema":
		require.Equal(t, int64(1600000001)*1e9, created, "upgraded rows hold nanoseconds")
		var v int
		require.NoError(t, db.QueryRow("SELECT version FROM retryspool_schema WHERE table_name = 'messages'").Scan(&v))
		require.Equal(t, repository.SchemaVersion, v)
		return "upgraded"
	}
	t.Fatalf("unexpected tables after an interrupted upgrade: %v", tables)
	return ""
}

// legacyCopyFile copies a database file.
func legacyCopyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(to, b, 0o600))
}

// legacyRequireBulk checks a fully upgraded bulk database: a sample of the
// records field by field, all of them through sums over the columns, and
// the counters.
func legacyRequireBulk(t *testing.T, r *sqlitemeta.Repository, n int) {
	t.Helper()
	ctx := context.Background()
	require.Equal(t, repository.SchemaVersion, legacySchemaVersion(t, r, "messages"))
	for _, x := range []int{1, 2, 3, 4, 5, 6, n / 2, n - 1, n} {
		row := legacyBulkRow(x)
		md, err := r.GetMeta(ctx, row.id)
		require.NoError(t, err)
		fixture.RequireSameMeta(t, legacyWant(t, row, false), md, false)
	}
	var got struct {
		N                       int64
		Created, Updated, State int64
		Zero                    int64
	}
	require.NoError(t, r.DB().Raw(`SELECT COUNT(*) AS n, SUM(created / 1000000000) AS created, SUM(updated / 1000000000) AS updated,
		SUM(state) AS state, SUM(next_retry = ?) AS zero FROM messages`, int64(-1<<63)).Scan(&got).Error)
	var want struct{ n, created, updated, state, zero int64 }
	for x := 1; x <= n; x++ {
		row := legacyBulkRow(x)
		want.n++
		want.created += row.created
		want.updated += row.updated
		want.state += int64(row.state)
		if row.nextRetry.Int64 == legacyZero {
			want.zero++
		}
	}
	require.Equal(t, want.n, got.N)
	require.Equal(t, want.created, got.Created)
	require.Equal(t, want.updated, got.Updated)
	require.Equal(t, want.state, got.State)
	require.Equal(t, want.zero, got.Zero)
	fixture.RequireCounts(t, r)
	fixture.RequireIntegrity(t, r.DB())
}

// legacyTemplate builds a legacy database of n rows once per test and
// returns its path.
func legacyTemplate(t *testing.T, n int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "legacy-template.db")
	legacyBuild(t, path, n, false)
	return path
}
