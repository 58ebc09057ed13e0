package sqlitedriver

import (
	"errors"
	"fmt"

	"github.com/glebarez/sqlite"
	"gorm.io/gorm"
	sqlite3 "modernc.org/sqlite/lib"
)

// Dialector is GORM's SQLite dialect (the glebarez one) on this driver. It
// adds what the glebarez dialector does only for its own driver's errors:
// with gorm.Config.TranslateError, a unique or primary key violation
// becomes gorm.ErrDuplicatedKey and a foreign key violation
// gorm.ErrForeignKeyViolated, with the driver's *Error still in the chain.
type Dialector struct {
	*sqlite.Dialector
}

// Open returns the dialector for a DSN of this driver.
func Open(dsn string) *Dialector {
	return &Dialector{&sqlite.Dialector{DriverName: DriverName, DSN: dsn}}
}

// Translate maps this driver's constraint errors to GORM's and leaves the
// rest to the glebarez dialector.
func (d Dialector) Translate(err error) error {
	var se *Error
	if !errors.As(err, &se) {
		return d.Dialector.Translate(err)
	}
	switch se.code {
	case sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
		return fmt.Errorf("%w: %w", gorm.ErrDuplicatedKey, err)
	case sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY:
		return fmt.Errorf("%w: %w", gorm.ErrForeignKeyViolated, err)
	}
	return err
}

var _ gorm.ErrorTranslator = Dialector{}
