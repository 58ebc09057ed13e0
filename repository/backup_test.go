package repository_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/testdb"
)

// The backup of a SQLite file while it is written is a system test
// (systemtest, TestBackupWhileWriting); on the servers, Backup refuses.

func TestBackupOnServerEngines(t *testing.T) {
	t.Parallel()
	for _, e := range testdb.Servers() { // SQLite: systemtest.TestBackupWhileWriting
		t.Run(e.Name, func(t *testing.T) {
			if e.Skip != "" {
				t.Skip(e.Skip)
			}
			t.Parallel()
			r := openEngine(t, e)
			path := filepath.Join(t.TempDir(), "b.db")
			err := r.Backup(context.Background(), path)
			require.ErrorIs(t, err, sqlitemeta.ErrInvalidInput)
			require.Contains(t, err.Error(), "server's own tools")
			_, err = os.Stat(path)
			require.ErrorIs(t, err, os.ErrNotExist)
		})
	}
}
