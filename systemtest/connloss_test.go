package systemtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	"github.com/stretchr/testify/require"
	"gorm.io/driver/mysql"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
	metastorage "schneider.vip/retryspool/storage/meta"

	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/testdb"
	"schneider.vip/retryspool/storage/meta/sqlite/repository"
)

// The store's server connections die under load: a killer terminates
// them at random every few tens of milliseconds (pg_terminate_backend,
// KILL CONNECTION) while 16 workers claim messages, finish them and store
// new ones. A connection may die while its COMMIT is in flight; the store
// then checks on another connection whether that write landed. So:
//   - no message is claimed twice, and every claimed message is finished
//     by the worker that claimed it (no orphan left in active);
//   - a finish (MoveToState) that returned an error did not happen: the
//     worker's next try succeeds rather than meeting its own move;
//   - every acknowledged store is there at the end, and the counts are
//     exact.
//
// CONNLOSS_SECONDS sets how long the killer runs (default 4).
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
	r, err := repository.New(ctx, db, repository.Config{TableName: table})
	require.NoError(t, err)
	t.Cleanup(func() { r.Close() })

	const seeded = 3000
	seed := make([]metastorage.MessageMetadata, seeded)
	for i := range seed {
		seed[i] = metastorage.MessageMetadata{ID: fmt.Sprintf("s%05d", i), State: metastorage.StateIncoming, Created: time.Unix(int64(i), 0)}
	}
	require.NoError(t, r.StoreMetaBatch(ctx, seed))

	seconds := 4
	if s, err := strconv.Atoi(os.Getenv("CONNLOSS_SECONDS")); err == nil && s > 0 {
		seconds = s
	}
	stop := make(chan struct{})
	var killed atomic.Int64
	killerDone := make(chan struct{})
	go func() { // the killer
		defer close(killerDone)
		deadline := time.After(time.Duration(seconds) * time.Second)
		for {
			select {
			case <-deadline:
				close(stop)
				return
			case <-time.After(time.Duration(20+rand.IntN(40)) * time.Millisecond):
			}
			kctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			if n, err := kill(kctx, admin); err == nil {
				killed.Add(int64(n))
			}
			cancel()
		}
	}()

	var (
		mu             sync.Mutex
		claimedBy      = map[string]int{} // message -> claims that returned it
		claims         int64
		claimErrs      int64
		finishErrs     int64
		ownMoveMet     []string // a finish that met its own earlier move
		stored         []string // acknowledged stores
		storeErrs      int64
		workersStopped sync.WaitGroup
	)
	finish := func(id string) {
		failed := false
		for {
			err := r.MoveToState(ctx, id, metastorage.StateActive, metastorage.StateArchived)
			switch {
			case err == nil:
				return
			case errors.Is(err, metastorage.ErrStateConflict) && failed:
				mu.Lock()
				ownMoveMet = append(ownMoveMet, id)
				mu.Unlock()
				return
			case errors.Is(err, metastorage.ErrStateConflict), errors.Is(err, metastorage.ErrMessageNotFound):
				t.Errorf("finish %s: %v", id, err)
				return
			}
			failed = true
			atomic.AddInt64(&finishErrs, 1)
			time.Sleep(time.Millisecond)
		}
	}
	for w := range 16 {
		workersStopped.Add(1)
		go func() {
			defer workersStopped.Done()
			for i := 0; ; i++ {
				got, err := r.ClaimMessages(ctx, metastorage.StateIncoming, metastorage.StateActive, 1+rand.IntN(8))
				if err != nil {
					atomic.AddInt64(&claimErrs, 1)
					time.Sleep(time.Millisecond)
					continue
				}
				atomic.AddInt64(&claims, 1)
				mu.Lock()
				for _, md := range got {
					claimedBy[md.ID]++
				}
				mu.Unlock()
				for _, md := range got {
					finish(md.ID)
				}
				if i%4 == 0 {
					id := fmt.Sprintf("n%02d-%05d", w, i)
					md := metastorage.MessageMetadata{ID: id, State: metastorage.StateHold, Created: time.Now()}
					if err := r.StoreMeta(ctx, id, md); err == nil {
						mu.Lock()
						stored = append(stored, id)
						mu.Unlock()
					} else {
						atomic.AddInt64(&storeErrs, 1)
					}
				}
				if len(got) == 0 {
					select {
					case <-stop:
						return
					default:
					}
				}
			}
		}()
	}
	<-killerDone
	workersStopped.Wait()

	t.Logf("%s: %d connections killed, %d claims (%d failed), %d finishes failed and retried, %d stores failed",
		e.Name, killed.Load(), claims, claimErrs, finishErrs, storeErrs)
	require.Positive(t, killed.Load(), "the killer killed connections")
	for id, n := range claimedBy {
		require.Equal(t, 1, n, "message %s claimed once", id)
	}
	require.Equal(t, seeded, len(claimedBy), "every seeded message was claimed by a worker that got it back: no orphan")
	require.Empty(t, ownMoveMet, "a finish that reported an error had in fact moved the message")
	require.Zero(t, r.GetStateCount(metastorage.StateActive), "no orphan in active")
	require.Zero(t, r.GetStateCount(metastorage.StateIncoming))
	require.Equal(t, int64(seeded), r.GetStateCount(metastorage.StateArchived))
	var holds int64
	require.NoError(t, admin.Table(table).Where("state = ?", int(metastorage.StateHold)).Count(&holds).Error)
	require.Equal(t, holds, r.GetStateCount(metastorage.StateHold), "the hold counter agrees with a recount")
	require.GreaterOrEqual(t, holds, int64(len(stored)))
	for _, id := range stored {
		md, err := r.GetMeta(ctx, id)
		require.NoError(t, err, "acknowledged store %s", id)
		require.Equal(t, metastorage.StateHold, md.State)
	}
	var real int64
	require.NoError(t, admin.Table(table).Where("state = ?", int(metastorage.StateArchived)).Count(&real).Error)
	require.Equal(t, int64(seeded), real, "the counters agree with a recount")
}
