package floor_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/bench/floor"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/testdb"
)

// open returns the floor and the library on one fresh SQLite file, or on
// one fresh table of a server engine.
func open(t *testing.T, e testdb.Engine) (*floor.DB, *sqlitemeta.Repository) {
	t.Helper()
	ctx := context.Background()
	if e.Name == "sqlite" {
		path := filepath.Join(t.TempDir(), "floor.db")
		f, err := floor.Open(ctx, floor.Config{Path: path})
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, f.Close()) })
		lib, err := sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(path)).Open(ctx)
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, lib.Close()) })
		return f, lib
	}
	db := e.Open(t)
	table := e.Table(t, db)
	lib, err := sqlitemeta.NewFactory(sqlitemeta.WithDB(db), sqlitemeta.WithTableName(table)).Open(ctx)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, lib.Close()) })
	pool, err := db.DB()
	require.NoError(t, err)
	f, err := floor.New(pool, e.Name, table)
	require.NoError(t, err)
	return f, lib
}

// engines runs fn on SQLite and on the server engines whose DSN is set.
func engines(t *testing.T, fn func(t *testing.T, e testdb.Engine)) {
	for _, e := range testdb.Engines() {
		t.Run(e.Name, func(t *testing.T) {
			t.Parallel()
			if e.Skip != "" {
				t.Skip(e.Skip)
			}
			fn(t, e)
		})
	}
}

func record(id string, state metastorage.QueueState, created time.Time) metastorage.MessageMetadata {
	return metastorage.MessageMetadata{
		ID: id, State: state, Attempts: 2, MaxAttempts: 5,
		NextRetry: created.Add(time.Minute), Created: created, Updated: created,
		LastError: "boom", Size: 1234, Priority: 3,
		Headers:         map[string]string{"to": "a@example.org", "x-ü": "\"<>&"},
		RetryPolicyName: "default",
	}
}

// The floor writes what the library reads and the other way round: same
// schema, same encoding, counts kept by the library's triggers.
func TestFloorMatchesLibrary(t *testing.T) {
	t.Parallel()
	engines(t, testFloorMatchesLibrary)
}

func testFloorMatchesLibrary(t *testing.T, e testdb.Engine) {
	ctx := context.Background()
	f, lib := open(t, e)
	base := time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)

	want := record("a", metastorage.StateIncoming, base)
	require.NoError(t, f.StoreMeta(ctx, "a", want))
	got, err := lib.GetMeta(ctx, "a")
	require.NoError(t, err)
	require.Equal(t, want, got)

	want2 := record("b", metastorage.StateDeferred, base.Add(time.Second))
	want2.Headers, want2.NextRetry = nil, time.Time{}
	require.NoError(t, lib.StoreMeta(ctx, "b", want2))
	got, err = f.GetMeta(ctx, "b")
	require.NoError(t, err)
	require.Equal(t, want2, got)

	want.State, want.Attempts = metastorage.StateDeferred, 3
	require.NoError(t, f.UpdateMeta(ctx, "a", want))
	require.NoError(t, f.UpdateMeta(ctx, "a", want)) // unchanged: MySQL reports no row
	require.ErrorIs(t, f.UpdateMeta(ctx, "nope", want), metastorage.ErrMessageNotFound)
	n, err := f.StateCount(ctx, metastorage.StateDeferred)
	require.NoError(t, err)
	require.Equal(t, int64(2), n)
	require.Equal(t, int64(2), lib.GetStateCount(metastorage.StateDeferred))

	require.NoError(t, f.MoveToState(ctx, "a", metastorage.StateDeferred, metastorage.StateActive))
	require.ErrorIs(t, f.MoveToState(ctx, "a", metastorage.StateDeferred, metastorage.StateActive), metastorage.ErrStateConflict)
	require.ErrorIs(t, f.MoveToState(ctx, "nope", metastorage.StateDeferred, metastorage.StateActive), metastorage.ErrMessageNotFound)
	require.Equal(t, int64(1), lib.GetStateCount(metastorage.StateActive))

	due, err := f.DueMessages(ctx, base, 10)
	require.NoError(t, err)
	require.Len(t, due, 1)
	require.Equal(t, "b", due[0].ID)

	require.NoError(t, f.DeleteMeta(ctx, "a"))
	require.ErrorIs(t, f.DeleteMeta(ctx, "a"), metastorage.ErrMessageNotFound)
	_, err = f.GetMeta(ctx, "a")
	require.ErrorIs(t, err, metastorage.ErrMessageNotFound)
	require.Equal(t, int64(0), lib.GetStateCount(metastorage.StateActive))

	claimed, err := f.ClaimDue(ctx, base, 10)
	require.NoError(t, err)
	require.Len(t, claimed, 1)
	require.Equal(t, "b", claimed[0].ID)
	require.Equal(t, metastorage.StateActive, claimed[0].State)
	require.Equal(t, int64(1), lib.GetStateCount(metastorage.StateActive))
	require.Equal(t, int64(0), lib.GetStateCount(metastorage.StateDeferred))
	claimed, err = f.ClaimDue(ctx, base, 10)
	require.NoError(t, err)
	require.Empty(t, claimed)
}

func TestFloorBatchesIterateListClaim(t *testing.T) {
	t.Parallel()
	engines(t, testFloorBatchesIterateListClaim)
}

func testFloorBatchesIterateListClaim(t *testing.T, e testdb.Engine) {
	ctx := context.Background()
	f, lib := open(t, e)
	base := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	const n = 2500 // three store batches, three iterator batches
	var mds []metastorage.MessageMetadata
	var ids []string
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("m%05d", i)
		ids = append(ids, id)
		// Pairs share a creation time, so the ID breaks ties.
		mds = append(mds, record(id, metastorage.StateIncoming, base.Add(time.Duration(i/2)*time.Millisecond)))
	}
	require.NoError(t, f.StoreMetaBatch(ctx, mds))
	require.Equal(t, int64(n), lib.GetStateCount(metastorage.StateIncoming))

	it := f.NewIterator(metastorage.StateIncoming, 1000)
	for i := 0; ; i++ {
		md, ok, err := it.Next(ctx)
		require.NoError(t, err)
		if !ok {
			require.Equal(t, n, i)
			break
		}
		require.Equal(t, ids[i], md.ID)
	}

	page, total, err := f.ListPage(ctx, metastorage.StateIncoming, 10, 5)
	require.NoError(t, err)
	require.Equal(t, int64(n), total)
	require.Equal(t, ids[5:15], page)

	claimed, err := f.Claim(ctx, metastorage.StateIncoming, metastorage.StateActive, 100)
	require.NoError(t, err)
	require.Len(t, claimed, 100)
	for i, md := range claimed {
		require.Equal(t, ids[i], md.ID)
		require.Equal(t, metastorage.StateActive, md.State)
		got, err := lib.GetMeta(ctx, md.ID)
		require.NoError(t, err)
		require.Equal(t, md, got)
	}

	moved, err := f.MoveToStateBatch(ctx, ids[:1500], metastorage.StateIncoming, metastorage.StateDeferred)
	require.NoError(t, err)
	require.Equal(t, 1400, moved) // the first 100 are active
	require.Equal(t, int64(100), lib.GetStateCount(metastorage.StateActive))
	require.Equal(t, int64(1400), lib.GetStateCount(metastorage.StateDeferred))
	require.Equal(t, int64(1000), lib.GetStateCount(metastorage.StateIncoming))
}
