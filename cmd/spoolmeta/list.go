package main

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
	"schneider.vip/retryspool/storage/meta/sqlite/dashboard"
)

var cmdList = &command{
	name:    "list",
	args:    "STATE",
	summary: "list the messages of a state, one page at a time",
	help: `--since keeps messages created at or after a time: RFC 3339
(2024-05-01T08:00:00Z) or an age (24h, 7d: created within that long).`,
}

var cmdShow = &command{
	name:    "show",
	args:    "ID",
	summary: "print the whole record of one message",
	help:    `Exits with 3 when there is no such message.`,
}

type listJSON struct {
	State    string              `json:"state"`
	Total    int                 `json:"total"`
	Offset   int                 `json:"offset"`
	HasMore  bool                `json:"has_more"`
	IDs      []string            `json:"ids"`
	Messages []dashboard.Message `json:"messages"`
}

func runList(ctx context.Context, a *app, args []string) error {
	c := cmdList
	fs, cf := a.newFlags(c)
	sortBy := fs.String("sort", "created", "sort by `field`: "+strings.Join(sortFields, ", "))
	order := fs.String("order", "asc", "sort `order`: asc or desc")
	limit := fs.Int("limit", 100, "at most `n` messages")
	offset := fs.Int("offset", 0, "skip the first `n` messages")
	since := fs.String("since", "", "only messages created at or after `time` (RFC 3339, or an age like 24h or 7d)")
	state, err := a.parseState(c, fs, args)
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
			IDs: res.MessageIDs, Messages: []dashboard.Message{}}
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
			out.Messages = append(out.Messages, dashboard.MessageOf(md))
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
	id, err := a.parseOne(c, fs, args)
	if err != nil {
		return err
	}
	return withStore(ctx, c, cf, readOnly, func(s *store) error {
		md, err := s.r.GetMeta(ctx, id)
		if errors.Is(err, metastorage.ErrMessageNotFound) {
			return fmt.Errorf("message %q: %w", id, metastorage.ErrMessageNotFound)
		}
		if err != nil {
			return err
		}
		if cf.json {
			return writeJSON(a.stdout, dashboard.MessageOf(md))
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
