package repository

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"sort"
	"strings"
	"time"

	"gorm.io/gorm"

	"schneider.vip/retryspool/storage/meta/sqlite/model"
)

// SchemaVersion is the version of the schema this library writes. A table
// with a higher version was written by a newer library and is refused.
// Version 2 added the stamp column and, on the server engines, the write
// fence (<table>_writes and its triggers); tables of version 1 are
// upgraded in place.
const SchemaVersion = 2

// legacyColumns are the columns of the earlier raw-SQL RetrySpool SQLite
// backend, which stored times as whole Unix seconds and kept no version;
// retry_policy_name came late and may be missing.
var legacyColumns = []string{
	"id", "state", "attempts", "max_attempts", "next_retry", "created",
	"updated", "last_error", "size", "priority", "headers",
}

// migrate creates or upgrades the schema of the repository's table. It
// first looks on the read side, so that opening a current schema writes
// nothing (and works on a read-only store); otherwise it runs in one write
// transaction (on MySQL, whose DDL commits implicitly, under a named lock
// instead), which looks again, so that several processes may open the
// same table at once.
func (r *Repository) migrate(ctx context.Context) error {
	var plan migration
	err := r.ex.read(ctx, false, func(c conn) (err error) {
		plan, err = r.plan(c.gorm())
		return err
	})
	if err == nil && plan != migrateNothing {
		err = r.ex.write(ctx, func(c conn) error {
			tx := c.gorm()
			unlock, err := r.d.lockSchema(tx, r.t.messages)
			if err != nil {
				return err
			}
			defer unlock()
			return r.migrateTx(tx)
		})
		if err == nil && r.tel != nil {
			what := map[migration]string{migrateCreate: "created", migrateLegacy: "upgraded from the legacy schema",
				migrateUpgrade: "upgraded from version 1", migrateRepair: "repaired (missing tables, triggers or counters recreated, counters recounted)"}[plan]
			r.tel.Log(ctx, slog.LevelInfo, "schema "+what, slog.Int("version", SchemaVersion))
		}
	}
	if err != nil {
		return fmt.Errorf("migrate table %q: %w", r.t.messages, r.d.translate(err))
	}
	return nil
}

// migration is what the schema of a table needs.
type migration int

const (
	migrateNothing migration = iota // current
	migrateCreate                   // no table yet
	migrateLegacy                   // a table of the raw-SQL backend
	migrateUpgrade                  // a table of schema version 1
)

// plan inspects the database without changing it and tells what the table
// needs, or why it cannot be used.
func (r *Repository) plan(db *gorm.DB) (migration, error) {
	mig := db.Migrator()
	version := 0
	if mig.HasTable(model.SchemaTableName) {
		var versions []model.SchemaVersion
		if err := db.Where("table_name = ?", r.t.messages).Find(&versions).Error; err != nil {
			return 0, fmt.Errorf("read schema version: %w", err)
		}
		if len(versions) > 0 {
			version = versions[0].Version
		}
	}
	switch {
	case version > SchemaVersion:
		return 0, fmt.Errorf("%w: table %q has schema version %d, this library knows up to %d",
			ErrSchemaTooNew, r.t.messages, version, SchemaVersion)
	case version == SchemaVersion:
		return r.planRepair(db) // repair.go: is what the version promises there?
	case version == 1:
		return migrateUpgrade, nil
	case !mig.HasTable(r.t.messages):
		return migrateCreate, nil
	}
	cols, err := mig.ColumnTypes(r.t.messages)
	if err != nil {
		return 0, fmt.Errorf("inspect table %q: %w", r.t.messages, err)
	}
	have := map[string]bool{}
	for _, c := range cols {
		have[strings.ToLower(c.Name())] = true
	}
	var missing, extra []string
	for _, c := range legacyColumns {
		if !have[c] {
			missing = append(missing, c)
		}
		delete(have, c)
	}
	delete(have, "retry_policy_name")
	for c := range have {
		extra = append(extra, c)
	}
	sort.Strings(extra)
	if len(missing) > 0 || len(extra) > 0 {
		return 0, fmt.Errorf("%w: table %q (missing columns %v, unknown columns %v); choose another table name",
			ErrForeignTable, r.t.messages, missing, extra)
	}
	if mig.HasTable(r.t.messages + "_legacy") {
		return 0, fmt.Errorf("%w: both %q and %q exist", ErrForeignTable, r.t.messages, r.t.messages+"_legacy")
	}
	return migrateLegacy, nil
}

// Check tells, without changing anything, whether the table name of cfg
// on db can be used: nil, or ErrSchemaTooNew, ErrForeignTable or a database
// error. It reads only, so it may run on a read-only connection.
func Check(ctx context.Context, db *gorm.DB, tableName string) error {
	if tableName == "" {
		tableName = model.DefaultTableName
	}
	if err := CheckTableName(tableName); err != nil {
		return err
	}
	d, err := dialectFor(db)
	if err != nil {
		return err
	}
	r := &Repository{d: d, t: tablesOf(tableName)}
	_, err = r.plan(db.WithContext(ctx))
	return d.translate(err)
}

func (r *Repository) migrateTx(tx *gorm.DB) error {
	plan, err := r.plan(tx)
	if err != nil {
		return err
	}
	if plan == migrateNothing {
		return nil
	}
	if plan == migrateRepair {
		return r.repair(tx)
	}
	if err := r.createSchemaTable(tx); err != nil {
		return err
	}
	switch plan {
	case migrateLegacy:
		err = r.upgradeLegacy(tx)
	case migrateUpgrade:
		err = r.upgradeV1(tx)
	default:
		err = r.createTables(tx)
	}
	if err != nil {
		return err
	}
	return tx.Save(&model.SchemaVersion{
		Table: r.t.messages, Version: SchemaVersion, Updated: time.Now().UnixNano(),
	}).Error
}

// createSchemaTable creates retryspool_schema if it is missing, under a
// lock of its own: the migrations of two different tables may both find it
// missing at once.
func (r *Repository) createSchemaTable(tx *gorm.DB) error {
	if tx.Migrator().HasTable(model.SchemaTableName) {
		return nil
	}
	unlock, err := r.d.lockSchema(tx, model.SchemaTableName)
	if err != nil {
		return err
	}
	defer unlock()
	if tx.Migrator().HasTable(model.SchemaTableName) {
		return nil
	}
	if err := r.ddl(tx).AutoMigrate(&model.SchemaVersion{}); err != nil {
		return fmt.Errorf("create %s: %w", model.SchemaTableName, err)
	}
	return nil
}

// ddl returns tx prepared for AutoMigrate on this engine.
func (r *Repository) ddl(tx *gorm.DB) *gorm.DB {
	if r.d.tableOptions != "" {
		return tx.Set("gorm:table_options", r.d.tableOptions)
	}
	return tx
}

// createTables builds the message and counter tables with their indexes and
// triggers, counters at zero.
func (r *Repository) createTables(tx *gorm.DB) error {
	if err := r.ddl(tx).Table(r.t.messages).AutoMigrate(&model.Message{}); err != nil {
		return fmt.Errorf("create table %q: %w", r.t.messages, err)
	}
	if err := r.ddl(tx).Table(r.t.counts).AutoMigrate(&model.StateCount{}); err != nil {
		return fmt.Errorf("create table %q: %w", r.t.counts, err)
	}
	if err := r.resetCounts(tx); err != nil {
		return err
	}
	return r.createTriggers(tx)
}

// upgradeV1 brings a table of schema version 1 to version 2: the stamp
// column (0 in the rows there), and on the server engines the write fence.
func (r *Repository) upgradeV1(tx *gorm.DB) error {
	if err := r.ddl(tx).Table(r.t.messages).AutoMigrate(&model.Message{}); err != nil {
		return fmt.Errorf("add the stamp column to %q: %w", r.t.messages, err)
	}
	return r.createTriggers(tx)
}

// createTriggers creates the write fence's table where the engine has one,
// then the count and fence triggers (those that exist are kept).
func (r *Repository) createTriggers(tx *gorm.DB) error {
	if r.d.fenced && !tx.Migrator().HasTable(r.t.writes) {
		if err := r.ddl(tx).Table(r.t.writes).AutoMigrate(&model.Write{}); err != nil {
			return fmt.Errorf("create table %q: %w", r.t.writes, err)
		}
	}
	for _, stmt := range r.d.triggers(r.t) {
		if err := tx.Exec(stmt).Error; err != nil {
			return fmt.Errorf("create triggers: %w", err)
		}
	}
	return nil
}

// resetCounts sets the counters to the table's real counts.
func (r *Repository) resetCounts(tx *gorm.DB) error {
	c, m := r.d.ident(r.t.counts), r.d.ident(r.t.messages)
	if err := tx.Exec("DELETE FROM " + c).Error; err != nil {
		return fmt.Errorf("reset counters: %w", err)
	}
	var values []string
	for _, state := range allStates {
		for shard := 0; shard < r.d.shards; shard++ {
			values = append(values, fmt.Sprintf("(%d, %d, 0)", int(state), shard))
		}
	}
	if err := tx.Exec("INSERT INTO " + c + " (state, shard, n) VALUES " + strings.Join(values, ", ")).Error; err != nil {
		return fmt.Errorf("seed counters: %w", err)
	}
	err := tx.Exec("UPDATE " + c + " SET n = (SELECT COUNT(*) FROM " + m + " WHERE " + m + ".state = " + c + ".state) WHERE shard = 0").Error
	if err != nil {
		return fmt.Errorf("count messages: %w", err)
	}
	return nil
}

// upgradeLegacy rebuilds a table of the earlier raw-SQL backend in place:
// the old rows move into the new schema with their times converted from
// seconds to nanoseconds (the zero time stays zero), in the migration's
// transaction, so a crash leaves the old table as it was.
func (r *Repository) upgradeLegacy(tx *gorm.DB) error {
	mig := tx.Migrator()
	policy := "''"
	if mig.HasColumn(r.t.messages, "retry_policy_name") {
		policy = "COALESCE(retry_policy_name, '')"
	}
	legacy := r.t.messages + "_legacy"
	indexes, err := mig.GetIndexes(r.t.messages)
	if err != nil {
		return fmt.Errorf("inspect indexes of %q: %w", r.t.messages, err)
	}
	for _, idx := range indexes {
		if pk, ok := idx.PrimaryKey(); ok && pk {
			continue
		}
		if r.d.ownIndex(idx.Name()) {
			continue
		}
		if err := mig.DropIndex(r.t.messages, idx.Name()); err != nil {
			return fmt.Errorf("drop legacy index %q: %w", idx.Name(), err)
		}
	}
	if err := mig.RenameTable(r.t.messages, legacy); err != nil {
		return fmt.Errorf("rename legacy table: %w", err)
	}
	if err := r.ddl(tx).Table(r.t.messages).AutoMigrate(&model.Message{}); err != nil {
		return fmt.Errorf("create table %q: %w", r.t.messages, err)
	}
	if err := r.ddl(tx).Table(r.t.counts).AutoMigrate(&model.StateCount{}); err != nil {
		return fmt.Errorf("create table %q: %w", r.t.counts, err)
	}
	seconds := func(col string) string {
		return fmt.Sprintf("CASE WHEN %[1]s IS NULL OR %[1]s < %[2]d THEN %[3]d ELSE %[1]s * 1000000000 END",
			col, int64(math.MinInt64/1_000_000_000), int64(model.ZeroTime))
	}
	copyRows := fmt.Sprintf(`INSERT INTO %s (%s) SELECT id, state, COALESCE(attempts, 0), COALESCE(max_attempts, 0), %s, %s, %s,
		COALESCE(last_error, ''), COALESCE(size, 0), COALESCE(priority, 0),
		CASE WHEN headers IS NULL OR headers = '' OR headers = 'null' THEN NULL ELSE headers END, %s FROM %s`,
		r.d.ident(r.t.messages), columnList,
		seconds("next_retry"), seconds("created"), seconds("updated"), policy+", 0", r.d.ident(legacy))
	if err := tx.Exec(copyRows).Error; err != nil {
		return fmt.Errorf("copy legacy rows: %w", err)
	}
	if err := mig.DropTable(legacy); err != nil {
		return fmt.Errorf("drop legacy table: %w", err)
	}
	if err := r.resetCounts(tx); err != nil {
		return err
	}
	return r.createTriggers(tx)
}

// Drop removes a queue's tables, triggers and schema record from db: the
// inverse of the migration, for tests and for retiring a queue. Every
// message of the queue is gone afterwards (the bodies in a data store are
// not touched). It removes the count and fence triggers (on PostgreSQL
// also their functions), the message table <tableName>, the counter table
// <tableName>_counts, the write fence <tableName>_writes and the table's
// row in retryspool_schema, and
// nothing else: other queues' tables, and retryspool_schema itself, stay.
// Stop every process using the queue first; a repository still open on it
// fails its next calls, and the next open creates the tables anew. The
// statements run one after another, not in one transaction: after an
// error, run Drop again (each step skips what is already gone). The
// command "spoolmeta drop --yes" calls it.
func Drop(ctx context.Context, db *gorm.DB, tableName string) error {
	if err := CheckTableName(tableName); err != nil {
		return err
	}
	d, err := dialectFor(db)
	if err != nil {
		return err
	}
	t := tablesOf(tableName)
	db = db.WithContext(ctx)
	for _, stmt := range d.dropTriggers(t) {
		if err := db.Exec(stmt).Error; err != nil {
			return fmt.Errorf("drop %q: %w", tableName, err)
		}
	}
	if err := db.Migrator().DropTable(t.messages, t.counts, t.writes); err != nil {
		return fmt.Errorf("drop %q: %w", tableName, err)
	}
	if db.Migrator().HasTable(model.SchemaTableName) {
		if err := db.Where("table_name = ?", tableName).Delete(&model.SchemaVersion{}).Error; err != nil {
			return fmt.Errorf("drop %q: %w", tableName, err)
		}
	}
	return nil
}
