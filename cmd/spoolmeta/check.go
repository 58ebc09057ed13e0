package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"
	"time"

	"gorm.io/gorm"
	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
)

var cmdCheck = &command{
	name:    "check",
	summary: "check the store's integrity, and metadata against message bodies (like postsuper -s)",
	help: `Checks, reading only:
  - the per-state counters against the real number of rows;
  - that every message has one of the six states;
  - with --integrity quick or full (SQLite): PRAGMA quick_check or
    integrity_check, which read the whole file (seconds per GB);
  - with --data fs:DIR (RetrySpool's filesystem data store): bodies without
    metadata (left by a purge without --data, or a crash) and messages
    without a body. Bodies and messages younger than --min-age are left
    out: a message being enqueued has its body before its metadata. Files
    that are not bodies of the store are listed and never touched.
    Messages in hold without a body are listed, not counted as problems:
    that is where --fix puts them, for an operator to decide on.

--fix repairs what it found: recounts the counters, moves messages with
an invalid state or without a body to hold (where an operator looks at
them; RetrySpool does not deliver from hold), and deletes bodies without
metadata, each after checking again that it is still so. Run it with
--dry-run first: that prints what --fix would do and changes nothing.
Without --fix, check needs only read access.

Exits with 0 when it found nothing (or fixed everything), 1 when problems
remain.`,
}

type counterJSON struct {
	State   string `json:"state"`
	Counter int64  `json:"counter"`
	Rows    int64  `json:"rows"`
}

type messageRefJSON struct {
	ID    string `json:"id"`
	State string `json:"state"`
}

type dataJSON struct {
	Dir            string           `json:"dir"`
	Bodies         int              `json:"bodies"`
	OrphanedBodies []string         `json:"bodies_without_metadata"`
	MissingBodies  []messageRefJSON `json:"messages_without_body"`
	// HeldWithoutBody are messages in hold without a body: where --fix
	// puts them, for an operator to decide; not counted as problems.
	HeldWithoutBody []string `json:"held_without_body"`
	OtherFiles      []string `json:"other_files"`
	SkippedYoung    int      `json:"skipped_younger_than_min_age"`
}

type fixedJSON struct {
	CountersRecounted bool  `json:"counters_recounted"`
	MovedToHold       int64 `json:"moved_to_hold"`
	BodiesDeleted     int64 `json:"bodies_deleted"`
}

type checkJSON struct {
	Database      string           `json:"database"`
	Counters      []counterJSON    `json:"counter_mismatches"`
	InvalidStates []messageRefJSON `json:"invalid_states"`
	Integrity     *integrityJSON   `json:"integrity,omitempty"`
	Data          *dataJSON        `json:"data,omitempty"`
	Fix           bool             `json:"fix"`
	DryRun        bool             `json:"dry_run"`
	Fixed         *fixedJSON       `json:"fixed,omitempty"`
	Problems      int              `json:"problems"`
	Remaining     int              `json:"remaining"`
}

type integrityJSON struct {
	Check    string   `json:"check"`
	OK       bool     `json:"ok"`
	Messages []string `json:"messages,omitempty"`
}

// errProblems: check found problems that remain.
var errProblems = errors.New("the spool is inconsistent")

func runCheck(ctx context.Context, a *app, args []string) error {
	c := cmdCheck
	fs, cf := a.newFlags(c)
	integrity := fs.String("integrity", "none", "SQLite `check`: none, quick (PRAGMA quick_check) or full (PRAGMA integrity_check)")
	data := fs.String("data", "", "compare with RetrySpool's data store: fs:`DIR` (filesystem store)")
	minAge := fs.String("min-age", "1h", "leave out bodies and messages younger than `age`")
	fix := fs.Bool("fix", false, "repair what was found (see above)")
	dryRun := fs.Bool("dry-run", false, "with --fix: print what would be done, change nothing")
	pos, err := a.parse(c, fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(c, pos, 0); err != nil {
		return err
	}
	if !oneOf(*integrity, []string{"none", "quick", "full"}) {
		return usagef(c.name, "unknown --integrity %q (want none, quick or full)", *integrity)
	}
	if *integrity != "none" && cf.dsn != "" {
		return usagef(c.name, "--integrity checks SQLite files; use the server's own tools for %s", cf.dsn)
	}
	if *dryRun && !*fix {
		return usagef(c.name, "--dry-run goes with --fix")
	}
	age, err := parseAge(c.name, "min-age", *minAge)
	if err != nil {
		return err
	}
	var bodies *bodyStore
	if *data != "" {
		if bodies, err = openBodies(c.name, *data); err != nil {
			return err
		}
	}
	acc := readOnly
	if *fix && !*dryRun {
		acc = readWrite
	}
	return withStore(ctx, c, cf, acc, func(s *store) error {
		rep := checkJSON{Database: s.describe(), Fix: *fix, DryRun: *dryRun,
			Counters: []counterJSON{}, InvalidStates: []messageRefJSON{}}
		invalid, err := checkCounts(ctx, s, &rep)
		if err != nil {
			return err
		}
		if *integrity != "none" {
			pragma := map[string]string{"quick": "quick_check", "full": "integrity_check"}[*integrity]
			ij := &integrityJSON{Check: pragma}
			rows, err := s.r.DB().WithContext(ctx).Raw("PRAGMA " + pragma + "(100)").Rows()
			if err != nil {
				return fmt.Errorf("%s: %w", pragma, err)
			}
			for rows.Next() {
				var line string
				if err := rows.Scan(&line); err != nil {
					rows.Close()
					return err
				}
				ij.Messages = append(ij.Messages, line)
			}
			if err := rows.Close(); err != nil {
				return err
			}
			ij.OK = len(ij.Messages) == 1 && ij.Messages[0] == "ok"
			if ij.OK {
				ij.Messages = nil
			} else {
				rep.Problems++
			}
			rep.Integrity = ij
		}
		var missing []metastorage.MessageMetadata
		if bodies != nil {
			if missing, err = checkBodies(ctx, s, bodies, time.Now().Add(-age), &rep); err != nil {
				return err
			}
		}
		rep.Remaining = rep.Problems
		if *fix {
			if err := checkFix(ctx, s, bodies, invalid, missing, &rep); err != nil {
				return err
			}
		}
		if cf.json {
			if err := writeJSON(a.stdout, rep); err != nil {
				return err
			}
		} else {
			printCheck(a, &rep)
		}
		if rep.Remaining > 0 {
			return fmt.Errorf("check: %d of %d problem(s) not fixed: %w", rep.Remaining, rep.Problems, errProblems)
		}
		return nil
	})
}

// checkCounts compares the counters with the rows and finds invalid
// states, in one read snapshot. It returns the messages with an invalid
// state.
func checkCounts(ctx context.Context, s *store, rep *checkJSON) ([]messageRefJSON, error) {
	opts := &sql.TxOptions{ReadOnly: true}
	if s.engine != engineSQLite {
		opts.Isolation = sql.LevelRepeatableRead
	}
	counters, rows := map[int]int64{}, map[int]int64{}
	var invalid []messageRefJSON
	err := s.r.DB().WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		if err := groupCount(tx.Table(s.table+"_counts").Select("state, COALESCE(SUM(n), 0)"), counters); err != nil {
			return fmt.Errorf("read counters: %w", err)
		}
		if err := groupCount(tx.Table(s.table).Select("state, COUNT(*)"), rows); err != nil {
			return fmt.Errorf("count rows: %w", err)
		}
		r, err := tx.Table(s.table).Select("id, state").
			Where("state NOT IN ?", []int{0, 1, 2, 3, 4, 5}).Limit(10000).Rows()
		if err != nil {
			return fmt.Errorf("find invalid states: %w", err)
		}
		defer r.Close()
		for r.Next() {
			var id string
			var st int
			if err := r.Scan(&id, &st); err != nil {
				return err
			}
			invalid = append(invalid, messageRefJSON{ID: id, State: fmt.Sprint(st)})
		}
		return r.Err()
	}, opts)
	if err != nil {
		return nil, err
	}
	for st := metastorage.StateIncoming; st <= metastorage.StateArchived; st++ {
		if counters[int(st)] != rows[int(st)] {
			rep.Counters = append(rep.Counters, counterJSON{State: st.String(), Counter: counters[int(st)], Rows: rows[int(st)]})
		}
	}
	if len(rep.Counters) > 0 {
		rep.Problems++
	}
	rep.InvalidStates = append(rep.InvalidStates, invalid...)
	rep.Problems += len(invalid)
	return invalid, nil
}

func groupCount(q *gorm.DB, into map[int]int64) error {
	rows, err := q.Group("state").Rows()
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var st int
		var n int64
		if err := rows.Scan(&st, &n); err != nil {
			return err
		}
		into[st] = n
	}
	return rows.Err()
}

// checkBodies compares the metadata with the bodies, leaving out what
// changed after cutoff. It returns the messages without a body.
func checkBodies(ctx context.Context, s *store, d *bodyStore, cutoff time.Time, rep *checkJSON) ([]metastorage.MessageMetadata, error) {
	dj := &dataJSON{Dir: d.dir, OrphanedBodies: []string{}, MissingBodies: []messageRefJSON{}, OtherFiles: []string{}, HeldWithoutBody: []string{}}
	rep.Data = dj
	found := map[string]time.Time{}
	err := d.walk(ctx, func(b body) error {
		dj.Bodies++
		found[b.id] = b.info.ModTime()
		return nil
	}, func(path string) { dj.OtherFiles = append(dj.OtherFiles, path) })
	if err != nil {
		return nil, fmt.Errorf("read data store %s: %w", d.dir, err)
	}
	var missing []metastorage.MessageMetadata
	young, _ := sqlitemeta.EncodeTime(cutoff)
	rows, err := s.r.DB().WithContext(ctx).Table(s.table).Select("id, state, created").Rows()
	if err != nil {
		return nil, fmt.Errorf("read messages: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var st int
		var created int64
		if err := rows.Scan(&id, &st, &created); err != nil {
			return nil, err
		}
		if _, ok := found[id]; ok {
			delete(found, id)
			continue
		}
		if created >= young {
			dj.SkippedYoung++
			continue
		}
		if metastorage.QueueState(st) == metastorage.StateHold {
			dj.HeldWithoutBody = append(dj.HeldWithoutBody, id)
			continue
		}
		missing = append(missing, metastorage.MessageMetadata{ID: id, State: metastorage.QueueState(st)})
		dj.MissingBodies = append(dj.MissingBodies, messageRefJSON{ID: id, State: metastorage.QueueState(st).String()})
	}
	if err := rows.Close(); err != nil {
		return nil, err
	}
	for id, mtime := range found {
		if mtime.After(cutoff) {
			dj.SkippedYoung++
			continue
		}
		dj.OrphanedBodies = append(dj.OrphanedBodies, id)
	}
	sort.Strings(dj.OrphanedBodies)
	rep.Problems += len(dj.OrphanedBodies) + len(dj.MissingBodies)
	return missing, nil
}

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
