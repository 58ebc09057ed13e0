package systemtest

import (
	"os"
	"testing"

	"schneider.vip/retryspool/storage/meta/sqlite/internal/testnotice"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testnotice.Print()
	os.Exit(code)
}
