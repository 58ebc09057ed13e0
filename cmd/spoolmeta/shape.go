package main

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	metastorage "schneider.vip/retryspool/storage/meta"

	"schneider.vip/retryspool/storage/meta/sqlite/dashboard"
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

func runShape(ctx context.Context, a *app, args []string) error {
	c := cmdShape
	fs, cf := a.newFlags(c)
	pos, err := a.parse(c, fs, args)
	if err != nil {
		return err
	}
	var states []metastorage.QueueState
	for s := metastorage.StateIncoming; s <= metastorage.StateArchived && len(pos) == 0; s++ {
		states = append(states, s)
	}
	if len(pos) > 0 {
		for _, p := range pos {
			s, err := parseState(c.name, p)
			if err != nil {
				return err
			}
			states = append(states, s)
		}
	}
	return withStore(ctx, c, cf, readOnly, func(s *store) error {
		shape, err := dashboard.Shape(ctx, s.r, time.Now(), states)
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
