package main

import (
	"context"
	"fmt"
	"os"
	"time"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
)

var cmdStats = &command{
	name:    "stats",
	summary: "counts, oldest and newest message per state, due messages, database size",
	help: `The counts come from the store's counters and are exact. "due" counts
deferred messages whose next retry is at or before now, up to --due-limit.
On a SQLite file it also prints the size of the database and its WAL file.`,
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
