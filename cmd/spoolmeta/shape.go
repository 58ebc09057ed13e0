package main

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
)

var cmdShape = &command{
	name:    "shape",
	args:    "[STATE...]",
	summary: "print the ages of the messages per state, like Postfix's qshape",
	help: `Counts the messages of each state (all states when none is named) by
age, the time since they were created: under 5 minutes, 5 to 10, 10 to 20,
and so on doubling up to 320 minutes, and older. Each count is read from
the (state, created) index, one count per bucket boundary; no message is
loaded. Counts taken while the queue moves may be off by the messages that
moved between two reads.`,
}

// ageBuckets are the upper ends of the age buckets; a last bucket holds
// every older message.
var ageBuckets = []time.Duration{5 * time.Minute, 10 * time.Minute, 20 * time.Minute, 40 * time.Minute,
	80 * time.Minute, 160 * time.Minute, 320 * time.Minute}

// bucketLabels names the buckets: "5m" ... "320m", "more".
var bucketLabels = func() []string {
	var out []string
	for _, b := range ageBuckets {
		out = append(out, fmt.Sprintf("%dm", int(b.Minutes())))
	}
	return append(out, "more")
}()

// stateShape is the age table row of one state.
type stateShape struct {
	State  string  `json:"state"`
	Total  int64   `json:"total"`
	Counts []int64 `json:"counts"` // one per bucket label
}

// shapeJSON is the whole age table.
type shapeJSON struct {
	Now     string       `json:"now"`
	Buckets []string     `json:"buckets"`
	States  []stateShape `json:"states"`
	Totals  []int64      `json:"totals"` // per bucket, over the states
	Total   int64        `json:"total"`
}

// ageShape counts the messages of each state by age at now. For each
// bucket boundary b it counts the messages created at or after now-b with
// one index range count (ListMessages' Total with Since); the oldest and
// newest message of Stats spare the counts whose answer is already known
// (every message, or none). Nothing is loaded but counts.
func ageShape(ctx context.Context, r *sqlitemeta.Repository, now time.Time, states []metastorage.QueueState) (shapeJSON, error) {
	out := shapeJSON{Now: now.UTC().Format(time.RFC3339), Buckets: bucketLabels, Totals: make([]int64, len(bucketLabels))}
	stats, err := r.Stats(ctx)
	if err != nil {
		return out, err
	}
	for _, st := range states {
		s := stats[st]
		row := stateShape{State: st.String(), Total: s.Count, Counts: make([]int64, len(bucketLabels))}
		prev := int64(0) // messages younger than the previous boundary
		for i, b := range ageBuckets {
			since := now.Add(-b)
			var within int64 // messages created at or after since
			switch {
			case s.Count == 0:
			case !s.Oldest.IsZero() && !s.Oldest.Before(since):
				within = s.Count // even the oldest is younger
			case s.Newest.Before(since):
				within = 0 // even the newest is older
			default:
				res, err := r.ListMessages(ctx, st, metastorage.MessageListOptions{Limit: 1, Since: since})
				if err != nil {
					return out, err
				}
				within = int64(res.Total)
			}
			// Counts read at different moments of a moving queue: keep
			// them monotonic and within the total.
			within = min(max(within, prev), s.Count)
			row.Counts[i] = within - prev
			prev = within
		}
		row.Counts[len(ageBuckets)] = s.Count - prev
		for i, n := range row.Counts {
			out.Totals[i] += n
		}
		out.Total += row.Total
		out.States = append(out.States, row)
	}
	return out, nil
}

func allStates() []metastorage.QueueState {
	var out []metastorage.QueueState
	for s := metastorage.StateIncoming; s <= metastorage.StateArchived; s++ {
		out = append(out, s)
	}
	return out
}

func runShape(ctx context.Context, a *app, args []string) error {
	c := cmdShape
	fs, cf := a.newFlags(c)
	pos, err := a.parse(c, fs, args)
	if err != nil {
		return err
	}
	states := allStates()
	if len(pos) > 0 {
		states = nil
		for _, p := range pos {
			s, err := parseState(c.name, p)
			if err != nil {
				return err
			}
			states = append(states, s)
		}
	}
	return withStore(ctx, c, cf, readOnly, func(s *store) error {
		shape, err := ageShape(ctx, s.r, time.Now(), states)
		if err != nil {
			return err
		}
		if cf.json {
			return writeJSON(a.stdout, shape)
		}
		tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', tabwriter.AlignRight)
		fmt.Fprint(tw, "STATE\tTOTAL")
		for _, l := range shape.Buckets {
			fmt.Fprintf(tw, "\t%s", l)
		}
		fmt.Fprintln(tw, "\t")
		row := func(name string, total int64, counts []int64) {
			fmt.Fprintf(tw, "%s\t%d", name, total)
			for _, n := range counts {
				fmt.Fprintf(tw, "\t%d", n)
			}
			fmt.Fprintln(tw, "\t")
		}
		for _, st := range shape.States {
			row(st.State, st.Total, st.Counts)
		}
		if len(shape.States) > 1 {
			row("total", shape.Total, shape.Totals)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintf(a.stdout, "ages at %s: 5m is under 5 minutes, 10m from 5 to 10, ..., more is over 320 minutes\n", shape.Now)
		return nil
	})
}
