package sqlite_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"gorm.io/driver/mysql"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
)

func TestSmokeEngines(t *testing.T) {
	for _, d := range []gorm.Dialector{
		postgres.Open("host=127.0.0.1 user=postgres dbname=test sslmode=disable"),
		mysql.Open("root@tcp(127.0.0.1:3306)/test?parseTime=false"),
	} {
		db, err := gorm.Open(d, &gorm.Config{})
		require.NoError(t, err)
		table := fmt.Sprintf("smoke_%d", time.Now().UnixNano()%100000)
		b, err := sqlitemeta.NewFactory(sqlitemeta.WithDB(db), sqlitemeta.WithTableName(table)).Create()
		require.NoError(t, err)
		ctx := context.Background()
		now := time.Now()
		md := metastorage.MessageMetadata{ID: "m1", State: metastorage.StateIncoming, Created: now, Updated: now, Headers: map[string]string{"a": "b"}}
		require.NoError(t, b.StoreMeta(ctx, "m1", md))
		md2 := md
		md2.ID = "M1"
		require.NoError(t, b.StoreMeta(ctx, "M1", md2))
		got, err := b.GetMeta(ctx, "m1")
		require.NoError(t, err)
		require.True(t, got.Created.Equal(now))
		require.Equal(t, int64(2), b.(metastorage.StateCounterBackend).GetStateCount(metastorage.StateIncoming))
		require.NoError(t, b.MoveToState(ctx, "m1", metastorage.StateIncoming, metastorage.StateActive))
		require.Equal(t, metastorage.ErrStateConflict, b.MoveToState(ctx, "m1", metastorage.StateIncoming, metastorage.StateActive))
		require.NoError(t, b.UpdateMeta(ctx, "m1", got))
		require.NoError(t, b.UpdateMeta(ctx, "m1", got))
		require.Equal(t, int64(2), b.(metastorage.StateCounterBackend).GetStateCount(metastorage.StateIncoming))
		res, err := b.ListMessages(ctx, metastorage.StateIncoming, metastorage.MessageListOptions{})
		require.NoError(t, err)
		require.Equal(t, []string{"M1", "m1"}, res.MessageIDs)
		require.NoError(t, b.Close())
		// reopen: migration is a no-op
		b, err = sqlitemeta.NewFactory(sqlitemeta.WithDB(db), sqlitemeta.WithTableName(table)).Create()
		require.NoError(t, err)
		require.NoError(t, b.Close())
		require.NoError(t, db.Migrator().DropTable(table, table+"_counts"))
	}
}

func TestSmokeClaim(t *testing.T) {
	for _, d := range []gorm.Dialector{
		postgres.Open("host=127.0.0.1 user=postgres dbname=test sslmode=disable"),
		mysql.Open("root@tcp(127.0.0.1:3306)/test"),
		nil,
	} {
		var opts []sqlitemeta.Option
		var db *gorm.DB
		table := fmt.Sprintf("smoke_%d", time.Now().UnixNano()%100000)
		if d != nil {
			var err error
			db, err = gorm.Open(d, &gorm.Config{})
			require.NoError(t, err)
			opts = append(opts, sqlitemeta.WithDB(db), sqlitemeta.WithTableName(table))
		} else {
			opts = append(opts, sqlitemeta.WithDatabasePath(t.TempDir()+"/x.db"))
		}
		r, err := sqlitemeta.NewFactory(opts...).Open(context.Background())
		require.NoError(t, err)
		ctx := context.Background()
		var recs []metastorage.MessageMetadata
		base := time.Now()
		for i := 0; i < 250; i++ {
			recs = append(recs, metastorage.MessageMetadata{ID: fmt.Sprintf("id%04d", i), State: metastorage.StateDeferred, Created: base.Add(time.Duration(i)), NextRetry: base.Add(time.Duration(250-i) * time.Second)})
		}
		require.NoError(t, r.StoreMetaBatch(ctx, recs))
		require.Equal(t, int64(250), r.GetStateCount(metastorage.StateDeferred))
		due, err := r.DueMessages(ctx, base.Add(10*time.Second), 100)
		require.NoError(t, err)
		require.Len(t, due, 10)
		require.Equal(t, "id0249", due[0].ID)
		got, err := r.ClaimDue(ctx, base.Add(10*time.Second), 5)
		require.NoError(t, err)
		require.Len(t, got, 5)
		require.Equal(t, "id0249", got[0].ID)
		require.Equal(t, metastorage.StateActive, got[0].State)
		got, err = r.ClaimMessages(ctx, metastorage.StateDeferred, metastorage.StateHold, 100)
		require.NoError(t, err)
		require.Len(t, got, 100)
		require.Equal(t, "id0000", got[0].ID)
		require.Equal(t, int64(145), r.GetStateCount(metastorage.StateDeferred))
		require.Equal(t, int64(100), r.GetStateCount(metastorage.StateHold))
		require.Equal(t, int64(5), r.GetStateCount(metastorage.StateActive))
		require.NoError(t, r.Close())
		if db != nil {
			require.NoError(t, db.Migrator().DropTable(table, table+"_counts"))
		}
	}
}
