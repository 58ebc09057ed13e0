package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	metastorage "schneider.vip/retryspool/storage/meta"

	"schneider.vip/retryspool/storage/meta/sqlite/dashboard"
)

// parseState reads a state name, case-insensitively.
func parseState(cmd, name string) (metastorage.QueueState, error) {
	s, err := dashboard.ParseState(name)
	if err != nil {
		return 0, usagef(cmd, "%v", err)
	}
	return s, nil
}

// parseAge reads a positive age: a Go duration (90m, 36h, 1h30m) or a
// number of days (7d).
func parseAge(cmd, flagName, v string) (time.Duration, error) {
	if v == "" {
		return 0, usagef(cmd, "%s needs --%s (for example 30m, 24h or 7d)", cmd, flagName)
	}
	d, err := dashboard.ParseAge(v)
	if err != nil {
		return 0, usagef(cmd, "--%s %v", flagName, err)
	}
	return d, nil
}

// parseSince reads --since: an RFC 3339 time, or an age meaning that long
// ago.
func parseSince(cmd, v string, now time.Time) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, nil
	}
	d, err := parseAge(cmd, "since", v)
	if err != nil {
		return time.Time{}, usagef(cmd, "--since %q: want an RFC 3339 time (2024-05-01T08:00:00Z) or an age (24h, 7d)", v)
	}
	return now.Add(-d), nil
}

// fmtTime is a time for people: RFC 3339 in UTC, "-" for the zero time.
func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

// jsonTime is a time for scripts: RFC 3339 with nanoseconds in UTC, null
// for the zero time.
func jsonTime(t time.Time) *string {
	if t.IsZero() {
		return nil
	}
	s := t.UTC().Format(time.RFC3339Nano)
	return &s
}

func fmtBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB (%d bytes)", float64(n)/float64(div), "KMGTPE"[exp], n)
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
}

// oneLine shortens s to n runes on one line.
func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	if s == "" {
		return "-"
	}
	return s
}
