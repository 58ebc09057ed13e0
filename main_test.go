package sqlite_test

import (
	"os"
	"testing"

	"go.uber.org/goleak"

	"schneider.vip/retryspool/storage/meta/sqlite/internal/proc"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/testnotice"
)

// TestMain checks that no test leaves a goroutine behind. Started as a
// child process of a multi-process test, the binary plays its role
// instead and runs no test.
func TestMain(m *testing.M) {
	if role := proc.Role(); role != "" {
		os.Exit(runChild(role))
	}
	testnotice.Print() // which server tests were skipped, once per go test run
	goleak.VerifyTestMain(m)
}
