package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

const sampleOutput = `goos: linux
pkg: schneider.vip/retryspool/storage/meta/sqlite
BenchmarkStoreMeta/NORMAL/seq/lib-2         	    2000	    100 ns/op	      5000 ops/s
BenchmarkStoreMeta/NORMAL/seq/floor-2       	    2000	    150 ns/op	      4000 ops/s
BenchmarkStoreMeta/NORMAL/seq/lib-2         	    2000	    300 ns/op	      3000 ops/s
BenchmarkStoreMeta/NORMAL/seq/floor-2       	    2000	    160 ns/op	      3900 ops/s
BenchmarkStoreMeta/NORMAL/seq/lib-2         	    2000	    120 ns/op	      4500 ops/s
BenchmarkStoreMeta/NORMAL/seq/floor-2       	    2000	    170 ns/op	      3800 ops/s
BenchmarkIterate/lib-2   	 100000	     800 ns/op	   1250000 msgs/s	     120 B/op	       3 allocs/op
--- FAIL: BenchmarkBroken/lib
    bench_test.go:12: boom
BenchmarkScale/ClaimDue/10k/lib-2   	   500	   20000 ns/op	     50000 ops/s
BenchmarkPlain-2   	   500	   42.5 ns/op
PASS
ok  	schneider.vip/retryspool/storage/meta/sqlite	12.3s
`

func TestParse(t *testing.T) {
	rows, err := Parse(strings.NewReader(sampleOutput))
	require.NoError(t, err)
	require.Len(t, rows, 4)

	r := rows[0]
	require.Equal(t, "StoreMeta/NORMAL/seq", r.Name)
	require.Equal(t, 120.0, r.LibNs) // median of 100, 300, 120
	require.Equal(t, 160.0, r.FloorNs)
	require.InDelta(t, 160.0/120.0, r.Ratio, 1e-9)
	require.Equal(t, 3, r.Runs)
	require.Equal(t, "ops/s", r.RateUnit)
	require.Equal(t, 4500.0, r.Rate)
	require.Equal(t, 3900.0, r.RateFloor)

	require.Equal(t, "Iterate", rows[1].Name)
	require.Equal(t, "msgs/s", rows[1].RateUnit)
	require.True(t, rows[1].HasLib)
	require.False(t, rows[1].HasFloor)
	require.Zero(t, rows[1].Ratio)

	require.Equal(t, "Scale/ClaimDue/10k", rows[2].Name)
	require.Equal(t, "Plain", rows[3].Name)
	require.Equal(t, 42.5, rows[3].OtherNs)

	var buf bytes.Buffer
	require.NoError(t, Write(&buf, rows, false))
	out := buf.String()
	require.Contains(t, out, "StoreMeta/NORMAL/seq")
	require.Contains(t, out, "1.33x")
	buf.Reset()
	require.NoError(t, Write(&buf, rows, true))
	require.Equal(t, 2+len(rows), strings.Count(buf.String(), "\n"))
	require.True(t, strings.HasPrefix(buf.String(), "| benchmark |"))
}

func TestMedianEven(t *testing.T) {
	require.Equal(t, 2.5, median([]float64{4, 1, 2, 3}))
	require.Zero(t, median(nil))
}
