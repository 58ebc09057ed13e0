package main

import "schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/queueseed"

// The queues of the tests; see package queueseed.
var (
	seed        = queueseed.Small
	seedFile    = queueseed.SmallFile
	seedMany    = queueseed.Many
	seedPath    = queueseed.Path
	seedRecords = queueseed.Records
	openCheck   = queueseed.Open
	stateOf     = queueseed.StateOf
)
