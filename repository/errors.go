package repository

import (
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"gorm.io/gorm"
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

// ErrOutcomeUnknown reports a write whose connection died (or whose
// context ended) while it was on its way to a PostgreSQL or MySQL/MariaDB
// server, and whose outcome the store could not learn afterwards within
// its settle timeout: the server stayed unreachable, or the write's
// session kept its locks. The write may or may not have happened; the
// store did not run it again. It wraps the connection's error. Read the
// record to see where it stands before acting on it.
var ErrOutcomeUnknown = errors.New("outcome of the write unknown: the connection died and the store could not check whether it committed")

// ErrReadOnly reports a write to a store opened read-only. Nothing is
// changed.
var ErrReadOnly = errors.New("store is read-only")

// ErrReentrantCall reports a call of the store made from inside one of its
// own write transactions (a transition hook calling the store with the
// context it was given): it would wait for itself. A hook writes through
// Transition.Tx instead.
var ErrReentrantCall = errors.New("store called from inside its own write transaction; a transition hook must use Transition.Tx")

// translate maps driver and GORM errors to the contract's sentinels or to
// the errors above, keeping the original in the chain. It is the one place
// where engine errors are interpreted; what differs per engine is the
// dialect's.
func (d dialect) translate(err error) error {
	if err == nil {
		return nil
	}
	switch {
	case errors.Is(err, metastorage.ErrMessageNotFound),
		errors.Is(err, metastorage.ErrStateConflict),
		errors.Is(err, metastorage.ErrInvalidState),
		errors.Is(err, metastorage.ErrBackendClosed),
		errors.Is(err, ErrBusy),
		errors.Is(err, ErrInvalidInput),
		errors.Is(err, ErrReadOnly),
		errors.Is(err, ErrReentrantCall),
		errors.Is(err, ErrOutcomeUnknown):
		return err
	case errors.Is(err, gorm.ErrRecordNotFound), errors.Is(err, sql.ErrNoRows):
		return metastorage.ErrMessageNotFound
	case errors.Is(err, model.ErrHeaders), errors.Is(err, model.ErrTimeRange):
		return fmt.Errorf("%w: %w", ErrInvalidInput, err)
	case d.busy != nil && d.busy(err):
		return fmt.Errorf("%w: %w", ErrBusy, err)
	case errors.Is(err, sql.ErrConnDone), strings.Contains(err.Error(), "sql: database is closed"):
		return fmt.Errorf("%w: %w", metastorage.ErrBackendClosed, err)
	}
	return err
}

// isOutcome reports the errors that are a call's own answer (not found,
// conflict, bad input) rather than a failure of the database.
func isOutcome(err error) bool {
	return errors.Is(err, metastorage.ErrMessageNotFound) || errors.Is(err, metastorage.ErrStateConflict) ||
		errors.Is(err, metastorage.ErrInvalidState) || errors.Is(err, ErrInvalidInput) ||
		errors.Is(err, ErrReadOnly) || errors.Is(err, ErrReentrantCall)
}

// closedOr translates err and returns ErrBackendClosed when the backend was
// closed while it happened. Close cancels the context of the calls in
// flight, and what a driver makes of that varies: context.Canceled, an
// interrupted statement, a transaction database/sql already rolled back, a
// dropped connection, an I/O timeout. So once the backend is closed, every
// error but a call's own outcome means closed; the original stays in the
// chain.
func (r *Repository) closedOr(err error) error {
	if err == nil {
		return nil
	}
	err = r.d.translate(err)
	if r.life.isClosed() && !errors.Is(err, metastorage.ErrBackendClosed) && !isOutcome(err) {
		return fmt.Errorf("%w: %w", metastorage.ErrBackendClosed, err)
	}
	return err
}

// outcome names the kind of a call's result for telemetry.
func outcome(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, metastorage.ErrMessageNotFound):
		return "not_found"
	case errors.Is(err, metastorage.ErrStateConflict):
		return "conflict"
	case errors.Is(err, ErrBusy):
		return "busy"
	case errors.Is(err, metastorage.ErrBackendClosed):
		return "closed"
	case errors.Is(err, ErrOutcomeUnknown):
		return "unknown"
	case isOutcome(err):
		return "invalid"
	}
	return "error"
}
