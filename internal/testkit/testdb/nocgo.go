//go:build !cgo

package testdb

import (
	"testing"

	"gorm.io/gorm"
)

// CgoSkip is why the cgo SQLite driver cannot run here.
const CgoSkip = "gorm.io/driver/sqlite needs cgo and a C compiler (CGO_ENABLED=1, gcc)"

// OpenSQLiteCgo is not available without cgo.
func OpenSQLiteCgo(tb testing.TB, _ string) *gorm.DB {
	tb.Skip(CgoSkip)
	return nil
}
