package sqlite_test

import (
	"testing"

	"go.uber.org/goleak"

	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/notice"
)

// TestMain checks that no test leaves a goroutine behind.
func TestMain(m *testing.M) {
	notice.Print() // which server tests were skipped, once per go test run
	goleak.VerifyTestMain(m)
}
