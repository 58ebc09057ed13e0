package repository

import (
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"net"
	"strings"
	"syscall"

	"gorm.io/gorm"
	sqlite3 "modernc.org/sqlite/lib"
)

// dialect is everything that differs between SQLite, PostgreSQL and
// MySQL/MariaDB. Methods never branch on the engine; they read these fields.
//
//   - Upserts: SQLite and PostgreSQL say ON CONFLICT (id) DO UPDATE,
//     MySQL says ON DUPLICATE KEY UPDATE.
//   - Row locks: the server engines lock rows read for a later write with
//     FOR UPDATE and let claimers skip each other's rows with SKIP LOCKED
//     (MariaDB 10.6+, MySQL 8+). SQLite has neither and needs neither: a
//     write transaction holds the database's single write lock from BEGIN
//     IMMEDIATE on.
//   - Partial indexes: SQLite and PostgreSQL build the due index
//     (state, next_retry) WHERE state = 2; MySQL has no partial indexes and
//     GORM builds the same index over all rows.
//   - Affected rows: MySQL reports changed rather than matched rows unless
//     the DSN says clientFoundRows=true. No compare-and-swap here relies on
//     the count of an UPDATE that may leave a row unchanged: a zero count is
//     always checked with a SELECT before it becomes an error.
//   - Counters: per-state counts are kept by triggers, whose syntax differs.
//     Server engines spread them over counterShards rows, picked by the
//     session's backend ID, so that concurrent writers rarely wait on the
//     same counter row.
//   - Planner hints: SQLite, which has no statistics unless ANALYZE ran,
//     would rather scan a whole state through the (state, created) index
//     than look a batch of IDs up by key; byKeyState ("state + 0") keeps it
//     from using an index on state there.
//   - Errors: what means "locked by another connection" and what means "run
//     the transaction again" differs per engine (busy, retryable).
//   - Backup: SQLite copies itself with VACUUM INTO; the servers have their
//     own tools.
//
// Quoting and placeholders are GORM's, from the dialector (ident, bind).
type dialect struct {
	name         string                  // GORM's dialector name
	system       string                  // OpenTelemetry's db.system.name
	gorm         gorm.Dialector          // quoting and placeholders
	upsertPrefix string                  // before the column updates
	upsertSet    func(col string) string // one "col = new value" term
	forUpdate    string                  // appended to SELECTs that precede a write
	skipLocked   string                  // appended to claim SELECTs
	byKeyState   string                  // the state column where rows are found by key
	shards       int                     // counter shards
	tableOptions string                  // GORM "gorm:table_options"
	triggers     func(t tables) []string // DDL that creates the count triggers
	dropTriggers func(t tables) []string // DDL that removes them
	lockSchema   func(tx *gorm.DB, key string) (unlock func(), err error)
	readTx       *sql.TxOptions         // reads that need one consistent snapshot
	writeTx      *sql.TxOptions         // transactions of our own that write
	busy         func(err error) bool   // locked by another connection or process
	retryable    func(err error) bool   // the transaction may simply run again
	connLost     func(err error) bool   // the connection died: a COMMIT in flight may or may not have landed
	duplicate    func(err error) bool   // a unique key refused an insert
	fenced       bool                   // triggers record every write in the write fence (model.Write)
	deleteStamp  string                 // a DELETE's condition that hands its stamp (text) to the fence trigger
	backupSQL    string                 // "VACUUM INTO ?" where the engine can copy itself
	ownIndex     func(name string) bool // an index the engine made itself
}

const counterShards = 16

func dialectFor(db *gorm.DB) (dialect, error) {
	var d dialect
	switch name := db.Dialector.Name(); name {
	case "sqlite":
		d = sqliteDialect
	case "postgres":
		d = postgresDialect
	case "mysql":
		d = mysqlDialect
	default:
		return dialect{}, fmt.Errorf("%w: unsupported GORM dialector %q (want sqlite, postgres or mysql)", ErrInvalidInput, name)
	}
	d.gorm = db.Dialector
	return d, nil
}

// ident quotes a table or other name as the engine does.
func (d dialect) ident(name string) string {
	var b strings.Builder
	d.gorm.QuoteTo(&b, name)
	return b.String()
}

// bind turns the ? placeholders of a statement into the engine's own.
func (d dialect) bind(query string) string {
	if strings.IndexByte(query, '?') < 0 {
		return query
	}
	var b strings.Builder
	stmt := &gorm.Statement{}
	for _, c := range []byte(query) {
		if c != '?' {
			b.WriteByte(c)
			continue
		}
		stmt.Vars = append(stmt.Vars, nil)
		d.gorm.BindVarTo(&b, stmt, nil)
	}
	return b.String()
}

// tables names the tables of one queue, already validated.
type tables struct {
	messages string
	counts   string
	writes   string // the write fence, on the server engines
}

func tablesOf(messages string) tables {
	return tables{messages: messages, counts: messages + "_counts", writes: messages + "_writes"}
}

var sqliteDialect = dialect{
	name:         "sqlite",
	system:       "sqlite",
	upsertPrefix: "ON CONFLICT (id) DO UPDATE SET ",
	upsertSet:    func(c string) string { return c + " = excluded." + c },
	byKeyState:   "state + 0",
	shards:       1,
	triggers: func(t tables) []string {
		m, c := `"`+t.messages+`"`, `"`+t.counts+`"`
		return []string{
			fmt.Sprintf(`CREATE TRIGGER IF NOT EXISTS "%s_count_insert" AFTER INSERT ON %s BEGIN `+
				`UPDATE %s SET n = n + 1 WHERE state = NEW.state AND shard = 0; END`, t.messages, m, c),
			fmt.Sprintf(`CREATE TRIGGER IF NOT EXISTS "%s_count_delete" AFTER DELETE ON %s BEGIN `+
				`UPDATE %s SET n = n - 1 WHERE state = OLD.state AND shard = 0; END`, t.messages, m, c),
			fmt.Sprintf(`CREATE TRIGGER IF NOT EXISTS "%s_count_update" AFTER UPDATE OF state ON %s `+
				`WHEN OLD.state <> NEW.state BEGIN `+
				`UPDATE %s SET n = n + (CASE WHEN state = NEW.state THEN 1 ELSE -1 END) `+
				`WHERE shard = 0 AND state IN (OLD.state, NEW.state); END`, t.messages, m, c),
		}
	},
	dropTriggers: func(t tables) []string {
		var out []string
		for _, s := range []string{"insert", "delete", "update"} {
			out = append(out, fmt.Sprintf(`DROP TRIGGER IF EXISTS "%s_count_%s"`, t.messages, s))
		}
		return out
	},
	// The migration runs in a BEGIN IMMEDIATE transaction, which already
	// excludes every other writer.
	lockSchema: func(*gorm.DB, string) (func(), error) { return func() {}, nil },
	// A deferred transaction that only reads is one snapshot.
	readTx:    &sql.TxOptions{},
	busy:      sqliteBusy,
	retryable: func(error) bool { return false },
	connLost:  func(error) bool { return false }, // in-process: a commit's outcome is always known
	duplicate: func(error) bool { return false },
	// No fence: a commit's outcome is always known in-process, so the
	// stamp is only bound.
	deleteStamp: "? IS NOT NULL",
	backupSQL:   "VACUUM INTO ?",
	ownIndex:    func(name string) bool { return strings.HasPrefix(name, "sqlite_autoindex") },
}

// sqliteBusy recognises SQLITE_BUSY and SQLITE_LOCKED from any SQLite
// driver: this library's, glebarez's and modernc's report the code through
// Code(), mattn's (gorm.io/driver/sqlite) as the field Code of its Error
// value, which its message also names.
func sqliteBusy(err error) bool {
	if err == nil {
		return false
	}
	var coded interface{ Code() int }
	if errors.As(err, &coded) {
		switch coded.Code() & 0xff {
		case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED:
			return true
		}
		return false
	}
	msg := err.Error()
	return strings.Contains(msg, "database is locked") || strings.Contains(msg, "database table is locked") ||
		strings.Contains(msg, "SQLITE_BUSY")
}

var postgresDialect = dialect{
	name:         "postgres",
	system:       "postgresql",
	upsertPrefix: "ON CONFLICT (id) DO UPDATE SET ",
	upsertSet:    func(c string) string { return c + " = excluded." + c },
	forUpdate:    " FOR UPDATE",
	skipLocked:   " FOR UPDATE SKIP LOCKED",
	byKeyState:   "state",
	shards:       counterShards,
	triggers: func(t tables) []string {
		m, c, w := `"`+t.messages+`"`, `"`+t.counts+`"`, `"`+t.writes+`"`
		fn := `"` + t.messages + `_count"`
		shard := fmt.Sprintf("(pg_backend_pid() %% %d)", counterShards)
		// One function keeps the counts and the write fence: a write of
		// the store sets a new stamp on the rows it inserts or updates,
		// and a DELETE hands its stamp over in a transaction-local
		// setting.
		return []string{
			fmt.Sprintf(`CREATE OR REPLACE FUNCTION %[1]s() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE s bigint;
BEGIN
  IF TG_OP = 'INSERT' THEN
    UPDATE %[2]s SET n = n + 1 WHERE state = NEW.state AND shard = %[3]s;
    IF NEW.stamp <> 0 THEN
      INSERT INTO %[4]s (stamp, id) VALUES (NEW.stamp, NEW.id);
    END IF;
  ELSIF TG_OP = 'DELETE' THEN
    UPDATE %[2]s SET n = n - 1 WHERE state = OLD.state AND shard = %[3]s;
    s := NULLIF(current_setting('retryspool.stamp', true), '')::bigint;
    IF s IS NOT NULL THEN
      INSERT INTO %[4]s (stamp, id) VALUES (s, OLD.id);
    END IF;
  ELSE
    IF OLD.state <> NEW.state THEN
      UPDATE %[2]s SET n = n + (CASE WHEN state = NEW.state THEN 1 ELSE -1 END)
        WHERE shard = %[3]s AND state IN (OLD.state, NEW.state);
    END IF;
    IF NEW.stamp <> 0 AND NEW.stamp <> OLD.stamp THEN
      INSERT INTO %[4]s (stamp, id) VALUES (NEW.stamp, NEW.id);
    END IF;
  END IF;
  RETURN NULL;
END $$`, fn, c, shard, w),
			fmt.Sprintf(`DROP TRIGGER IF EXISTS "%s_count" ON %s`, t.messages, m),
			fmt.Sprintf(`CREATE TRIGGER "%s_count" AFTER INSERT OR DELETE OR UPDATE ON %s `+
				`FOR EACH ROW EXECUTE FUNCTION %s()`, t.messages, m, fn),
		}
	},
	dropTriggers: func(t tables) []string {
		return []string{
			fmt.Sprintf(`DROP TRIGGER IF EXISTS "%s_count" ON "%s"`, t.messages, t.messages),
			fmt.Sprintf(`DROP FUNCTION IF EXISTS "%s_count"()`, t.messages),
		}
	},
	// A transaction-scoped advisory lock: released by COMMIT or ROLLBACK.
	lockSchema: func(tx *gorm.DB, key string) (func(), error) {
		return func() {}, tx.Exec("SELECT pg_advisory_xact_lock(?)", lockKey(key)).Error
	},
	readTx:    &sql.TxOptions{ReadOnly: true, Isolation: sql.LevelRepeatableRead},
	busy:      func(error) bool { return false },
	retryable: func(err error) bool { return pgState(err, "40P01", "40001") }, // deadlock_detected, serialization_failure
	connLost: func(err error) bool {
		// admin_shutdown, crash_shutdown, cannot_connect_now, and the
		// connection_exception class.
		return pgState(err, "57P01", "57P02", "57P03", "08000", "08003", "08006", "08001", "08004") || netLost(err)
	},
	duplicate:   func(err error) bool { return pgState(err, "23505") }, // unique_violation
	fenced:      true,
	deleteStamp: "set_config('retryspool.stamp', CAST(? AS text), true) IS NOT NULL",
	ownIndex:    func(string) bool { return false },
}

// pgState reports whether err carries one of the PostgreSQL SQLSTATEs.
func pgState(err error, codes ...string) bool {
	var pg interface{ SQLState() string }
	if !errors.As(err, &pg) {
		return false
	}
	for _, c := range codes {
		if pg.SQLState() == c {
			return true
		}
	}
	return false
}

// netLost recognises a connection that died under a statement, whatever
// the driver: database/sql's bad connection, an EOF in the middle of a
// reply, a reset or broken socket, a closed connection.
func netLost(err error) bool {
	if err == nil {
		return false
	}
	var ne net.Error
	switch {
	case errors.Is(err, driver.ErrBadConn), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.As(err, &ne):
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, "conn closed") || strings.Contains(msg, "unexpected EOF") ||
		strings.Contains(msg, "connection reset") || strings.Contains(msg, "broken pipe")
}

// mysqlError reports whether err is one of the MySQL error numbers; the
// driver formats its errors as "Error <number> (<state>): ...".
func mysqlError(err error, numbers ...string) bool {
	if err == nil {
		return false
	}
	msg := err.Error()
	for _, n := range numbers {
		if strings.Contains(msg, "Error "+n+" ") {
			return true
		}
	}
	return false
}

var mysqlDialect = dialect{
	name:         "mysql",
	system:       "mysql",
	upsertPrefix: "ON DUPLICATE KEY UPDATE ",
	upsertSet:    func(c string) string { return c + " = VALUES(" + c + ")" },
	forUpdate:    " FOR UPDATE",
	skipLocked:   " FOR UPDATE SKIP LOCKED",
	byKeyState:   "state",
	shards:       counterShards,
	tableOptions: "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
	triggers: func(t tables) []string {
		m, c, w := "`"+t.messages+"`", "`"+t.counts+"`", "`"+t.writes+"`"
		shard := fmt.Sprintf("(CONNECTION_ID() %% %d)", counterShards)
		return []string{
			fmt.Sprintf("CREATE TRIGGER IF NOT EXISTS `%s_count_insert` AFTER INSERT ON %s FOR EACH ROW "+
				"UPDATE %s SET n = n + 1 WHERE state = NEW.state AND shard = %s", t.messages, m, c, shard),
			fmt.Sprintf("CREATE TRIGGER IF NOT EXISTS `%s_count_delete` AFTER DELETE ON %s FOR EACH ROW "+
				"UPDATE %s SET n = n - 1 WHERE state = OLD.state AND shard = %s", t.messages, m, c, shard),
			fmt.Sprintf("CREATE TRIGGER IF NOT EXISTS `%s_count_update` AFTER UPDATE ON %s FOR EACH ROW "+
				"UPDATE %s SET n = n + (CASE WHEN state = NEW.state THEN 1 ELSE -1 END) "+
				"WHERE OLD.state <> NEW.state AND shard = %s AND state IN (OLD.state, NEW.state)", t.messages, m, c, shard),
			// The write fence: a write of the store sets a new stamp on
			// the rows it inserts or updates, and a DELETE hands its
			// stamp over in a session variable.
			fmt.Sprintf("CREATE TRIGGER IF NOT EXISTS `%s_fence_insert` AFTER INSERT ON %s FOR EACH ROW "+
				"INSERT INTO %s (stamp, id) SELECT NEW.stamp, NEW.id FROM DUAL WHERE NEW.stamp <> 0", t.messages, m, w),
			fmt.Sprintf("CREATE TRIGGER IF NOT EXISTS `%s_fence_update` AFTER UPDATE ON %s FOR EACH ROW "+
				"INSERT INTO %s (stamp, id) SELECT NEW.stamp, NEW.id FROM DUAL WHERE NEW.stamp <> 0 AND NEW.stamp <> OLD.stamp", t.messages, m, w),
			fmt.Sprintf("CREATE TRIGGER IF NOT EXISTS `%s_fence_delete` AFTER DELETE ON %s FOR EACH ROW "+
				"INSERT INTO %s (stamp, id) SELECT @retryspool_stamp, OLD.id FROM DUAL WHERE @retryspool_stamp IS NOT NULL", t.messages, m, w),
		}
	},
	dropTriggers: func(t tables) []string {
		var out []string
		for _, s := range []string{"count_insert", "count_delete", "count_update", "fence_insert", "fence_update", "fence_delete"} {
			out = append(out, fmt.Sprintf("DROP TRIGGER IF EXISTS `%s_%s`", t.messages, s))
		}
		return out
	},
	// MySQL commits DDL implicitly, so the migration cannot be one
	// transaction there; a named lock keeps two processes from migrating
	// the same table at once.
	lockSchema: func(tx *gorm.DB, key string) (func(), error) {
		var got sql.NullInt64
		if err := tx.Raw("SELECT GET_LOCK(?, 60)", "retryspool:"+key).Scan(&got).Error; err != nil {
			return nil, err
		}
		if !got.Valid || got.Int64 != 1 {
			return nil, fmt.Errorf("%w: schema lock for %q not acquired in 60s", ErrBusy, key)
		}
		// The lock belongs to the session: release it on the same
		// connection, before the transaction hands the connection back.
		return func() { tx.Exec("SELECT RELEASE_LOCK(?)", "retryspool:"+key) }, nil
	},
	readTx: &sql.TxOptions{ReadOnly: true, Isolation: sql.LevelRepeatableRead},
	// InnoDB's REPEATABLE READ takes next-key (gap) locks on every range a
	// locking read scans, so two claims walking the same index deadlock
	// each other. READ COMMITTED locks only the rows it returns; the
	// compare-and-swaps do not need more, since an UPDATE or a locking
	// SELECT reads the latest committed row at any level.
	writeTx:   &sql.TxOptions{Isolation: sql.LevelReadCommitted},
	busy:      func(error) bool { return false },
	retryable: func(err error) bool { return mysqlError(err, "1213", "1205") }, // ER_LOCK_DEADLOCK, ER_LOCK_WAIT_TIMEOUT
	connLost: func(err error) bool {
		// ER_CONNECTION_KILLED, ER_SERVER_SHUTDOWN, CR_SERVER_GONE_ERROR,
		// CR_SERVER_LOST, and the driver's "invalid connection".
		return mysqlError(err, "1927", "1053", "2006", "2013") || netLost(err) ||
			strings.Contains(err.Error(), "invalid connection")
	},
	duplicate: func(err error) bool { return mysqlError(err, "1062") }, // ER_DUP_ENTRY
	fenced:    true,
	// The assignment runs for each row the DELETE matches, before the
	// row's trigger.
	deleteStamp: "(@retryspool_stamp := ?) IS NOT NULL",
	ownIndex:    func(string) bool { return false },
}

func lockKey(s string) int64 {
	h := fnv.New64a()
	h.Write([]byte("retryspool:" + s))
	return int64(h.Sum64())
}

// upsertClause builds the tail of an INSERT that replaces every column but
// the ID when the ID exists.
func (d dialect) upsertClause() string {
	var b strings.Builder
	b.WriteString(d.upsertPrefix)
	for i, c := range columns[1:] {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(d.upsertSet(c))
	}
	return b.String()
}
