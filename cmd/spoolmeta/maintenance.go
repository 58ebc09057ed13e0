package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
)

var cmdMove = &command{
	name:    "move",
	args:    "ID FROM TO",
	summary: "move one message from state FROM to state TO",
	help: `The move is one compare-and-swap: it happens only if the message is in
FROM when the command runs. Exits with 4 (state conflict) otherwise, and
with 3 when there is no such message.`,
}

var cmdRequeue = &command{
	name:    "requeue-stale",
	summary: "move Active messages claimed too long ago back to Incoming",
	help: `A message stays Active while a worker handles it; one that stayed longer
than --older-than was most likely left by a worker that died. Its Updated
time is when it was claimed. Run it when no worker can still be busy with
such a message. --dry-run only counts them.`,
}

var cmdPurge = &command{
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
	state, err := a.parseState(c, fs, args)
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
