package sqlite_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
)

func TestSmoke(t *testing.T) {
	ctx := context.Background()
	b, err := sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(filepath.Join(t.TempDir(), "a", "m.db"))).Create()
	require.NoError(t, err)
	defer b.Close()
	now := time.Now()
	md := metastorage.MessageMetadata{ID: "m1", State: metastorage.StateIncoming, Created: now, Updated: now, Headers: map[string]string{"a": "b"}}
	require.NoError(t, b.StoreMeta(ctx, "m1", md))
	got, err := b.GetMeta(ctx, "m1")
	require.NoError(t, err)
	require.True(t, got.Created.Equal(now))
	require.Equal(t, "b", got.Headers["a"])
	require.Equal(t, int64(1), b.(metastorage.StateCounterBackend).GetStateCount(metastorage.StateIncoming))
	require.NoError(t, b.MoveToState(ctx, "m1", metastorage.StateIncoming, metastorage.StateActive))
	require.Equal(t, metastorage.ErrStateConflict, b.MoveToState(ctx, "m1", metastorage.StateIncoming, metastorage.StateActive))
	require.Equal(t, int64(0), b.(metastorage.StateCounterBackend).GetStateCount(metastorage.StateIncoming))
	require.Equal(t, int64(1), b.(metastorage.StateCounterBackend).GetStateCount(metastorage.StateActive))
	it, err := b.NewMessageIterator(ctx, metastorage.StateActive, 10)
	require.NoError(t, err)
	m, ok, err := it.Next(ctx)
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, "m1", m.ID)
	m, ok, err = it.Next(ctx)
	require.NoError(t, err)
	require.False(t, ok)
	res, err := b.ListMessages(ctx, metastorage.StateActive, metastorage.MessageListOptions{})
	require.NoError(t, err)
	require.Equal(t, []string{"m1"}, res.MessageIDs)
	require.NoError(t, b.DeleteMeta(ctx, "m1"))
	require.ErrorIs(t, b.DeleteMeta(ctx, "m1"), metastorage.ErrMessageNotFound)
	require.NoError(t, b.Close())
	require.ErrorIs(t, b.Close(), nil)
	_, err = b.GetMeta(ctx, "m1")
	require.ErrorIs(t, err, metastorage.ErrBackendClosed)
}
