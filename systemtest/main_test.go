package systemtest

import (
	"context"
	"os"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/notice"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/proc"
)

// Roles of the child processes.
const (
	roleCrash   = "crash"   // writes and acknowledges until killed (crash_test.go)
	roleMigrate = "migrate" // upgrades a legacy file (crash_test.go)
	roleBusy    = "busy"    // holds the write lock on command (busy_test.go)
	roleMove    = "move"    // races MoveToState with another process (race_test.go)
	roleClaim   = "claim"   // races ClaimMessages with another process (race_test.go)
	roleQueue   = "queue"   // runs the queue workload until killed (queuekill_test.go)
)

// TestMain checks that no test leaves a goroutine behind. Started as a
// child process of a multi-process test, the binary plays its role instead
// and runs no test.
func TestMain(m *testing.M) {
	if proc.Role() != "" {
		os.Exit(proc.Main(map[string]func() error{
			roleCrash:   crashChild,
			roleMigrate: migrateChild,
			roleBusy:    busyChild,
			roleMove:    func() error { return raceChild(roleMove) },
			roleClaim:   func() error { return raceChild(roleClaim) },
			roleQueue:   queueChild,
		}))
	}
	notice.Print() // which server tests were skipped, once per go test run
	goleak.VerifyTestMain(m)
}

// openFile opens a SQLite file with the factory and closes it when the
// test ends.
func openFile(t testing.TB, path string, opts ...sqlitemeta.Option) *sqlitemeta.Repository {
	t.Helper()
	r, err := sqlitemeta.NewFactory(append([]sqlitemeta.Option{sqlitemeta.WithDatabasePath(path)}, opts...)...).Open(context.Background())
	require.NoError(t, err)
	t.Cleanup(func() { _ = r.Close() })
	return r
}
