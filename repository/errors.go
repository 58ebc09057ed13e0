package repository

import (
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"gorm.io/gorm"
	sqlite3 "modernc.org/sqlite/lib"
	metastorage "schneider.vip/retryspool/storage/meta"

	"schneider.vip/retryspool/storage/meta/sqlite/model"
)

// Errors of this library. The contract's sentinels (metastorage.Err...) are
// returned where the contract asks for them; these cover the rest. All are
// matched with errors.Is.
var (
	// ErrInvalidInput reports an argument the store refuses: an empty or
	// too long ID, an ID that differs from metadata.ID, text that is not
	// valid UTF-8, a time outside the storable range, bad list options.
	ErrInvalidInput = errors.New("invalid input")

	// ErrBusy reports that the database stayed locked by another
	// connection or process for longer than the busy timeout. It wraps the
	// driver's error, so errors.As still reaches the SQLite code.
	ErrBusy = errors.New("database busy: lock not acquired within the busy timeout")

	// ErrSchemaTooNew reports a table written by a newer version of this
	// library. Nothing is changed.
	ErrSchemaTooNew = errors.New("schema version is newer than this library supports")

	// ErrForeignTable reports a table of the chosen name whose shape is
	// neither this library's nor the legacy RetrySpool SQLite backend's.
	// Nothing is changed.
	ErrForeignTable = errors.New("table exists with a shape this library does not know")

	// ErrIteratorClosed is returned by Next after Close.
	ErrIteratorClosed = errors.New("iterator is closed")
)

// translate maps driver and GORM errors to the contract's sentinels or to
// the errors above, keeping the original in the chain. It is the one place
// where engine errors are interpreted.
func translate(err error) error {
	if err == nil {
		return nil
	}
	switch {
	case errors.Is(err, metastorage.ErrMessageNotFound),
		errors.Is(err, metastorage.ErrStateConflict),
		errors.Is(err, metastorage.ErrInvalidState),
		errors.Is(err, metastorage.ErrBackendClosed),
		errors.Is(err, ErrBusy),
		errors.Is(err, ErrInvalidInput):
		return err
	case errors.Is(err, gorm.ErrRecordNotFound), errors.Is(err, sql.ErrNoRows):
		return metastorage.ErrMessageNotFound
	case errors.Is(err, model.ErrHeaders), errors.Is(err, model.ErrTimeRange):
		return fmt.Errorf("%w: %w", ErrInvalidInput, err)
	}
	// Both SQLite drivers (glebarez's and internal/sqlitedriver) report the
	// extended result code through Code().
	var se interface{ Code() int }
	if errors.As(err, &se) {
		switch se.Code() & 0xff {
		case sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED:
			return fmt.Errorf("%w: %w", ErrBusy, err)
		}
	}
	if strings.Contains(err.Error(), "sql: database is closed") {
		return fmt.Errorf("%w: %w", metastorage.ErrBackendClosed, err)
	}
	return err
}

// isRetryable reports errors after which a whole transaction may simply be
// run again: deadlocks and serialization failures on the server engines.
func isRetryable(err error) bool {
	if err == nil {
		return false
	}
	var pg interface{ SQLState() string }
	if errors.As(err, &pg) {
		code := pg.SQLState()
		return code == "40P01" || code == "40001" // deadlock_detected, serialization_failure
	}
	// go-sql-driver/mysql formats its errors as "Error <number> (<state>): ...".
	msg := err.Error()
	return strings.Contains(msg, "Error 1213 ") || // ER_LOCK_DEADLOCK
		strings.Contains(msg, "Error 1205 ") // ER_LOCK_WAIT_TIMEOUT
}

// closedOr returns ErrBackendClosed when the backend was closed while err
// happened, and err otherwise. Close cancels the context of the calls in
// flight, and what a driver makes of that varies: context.Canceled, an
// interrupted statement, a transaction database/sql already rolled back, a
// dropped connection, an I/O timeout. So once the backend is closed, every
// error but a call's own outcome (not found, conflict, invalid input) means
// closed; the original stays in the chain.
func (r *Repository) closedOr(err error) error {
	if err == nil {
		return nil
	}
	err = translate(err)
	if r.life.isClosed() && !errors.Is(err, metastorage.ErrBackendClosed) &&
		!errors.Is(err, metastorage.ErrMessageNotFound) && !errors.Is(err, metastorage.ErrStateConflict) &&
		!errors.Is(err, metastorage.ErrInvalidState) && !errors.Is(err, ErrInvalidInput) {
		return fmt.Errorf("%w: %w", metastorage.ErrBackendClosed, err)
	}
	return err
}
