package sqlite_test

import (
	"os"
	"testing"

	"go.uber.org/goleak"

	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/proc"
)

// TestMain checks that no test leaves a goroutine behind. Started as a
// child process of a multi-process test, the binary plays its role
// instead and runs no test.
func TestMain(m *testing.M) {
	if role := proc.Role(); role != "" {
		os.Exit(runChild(role))
	}
	goleak.VerifyTestMain(m)
}
