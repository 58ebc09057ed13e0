package systemtest

import (
	"context"
	"encoding/binary"
	"os"
	"testing"

	"github.com/stretchr/testify/require"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
)

func rootPage(t *testing.T, path, name string) int {
	t.Helper()
	r, err := sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(path), sqlitemeta.WithReadOnly()).Open(context.Background())
	require.NoError(t, err)
	defer r.Close()
	var root int
	require.NoError(t, r.DB().Raw("SELECT rootpage FROM sqlite_master WHERE name = ?", name).Row().Scan(&root))
	return root
}

func readAt(t *testing.T, path string, off int64, n int) []byte {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	b := make([]byte, n)
	_, err = f.ReadAt(b, off)
	require.NoError(t, err)
	return b
}

func writeAt(t *testing.T, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	_, err = f.WriteAt(b, off)
	require.NoError(t, err)
	require.NoError(t, f.Close())
}

// TestOpenDoesNotReadWholeFile: damage in the middle of the message
// table, away from the edges of its b-tree, is found only by reading the
// whole file. The default open does not (its cost must not grow with the
// file) and succeeds; WithIntegrityCheck(true) runs quick_check and
// refuses the file, unchanged.
func TestOpenDoesNotReadWholeFile(t *testing.T) {
	t.Parallel()
	path := tempDB(t)
	makeFile(t, path, 600)
	const pageSize = 4096
	root := rootPage(t, path, "messages")
	hdr := readAt(t, path, int64(root-1)*pageSize, 12)
	require.Equal(t, byte(0x05), hdr[0], "the table's root is an interior page")
	cells := int(binary.BigEndian.Uint16(hdr[3:5]))
	require.GreaterOrEqual(t, cells, 4)
	// The child of a middle cell: neither the first nor the last leaf.
	ptr := readAt(t, path, int64(root-1)*pageSize+12+int64(2*(cells/2)), 2)
	cell := int64(binary.BigEndian.Uint16(ptr))
	leaf := int64(binary.BigEndian.Uint32(readAt(t, path, int64(root-1)*pageSize+cell, 4)))
	require.Equal(t, byte(0x0d), readAt(t, path, (leaf-1)*pageSize, 1)[0])
	writeAt(t, path, (leaf-1)*pageSize, []byte{0x42})
	before := sha(t, path)

	_, err := sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(path), sqlitemeta.WithIntegrityCheck(true)).Create()
	require.ErrorIs(t, err, sqlitemeta.ErrNotDatabase)
	require.Contains(t, err.Error(), "quick_check")
	require.Equal(t, before, sha(t, path), "a refused file is left as it was")
	require.Empty(t, sidecarsOf(path))

	b, err := sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(path)).Create()
	require.NoError(t, err, "the default open reads only the edges of each b-tree")
	require.NoError(t, b.Close())
}
