// Package wiring carries what the root factory opened for a SQLite file
// to the repository, so that this wiring stays out of package
// repository's public API: an application calling repository.New with its
// own *gorm.DB never sees it.
//
// The factory attaches a *File to the *gorm.DB it hands to repository.New
// as a GORM instance setting (db.Set(Key, file)); the repository reads it
// with db.Get(Key).
package wiring

import (
	"database/sql"
	"time"
)

// Key is the GORM setting that holds the *File.
const Key = "retryspool:sqlite-file"

// File is a SQLite file opened by the factory.
type File struct {
	// Writer is a pool of one connection, opened with _txlock=immediate
	// and the writer's pragmas, that the group writer takes for its own;
	// nil for a read-only store.
	Writer *sql.DB
	// BusyTimeout is how long a write waits for another process's write
	// lock, in all.
	BusyTimeout time.Duration
	// MaxGroupCommit caps how many writes share one commit.
	MaxGroupCommit int
	// Checkpoint runs PASSIVE WAL checkpoints on the read pool after
	// commits (WAL mode).
	Checkpoint bool
	// OnClose closes what the factory opened, after the repository's
	// last call has returned.
	OnClose func() error
}
