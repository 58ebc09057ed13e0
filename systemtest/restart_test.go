package systemtest

import (
	"context"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/faultdb"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/testdb"
)

// The servers restart under the connection-loss workload: PostgreSQL
// stopped with -m immediate (no shutdown checkpoint, crash recovery at the
// next start) and started again, MariaDB killed with SIGKILL and started
// again, every few seconds. Calls in flight fail within their context,
// none hangs; the store reconnects by itself (the workload goes on after
// the last restart on the same repository); and the workload's checks
// hold: no double claim, no orphan, nothing acknowledged lost or undone.
//
// It restarts the servers of this machine, so it runs only when
// RESTART_TESTS=1 (and as root, which pg_ctlcluster and start-stop-daemon
// need); it starts them again when it ends, whatever happened.
// RESTART_SECONDS sets how long the restarts go on (default 30).
func TestServerRestartUnderLoad(t *testing.T) {
	if os.Getenv("RESTART_TESTS") != "1" {
		t.Skip("restarts this machine's PostgreSQL and MariaDB: set RESTART_TESTS=1 to run it")
	}
	_ = gomysql.SetLogger(log.New(io.Discard, "", 0))
	for _, e := range testdb.Servers() {
		t.Run(e.Name, func(t *testing.T) {
			if e.Skip != "" {
				t.Skip(e.Skip)
			}
			srv := serverControl(t, e.Name)
			t.Cleanup(func() { // leave it running
				srv.start(t)
				if err := waitUp(e.Open(t)); err != nil {
					t.Error(err)
				}
			})
			runRestarts(t, e, srv)
		})
	}
}

// server stops and starts one database server of this machine.
type server struct {
	stop  func() error
	start func(t *testing.T)
}

func serverControl(t *testing.T, engine string) server {
	t.Helper()
	run := func(name string, args ...string) error {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out)
		}
		return nil
	}
	switch engine {
	case "postgres":
		versions, err := os.ReadDir("/etc/postgresql")
		if err != nil || len(versions) == 0 {
			t.Skip("no PostgreSQL cluster under /etc/postgresql to restart")
		}
		v := versions[0].Name()
		return server{
			stop: func() error {
				return run("pg_ctlcluster", "--skip-systemctl-redirect", v, "main", "stop", "-m", "immediate")
			},
			start: func(t *testing.T) {
				_ = run("pg_ctlcluster", "--skip-systemctl-redirect", v, "main", "start")
			},
		}
	default:
		if _, err := os.Stat("/usr/sbin/mariadbd"); err != nil {
			t.Skip("no /usr/sbin/mariadbd to restart")
		}
		return server{
			stop: func() error {
				if err := run("pkill", "-KILL", "-x", "mariadbd"); err != nil {
					return err
				}
				for range 100 { // until the process is gone
					if exec.Command("pgrep", "-x", "mariadbd").Run() != nil {
						return nil
					}
					time.Sleep(50 * time.Millisecond)
				}
				return fmt.Errorf("mariadbd still running after SIGKILL")
			},
			start: func(t *testing.T) {
				_ = run("start-stop-daemon", "--start", "--oknodo", "--background", "--exec", "/usr/sbin/mariadbd")
			},
		}
	}
}

// waitUp waits until the server answers on db, up to a minute.
func waitUp(db *gorm.DB) error {
	pool, err := db.DB()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(time.Minute)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := pool.PingContext(ctx)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the server does not answer a minute after its start: %w", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func runRestarts(t *testing.T, e testdb.Engine, srv server) {
	admin := e.Open(t)
	db := e.Open(t)
	table := e.Table(t, admin)
	r, reader := openLossRepo(t, db, table)
	seconds := envSeconds("RESTART_SECONDS", 30)
	w := newLossWorkload(t, r)
	w.callTimeout = 10 * time.Second
	w.seed(3000)
	var afterLast int64
	end := time.Now().Add(time.Duration(seconds) * time.Second)
	restarts := func(stop <-chan struct{}) int64 {
		var n int64
		for {
			pause := time.Duration(3000+rand.IntN(3000)) * time.Millisecond
			if time.Until(end) < pause+4*time.Second { // the last seconds run without restarts
				<-stop
				return n
			}
			select {
			case <-stop:
				return n
			case <-time.After(pause):
			}
			if err := srv.stop(); err != nil {
				t.Errorf("stop the server: %v", err)
				return n
			}
			time.Sleep(time.Duration(200+rand.IntN(800)) * time.Millisecond)
			srv.start(t)
			if err := waitUp(admin); err != nil {
				t.Error(err)
				return n
			}
			n++
			afterLast = w.stores.Load() + w.claimCalls.Load()

		}
	}
	n := w.run(time.Duration(seconds)*time.Second, restarts)
	require.Positive(t, n, "the server restarted")
	// The same repository, never reopened, goes on after the last restart.
	after := w.stores.Load() + w.claimCalls.Load() - afterLast
	require.Positive(t, after, "stores and claims acknowledged after the last restart")
	require.Zero(t, w.overdue.Load(), "calls that outlived their context by more than five seconds")
	w.verify(t, admin, table, fmt.Sprintf("%s: %d restarts (%d stores and claims acknowledged after the last)", e.Name, n, after),
		faultdb.Settled(t, reader))
}
