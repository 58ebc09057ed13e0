package systemtest

import (
	"context"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	"github.com/stretchr/testify/require"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"gorm.io/driver/mysql"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/faultdb"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/testdb"
	"schneider.vip/retryspool/storage/meta/sqlite/repository"
)

// The store's server connections die under load: a killer terminates
// them at random every 20-60 ms (pg_terminate_backend, KILL CONNECTION)
// while 16 workers store new messages, claim them (ClaimMessages incoming
// to active, 5 at a time, and MoveToState incoming to active on random
// IDs) and finish what they claimed, half of them with MoveToState to
// archived, half with UpdateMeta rewriting the record with State archived,
// as RetrySpool does after its handler ran. A connection may die while a
// write is on its way; the store settles it through the write fence. So:
//   - no message is acknowledged as claimed to two workers, and none is
//     left in active without an owner;
//   - a finish that returned an error did not happen: the worker's next
//     try succeeds rather than meeting its own move;
//   - no acknowledged write is lost or undone: every acknowledged store
//     is there, every claimed message ends archived (none went back to
//     incoming), and a store that failed with a plain error did not land;
//   - every ErrOutcomeUnknown is accounted for, and the counters equal a
//     recount.
//
// CONNLOSS_SECONDS sets how long the killer runs (default 15).
func TestConnectionLossUnderLoad(t *testing.T) {
	// The MySQL driver logs every connection it finds dead.
	_ = gomysql.SetLogger(log.New(io.Discard, "", 0))
	for _, e := range testdb.Servers() {
		t.Run(e.Name, func(t *testing.T) {
			if e.Skip != "" {
				t.Skip(e.Skip)
			}
			t.Parallel()
			dsn, kill := killableDSN(t, e)
			runConnectionLoss(t, e, dsn, kill)
		})
	}
}

// killableDSN returns a DSN whose connections only this test makes, and
// a function that kills every open one of them.
func killableDSN(t *testing.T, e testdb.Engine) (string, func(ctx context.Context, admin *gorm.DB) (int, error)) {
	t.Helper()
	admin := e.Open(t)
	switch e.Name {
	case "postgres":
		app := testdb.UniqueName("connloss")
		return e.DSN + " application_name=" + app, func(ctx context.Context, admin *gorm.DB) (int, error) {
			var n int
			err := admin.WithContext(ctx).Raw(
				"SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = ?) k", app).
				Scan(&n).Error
			return n, err
		}
	default:
		cfg, err := gomysql.ParseDSN(e.DSN)
		require.NoError(t, err)
		user := testdb.UniqueName("cl")
		for _, host := range []string{"127.0.0.1", "localhost", "%"} {
			require.NoError(t, admin.Exec(fmt.Sprintf("CREATE USER IF NOT EXISTS '%s'@'%s'", user, host)).Error)
			require.NoError(t, admin.Exec(fmt.Sprintf("GRANT ALL ON `%s`.* TO '%s'@'%s'", cfg.DBName, user, host)).Error)
			t.Cleanup(func() { admin.Exec(fmt.Sprintf("DROP USER IF EXISTS '%s'@'%s'", user, host)) })
		}
		cfg.User, cfg.Passwd = user, ""
		return cfg.FormatDSN(), func(ctx context.Context, admin *gorm.DB) (int, error) {
			var ids []int64
			if err := admin.WithContext(ctx).Raw("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = ?", user).
				Scan(&ids).Error; err != nil {
				return 0, err
			}
			n := 0
			for _, id := range ids {
				if admin.WithContext(ctx).Exec("KILL CONNECTION "+strconv.FormatInt(id, 10)).Error == nil {
					n++
				}
			}
			return n, nil
		}
	}
}

func runConnectionLoss(t *testing.T, e testdb.Engine, dsn string, kill func(context.Context, *gorm.DB) (int, error)) {
	ctx := context.Background()
	admin := e.Open(t)
	var dial gorm.Dialector = postgres.Open(dsn)
	if e.Name == "mysql" {
		dial = mysql.Open(dsn)
	}
	db, err := gorm.Open(dial, &gorm.Config{Logger: logger.Discard, SkipDefaultTransaction: true})
	require.NoError(t, err)
	pool, _ := db.DB()
	pool.SetMaxOpenConns(24)
	t.Cleanup(func() { pool.Close() })
	table := e.Table(t, admin)
	r, reader := openLossRepo(t, db, table)
	w := newLossWorkload(t, r)
	seconds := envSeconds("CONNLOSS_SECONDS", 15)
	w.seed(3000)
	faults := func(stop <-chan struct{}) int64 {
		var killed int64
		for {
			select {
			case <-stop:
				return killed
			case <-time.After(time.Duration(20+rand.IntN(40)) * time.Millisecond):
			}
			kctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			if n, err := kill(kctx, admin); err == nil {
				killed += int64(n)
			}
			cancel()
		}
	}
	killed := w.run(time.Duration(seconds)*time.Second, faults)
	require.Positive(t, killed, "the killer killed connections")
	w.verify(t, admin, table, fmt.Sprintf("%s: %d connections killed", e.Name, killed), faultdb.Settled(t, reader))
}

// openLossRepo opens the repository of a fault suite on db, with a meter
// provider whose reader gives the settle counter.
func openLossRepo(t *testing.T, db *gorm.DB, table string) (*repository.Repository, *sdkmetric.ManualReader) {
	t.Helper()
	ctx := context.Background()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(ctx) })
	r, err := repository.New(ctx, db, repository.Config{TableName: table, MeterProvider: mp})
	require.NoError(t, err)
	t.Cleanup(func() { r.Close() })
	return r, reader
}

// envSeconds reads a duration in seconds from the environment variable
// name, or gives def.
func envSeconds(name string, def int) int {
	if s, err := strconv.Atoi(os.Getenv(name)); err == nil && s > 0 {
		return s
	}
	return def
}
