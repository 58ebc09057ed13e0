package systemtest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"gorm.io/gorm"
	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/fixture"
)

func TestBackupWhileWriting(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	r := openFile(t, filepath.Join(dir, "live.db"))

	var seed []metastorage.MessageMetadata
	for i := 0; i < 300; i++ {
		seed = append(seed, fixture.Sample(fmt.Sprintf("seed-%03d", i), fixture.States[i%6], i))
	}
	require.NoError(t, r.StoreMetaBatch(ctx, seed))

	// Eight writers store, move and rewrite messages until told to stop.
	// Each records the IDs whose StoreMeta had returned nil.
	var (
		stop    atomic.Bool
		wg      sync.WaitGroup
		mu      sync.Mutex
		stored  []string
		writes  atomic.Int64
		errs    = make(chan error, 8)
		started = make(chan struct{})
		once    sync.Once
	)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				id := fmt.Sprintf("w%d-%05d", g, i)
				md := fixture.Sample(id, metastorage.StateIncoming, i)
				if err := r.StoreMeta(ctx, id, md); err != nil {
					errs <- err
					return
				}
				mu.Lock()
				stored = append(stored, id)
				mu.Unlock()
				if err := r.MoveToState(ctx, id, metastorage.StateIncoming, metastorage.StateActive); err != nil {
					errs <- err
					return
				}
				md.State, md.Attempts = metastorage.StateDeferred, 1
				if err := r.UpdateMeta(ctx, id, md); err != nil {
					errs <- err
					return
				}
				if writes.Add(3) > 60 {
					once.Do(func() { close(started) })
				}
			}
		}()
	}
	select {
	case <-started:
	case err := <-errs:
		t.Fatal(err)
	case <-time.After(fixture.Wait):
		t.Fatal("writers made no progress")
	}
	mu.Lock()
	before := append([]string(nil), stored...)
	mu.Unlock()
	atBackup := writes.Load()

	backup := filepath.Join(dir, "backup.db")
	require.NoError(t, r.Backup(ctx, backup))
	afterBackup := writes.Load()
	stop.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	t.Logf("writes before the backup: %d, during it: %d", atBackup, afterBackup-atBackup)

	live := fixture.All(t, r)
	b := openFile(t, backup)
	fixture.RequireIntegrity(t, b.DB())
	fixture.RequireCounts(t, b)
	inBackup := fixture.All(t, b)
	for _, md := range seed {
		got, ok := inBackup[md.ID]
		require.True(t, ok, "seeded %q missing from the backup", md.ID)
		fixture.RequireSameMeta(t, md, got, false)
	}
	// Every write acknowledged before the backup began is in it.
	for _, id := range before {
		_, ok := inBackup[id]
		require.True(t, ok, "%q was stored before the backup but is not in it", id)
	}
	// The backup holds nothing the live database never had.
	for id := range inBackup {
		_, ok := live[id]
		require.True(t, ok, "%q is in the backup but not in the live database", id)
	}

	// An existing path is never overwritten.
	require.NoError(t, b.Close())
	sum := fixture.SHA256(t, backup)
	err := r.Backup(ctx, backup)
	require.ErrorIs(t, err, sqlitemeta.ErrInvalidInput)
	require.ErrorIs(t, err, os.ErrExist)
	require.Equal(t, sum, fixture.SHA256(t, backup))
	empty := filepath.Join(dir, "empty")
	require.NoError(t, os.WriteFile(empty, nil, 0o600))
	require.ErrorIs(t, r.Backup(ctx, empty), os.ErrExist)

	// A failed backup leaves no file behind.
	missingDir := filepath.Join(dir, "no", "such", "dir", "b.db")
	require.Error(t, r.Backup(ctx, missingDir))
	_, err = os.Stat(missingDir)
	require.ErrorIs(t, err, os.ErrNotExist)

	// A view inside a transaction cannot vacuum.
	require.NoError(t, r.Transaction(ctx, func(tx *gorm.DB) error {
		require.ErrorIs(t, r.WithTx(tx).Backup(ctx, filepath.Join(dir, "tx.db")), sqlitemeta.ErrInvalidInput)
		return nil
	}))

	require.NoError(t, r.Close())
	require.ErrorIs(t, r.Backup(ctx, filepath.Join(dir, "closed.db")), metastorage.ErrBackendClosed)
	_, err = os.Stat(filepath.Join(dir, "closed.db"))
	require.ErrorIs(t, err, os.ErrNotExist)
}
