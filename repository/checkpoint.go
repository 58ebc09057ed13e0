package repository

import (
	"context"
	"database/sql"
	"sync"
	"time"

	"schneider.vip/retryspool/storage/meta/sqlite/internal/telemetry"
)

// checkpointInterval spaces the background checkpoints: each one copies
// what was committed since the last, and ends with an fsync of the
// database file, so running them back to back would buy little.
const checkpointInterval = 10 * time.Millisecond

// checkpointer copies committed WAL frames back into the database file on
// a read connection, after commits, so that the writer does not stop to do
// it. PASSIVE never waits for readers or the writer; whatever it could not
// copy, the next one will, and the write connection's own automatic
// checkpoint still bounds the WAL. Each result goes to telemetry: a
// checkpoint that failed or was blocked is logged and counted there.
type checkpointer struct {
	pool    *sql.DB
	tel     *telemetry.T
	kicks   chan struct{}
	stop    chan struct{}
	stopped chan struct{}
	once    sync.Once
}

func newCheckpointer(pool *sql.DB, tel *telemetry.T) *checkpointer {
	c := &checkpointer{
		pool:    pool,
		tel:     tel,
		kicks:   make(chan struct{}, 1),
		stop:    make(chan struct{}),
		stopped: make(chan struct{}),
	}
	go c.loop()
	return c
}

// kick tells the checkpointer that there is something to copy.
func (c *checkpointer) kick() {
	if c == nil {
		return
	}
	select {
	case c.kicks <- struct{}{}:
	default:
	}
}

func (c *checkpointer) loop() {
	defer close(c.stopped)
	pause := time.NewTimer(0)
	defer pause.Stop()
	for {
		select {
		case <-c.kicks:
		case <-c.stop:
			return
		}
		c.checkpoint()
		pause.Reset(checkpointInterval)
		select {
		case <-pause.C:
		case <-c.stop:
			return
		}
	}
}

// checkpoint runs one PASSIVE checkpoint and reports its result: whether
// it was blocked, the WAL's size and how much of it is now copied, in
// pages.
func (c *checkpointer) checkpoint() {
	var busy, walPages, copied int
	rows, err := c.pool.QueryContext(context.Background(), "PRAGMA wal_checkpoint(PASSIVE)")
	if err == nil {
		err = scanOne(rows, &busy, &walPages, &copied)
	}
	c.tel.Checkpoint(busy != 0, walPages, copied, err)
}

func (c *checkpointer) close() {
	if c == nil {
		return
	}
	c.once.Do(func() { close(c.stop) })
	<-c.stopped
}
