package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
)

var (
	cmdStats = &command{
		name:    "stats",
		summary: "counts, oldest and newest message per state, due messages, database size",
		help: `The counts come from the store's counters and are exact. "due" counts
deferred messages whose next retry is at or before now, up to --due-limit.
On a SQLite file it also prints the size of the database and its WAL file.`,
	}
	cmdList = &command{
		name:    "list",
		args:    "STATE",
		summary: "list the messages of a state, one page at a time",
		help: `--since keeps messages created at or after a time: RFC 3339
(2024-05-01T08:00:00Z) or an age (24h, 7d: created within that long).`,
	}
	cmdShow = &command{
		name:    "show",
		args:    "ID",
		summary: "print the whole record of one message",
		help:    `Exits with 3 when there is no such message.`,
	}
	cmdMove = &command{
		name:    "move",
		args:    "ID FROM TO",
		summary: "move one message from state FROM to state TO",
		help: `The move is one compare-and-swap: it happens only if the message is in
FROM when the command runs. Exits with 4 (state conflict) otherwise, and
with 3 when there is no such message.`,
	}
	cmdRequeue = &command{
		name:    "requeue-stale",
		summary: "move Active messages claimed too long ago back to Incoming",
		help: `A message stays Active while a worker handles it; one that stayed longer
than --older-than was most likely left by a worker that died. Its Updated
time is when it was claimed. Run it when no worker can still be busy with
such a message. --dry-run only counts them.`,
	}
	cmdPurge = &command{
		name:    "purge",
		args:    "STATE",
		summary: "delete (or archive) the messages of a state created too long ago",
		help: `Deletes the messages of STATE created more than --older-than ago, in
batches of one transaction each. --archive moves them to archived instead,
--dry-run only counts them.

Message bodies: purge deletes metadata only, unless --data names the data
store. Without --data, the bodies of the purged messages stay in
RetrySpool's data store for ever (nothing else deletes them); with
--data fs:DIR (RetrySpool's filesystem data store) the bodies of each
batch are deleted right after its metadata commits. A crash in between
leaves bodies without metadata, which 'spoolmeta check --data fs:DIR --fix'
removes.`,
	}
	cmdBackup = &command{
		name:    "backup",
		args:    "FILE",
		summary: "write a consistent copy of a live SQLite database to FILE",
		help: `FILE must not exist; its directory is created when missing. Writers
may go on during the backup, and it needs only read access to the
database. For
PostgreSQL and MySQL/MariaDB use the server's own tools (pg_dump,
mariadb-dump).`,
	}
	cmdCopy = &command{
		name:    "copy",
		summary: "copy every message of another store into this one, then verify",
		help: `--from is one of:
  fs:DIR         RetrySpool's filesystem metadata store in DIR
  sqlite:PATH    a SQLite file of this library (or just PATH)
  a server DSN   as for --dsn
The destination is --db or --dsn (created when missing). Messages that are
already there are replaced, so an interrupted copy can simply be run again.
Stop the queue that uses the source first. A source file of the earlier
raw-SQL RetrySpool SQLite backend is upgraded in place when opened.`,
	}
)

func init() {
	cmdCheck.run = runCheck
	cmdDrop.run = runDrop
	cmdStats.run = runStats
	cmdList.run = runList
	cmdShow.run = runShow
	cmdMove.run = runMove
	cmdRequeue.run = runRequeue
	cmdPurge.run = runPurge
	cmdBackup.run = runBackup
	cmdCopy.run = runCopy
	cmdShape.run = runShape
	cmdServe.run = runServe
	commands = []*command{cmdStats, cmdList, cmdShow, cmdMove, cmdRequeue, cmdPurge, cmdCheck, cmdBackup, cmdCopy, cmdDrop, cmdShape, cmdServe, cmdBench}
}

// withStore opens the store of cf, runs fn and closes the store.
func withStore(ctx context.Context, c *command, cf *connFlags, acc access, fn func(s *store) error) error {
	s, err := openStoreCtx(ctx, c.name, cf, acc)
	if err != nil {
		return err
	}
	err = fn(s)
	if cerr := s.close(); cerr != nil && err == nil {
		err = fmt.Errorf("close: %w", cerr)
	}
	return err
}

// openStoreCtx is openStore that returns when ctx ends (an interrupt)
// even while the open waits for another process's lock, which the SQLite
// driver does without a context. Nothing has been written then; the open
// in flight is closed when it completes.
func openStoreCtx(ctx context.Context, cmd string, cf *connFlags, acc access) (*store, error) {
	type opened struct {
		s   *store
		err error
	}
	ch := make(chan opened, 1)
	go func() {
		s, err := openStore(ctx, cmd, cf, acc)
		ch <- opened{s, err}
	}()
	select {
	case o := <-ch:
		return o.s, o.err
	case <-ctx.Done():
		go func() {
			if o := <-ch; o.s != nil {
				_ = o.s.close()
			}
		}()
		return nil, fmt.Errorf("open: %w", ctx.Err())
	}
}

type stateStatsJSON struct {
	State    string  `json:"state"`
	Count    int64   `json:"count"`
	OldestID string  `json:"oldest_id,omitempty"`
	Oldest   *string `json:"oldest_created"`
	NewestID string  `json:"newest_id,omitempty"`
	Newest   *string `json:"newest_created"`
}

type statsJSON struct {
	Engine   string           `json:"engine"`
	Path     string           `json:"path,omitempty"`
	Table    string           `json:"table"`
	States   []stateStatsJSON `json:"states"`
	Total    int64            `json:"total"`
	Due      dueJSON          `json:"due"`
	DBBytes  *int64           `json:"db_bytes,omitempty"`
	WALBytes *int64           `json:"wal_bytes,omitempty"`
}

type dueJSON struct {
	Count int `json:"count"`
	Limit int `json:"limit"`
	// AtLeast is set when the limit was reached: there may be more.
	AtLeast   bool    `json:"at_least"`
	FirstID   string  `json:"first_id,omitempty"`
	FirstNext *string `json:"first_next_retry"`
}

func runStats(ctx context.Context, a *app, args []string) error {
	c := cmdStats
	fs, cf := a.newFlags(c)
	dueLimit := fs.Int("due-limit", 1000, "count due messages up to `n`")
	pos, err := a.parse(c, fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(c, pos, 0); err != nil {
		return err
	}
	if *dueLimit < 1 || *dueLimit > sqlitemeta.MaxClaim {
		return usagef(c.name, "--due-limit must be in 1..%d", sqlitemeta.MaxClaim)
	}
	return withStore(ctx, c, cf, readOnly, func(s *store) error {
		stats, err := s.r.Stats(ctx)
		if err != nil {
			return err
		}
		due, err := s.r.DueMessages(ctx, time.Now(), *dueLimit)
		if err != nil {
			return err
		}
		out := statsJSON{Engine: s.engine, Path: s.path, Table: s.table,
			Due: dueJSON{Count: len(due), Limit: *dueLimit, AtLeast: len(due) == *dueLimit}}
		for _, st := range stats {
			out.Total += st.Count
			out.States = append(out.States, stateStatsJSON{State: st.State.String(), Count: st.Count,
				OldestID: st.OldestID, Oldest: jsonTime(st.Oldest), NewestID: st.NewestID, Newest: jsonTime(st.Newest)})
		}
		if len(due) > 0 {
			out.Due.FirstID, out.Due.FirstNext = due[0].ID, jsonTime(due[0].NextRetry)
		}
		if s.engine == engineSQLite {
			db, wal := fileSize(s.path), fileSize(s.path+"-wal")
			out.DBBytes, out.WALBytes = &db, &wal
		}
		if cf.json {
			return writeJSON(a.stdout, out)
		}
		tw := newTable(a.stdout)
		fmt.Fprintln(tw, "STATE\tCOUNT\tOLDEST\tOLDEST_CREATED\tNEWEST\tNEWEST_CREATED")
		for _, st := range stats {
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\n", st.State, st.Count,
				orDash(fmtID(st.OldestID)), fmtTime(st.Oldest), orDash(fmtID(st.NewestID)), fmtTime(st.Newest))
		}
		fmt.Fprintf(tw, "total\t%d\t\t\t\t\n", out.Total)
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintln(a.stdout)
		tw = newTable(a.stdout)
		more := ""
		if out.Due.AtLeast {
			more = " or more"
		}
		fmt.Fprintf(tw, "due now:\t%d%s deferred messages with next retry at or before now", out.Due.Count, more)
		if len(due) > 0 {
			fmt.Fprintf(tw, " (first: %s, due since %s)", fmtID(due[0].ID), fmtTime(due[0].NextRetry))
		}
		fmt.Fprintln(tw)
		fmt.Fprintf(tw, "database:\t%s\n", s.describe())
		if s.engine == engineSQLite {
			fmt.Fprintf(tw, "file size:\t%s\n", fmtBytes(*out.DBBytes))
			fmt.Fprintf(tw, "WAL size:\t%s\n", fmtBytes(*out.WALBytes))
		}
		return tw.Flush()
	})
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

type listJSON struct {
	State    string        `json:"state"`
	Total    int           `json:"total"`
	Offset   int           `json:"offset"`
	HasMore  bool          `json:"has_more"`
	IDs      []string      `json:"ids"`
	Messages []messageJSON `json:"messages"`
}

func runList(ctx context.Context, a *app, args []string) error {
	c := cmdList
	fs, cf := a.newFlags(c)
	sortBy := fs.String("sort", "created", "sort by `field`: "+strings.Join(sortFields, ", "))
	order := fs.String("order", "asc", "sort `order`: asc or desc")
	limit := fs.Int("limit", 100, "at most `n` messages")
	offset := fs.Int("offset", 0, "skip the first `n` messages")
	since := fs.String("since", "", "only messages created at or after `time` (RFC 3339, or an age like 24h or 7d)")
	pos, err := a.parse(c, fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(c, pos, 1); err != nil {
		return err
	}
	state, err := parseState(c.name, pos[0])
	if err != nil {
		return err
	}
	if *limit < 1 || *limit > sqlitemeta.MaxListLimit {
		return usagef(c.name, "--limit must be in 1..%d", sqlitemeta.MaxListLimit)
	}
	if *offset < 0 {
		return usagef(c.name, "--offset must not be negative")
	}
	if !oneOf(*sortBy, sortFields) {
		return usagef(c.name, "unknown --sort %q (want one of: %s)", *sortBy, strings.Join(sortFields, ", "))
	}
	if !oneOf(*order, sortOrders) {
		return usagef(c.name, "unknown --order %q (want asc or desc)", *order)
	}
	sinceT, err := parseSince(c.name, *since, time.Now())
	if err != nil {
		return err
	}
	return withStore(ctx, c, cf, readOnly, func(s *store) error {
		res, err := s.r.ListMessages(ctx, state, metastorage.MessageListOptions{
			Limit: *limit, Offset: *offset, SortBy: *sortBy, SortOrder: *order, Since: sinceT,
		})
		if err != nil {
			return err
		}
		out := listJSON{State: state.String(), Total: res.Total, Offset: *offset, HasMore: res.HasMore,
			IDs: res.MessageIDs, Messages: []messageJSON{}}
		var mds []metastorage.MessageMetadata
		for _, id := range res.MessageIDs {
			md, err := s.r.GetMeta(ctx, id)
			if errors.Is(err, metastorage.ErrMessageNotFound) {
				continue // deleted since the page was read
			}
			if err != nil {
				return err
			}
			mds = append(mds, md)
			out.Messages = append(out.Messages, toJSON(md))
		}
		if cf.json {
			return writeJSON(a.stdout, out)
		}
		tw := newTable(a.stdout)
		fmt.Fprintln(tw, "ID\tSTATE\tCREATED\tUPDATED\tATTEMPTS\tPRIORITY\tNEXT_RETRY\tLAST_ERROR")
		for _, md := range mds {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d/%d\t%d\t%s\t%s\n", fmtID(md.ID), md.State, fmtTime(md.Created), fmtTime(md.Updated),
				md.Attempts, md.MaxAttempts, md.Priority, fmtTime(md.NextRetry), oneLine(md.LastError, 60))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		switch {
		case len(res.MessageIDs) == 0:
			fmt.Fprintf(a.stdout, "no messages (%d in total)\n", res.Total)
		case res.HasMore:
			fmt.Fprintf(a.stdout, "%d-%d of %d; next page: --offset %d\n", *offset+1, *offset+len(res.MessageIDs), res.Total, *offset+len(res.MessageIDs))
		default:
			fmt.Fprintf(a.stdout, "%d-%d of %d\n", *offset+1, *offset+len(res.MessageIDs), res.Total)
		}
		return nil
	})
}

func runShow(ctx context.Context, a *app, args []string) error {
	c := cmdShow
	fs, cf := a.newFlags(c)
	pos, err := a.parse(c, fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(c, pos, 1); err != nil {
		return err
	}
	return withStore(ctx, c, cf, readOnly, func(s *store) error {
		md, err := s.r.GetMeta(ctx, pos[0])
		if errors.Is(err, metastorage.ErrMessageNotFound) {
			return fmt.Errorf("message %q: %w", pos[0], metastorage.ErrMessageNotFound)
		}
		if err != nil {
			return err
		}
		if cf.json {
			return writeJSON(a.stdout, toJSON(md))
		}
		tw := newTable(a.stdout)
		fmt.Fprintf(tw, "id:\t%s\n", fmtID(md.ID))
		fmt.Fprintf(tw, "state:\t%s\n", md.State)
		fmt.Fprintf(tw, "attempts:\t%d of %d\n", md.Attempts, md.MaxAttempts)
		fmt.Fprintf(tw, "next retry:\t%s\n", fmtTime(md.NextRetry))
		fmt.Fprintf(tw, "created:\t%s\n", fmtTime(md.Created))
		fmt.Fprintf(tw, "updated:\t%s\n", fmtTime(md.Updated))
		fmt.Fprintf(tw, "size:\t%d\n", md.Size)
		fmt.Fprintf(tw, "priority:\t%d\n", md.Priority)
		fmt.Fprintf(tw, "retry policy:\t%s\n", orDash(md.RetryPolicyName))
		fmt.Fprintf(tw, "last error:\t%s\n", orDash(md.LastError))
		keys := make([]string, 0, len(md.Headers))
		for k := range md.Headers {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		if len(keys) == 0 {
			fmt.Fprintf(tw, "headers:\t-\n")
		}
		for i, k := range keys {
			label := ""
			if i == 0 {
				label = "headers:"
			}
			fmt.Fprintf(tw, "%s\t%s: %s\n", label, k, md.Headers[k])
		}
		return tw.Flush()
	})
}

func runMove(ctx context.Context, a *app, args []string) error {
	c := cmdMove
	fs, cf := a.newFlags(c)
	pos, err := a.parse(c, fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(c, pos, 3); err != nil {
		return err
	}
	from, err := parseState(c.name, pos[1])
	if err != nil {
		return err
	}
	to, err := parseState(c.name, pos[2])
	if err != nil {
		return err
	}
	id := pos[0]
	return withStore(ctx, c, cf, readWrite, func(s *store) error {
		err := s.r.MoveToState(ctx, id, from, to)
		switch {
		case errors.Is(err, metastorage.ErrMessageNotFound):
			return fmt.Errorf("message %q: %w", id, err)
		case errors.Is(err, metastorage.ErrStateConflict):
			if md, gerr := s.r.GetMeta(ctx, id); gerr == nil {
				return fmt.Errorf("message %q is %s, not %s: %w", id, md.State, from, err)
			}
			return fmt.Errorf("message %q is not %s: %w", id, from, err)
		case err != nil:
			return err
		}
		if cf.json {
			return writeJSON(a.stdout, map[string]string{"id": id, "from": from.String(), "to": to.String()})
		}
		fmt.Fprintf(a.stdout, "moved %s from %s to %s\n", fmtID(id), from, to)
		return nil
	})
}

func runRequeue(ctx context.Context, a *app, args []string) error {
	c := cmdRequeue
	fs, cf := a.newFlags(c)
	olderThan := fs.String("older-than", "", "requeue messages claimed more than `age` ago (30m, 2h, 7d); required")
	batch := fs.Int("batch", sqlitemeta.DefaultOpBatchSize, "`n` messages per transaction")
	dryRun := fs.Bool("dry-run", false, "only count the messages that would be requeued")
	pos, err := a.parse(c, fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(c, pos, 0); err != nil {
		return err
	}
	age, err := parseAge(c.name, "older-than", *olderThan)
	if err != nil {
		return err
	}
	acc := readWrite
	if *dryRun {
		acc = readOnly
	}
	return withStore(ctx, c, cf, acc, func(s *store) error {
		cutoff := time.Now().Add(-age)
		var n int64
		if *dryRun {
			if n, err = countStale(ctx, s, cutoff); err != nil {
				return err
			}
		} else if n, err = s.r.RequeueStale(ctx, cutoff, *batch); err != nil {
			return fmt.Errorf("%w (%d requeued before the error)", err, n)
		}
		if cf.json {
			key := "requeued"
			if *dryRun {
				key = "would_requeue"
			}
			return writeJSON(a.stdout, map[string]any{key: n, "dry_run": *dryRun, "cutoff": jsonTime(cutoff)})
		}
		verb := "requeued"
		if *dryRun {
			verb = "would requeue"
		}
		fmt.Fprintf(a.stdout, "%s %d active messages claimed before %s\n", verb, n, fmtTime(cutoff))
		return nil
	})
}

func runPurge(ctx context.Context, a *app, args []string) error {
	c := cmdPurge
	fs, cf := a.newFlags(c)
	olderThan := fs.String("older-than", "", "purge messages created more than `age` ago (30m, 2h, 7d); required")
	dryRun := fs.Bool("dry-run", false, "only count the messages that would go")
	archive := fs.Bool("archive", false, "move the messages to archived instead of deleting them")
	batch := fs.Int("batch", sqlitemeta.DefaultOpBatchSize, "`n` messages per transaction")
	data := fs.String("data", "", "also delete the bodies from RetrySpool's data store: fs:`DIR` (filesystem store); without it the bodies stay")
	pos, err := a.parse(c, fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(c, pos, 1); err != nil {
		return err
	}
	state, err := parseState(c.name, pos[0])
	if err != nil {
		return err
	}
	age, err := parseAge(c.name, "older-than", *olderThan)
	if err != nil {
		return err
	}
	var bodies *bodyStore
	if *data != "" {
		if *archive {
			return usagef(c.name, "--data deletes bodies; --archive keeps the messages, so it cannot go with --data")
		}
		if bodies, err = openBodies(c.name, *data); err != nil {
			return err
		}
	}
	acc := readWrite
	if *dryRun {
		acc = readOnly
	}
	return withStore(ctx, c, cf, acc, func(s *store) error {
		cutoff := time.Now().Add(-age)
		opts := sqlitemeta.PurgeOptions{BatchSize: *batch, Archive: *archive, DryRun: *dryRun}
		var bodiesDeleted int64
		if bodies != nil {
			opts.OnPurged = func(ctx context.Context, ids []string) error {
				n, err := bodies.delete(ctx, ids)
				bodiesDeleted += n
				return err
			}
		}
		bar := a.newProgress("purge")
		if bar != nil && !*dryRun {
			total, err := s.r.Purge(ctx, state, cutoff, sqlitemeta.PurgeOptions{BatchSize: *batch, Archive: *archive, DryRun: true})
			if err != nil {
				return err
			}
			opts.Progress = func(done int64) { bar.update(done, max(total, done)) }
		}
		n, err := s.r.Purge(ctx, state, cutoff, opts)
		bar.done() // the result goes on a line of its own
		if err != nil {
			return fmt.Errorf("%w (%d purged before the error)", err, n)
		}
		verb := "deleted"
		switch {
		case *dryRun && *archive:
			verb = "would archive"
		case *dryRun:
			verb = "would delete"
		case *archive:
			verb = "archived"
		}
		if cf.json {
			out := map[string]any{"state": state.String(), "count": n, "dry_run": *dryRun,
				"archive": *archive, "cutoff": jsonTime(cutoff)}
			if bodies != nil {
				out["data"] = bodies.dir
				out["bodies_deleted"] = bodiesDeleted
			}
			return writeJSON(a.stdout, out)
		}
		fmt.Fprintf(a.stdout, "%s %d %s messages created before %s\n", verb, n, state, fmtTime(cutoff))
		switch {
		case bodies != nil && !*dryRun:
			fmt.Fprintf(a.stdout, "deleted %d message bodies from %s\n", bodiesDeleted, bodies.dir)
		case bodies != nil:
			fmt.Fprintf(a.stdout, "would delete their bodies from %s\n", bodies.dir)
		case !*archive && n > 0:
			fmt.Fprintf(a.stdout, "note: only the metadata; their bodies stay in the data store (give --data fs:DIR to delete them, or run 'spoolmeta check --data fs:DIR --fix')\n")
		}
		return nil
	})
}

func runBackup(ctx context.Context, a *app, args []string) error {
	c := cmdBackup
	fs, cf := a.newFlags(c)
	pos, err := a.parse(c, fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(c, pos, 1); err != nil {
		return err
	}
	dst, err := filepath.Abs(pos[0])
	if err != nil {
		return err
	}
	return withStore(ctx, c, cf, readOnly, func(s *store) error {
		if s.engine == engineSQLite {
			// A missing directory is created, as for --db.
			if err := os.MkdirAll(filepath.Dir(dst), 0o750); err != nil {
				return fmt.Errorf("backup: cannot create the directory of %s: %w", dst, err)
			}
		}
		if err := s.r.Backup(ctx, dst); err != nil {
			return err
		}
		size := fileSize(dst)
		if cf.json {
			return writeJSON(a.stdout, map[string]any{"source": s.path, "backup": dst, "bytes": size})
		}
		fmt.Fprintf(a.stdout, "backed up %s to %s (%s)\n", s.describe(), dst, fmtBytes(size))
		return nil
	})
}

type copyJSON struct {
	Source      string           `json:"source"`
	Destination string           `json:"destination"`
	Copied      int64            `json:"copied"`
	PerState    map[string]int64 `json:"per_state"`
}

func runCopy(ctx context.Context, a *app, args []string) error {
	c := cmdCopy
	fs, cf := a.newFlags(c)
	from := fs.String("from", "", "the `source`: fs:DIR, sqlite:PATH, PATH or a server DSN; required")
	fromTable := fs.String("from-table", defaultTable, "message `table` of a SQLite or server source")
	batch := fs.Int("batch", sqlitemeta.DefaultCopyBatchSize, "`n` messages per transaction")
	pos, err := a.parse(c, fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(c, pos, 0); err != nil {
		return err
	}
	if *from == "" {
		return usagef(c.name, "copy needs --from")
	}
	src, err := openSource(ctx, c.name, *from, *fromTable)
	if err != nil {
		return err
	}
	defer src.close()
	return withStore(ctx, c, cf, create, func(s *store) error {
		if src.path != "" && src.path == s.path && src.table == s.table {
			return usagef(c.name, "source and destination are the same table of %s", s.path)
		}
		bar := a.newProgress("copy")
		opts := sqlitemeta.CopyOptions{BatchSize: *batch}
		if bar != nil {
			opts.Progress = bar.update
		}
		report, err := sqlitemeta.Copy(ctx, src.b, s.r, opts)
		bar.done()
		if err != nil {
			return fmt.Errorf("%w (%d copied before the error)", err, report.Copied)
		}
		out := copyJSON{Source: src.desc, Destination: s.describe(), Copied: report.Copied, PerState: map[string]int64{}}
		for st := metastorage.StateIncoming; st <= metastorage.StateArchived; st++ {
			out.PerState[st.String()] = report.PerState[st]
		}
		if cf.json {
			return writeJSON(a.stdout, out)
		}
		fmt.Fprintf(a.stdout, "copied %d messages from %s to %s, verified\n", report.Copied, src.desc, s.describe())
		tw := newTable(a.stdout)
		fmt.Fprintln(tw, "STATE\tCOPIED")
		for st := metastorage.StateIncoming; st <= metastorage.StateArchived; st++ {
			fmt.Fprintf(tw, "%s\t%d\n", st, report.PerState[st])
		}
		return tw.Flush()
	})
}

var (
	sortFields = []string{"created", "updated", "priority", "attempts"}
	sortOrders = []string{"asc", "desc"}
)

func oneOf(s string, set []string) bool {
	for _, v := range set {
		if s == v {
			return true
		}
	}
	return false
}

// countStale counts what RequeueStale would move: Active messages updated
// before cutoff.
func countStale(ctx context.Context, s *store, cutoff time.Time) (int64, error) {
	enc, err := sqlitemeta.EncodeTime(cutoff)
	if err != nil {
		return 0, err
	}
	var n int64
	err = s.r.DB().WithContext(ctx).Table(s.table).
		Where("state = ? AND updated < ?", int(metastorage.StateActive), enc).Count(&n).Error
	return n, err
}
