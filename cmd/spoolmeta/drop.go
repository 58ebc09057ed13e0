package main

import (
	"context"
	"fmt"

	"gorm.io/gorm"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
)

var cmdDrop = &command{
	name:    "drop",
	summary: "remove a queue's tables, with every message in them (needs --yes)",
	help: `Removes the message table (--table), its counter table, its count
triggers and its schema record, with sqlitemeta.Drop; other queues' tables
in the same database stay. Every message of the queue is gone afterwards;
the bodies in a data store are not touched. Stop the queue first. Without
--yes it changes nothing and exits with 2.`,
}

func runDrop(ctx context.Context, a *app, args []string) error {
	c := cmdDrop
	fs, cf := a.newFlags(c)
	yes := fs.Bool("yes", false, "really drop the table and every message in it")
	pos, err := a.parse(c, fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(c, pos, 0); err != nil {
		return err
	}
	if !*yes {
		return usagef(c.name, "drop removes table %q and every message in it; give --yes to do it", cf.table)
	}
	s, err := openStoreCtx(ctx, c.name, cf, readWrite)
	if err != nil {
		return err
	}
	desc := s.describe()
	stats, err := s.r.Stats(ctx)
	var total int64
	for _, st := range stats {
		total += st.Count
	}
	if err != nil {
		s.close()
		return err
	}
	// Drop through the store's own database, on its write path: on a
	// SQLite file the store's writer then holds the write lock.
	err = s.r.Transaction(ctx, func(tx *gorm.DB) error { return sqlitemeta.Drop(ctx, tx, s.table) })
	if cerr := s.close(); cerr != nil && err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("drop: %w", err)
	}
	if cf.json {
		return writeJSON(a.stdout, map[string]any{"dropped": s.table, "database": desc, "messages": total})
	}
	fmt.Fprintf(a.stdout, "dropped %s (%d messages)\n", desc, total)
	return nil
}
