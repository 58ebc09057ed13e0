// Package queueseed makes the queues the tests of the command and the
// dashboard look at: a small set of named messages with ages in hours, and
// any number of messages of a realistic mix of states, ages, errors and
// headers.
package queueseed

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

// Mix is how many of every 100 seeded messages land in each state.
var Mix = []struct {
	state metastorage.QueueState
	n     int
}{
	{metastorage.StateIncoming, 12}, {metastorage.StateActive, 3}, {metastorage.StateDeferred, 58},
	{metastorage.StateHold, 2}, {metastorage.StateBounce, 5}, {metastorage.StateArchived, 20},
}

var errorTexts = []string{
	"450 4.2.0 <rcpt@example.org>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/",
	"connect to mx.example.net[203.0.113.25]:25: Connection timed out",
	"421 4.7.0 Try again later, closing connection. (EHLO) s7si123.4 - gsmtp",
	"550 5.1.1 <nobody@example.com>: Recipient address rejected: User unknown in virtual mailbox table",
	"lost connection with mx2.example.com[198.51.100.7] while sending RCPT TO",
}

// Records makes n messages of the mix, created over the last ten
// hours (more of them recent, as in a live queue), the same for a seed.
func Records(n int, now time.Time, seed uint64) []metastorage.MessageMetadata {
	rng := rand.New(rand.NewPCG(seed, 1))
	out := make([]metastorage.MessageMetadata, 0, n)
	for i := range n {
		state := metastorage.StateIncoming
		k := i % 100
		for _, m := range Mix {
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
			md.LastError = errorTexts[rng.IntN(len(errorTexts))]
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

// Many writes n seeded messages into a new SQLite file and returns its
// path.
func Many(t testing.TB, n int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "meta.db")
	Path(t, path, n, time.Now())
	return path
}

// Path writes n seeded messages, created over the ten hours before now,
// into the SQLite file at path.
func Path(t testing.TB, path string, n int, now time.Time) {
	t.Helper()
	ctx := context.Background()
	r, err := sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(path)).Open(ctx)
	require.NoError(t, err)
	defer r.Close()
	recs := Records(n, now, 42)
	for len(recs) > 0 {
		k := min(len(recs), 2000)
		require.NoError(t, r.StoreMetaBatch(ctx, recs[:k]))
		recs = recs[k:]
	}
}

// Small is the small data set of the tests, with times relative to now: ages are
// hours, far from the ages the commands are given.
func Small(now time.Time) []metastorage.MessageMetadata {
	h := func(n float64) time.Time { return now.Add(time.Duration(n * float64(time.Hour))) }
	md := func(id string, s metastorage.QueueState, created, updated time.Time) metastorage.MessageMetadata {
		return metastorage.MessageMetadata{ID: id, State: s, Created: created, Updated: updated, MaxAttempts: 5, Size: 100}
	}
	due1 := md("def-due1", metastorage.StateDeferred, h(-50), h(-49))
	due1.NextRetry, due1.Attempts, due1.LastError = h(-2), 2, "451 try again later"
	due1.Headers = map[string]string{"tenant": "acme", "to": "a@example.com"}
	due1.Priority, due1.RetryPolicyName = 3, "exponential"
	due2 := md("def-due2", metastorage.StateDeferred, h(-40), h(-39))
	due2.NextRetry = h(-1)
	later := md("def-later", metastorage.StateDeferred, h(-30), h(-29))
	later.NextRetry = h(2)
	return []metastorage.MessageMetadata{
		md("inc-old", metastorage.StateIncoming, h(-72), h(-72)),
		md("inc-new", metastorage.StateIncoming, h(-1), h(-1)),
		md("act-stale", metastorage.StateActive, h(-10), h(-3)),
		md("act-fresh", metastorage.StateActive, h(-9), now.Add(-time.Minute)),
		due1, due2, later,
		md("hold-1", metastorage.StateHold, h(-5), h(-5)),
		md("bnc-old1", metastorage.StateBounce, h(-100), h(-100)),
		md("bnc-old2", metastorage.StateBounce, h(-80), h(-80)),
		md("bnc-new", metastorage.StateBounce, h(-2), h(-2)),
	}
}

// SmallFile creates a SQLite store with the seed data and returns its path.
func SmallFile(t testing.TB) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "meta.db")
	r, err := sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(path)).Open(context.Background())
	require.NoError(t, err)
	require.NoError(t, r.StoreMetaBatch(context.Background(), Small(time.Now())))
	require.NoError(t, r.Close())
	return path
}

// Open opens the SQLite store at path, closed at the end of the test.
func Open(t testing.TB, path string) *sqlitemeta.Repository {
	t.Helper()
	r, err := sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(path)).Open(context.Background())
	require.NoError(t, err)
	t.Cleanup(func() { _ = r.Close() })
	return r
}

// StateOf is the state of message id.
func StateOf(t testing.TB, r *sqlitemeta.Repository, id string) metastorage.QueueState {
	t.Helper()
	md, err := r.GetMeta(context.Background(), id)
	require.NoError(t, err)
	return md.State
}
