package repository

import (
	"fmt"

	"gorm.io/gorm"

	"schneider.vip/retryspool/storage/meta/sqlite/model"
)

// migrateRepair: the schema version is current but a part of the schema
// is gone (a table dropped by hand, a count trigger missing, the counter
// rows deleted). Kept apart from the plan values of migrate.go.
const migrateRepair migration = 100

// planRepair tells, for a table whose schema version is current, whether
// what the version promises really exists: the message table, the counter
// table with its rows, the write fence's table on the server engines, and
// the triggers that keep counts and fence (on PostgreSQL one trigger and
// its function). It reads only: a few catalogue lookups, whatever the
// table's size.
func (r *Repository) planRepair(db *gorm.DB) (migration, error) {
	missing, err := r.missingSchema(db)
	if err != nil {
		return 0, err
	}
	if len(missing) > 0 {
		return migrateRepair, nil
	}
	return migrateNothing, nil
}

// missingSchema lists what is missing, for planRepair and for messages.
func (r *Repository) missingSchema(db *gorm.DB) ([]string, error) {
	var missing []string
	mig := db.Migrator()
	if !mig.HasTable(r.t.messages) {
		missing = append(missing, "table "+r.t.messages)
	}
	if !mig.HasTable(r.t.counts) {
		missing = append(missing, "table "+r.t.counts)
	} else {
		var rows int64
		if err := db.Raw("SELECT COUNT(*) FROM " + r.d.ident(r.t.counts)).Row().Scan(&rows); err != nil {
			return nil, fmt.Errorf("inspect %q: %w", r.t.counts, err)
		}
		if rows != int64(6*r.d.shards) {
			missing = append(missing, fmt.Sprintf("counter rows of %s (%d of %d)", r.t.counts, rows, 6*r.d.shards))
		}
	}
	if r.d.fenced && !mig.HasTable(r.t.writes) {
		missing = append(missing, "table "+r.t.writes)
	}
	want, query, args := r.triggerQuery()
	var have int64
	if err := db.Raw(query, args...).Row().Scan(&have); err != nil {
		return nil, fmt.Errorf("inspect the count triggers of %q: %w", r.t.messages, err)
	}
	if have < want {
		missing = append(missing, fmt.Sprintf("triggers of %s (%d of %d)", r.t.messages, have, want))
	}
	return missing, nil
}

// triggerQuery returns how many catalogue rows the count triggers make and
// the query that counts those that exist.
func (r *Repository) triggerQuery() (int64, string, []any) {
	names := []any{r.t.messages + "_count_insert", r.t.messages + "_count_delete", r.t.messages + "_count_update"}
	switch r.d.name {
	case "postgres":
		// The trigger goes with a dropped table; its function does not.
		return 2, `SELECT (SELECT COUNT(*) FROM pg_trigger WHERE NOT tgisinternal AND tgname = ? AND tgrelid = to_regclass(?))
			+ (SELECT COUNT(*) FROM pg_proc WHERE proname = ? AND pronamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema()))`,
			[]any{r.t.messages + "_count", r.d.ident(r.t.messages), r.t.messages + "_count"}
	case "mysql":
		names = append(names, r.t.messages+"_fence_insert", r.t.messages+"_fence_update", r.t.messages+"_fence_delete")
		return 6, "SELECT COUNT(*) FROM information_schema.triggers WHERE trigger_schema = DATABASE() AND event_object_table = ? AND trigger_name IN ?",
			[]any{r.t.messages, names}
	}
	return 3, "SELECT COUNT(*) FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ? AND name IN ?",
		[]any{r.t.messages, names}
}

// repair recreates what planRepair found missing, in the migration's
// transaction (on MySQL under its lock): the missing tables with their
// indexes, the count triggers (kept when present), and the counters,
// recounted from the rows, since writes made while a trigger was missing
// left them wrong. Tables that exist are not altered.
func (r *Repository) repair(tx *gorm.DB) error {
	mig := tx.Migrator()
	if !mig.HasTable(r.t.messages) {
		if err := r.ddl(tx).Table(r.t.messages).AutoMigrate(&model.Message{}); err != nil {
			return fmt.Errorf("recreate table %q: %w", r.t.messages, err)
		}
	}
	if !mig.HasTable(r.t.counts) {
		if err := r.ddl(tx).Table(r.t.counts).AutoMigrate(&model.StateCount{}); err != nil {
			return fmt.Errorf("recreate table %q: %w", r.t.counts, err)
		}
	}
	if err := r.resetCounts(tx); err != nil {
		return err
	}
	return r.createTriggers(tx)
}
