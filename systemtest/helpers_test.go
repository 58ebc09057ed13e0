package systemtest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
)

func sha(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func sidecarsOf(path string) []string {
	var out []string
	for _, s := range []string{"-wal", "-shm", "-journal"} {
		if _, err := os.Lstat(path + s); err == nil {
			out = append(out, s)
		}
	}
	return out
}

// message is a record for the tests; i spreads it over the six states.
func message(i int) metastorage.MessageMetadata {
	return metastorage.MessageMetadata{
		ID:          fmt.Sprintf("msg-%07d", i),
		State:       metastorage.QueueState(i % 6),
		MaxAttempts: 5,
		Created:     time.Unix(1_700_000_000, 0).Add(time.Duration(i) * time.Millisecond),
		LastError:   fmt.Sprintf("MARKER-%07d %s", i, strings.Repeat("x", 200)),
		Headers:     map[string]string{"to": "someone@example.com"},
	}
}

// makeFile creates a closed database with n messages in dir.
func makeFile(t testing.TB, path string, n int) {
	t.Helper()
	ctx := context.Background()
	r, err := sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(path), sqlitemeta.WithSynchronous("OFF")).Open(ctx)
	require.NoError(t, err)
	const batch = 5000
	for i := 0; i < n; i += batch {
		var mds []metastorage.MessageMetadata
		for j := i; j < i+batch && j < n; j++ {
			mds = append(mds, message(j))
		}
		require.NoError(t, r.StoreMetaBatch(ctx, mds))
	}
	require.NoError(t, r.Close())
	require.Empty(t, sidecarsOf(path), "a clean close leaves no journal")
}

func tempDB(t testing.TB) string {
	return filepath.Join(t.TempDir(), "meta.db")
}
