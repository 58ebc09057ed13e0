// Package testdb gives tests a fresh database per test on every engine:
// a SQLite file in t.TempDir(), and, when their DSNs are set, a table of its
// own on PostgreSQL and MySQL/MariaDB, dropped when the test ends.
package testdb

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"

	glebarez "github.com/glebarez/sqlite"
	"gorm.io/driver/mysql"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"schneider.vip/retryspool/storage/meta/sqlite/repository"
)

// Environment variables that name the server engines' test databases.
const (
	PostgresEnv = "TEST_POSTGRES_DSN" // e.g. host=127.0.0.1 user=postgres dbname=test sslmode=disable
	MySQLEnv    = "TEST_MYSQL_DSN"    // e.g. root@tcp(127.0.0.1:3306)/test
)

// Engine is one database engine the suites run on.
type Engine struct {
	Name string // "sqlite", "postgres" or "mysql"
	// DSN is the server DSN; empty for SQLite.
	DSN string
	// Skip, when set, is why the engine is not available.
	Skip string
}

// Engines lists SQLite and the server engines, the latter with a Skip
// reason when their environment variable is unset.
func Engines() []Engine {
	out := []Engine{{Name: "sqlite"}}
	for _, e := range []struct{ name, env string }{{"postgres", PostgresEnv}, {"mysql", MySQLEnv}} {
		dsn := os.Getenv(e.env)
		skip := ""
		if dsn == "" {
			skip = e.env + " is not set; set it to run the " + e.name + " tests (see README, Engines)"
		}
		out = append(out, Engine{Name: e.name, DSN: dsn, Skip: skip})
	}
	return out
}

// Servers is Engines without SQLite: PostgreSQL and MySQL/MariaDB.
func Servers() []Engine { return Engines()[1:] }

// Open opens a server engine's database; it is an error to call it for
// SQLite.
func (e Engine) Open(tb testing.TB) *gorm.DB {
	tb.Helper()
	var d gorm.Dialector
	switch e.Name {
	case "postgres":
		d = postgres.Open(e.DSN)
	case "mysql":
		d = mysql.Open(e.DSN)
	default:
		tb.Fatalf("testdb: Open on engine %q", e.Name)
	}
	db, err := gorm.Open(d, &gorm.Config{Logger: logger.Discard, SkipDefaultTransaction: true})
	if err != nil {
		tb.Fatalf("testdb: open %s: %v", e.Name, err)
	}
	sqlDB, _ := db.DB()
	sqlDB.SetMaxOpenConns(32)
	tb.Cleanup(func() { sqlDB.Close() })
	return db
}

// Table returns a fresh table name and drops that queue's tables when the
// test ends.
func (e Engine) Table(tb testing.TB, db *gorm.DB) string {
	tb.Helper()
	name := UniqueName("t")
	tb.Cleanup(func() {
		if err := repository.Drop(context.Background(), db, name); err != nil {
			tb.Errorf("testdb: drop %s: %v", name, err)
		}
	})
	return name
}

// UniqueName returns prefix followed by random hex, a valid table name.
func UniqueName(prefix string) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return prefix + "_" + hex.EncodeToString(b)
}

// SQLitePath returns a database path in a fresh temporary directory.
func SQLitePath(tb testing.TB) string {
	return filepath.Join(tb.TempDir(), "meta.db")
}

// OpenSQLite opens the SQLite file at path as a GORM application does, with
// the glebarez driver and no DSN flags (no busy timeout, no journal mode),
// and closes it when the test ends.
func OpenSQLite(tb testing.TB, path string) *gorm.DB {
	tb.Helper()
	db, err := gorm.Open(glebarez.Open(path), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		tb.Fatalf("testdb: open %s: %v", path, err)
	}
	sqlDB, _ := db.DB()
	tb.Cleanup(func() { sqlDB.Close() })
	return db
}
