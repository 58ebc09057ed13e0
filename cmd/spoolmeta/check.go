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
