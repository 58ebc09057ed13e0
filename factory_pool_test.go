package sqlite_test

import (
	"context"
	"database/sql"
	"testing"

	"github.com/stretchr/testify/require"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
)

// holdReadConns takes n connections of r's read pool at once, as n
// concurrent readers do, gives them back and returns the pool's stats.
func holdReadConns(t *testing.T, r *sqlitemeta.Repository, n int) sql.DBStats {
	t.Helper()
	pool, err := r.DB().DB()
	require.NoError(t, err)
	conns := make([]*sql.Conn, n)
	for i := range conns {
		conns[i], err = pool.Conn(context.Background())
		require.NoError(t, err)
		require.NoError(t, conns[i].PingContext(context.Background()))
	}
	for _, c := range conns {
		require.NoError(t, c.Close())
	}
	return pool.Stats()
}

// The read connections opened for concurrent readers (RetrySpool's
// workers read every message they handle) stay open for the next ones:
// closing them on the way back and opening them again cost a new SQLite
// connection, its schema read and its statements compiled, per read.
func TestFactoryReadPoolKeepsItsConnections(t *testing.T) {
	t.Parallel()
	st := holdReadConns(t, facOpen(t), sqlitemeta.DefaultMaxConnections)
	require.Zero(t, st.MaxIdleClosed)
	require.Equal(t, sqlitemeta.DefaultMaxConnections, st.Idle)

	// The default follows WithMaxConnections.
	st = holdReadConns(t, facOpen(t, sqlitemeta.WithMaxConnections(16)), 16)
	require.Zero(t, st.MaxIdleClosed)
	require.Equal(t, 16, st.Idle)

	// WithMaxIdleConns still caps them.
	st = holdReadConns(t, facOpen(t, sqlitemeta.WithMaxIdleConns(1)), 4)
	require.EqualValues(t, 3, st.MaxIdleClosed)
	require.Equal(t, 1, st.Idle)
}
