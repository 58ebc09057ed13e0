package repository

import (
	"database/sql"
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
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
	require.NoError(t, translate(nil))
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
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := translate(tc.in)
			require.ErrorIs(t, got, tc.want)
			if tc.want == metastorage.ErrMessageNotFound {
				require.Equal(t, tc.want, got, "not found is the bare sentinel, comparable with ==")
				return
			}
			require.ErrorIs(t, got, tc.in, "the original error stays in the chain")
		})
	}

	other := codeErr(sqlite3.SQLITE_CONSTRAINT)
	require.Equal(t, error(other), translate(other), "other codes pass through unchanged")

	var ce codeErr
	require.ErrorAs(t, translate(codeErr(sqlite3.SQLITE_BUSY)), &ce, "the driver's error is still reachable")
}

func TestIsRetryable(t *testing.T) {
	t.Parallel()
	require.True(t, isRetryable(fmt.Errorf("tx: %w", sqlStateErr("40P01"))))
	require.True(t, isRetryable(sqlStateErr("40001")))
	require.False(t, isRetryable(sqlStateErr("23505")))
	require.True(t, isRetryable(errors.New("Error 1213 (40001): Deadlock found when trying to get lock")))
	require.True(t, isRetryable(errors.New("Error 1205 (HY000): Lock wait timeout exceeded")))
	require.False(t, isRetryable(errors.New("Error 1062 (23000): Duplicate entry")))
	require.False(t, isRetryable(nil))
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

func TestRebind(t *testing.T) {
	t.Parallel()
	require.Equal(t, "SELECT ? FROM t WHERE a = ?", sqliteDialect.rebind("SELECT ? FROM t WHERE a = ?"))
	require.Equal(t, "SELECT $1 FROM t WHERE a = $2", postgresDialect.rebind("SELECT ? FROM t WHERE a = ?"))
}
