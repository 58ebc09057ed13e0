package repository

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Backup writes a consistent copy of a live SQLite database to path, while
// writers go on: SQLite's VACUUM INTO reads one snapshot of the database on
// a read connection and writes it, compacted, to a new file, which is then
// flushed to disk. path must not exist; it is created with mode 0600, and
// removed again if the backup fails. The copy holds every table of the
// database file, not only this repository's, and opens like any database
// made by this library.
//
// On PostgreSQL and MySQL/MariaDB, Backup returns an error wrapping
// ErrInvalidInput: use the server's own backup tools there (pg_dump or
// pg_basebackup; mariadb-dump or mariadb-backup). It also refuses to run on
// a WithTx view, since VACUUM cannot run inside a transaction.
func (r *Repository) Backup(ctx context.Context, path string) (err error) {
	switch {
	case r.d.backupSQL == "":
		return fmt.Errorf("backup: %w: Backup copies SQLite databases; back up %s with the server's own tools (pg_dump, mariadb-dump, mariadb-backup)",
			ErrInvalidInput, r.d.name)
	case r.view:
		return fmt.Errorf("backup: %w: cannot back up inside a transaction", ErrInvalidInput)
	case path == "":
		return fmt.Errorf("backup: %w: empty path", ErrInvalidInput)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return fmt.Errorf("backup: %w: %w", ErrInvalidInput, err)
	}
	ctx, c, err := r.enter(ctx, "Backup", "", long)
	if err != nil {
		return err
	}
	defer func() { err = c.end(err) }()

	// Create the file exclusively, so that an existing file is never
	// overwritten nor, on failure, removed; VACUUM INTO accepts an empty
	// file.
	f, err := os.OpenFile(abs, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	switch {
	case errors.Is(err, os.ErrExist):
		return fmt.Errorf("backup: %w: %s already exists: %w", ErrInvalidInput, abs, err)
	case err != nil:
		return fmt.Errorf("backup: %w", err)
	}
	if err := f.Close(); err != nil {
		_ = os.Remove(abs)
		return fmt.Errorf("backup: %w", err)
	}
	if err := r.vacuumInto(ctx, abs); err != nil {
		_ = os.Remove(abs)
		return fmt.Errorf("backup to %s: %w", abs, r.closedOr(err))
	}
	return nil
}

// vacuumInto writes the snapshot and makes it durable: VACUUM INTO itself
// does not sync the file it writes.
func (r *Repository) vacuumInto(ctx context.Context, path string) error {
	err := r.ex.read(ctx, false, func(c conn) error {
		_, err := c.exec(r.d.bind(r.d.backupSQL), path)
		return err
	})
	if err != nil {
		return err
	}
	if err := syncPath(path); err != nil {
		return err
	}
	return syncPath(filepath.Dir(path))
}

func syncPath(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
