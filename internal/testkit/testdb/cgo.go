//go:build cgo

package testdb

import (
	"testing"

	cgosqlite "gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// CgoSkip is why the cgo SQLite driver cannot run here; empty when it can.
const CgoSkip = ""

// OpenSQLiteCgo opens the SQLite file at path with gorm.io/driver/sqlite
// (mattn/go-sqlite3, cgo), the driver GORM's own documentation uses, with
// no DSN flags, and closes it when the test ends.
func OpenSQLiteCgo(tb testing.TB, path string) *gorm.DB {
	tb.Helper()
	db, err := gorm.Open(cgosqlite.Open(path), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		tb.Fatalf("testdb: open %s with the cgo driver: %v", path, err)
	}
	sqlDB, _ := db.DB()
	tb.Cleanup(func() { sqlDB.Close() })
	return db
}
