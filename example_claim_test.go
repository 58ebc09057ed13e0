package sqlite_test

import (
	"context"
	"fmt"
	"log"
	"strings"

	metastorage "schneider.vip/retryspool/storage/meta"
)

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
