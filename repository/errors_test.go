package repository

import (
	"database/sql"
	"errors"
	"fmt"
	"testing"

	glebarez "github.com/glebarez/sqlite"
	"github.com/stretchr/testify/require"
	"gorm.io/driver/mysql"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	sqlite3 "modernc.org/sqlite/lib"
	metastorage "schneider.vip/retryspool/storage/meta"

	"schneider.vip/retryspool/storage/meta/sqlite/model"
)

// codeErr is an error with an SQLite result code, like both drivers'.
type codeErr int

func (c codeErr) Error() string { return fmt.Sprintf("sqlite error %d", int(c)) }
func (c codeErr) Code() int     { return int(c) }

type sqlStateErr string

func (s sqlStateErr) Error() string    { return "pg error " + string(s) }
func (s sqlStateErr) SQLState() string { return string(s) }

func TestTranslate(t *testing.T) {
	t.Parallel()
	require.NoError(t, sqliteDialect.translate(nil))
	for _, tc := range []struct {
		name string
		in   error
		want error
	}{
		{"no rows", sql.ErrNoRows, metastorage.ErrMessageNotFound},
		{"gorm not found", fmt.Errorf("query: %w", gorm.ErrRecordNotFound), metastorage.ErrMessageNotFound},
		{"busy", codeErr(sqlite3.SQLITE_BUSY), ErrBusy},
		{"busy snapshot (extended code)", codeErr(sqlite3.SQLITE_BUSY | 2<<8), ErrBusy},
		{"locked", codeErr(sqlite3.SQLITE_LOCKED), ErrBusy},
		{"headers", fmt.Errorf("encode: %w", model.ErrHeaders), ErrInvalidInput},
		{"time range", model.ErrTimeRange, ErrInvalidInput},
		{"conflict kept", metastorage.ErrStateConflict, metastorage.ErrStateConflict},
		{"closed pool", errors.New("sql: database is closed"), metastorage.ErrBackendClosed},
		{"locked, by message (gorm.io/driver/sqlite)", errors.New("database is locked"), ErrBusy},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := sqliteDialect.translate(tc.in)
			require.ErrorIs(t, got, tc.want)
			if tc.want == metastorage.ErrMessageNotFound {
				require.Equal(t, tc.want, got, "not found is the bare sentinel, comparable with ==")
				return
			}
			require.ErrorIs(t, got, tc.in, "the original error stays in the chain")
		})
	}

	other := codeErr(sqlite3.SQLITE_CONSTRAINT)
	require.Equal(t, error(other), sqliteDialect.translate(other), "other codes pass through unchanged")

	var ce codeErr
	require.ErrorAs(t, sqliteDialect.translate(codeErr(sqlite3.SQLITE_BUSY)), &ce, "the driver's error is still reachable")
}

func TestRetryable(t *testing.T) {
	t.Parallel()
	pg, my := postgresDialect.retryable, mysqlDialect.retryable
	require.True(t, pg(fmt.Errorf("tx: %w", sqlStateErr("40P01"))))
	require.True(t, pg(sqlStateErr("40001")))
	require.False(t, pg(sqlStateErr("23505")))
	require.True(t, my(errors.New("Error 1213 (40001): Deadlock found when trying to get lock")))
	require.True(t, my(errors.New("Error 1205 (HY000): Lock wait timeout exceeded")))
	require.False(t, my(errors.New("Error 1062 (23000): Duplicate entry")))
	require.False(t, pg(nil))
	require.False(t, my(nil))
	require.False(t, sqliteDialect.retryable(codeErr(sqlite3.SQLITE_BUSY)), "SQLite waits for its lock instead")
}

func TestCheckTableName(t *testing.T) {
	t.Parallel()
	for _, ok := range []string{"messages", "_q1", "Mail_Queue_2", "a234567890123456789012345678901234567890"} {
		require.NoError(t, CheckTableName(ok), ok)
	}
	for _, bad := range []string{"", "1abc", "a-b", "a b", `a"b`, "a;DROP TABLE x", "a234567890123456789012345678901234567890x", "ünï"} {
		require.ErrorIs(t, CheckTableName(bad), ErrInvalidInput, bad)
	}
}

func TestBindAndQuote(t *testing.T) {
	t.Parallel()
	lite, pg, my := sqliteDialect, postgresDialect, mysqlDialect
	lite.gorm, pg.gorm, my.gorm = glebarez.Dialector{}, postgres.Dialector{Config: &postgres.Config{}}, mysql.Dialector{Config: &mysql.Config{}}
	require.Equal(t, "SELECT ? FROM t WHERE a = ?", lite.bind("SELECT ? FROM t WHERE a = ?"))
	require.Equal(t, "SELECT $1 FROM t WHERE a = $2", pg.bind("SELECT ? FROM t WHERE a = ?"))
	require.Equal(t, "SELECT ? FROM t WHERE a = ?", my.bind("SELECT ? FROM t WHERE a = ?"))
	require.Equal(t, `"messages"`, pg.ident("messages"))
	require.Equal(t, "`messages`", my.ident("messages"))
	require.Equal(t, "`messages`", lite.ident("messages"))
}
