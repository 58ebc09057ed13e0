package repository_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"gorm.io/gorm"
	metastorage "schneider.vip/retryspool/storage/meta"

	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/testdb"
	"schneider.vip/retryspool/storage/meta/sqlite/model"
	"schneider.vip/retryspool/storage/meta/sqlite/repository"
)

// A table of schema version 1 (no stamp column, no write fence) is
// upgraded in place at the next open: its records kept, the stamp column
// added, the fence and its triggers created on the servers, the version
// recorded as 2; and a write of the upgraded table is recorded in the
// fence.
func TestUpgradeFromSchemaVersion1(t *testing.T) {
	forEngines(t, func(t *testing.T, e testdb.Engine) {
		ctx := context.Background()
		var db *gorm.DB
		table := model.DefaultTableName
		if e.Name == "sqlite" {
			db = testdb.OpenSQLite(t, testdb.SQLitePath(t))
		} else {
			db = e.Open(t)
			table = e.Table(t, db)
		}
		r, err := repository.New(ctx, db, repository.Config{TableName: table})
		require.NoError(t, err)
		old := metastorage.MessageMetadata{ID: "old", State: metastorage.StateDeferred, Attempts: 3, Created: time.Unix(100, 0).UTC()}
		require.NoError(t, r.StoreMeta(ctx, "old", old))
		require.NoError(t, r.Close())

		// Back to version 1, as the library before the fence left it.
		var downgrade []string
		switch e.Name {
		case "postgres":
			// Version 1's count trigger fired on changes of state only,
			// and its function kept no fence.
			downgrade = []string{`DROP TRIGGER "` + table + `_count" ON "` + table + `"`,
				`CREATE OR REPLACE FUNCTION "` + table + `_count"() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    UPDATE "` + table + `_counts" SET n = n + 1 WHERE state = NEW.state AND shard = pg_backend_pid() % 16;
  ELSIF TG_OP = 'DELETE' THEN
    UPDATE "` + table + `_counts" SET n = n - 1 WHERE state = OLD.state AND shard = pg_backend_pid() % 16;
  ELSIF OLD.state <> NEW.state THEN
    UPDATE "` + table + `_counts" SET n = n + (CASE WHEN state = NEW.state THEN 1 ELSE -1 END)
      WHERE shard = pg_backend_pid() % 16 AND state IN (OLD.state, NEW.state);
  END IF;
  RETURN NULL;
END $$`,
				`CREATE TRIGGER "` + table + `_count" AFTER INSERT OR DELETE OR UPDATE OF state ON "` + table + `" FOR EACH ROW EXECUTE FUNCTION "` + table + `_count"()`,
				`DROP TABLE "` + table + `_writes"`}
		case "mysql":
			for _, s := range []string{"insert", "update", "delete"} {
				downgrade = append(downgrade, "DROP TRIGGER `"+table+"_fence_"+s+"`")
			}
			downgrade = append(downgrade, "DROP TABLE `"+table+"_writes`")
		}
		for _, q := range downgrade {
			require.NoError(t, db.Exec(q).Error, q)
		}
		require.NoError(t, db.Exec("ALTER TABLE "+table+" DROP COLUMN stamp").Error)
		require.NoError(t, db.Exec("UPDATE "+model.SchemaTableName+" SET version = 1 WHERE table_name = ?", table).Error)
		require.False(t, db.Migrator().HasColumn(table, "stamp"))

		r, err = repository.New(ctx, db, repository.Config{TableName: table})
		require.NoError(t, err)
		t.Cleanup(func() { _ = r.Close() })
		require.True(t, db.Migrator().HasColumn(table, "stamp"))
		var version int
		require.NoError(t, db.Raw("SELECT version FROM "+model.SchemaTableName+" WHERE table_name = ?", table).Scan(&version).Error)
		require.Equal(t, repository.SchemaVersion, version)
		got, err := r.GetMeta(ctx, "old")
		require.NoError(t, err)
		require.Equal(t, old.State, got.State)
		require.Equal(t, old.Attempts, got.Attempts)
		require.NoError(t, r.MoveToState(ctx, "old", metastorage.StateDeferred, metastorage.StateActive))
		if e.Name != "sqlite" {
			var n int64
			require.NoError(t, db.Table(table+"_writes").Where("id = ?", "old").Count(&n).Error)
			require.EqualValues(t, 1, n, "the move is recorded in the fence")
		}
	})
}
