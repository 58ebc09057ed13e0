package dashboard

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/queueseed"
)

// The age table equals a count made by walking every message, at the same
// instant.
func TestShapeEqualsWalk(t *testing.T) {
	t.Parallel()
	r := queueseed.Open(t, queueseed.Many(t, 3000))
	ctx := context.Background()
	now := time.Now()
	shape, err := Shape(ctx, r, now, allStates())
	require.NoError(t, err)
	require.Equal(t, []string{"5m", "10m", "20m", "40m", "80m", "160m", "320m", "more"}, shape.Buckets)

	var grand int64
	for i, st := range allStates() {
		want := make([]int64, len(shape.Buckets))
		it, err := r.NewMessageIterator(ctx, st, 500)
		require.NoError(t, err)
		for {
			md, ok, err := it.Next(ctx)
			require.NoError(t, err)
			if !ok {
				break
			}
			age := now.Sub(md.Created)
			b := len(AgeBuckets)
			for j, edge := range AgeBuckets {
				if age <= edge {
					b = j
					break
				}
			}
			want[b]++
		}
		require.NoError(t, it.Close())
		require.Equal(t, st.String(), shape.States[i].State)
		require.Equal(t, want, shape.States[i].Counts, st.String())
		var sum int64
		for _, n := range want {
			sum += n
		}
		require.Equal(t, sum, shape.States[i].Total)
		grand += sum
	}
	require.EqualValues(t, 3000, grand)
	require.Equal(t, grand, shape.Total)
	// The seed spreads ages over ten hours: every bucket has messages.
	for i, n := range shape.Totals {
		require.Positive(t, n, shape.Buckets[i])
	}
}

func TestParseAge(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]time.Duration{"90m": 90 * time.Minute, "1h30m": 90 * time.Minute, "7d": 7 * 24 * time.Hour, "1d": 24 * time.Hour} {
		d, err := ParseAge(in)
		require.NoError(t, err, in)
		require.Equal(t, want, d, in)
	}
	for _, in := range []string{"", "0", "-1h", "d", "1.5d", "+1d", "01d", "-2d", "0d", "999999d", "soon"} {
		_, err := ParseAge(in)
		require.Error(t, err, in)
	}
}

func TestFormats(t *testing.T) {
	t.Parallel()
	require.Equal(t, "12,345", fmtCount(12345))
	require.Equal(t, "-1,000", fmtCount(-1000))
	require.Equal(t, "999", fmtCount(999))
	require.Equal(t, "-", fmtAge(5, 0))
	require.Equal(t, "42s", fmtAge(42, 1))
	require.Equal(t, "5m", fmtAge(300, 1))
	require.Equal(t, "3h12m", fmtAge(3*3600+12*60, 1))
	require.Equal(t, "2d4h", fmtAge(52*3600, 1))
}
