package systemtest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/proc"
)

// The connection-loss workload on a SQLite file, where a commit's outcome
// is always known in-process and what dies is the process: a child runs
// the 16 workers of lossWorkload (stores, claims of stored and seeded
// messages, MoveToState on random IDs, finishes by MoveToState or
// UpdateMeta) and says each acknowledged store, claim and finish; the
// parent kills it with SIGKILL at a random moment, checks the file, and
// starts the next child, which first requeues what the dead one had
// claimed (as RetrySpool recovers active messages at its start). Across
// all rounds: nothing acknowledged is lost or undone, no message is
// claimed twice by one process's workers, a finished message is never
// claimed again, only the dead process's claims are left in active, and
// the counters equal a recount.

const queueSeeded = 2000

func queueChild() error {
	ctx := context.Background()
	r, err := sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(proc.Param(paramDB))).Open(ctx)
	if err != nil {
		return err
	}
	// What the killed process had claimed goes back to incoming.
	if _, err := r.RequeueStale(ctx, time.Now().Add(time.Hour), 0); err != nil {
		return err
	}
	w := &lossWorkload{r: r, stored: map[string]bool{}, claimedBy: map[string]int{}, callTimeout: time.Minute,
		prefix: proc.Param(paramRound) + "-", ack: func(kind, id string) { proc.Say(kind + " " + id) }}
	for i := range queueSeeded {
		w.ids = append(w.ids, fmt.Sprintf("s%05d", i))
	}
	proc.Say("READY")
	w.run(time.Hour, func(stop <-chan struct{}) int64 { <-stop; return 0 })
	return nil
}

func TestQueueWorkloadProcessKilled(t *testing.T) {
	t.Parallel()
	path := tempDB(t)
	{
		r := openFile(t, path)
		seed := make([]metastorage.MessageMetadata, queueSeeded)
		for i := range seed {
			seed[i] = metastorage.MessageMetadata{ID: fmt.Sprintf("s%05d", i), State: metastorage.StateIncoming, Created: time.Unix(int64(i), 0)}
		}
		require.NoError(t, r.StoreMetaBatch(context.Background(), seed))
		require.NoError(t, r.Close())
	}
	rounds := 6
	if longRun() {
		rounds = 30
	}
	stored := map[string]bool{}
	finished := map[string]bool{}
	var stores, claims, finishes, orphaned int
	for n := range rounds {
		name := fmt.Sprintf("q%02d", n)
		c := proc.Start(t, "queue child "+name, roleQueue, map[string]string{paramDB: path, paramRound: name})
		c.WaitLine(t, "READY")
		c.WaitCount(t, 20+rand.IntN(200), "S ", "C ", "F ")
		time.Sleep(time.Duration(rand.IntN(100)) * time.Millisecond)
		claimed := map[string]int{}
		for _, l := range c.Kill(t) {
			kind, id, ok := strings.Cut(l, " ")
			if !ok {
				continue
			}
			switch kind {
			case "S":
				stored[id] = true
				stores++
			case "C":
				require.False(t, finished[id], "%s: %s claimed after it was finished", name, id)
				claimed[id]++
				claims++
			case "F":
				require.Equal(t, 1, claimed[id], "%s: %s finished by a worker of this process that claimed it", name, id)
				finished[id] = true
				finishes++
			}
		}
		for id, k := range claimed {
			require.Equal(t, 1, k, "%s: %s claimed by two workers", name, id)
		}

		r := openFile(t, path)
		ctx := context.Background()
		state := map[string]metastorage.QueueState{}
		recount := map[metastorage.QueueState]int64{}
		rows, err := r.DB().Raw("SELECT id, state FROM " + r.TableName()).Rows()
		require.NoError(t, err)
		for rows.Next() {
			var id string
			var s int
			require.NoError(t, rows.Scan(&id, &s))
			state[id] = metastorage.QueueState(s)
			recount[metastorage.QueueState(s)]++
		}
		require.NoError(t, rows.Err())
		for id := range stored {
			require.Contains(t, state, id, "%s: acknowledged store lost", name)
		}
		for id := range finished {
			require.Equal(t, metastorage.StateArchived, state[id], "%s: finished %s undone", name, id)
		}
		for id, s := range state {
			if s == metastorage.StateActive {
				require.False(t, finished[id], "%s: finished %s back in active", name, id)
				orphaned++
			}
		}
		for _, s := range []metastorage.QueueState{metastorage.StateIncoming, metastorage.StateActive, metastorage.StateArchived} {
			got, err := r.StateCount(ctx, s)
			require.NoError(t, err)
			require.Equal(t, recount[s], got, "%s: the %s counter agrees with a recount", name, s)
		}
		require.NoError(t, r.Close())
	}
	t.Logf("%d processes killed; %d stores, %d claims, %d finishes acknowledged and verified; %d messages claimed by a killed process requeued by the next",
		rounds, stores, claims, finishes, orphaned)
}
