package systemtest

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	"gorm.io/gorm"
	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/testdb"
)

// TestRepairAtOpen damages a queue's schema by hand, as an operator or a
// script might, and checks that the next open puts it right: the tables,
// the count triggers (on PostgreSQL the trigger function survives a
// dropped table) and the counters, recounted from the rows. Before, the
// open returned nil because the schema-version row said all was there,
// and every write failed with "no such table".
func TestRepairAtOpen(t *testing.T) {
	damage := map[string]func(e testdb.Engine, table string) []string{
		"message table dropped": func(e testdb.Engine, table string) []string {
			return []string{"DROP TABLE " + quote(e, table)}
		},
		"counter table dropped": func(e testdb.Engine, table string) []string {
			return []string{"DROP TABLE " + quote(e, table+"_counts")}
		},
		"counter rows deleted": func(e testdb.Engine, table string) []string {
			return []string{"DELETE FROM " + quote(e, table+"_counts")}
		},
		"count triggers dropped": func(e testdb.Engine, table string) []string {
			switch e.Name {
			case "postgres":
				return []string{`DROP TRIGGER "` + table + `_count" ON "` + table + `"`}
			case "mysql":
				return []string{"DROP TRIGGER `" + table + "_count_delete`", "DROP TRIGGER `" + table + "_count_update`"}
			}
			return []string{`DROP TRIGGER "` + table + `_count_delete"`, `DROP TRIGGER "` + table + `_count_update"`}
		},
	}
	for _, e := range testdb.Engines() {
		t.Run(e.Name, func(t *testing.T) {
			if e.Skip != "" {
				t.Skip(e.Skip)
			}
			for name, statements := range damage {
				t.Run(name, func(t *testing.T) {
					open, raw, table := engineOpener(t, e)
					ctx := context.Background()
					r := open()
					for i := 0; i < 12; i++ {
						require.NoError(t, r.StoreMeta(ctx, message(i).ID, message(i)))
					}
					rowsKept := name != "message table dropped"
					require.NoError(t, r.Close())
					db := raw()
					for _, stmt := range statements(e, table) {
						require.NoError(t, db.Exec(stmt).Error, stmt)
					}
					// Writes while a trigger is missing leave the
					// counters wrong; the repair recounts.
					if name == "count triggers dropped" {
						require.NoError(t, db.Exec("DELETE FROM "+quote(e, table)+" WHERE id = ?", message(0).ID).Error)
					}

					r = open()
					defer r.Close()
					want := map[metastorage.QueueState]int64{}
					if rowsKept {
						for i := 0; i < 12; i++ {
							if name == "count triggers dropped" && i == 0 {
								continue
							}
							want[message(i).State]++
						}
					}
					for s := metastorage.StateIncoming; s <= metastorage.StateArchived; s++ {
						require.Equal(t, want[s], r.GetStateCount(s), "count of %s after the repair", s)
					}
					md := message(100)
					require.NoError(t, r.StoreMeta(ctx, md.ID, md), "writes work again")
					require.NoError(t, r.MoveToState(ctx, md.ID, md.State, metastorage.StateHold))
					require.Equal(t, want[metastorage.StateHold]+1, r.GetStateCount(metastorage.StateHold), "the triggers count again")
				})
			}
		})
	}
}

func quote(e testdb.Engine, name string) string {
	if e.Name == "mysql" {
		return "`" + name + "`"
	}
	return `"` + name + `"`
}

// engineOpener returns a function that opens the queue's repository, one
// that gives the raw database, and the table name.
func engineOpener(t *testing.T, e testdb.Engine) (func() *sqlitemeta.Repository, func() *gorm.DB, string) {
	t.Helper()
	if e.Name == "sqlite" {
		path := tempDB(t)
		open := func() *sqlitemeta.Repository {
			r, err := sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(path)).Open(context.Background())
			require.NoError(t, err)
			return r
		}
		raw := func() *gorm.DB {
			r := open()
			t.Cleanup(func() { r.Close() })
			return r.DB()
		}
		return open, raw, "messages"
	}
	db := e.Open(t)
	table := e.Table(t, db)
	open := func() *sqlitemeta.Repository {
		r, err := sqlitemeta.NewFactory(sqlitemeta.WithDB(db), sqlitemeta.WithTableName(table)).Open(context.Background())
		require.NoError(t, err)
		return r
	}
	return open, func() *gorm.DB { return db }, table
}
