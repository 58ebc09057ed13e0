package systemtest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
	"schneider.vip/retryspool/storage/meta/sqlite/repository"
)

// TestPurgeOnPurged: the callback gets the IDs of each batch after its
// metadata committed (another connection no longer finds them), every
// deleted message exactly once, and not on a dry run or when archiving;
// its error ends Purge with the count so far.
func TestPurgeOnPurged(t *testing.T) {
	t.Parallel()
	path := tempDB(t)
	makeFile(t, path, 120) // 20 per state
	ctx := context.Background()
	r, err := sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(path)).Open(ctx)
	require.NoError(t, err)
	defer r.Close()
	other, err := sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(path), sqlitemeta.WithReadOnly()).Open(ctx)
	require.NoError(t, err)
	defer other.Close()

	cutoff := time.Unix(1_800_000_000, 0)
	called := 0
	never := func(context.Context, []string) error { called++; return nil }
	n, err := r.Purge(ctx, metastorage.StateBounce, cutoff, repository.PurgeOptions{DryRun: true, OnPurged: never})
	require.NoError(t, err)
	require.EqualValues(t, 20, n)
	_, err = r.Purge(ctx, metastorage.StateBounce, cutoff, repository.PurgeOptions{Archive: true, OnPurged: never})
	require.NoError(t, err)
	require.Zero(t, called, "no call on a dry run or when archiving")

	seen := map[string]int{}
	n, err = r.Purge(ctx, metastorage.StateIncoming, cutoff, repository.PurgeOptions{BatchSize: 7,
		OnPurged: func(ctx context.Context, ids []string) error {
			require.LessOrEqual(t, len(ids), 7)
			for _, id := range ids {
				seen[id]++
				_, err := other.GetMeta(ctx, id)
				require.ErrorIs(t, err, metastorage.ErrMessageNotFound, "called after the commit")
			}
			return nil
		}})
	require.NoError(t, err)
	require.EqualValues(t, 20, n)
	require.Len(t, seen, 20)
	for id, c := range seen {
		require.Equal(t, 1, c, id)
	}

	boom := errors.New("data store down")
	n, err = r.Purge(ctx, metastorage.StateDeferred, cutoff, repository.PurgeOptions{BatchSize: 5,
		OnPurged: func(context.Context, []string) error { return boom }})
	require.ErrorIs(t, err, boom)
	require.EqualValues(t, 5, n, "the first batch committed, then the callback failed")
	require.EqualValues(t, 15, r.GetStateCount(metastorage.StateDeferred))
}
