package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
)

// seedMix is how many of every 100 seeded messages land in each state.
var seedMix = []struct {
	state metastorage.QueueState
	n     int
}{
	{metastorage.StateIncoming, 12}, {metastorage.StateActive, 3}, {metastorage.StateDeferred, 58},
	{metastorage.StateHold, 2}, {metastorage.StateBounce, 5}, {metastorage.StateArchived, 20},
}

var seedErrors = []string{
	"450 4.2.0 <rcpt@example.org>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/",
	"connect to mx.example.net[203.0.113.25]:25: Connection timed out",
	"421 4.7.0 Try again later, closing connection. (EHLO) s7si123.4 - gsmtp",
	"550 5.1.1 <nobody@example.com>: Recipient address rejected: User unknown in virtual mailbox table",
	"lost connection with mx2.example.com[198.51.100.7] while sending RCPT TO",
}

// seedRecords makes n messages of the mix, created over the last ten
// hours (more of them recent, as in a live queue), the same for a seed.
func seedRecords(n int, now time.Time, seed uint64) []metastorage.MessageMetadata {
	rng := rand.New(rand.NewPCG(seed, 1))
	out := make([]metastorage.MessageMetadata, 0, n)
	for i := range n {
		state := metastorage.StateIncoming
		k := i % 100
		for _, m := range seedMix {
			if k < m.n {
				state = m.state
				break
			}
			k -= m.n
		}
		// Ages: squared uniform over 10 hours, so young messages dominate.
		u := rng.Float64()
		created := now.Add(-time.Duration(u * u * float64(10*time.Hour))).Add(-time.Duration(rng.IntN(1000)) * time.Millisecond)
		md := metastorage.MessageMetadata{
			ID: fmt.Sprintf("%s-%05d", created.Format("20060102T150405"), i), State: state,
			MaxAttempts: 10, Created: created, Updated: created, Size: int64(800 + rng.IntN(90000)),
			Priority: rng.IntN(5), RetryPolicyName: "default",
			Headers: map[string]string{
				"From":       fmt.Sprintf("sender%d@example.org", rng.IntN(40)),
				"To":         fmt.Sprintf("user%d@example.net", rng.IntN(900)),
				"Subject":    fmt.Sprintf("Invoice %d", 10000+i),
				"Message-Id": fmt.Sprintf("<%d.%d@mail.example.org>", created.UnixNano(), i),
			},
		}
		switch state {
		case metastorage.StateDeferred, metastorage.StateBounce:
			md.Attempts = 1 + rng.IntN(6)
			md.LastError = seedErrors[rng.IntN(len(seedErrors))]
			md.Updated = created.Add(time.Duration(md.Attempts) * time.Minute)
			md.NextRetry = now.Add(time.Duration(rng.IntN(3600)-300) * time.Second)
		case metastorage.StateActive:
			md.Attempts = 1
			md.Updated = now.Add(-time.Duration(rng.IntN(1800)) * time.Second)
		case metastorage.StateArchived:
			md.Attempts = 1
		}
		out = append(out, md)
	}
	return out
}

// seedMany writes n seeded messages into a new SQLite file and returns its
// path.
func seedMany(t testing.TB, n int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "meta.db")
	seedPath(t, path, n, time.Now())
	return path
}

func seedPath(t testing.TB, path string, n int, now time.Time) {
	t.Helper()
	ctx := context.Background()
	r, err := sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(path)).Open(ctx)
	require.NoError(t, err)
	defer r.Close()
	recs := seedRecords(n, now, 42)
	for len(recs) > 0 {
		k := min(len(recs), 2000)
		require.NoError(t, r.StoreMetaBatch(ctx, recs[:k]))
		recs = recs[k:]
	}
}
