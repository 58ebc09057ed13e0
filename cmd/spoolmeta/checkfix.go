package main

import (
	"context"
	"errors"
	"fmt"

	"gorm.io/gorm"
	metastorage "schneider.vip/retryspool/storage/meta"
)

// checkFix repairs, or with DryRun counts what it would repair. Each
// message or body is checked again just before it is changed, and left
// alone when it changed since.
func checkFix(ctx context.Context, s *store, d *bodyStore, invalid []messageRefJSON, missing []metastorage.MessageMetadata, rep *checkJSON) error {
	f := &fixedJSON{}
	rep.Fixed = f
	if rep.DryRun {
		f.CountersRecounted = len(rep.Counters) > 0
		f.MovedToHold = int64(len(invalid) + len(missing))
		if rep.Data != nil {
			f.BodiesDeleted = int64(len(rep.Data.OrphanedBodies))
		}
		return nil
	}
	fixed := 0
	for _, m := range invalid {
		var st int
		fmt.Sscan(m.State, &st)
		err := s.r.Transaction(ctx, func(tx *gorm.DB) error {
			res := tx.Table(s.table).Where("id = ? AND state = ?", m.ID, st).Update("state", int(metastorage.StateHold))
			f.MovedToHold += res.RowsAffected
			return res.Error
		})
		if err != nil {
			return fmt.Errorf("move %s to hold: %w", fmtID(m.ID), err)
		}
		fixed++
	}
	if len(rep.Counters) > 0 {
		if err := s.r.Transaction(ctx, func(tx *gorm.DB) error { return recount(tx, s.table) }); err != nil {
			return fmt.Errorf("recount: %w", err)
		}
		f.CountersRecounted = true
		fixed++
	}
	for _, m := range missing {
		if has, err := d.has(m.ID); err != nil || has {
			continue
		}
		fixed++
		err := s.r.MoveToState(ctx, m.ID, m.State, metastorage.StateHold)
		switch {
		case errors.Is(err, metastorage.ErrStateConflict), errors.Is(err, metastorage.ErrMessageNotFound):
			fixed-- // it moved on; left alone
		case err != nil:
			return fmt.Errorf("move %s to hold: %w", fmtID(m.ID), err)
		default:
			f.MovedToHold++
		}
	}
	if rep.Data != nil {
		for _, id := range rep.Data.OrphanedBodies {
			if _, err := s.r.GetMeta(ctx, id); !errors.Is(err, metastorage.ErrMessageNotFound) {
				continue // metadata appeared, or the lookup failed: leave it
			}
			n, err := d.delete(ctx, []string{id})
			if err != nil {
				return err
			}
			f.BodiesDeleted += n
			fixed++
		}
	}
	rep.Remaining = rep.Problems - fixed
	if rep.Integrity != nil && !rep.Integrity.OK {
		rep.Remaining = max(rep.Remaining, 1)
	}
	return nil
}

// recount sets the counters to the real counts (all in shard 0), inside
// the write transaction tx.
func recount(tx *gorm.DB, table string) error {
	c, m := tx.Statement.Quote(table+"_counts"), tx.Statement.Quote(table)
	if err := tx.Exec("UPDATE " + c + " SET n = 0 WHERE shard <> 0").Error; err != nil {
		return err
	}
	return tx.Exec("UPDATE " + c + " SET n = (SELECT COUNT(*) FROM " + m + " WHERE " + m + ".state = " + c + ".state) WHERE shard = 0").Error
}

func printCheck(a *app, rep *checkJSON) {
	w := a.stdout
	fmt.Fprintf(w, "database:  %s\n", rep.Database)
	if len(rep.Counters) == 0 {
		fmt.Fprintf(w, "counters:  ok, every state's counter matches its rows\n")
	} else {
		fmt.Fprintf(w, "counters:  %d states do not match their rows\n", len(rep.Counters))
		tw := newTable(w)
		fmt.Fprintln(tw, "  STATE\tCOUNTER\tROWS")
		for _, c := range rep.Counters {
			fmt.Fprintf(tw, "  %s\t%d\t%d\n", c.State, c.Counter, c.Rows)
		}
		tw.Flush()
	}
	if len(rep.InvalidStates) == 0 {
		fmt.Fprintf(w, "states:    ok\n")
	} else {
		fmt.Fprintf(w, "states:    %d messages with an invalid state\n", len(rep.InvalidStates))
		for _, m := range rep.InvalidStates {
			fmt.Fprintf(w, "  %s  state %s\n", fmtID(m.ID), m.State)
		}
	}
	switch {
	case rep.Integrity == nil:
		fmt.Fprintf(w, "integrity: not checked (--integrity quick or full reads the whole file)\n")
	case rep.Integrity.OK:
		fmt.Fprintf(w, "integrity: %s ok\n", rep.Integrity.Check)
	default:
		fmt.Fprintf(w, "integrity: %s FAILED\n", rep.Integrity.Check)
		for _, m := range rep.Integrity.Messages {
			fmt.Fprintf(w, "  %s\n", m)
		}
	}
	if d := rep.Data; d != nil {
		fmt.Fprintf(w, "data:      %s: %d bodies, %d without metadata, %d message(s) without a body, %d other files, %d younger than --min-age left out\n",
			d.Dir, d.Bodies, len(d.OrphanedBodies), len(d.MissingBodies), len(d.OtherFiles), d.SkippedYoung)
		for _, id := range d.OrphanedBodies {
			fmt.Fprintf(w, "  body without metadata    %s\n", fmtID(id))
		}
		for _, m := range d.MissingBodies {
			fmt.Fprintf(w, "  message without a body   %s (%s)\n", fmtID(m.ID), m.State)
		}
		for _, id := range d.HeldWithoutBody {
			fmt.Fprintf(w, "  held, without a body     %s (not a problem: decide, then 'spoolmeta purge' or 'move')\n", fmtID(id))
		}
		for _, p := range d.OtherFiles {
			fmt.Fprintf(w, "  other file (left alone)  %s\n", p)
		}
	} else {
		fmt.Fprintf(w, "data:      not checked (--data fs:DIR compares with the message bodies)\n")
	}
	if f := rep.Fixed; f != nil {
		verb := "fixed"
		if rep.DryRun {
			verb = "would fix"
		}
		fmt.Fprintf(w, "%s: counters recounted: %v, moved to hold: %d, bodies deleted: %d\n", verb, f.CountersRecounted, f.MovedToHold, f.BodiesDeleted)
	}
	switch {
	case rep.Problems == 0:
		fmt.Fprintf(w, "no problems found\n")
	case rep.Remaining == 0:
		fmt.Fprintf(w, "%d problem(s) found, all fixed\n", rep.Problems)
	case rep.Fix && rep.DryRun:
		fmt.Fprintf(w, "%d problem(s) found; run again without --dry-run to fix them\n", rep.Problems)
	case !rep.Fix:
		fmt.Fprintf(w, "%d problem(s) found; 'spoolmeta check --fix --dry-run' shows what --fix would do\n", rep.Problems)
	default:
		fmt.Fprintf(w, "%d problem(s) found, %d remain\n", rep.Problems, rep.Remaining)
	}
}
