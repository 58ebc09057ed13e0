package systemtest

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
)

// BenchmarkOpen opens and closes an existing, cleanly closed database of
// 10,000 and of 1,000,000 messages. Opening must not grow with the file:
// the target is under 50 ms at 1,000,000 and within 2x of 10,000.
//
// The files are built once and kept in the temporary directory
// (retryspool-meta-open-N.db) for later runs; building the large one
// takes a minute. Run: go test -run '^$' -bench BenchmarkOpen ./systemtest
func BenchmarkOpen(b *testing.B) {
	for _, n := range []int{10_000, 1_000_000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			path := filepath.Join(os.TempDir(), "retryspool-meta-open-v1-"+strconv.Itoa(n)+".db")
			if _, err := os.Stat(path); err != nil {
				makeFile(b, path+".tmp", n)
				if err := os.Rename(path+".tmp", path); err != nil {
					b.Fatal(err)
				}
			}
			fi, _ := os.Stat(path)
			ctx := context.Background()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				r, err := sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(path)).Open(ctx)
				if err != nil {
					b.Fatal(err)
				}
				if err := r.Close(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(fi.Size())/(1<<20), "file-MB")
		})
	}
}
