package sqlite_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"
	"time"

	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
)

// exampleQueue opens a store in a temporary directory and fills it with
// messages created one minute apart from 2024-05-01 08:00 UTC, in the
// given states. It returns the store and a function that removes it.
func exampleQueue(states ...metastorage.QueueState) (*sqlitemeta.Repository, func()) {
	dir, err := os.MkdirTemp("", "spool-example")
	if err != nil {
		log.Fatal(err)
	}
	r, err := sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(filepath.Join(dir, "meta.db"))).Open(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	start := time.Date(2024, 5, 1, 8, 0, 0, 0, time.UTC)
	var mds []metastorage.MessageMetadata
	for i, s := range states {
		at := start.Add(time.Duration(i) * time.Minute)
		mds = append(mds, metastorage.MessageMetadata{
			ID: fmt.Sprintf("msg-%d", i), State: s, Created: at, Updated: at,
			Headers: map[string]string{"tenant": []string{"acme", "globex"}[i%2]},
		})
	}
	if err := r.StoreMetaBatch(context.Background(), mds); err != nil {
		log.Fatal(err)
	}
	return r, func() { r.Close(); os.RemoveAll(dir) }
}

func ExampleRepository_Stats() {
	r, cleanup := exampleQueue(metastorage.StateIncoming, metastorage.StateDeferred,
		metastorage.StateIncoming, metastorage.StateIncoming, metastorage.StateDeferred)
	defer cleanup()

	stats, err := r.Stats(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	for _, s := range stats {
		if s.Count == 0 {
			continue
		}
		fmt.Printf("%-8s %d  oldest %s (%s)  newest %s (%s)\n", s.State, s.Count,
			s.OldestID, s.Oldest.Format("15:04"), s.NewestID, s.Newest.Format("15:04"))
	}
	// Output:
	// incoming 3  oldest msg-0 (08:00)  newest msg-3 (08:03)
	// deferred 2  oldest msg-1 (08:01)  newest msg-4 (08:04)
}

func ExampleRepository_RequeueStale() {
	// Five messages were claimed by workers (Active) at 08:00 ... 08:04.
	r, cleanup := exampleQueue(metastorage.StateActive, metastorage.StateActive,
		metastorage.StateActive, metastorage.StateActive, metastorage.StateActive)
	defer cleanup()

	// The workers that claimed them before 08:03 died: give their
	// messages back to the queue.
	cutoff := time.Date(2024, 5, 1, 8, 3, 0, 0, time.UTC)
	n, err := r.RequeueStale(context.Background(), cutoff, 0)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("requeued:", n)
	fmt.Println("incoming:", r.GetStateCount(metastorage.StateIncoming))
	fmt.Println("active:", r.GetStateCount(metastorage.StateActive))
	// Output:
	// requeued: 3
	// incoming: 3
	// active: 2
}

func ExampleRepository_Purge() {
	r, cleanup := exampleQueue(metastorage.StateBounce, metastorage.StateBounce,
		metastorage.StateBounce, metastorage.StateBounce, metastorage.StateBounce, metastorage.StateBounce)
	defer cleanup()
	ctx := context.Background()
	cutoff := time.Date(2024, 5, 1, 8, 4, 0, 0, time.UTC)

	// See first what would go: bounces created before 08:04.
	n, err := r.Purge(ctx, metastorage.StateBounce, cutoff, sqlitemeta.PurgeOptions{DryRun: true})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("would purge:", n, "bounce still:", r.GetStateCount(metastorage.StateBounce))

	// Keep a record of the two oldest, delete the next two.
	n, err = r.Purge(ctx, metastorage.StateBounce, cutoff.Add(-2*time.Minute), sqlitemeta.PurgeOptions{Archive: true})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("archived:", n)
	n, err = r.Purge(ctx, metastorage.StateBounce, cutoff, sqlitemeta.PurgeOptions{BatchSize: 100})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("deleted:", n)
	fmt.Println("bounce:", r.GetStateCount(metastorage.StateBounce), "archived:", r.GetStateCount(metastorage.StateArchived))
	// Output:
	// would purge: 4 bounce still: 6
	// archived: 2
	// deleted: 2
	// bounce: 2 archived: 2
}

func ExampleRepository_BulkMove() {
	r, cleanup := exampleQueue(metastorage.StateDeferred, metastorage.StateDeferred,
		metastorage.StateDeferred, metastorage.StateDeferred, metastorage.StateDeferred)
	defer cleanup()
	ctx := context.Background()

	// Put every deferred message of tenant acme on hold.
	f := sqlitemeta.Filter{State: metastorage.StateDeferred, HeaderKey: "tenant", HeaderValue: "acme"}
	n, err := r.BulkMove(ctx, f, metastorage.StateHold, sqlitemeta.MoveOptions{DryRun: true})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("would move:", n)
	n, err = r.BulkMove(ctx, f, metastorage.StateHold, sqlitemeta.MoveOptions{})
	if err != nil {
		log.Fatal(err)
	}
	held, err := r.ListMessages(ctx, metastorage.StateHold, metastorage.MessageListOptions{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("moved:", n, held.MessageIDs)
	// Output:
	// would move: 3
	// moved: 3 [msg-0 msg-2 msg-4]
}

// An application that drives the queue itself, rather than through
// RetrySpool's scheduler (one MoveToState, one commit, per message),
// claims a batch of messages in one transaction: up to limit of the oldest,
// moved to active and returned. Concurrent claimers never get the same
// message. ClaimDue does the same for the deferred messages due for retry.
func ExampleRepository_ClaimMessages() {
	in := metastorage.StateIncoming
	r, cleanup := exampleQueue(in, in, metastorage.StateDeferred, in, in, in)
	defer cleanup()
	ctx := context.Background()

	for {
		batch, err := r.ClaimMessages(ctx, metastorage.StateIncoming, metastorage.StateActive, 2)
		if err != nil {
			log.Fatal(err)
		}
		if len(batch) == 0 {
			break
		}
		var ids []string
		for _, md := range batch {
			ids = append(ids, md.ID+" "+md.State.String())
			// ... deliver the message, then:
			if err := r.DeleteMeta(ctx, md.ID); err != nil {
				log.Fatal(err)
			}
		}
		fmt.Println(strings.Join(ids, ", "))
	}
	fmt.Println("left:", r.GetStateCount(metastorage.StateIncoming), "incoming,",
		r.GetStateCount(metastorage.StateDeferred), "deferred")
	// Output:
	// msg-0 active, msg-1 active
	// msg-3 active, msg-4 active
	// msg-5 active
	// left: 0 incoming, 1 deferred
}
