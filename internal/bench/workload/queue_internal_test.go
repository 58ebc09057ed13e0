package workload

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	datafs "schneider.vip/retryspool/storage/data/filesystem"
)

// The queue's message IDs spread over the shards of RetrySpool's
// filesystem data storage (the first two characters of the ID) as the
// random UUIDs RetrySpool makes itself do. IDs of one prefix put the whole
// queue into one directory, which that storage lists on every delete.
func TestQueueIDsSpreadOverDataShards(t *testing.T) {
	t.Parallel()
	const n = 4096
	uuid := regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
	seen := make(map[string]bool, n)
	shards := map[string]int{}
	for _, id := range queueIDs(n) {
		require.Regexp(t, uuid, id)
		require.False(t, seen[id], id)
		seen[id] = true
		shards[id[:2]]++
	}
	// 16 IDs a shard on average; all 256 shards are used but for a chance
	// of about 1e-5.
	require.GreaterOrEqual(t, len(shards), 240)
	for s, c := range shards {
		require.Less(t, c, 64, s)
	}
}

func TestParseHWM(t *testing.T) {
	t.Parallel()
	status := "Name:\tx\nVmPeak:\t  900 kB\nVmHWM:\t   1234 kB\nVmRSS:\t  1000 kB\n"
	require.Equal(t, int64(1234*1024), parseHWM([]byte(status)))
	require.Zero(t, parseHWM([]byte("VmRSS:\t 1000 kB\n")))
	require.Zero(t, parseHWM([]byte("VmHWM:\t 12 MB\n")))
	require.Zero(t, parseHWM(nil))
}

// A shard's directory of the data storage stays when its last data file
// is deleted: removing it raced with a store into the same shard, which
// then failed with "no such file or directory".
func TestKeepShardsKeepsTheDirectoryOfTheLastFile(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	data := filepath.Join(t.TempDir(), "data")
	require.NoError(t, keepShards(data))
	be, err := datafs.NewFactory(data).Create()
	require.NoError(t, err)
	defer be.Close()
	id := queueIDs(1)[0]
	_, err = be.StoreData(ctx, id, strings.NewReader("body"))
	require.NoError(t, err)
	require.NoError(t, be.DeleteData(ctx, id))
	fi, err := os.Stat(filepath.Join(data, id[:2]))
	require.NoError(t, err)
	require.True(t, fi.IsDir())
	entries, err := os.ReadDir(data)
	require.NoError(t, err)
	require.Len(t, entries, 256)
}
