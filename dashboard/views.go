package dashboard

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
)

// stateView is one state as the page and /api/stats show it.
type stateView struct {
	State     string  `json:"state"`
	Count     int64   `json:"count"`
	OldestID  string  `json:"oldest_id,omitempty"`
	Oldest    *string `json:"oldest_created"`
	OldestAge float64 `json:"oldest_age_seconds"`
	NewestID  string  `json:"newest_id,omitempty"`
	Newest    *string `json:"newest_created"`
	NewestAge float64 `json:"newest_age_seconds"`
}

// dueView counts the deferred messages due now, up to a limit.
type dueView struct {
	Count int `json:"count"`
	Limit int `json:"limit"`
	// AtLeast is set when the limit was reached: there may be more.
	AtLeast   bool    `json:"at_least"`
	FirstID   string  `json:"first_id,omitempty"`
	FirstNext *string `json:"first_next_retry"`
}

type statsView struct {
	Engine   string      `json:"engine"`
	Database string      `json:"database"`
	Table    string      `json:"table"`
	Now      string      `json:"now"`
	States   []stateView `json:"states"`
	Total    int64       `json:"total"`
	Due      dueView     `json:"due"`
}

// dueLimit caps the due messages counted for the dashboard.
const dueLimit = 1000

func (h *Handler) stats(ctx context.Context) (statsView, error) {
	now := time.Now()
	stats, err := h.r.Stats(ctx)
	if err != nil {
		return statsView{}, err
	}
	due, err := h.r.DueMessages(ctx, now, dueLimit)
	if err != nil {
		return statsView{}, err
	}
	out := statsView{Engine: h.r.Dialect(), Database: h.cfg.name, Table: h.r.TableName(),
		Now: now.UTC().Format(time.RFC3339Nano), Due: dueView{Count: len(due), Limit: dueLimit, AtLeast: len(due) == dueLimit}}
	if len(due) > 0 {
		out.Due.FirstID, out.Due.FirstNext = due[0].ID, jsonTime(due[0].NextRetry)
	}
	for _, st := range stats {
		v := stateView{State: st.State.String(), Count: st.Count, OldestID: st.OldestID, Oldest: jsonTime(st.Oldest),
			NewestID: st.NewestID, Newest: jsonTime(st.Newest)}
		if st.Count > 0 {
			v.OldestAge = max(now.Sub(st.Oldest).Seconds(), 0)
			v.NewestAge = max(now.Sub(st.Newest).Seconds(), 0)
		}
		out.Total += st.Count
		out.States = append(out.States, v)
	}
	return out, nil
}

// Message is a message's record as the JSON endpoints serve it (and
// "spoolmeta list --json" and "spoolmeta show --json" print it): times in
// RFC 3339 with nanoseconds in UTC, null for none.
type Message struct {
	ID              string            `json:"id"`
	State           string            `json:"state"`
	Attempts        int               `json:"attempts"`
	MaxAttempts     int               `json:"max_attempts"`
	NextRetry       *string           `json:"next_retry"`
	Created         *string           `json:"created"`
	Updated         *string           `json:"updated"`
	LastError       string            `json:"last_error"`
	Size            int64             `json:"size"`
	Priority        int               `json:"priority"`
	Headers         map[string]string `json:"headers"`
	RetryPolicyName string            `json:"retry_policy_name"`
}

// MessageOf is the Message of a record.
func MessageOf(md metastorage.MessageMetadata) Message {
	return Message{
		ID: md.ID, State: md.State.String(), Attempts: md.Attempts, MaxAttempts: md.MaxAttempts,
		NextRetry: jsonTime(md.NextRetry), Created: jsonTime(md.Created), Updated: jsonTime(md.Updated),
		LastError: md.LastError, Size: md.Size, Priority: md.Priority, Headers: md.Headers,
		RetryPolicyName: md.RetryPolicyName,
	}
}

// jsonTime is RFC 3339 with nanoseconds in UTC, nil for the zero time.
func jsonTime(t time.Time) *string {
	if t.IsZero() {
		return nil
	}
	s := t.UTC().Format(time.RFC3339Nano)
	return &s
}

// AgeBuckets are the upper ends of the age buckets of Shape; a last
// bucket holds every older message.
var AgeBuckets = []time.Duration{5 * time.Minute, 10 * time.Minute, 20 * time.Minute, 40 * time.Minute,
	80 * time.Minute, 160 * time.Minute, 320 * time.Minute}

// bucketLabels names the buckets: "5m" ... "320m", "more".
var bucketLabels = func() []string {
	var out []string
	for _, b := range AgeBuckets {
		out = append(out, fmt.Sprintf("%dm", int(b.Minutes())))
	}
	return append(out, "more")
}()

// StateShape is the age table row of one state.
type StateShape struct {
	State  string  `json:"state"`
	Total  int64   `json:"total"`
	Counts []int64 `json:"counts"` // one per bucket
}

// ShapeTable is the age table of Shape, as /api/shape serves it.
type ShapeTable struct {
	Now     string       `json:"now"`
	Buckets []string     `json:"buckets"` // "5m" (under 5 minutes) ... "320m", "more"
	States  []StateShape `json:"states"`
	Totals  []int64      `json:"totals"` // per bucket, over the states
	Total   int64        `json:"total"`
}

// Shape counts the messages of each of states by age, the time since they
// were created, at now: under 5 minutes, 5 to 10, and so on doubling up to
// 320 minutes (AgeBuckets), and older. For each bucket boundary b it
// counts the messages created at or after now-b with one index range
// count (ListMessages' Total with Since); the oldest and newest message of
// Stats spare the counts whose answer is already known (every message, or
// none). Nothing is loaded but counts. Counts taken while the queue moves
// may be off by the messages that moved between two reads.
func Shape(ctx context.Context, r *sqlitemeta.Repository, now time.Time, states []metastorage.QueueState) (ShapeTable, error) {
	out := ShapeTable{Now: now.UTC().Format(time.RFC3339), Buckets: bucketLabels, Totals: make([]int64, len(bucketLabels))}
	stats, err := r.Stats(ctx)
	if err != nil {
		return out, err
	}
	for _, st := range states {
		s := stats[st]
		row := StateShape{State: st.String(), Total: s.Count, Counts: make([]int64, len(bucketLabels))}
		prev := int64(0) // messages younger than the previous boundary
		for i, b := range AgeBuckets {
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
		row.Counts[len(AgeBuckets)] = s.Count - prev
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

// ParseState reads a state name (incoming, active, deferred, hold,
// bounce, archived), case-insensitively.
func ParseState(name string) (metastorage.QueueState, error) {
	for _, s := range allStates() {
		if strings.EqualFold(name, s.String()) {
			return s, nil
		}
	}
	return 0, fmt.Errorf("unknown state %q (want incoming, active, deferred, hold, bounce or archived)", name)
}

// ParseAge reads a positive age: a Go duration (90m, 36h, 1h30m) or a
// whole number of days (7d).
func ParseAge(v string) (time.Duration, error) {
	var d time.Duration
	if days, ok := strings.CutSuffix(v, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || strconv.Itoa(n) != days || n > 100000 {
			return 0, fmt.Errorf("%q: not a duration (for example 30m, 24h or 7d)", v)
		}
		d = time.Duration(n) * 24 * time.Hour
	} else {
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			return 0, fmt.Errorf("%q: not a duration (for example 30m, 24h or 7d)", v)
		}
	}
	if d <= 0 {
		return 0, fmt.Errorf("%q: must be positive", v)
	}
	return d, nil
}

// fmtAge is an age for people: 42s, 5m, 3h12m, 2d4h; "-" for none.
func fmtAge(seconds float64, count int64) string {
	if count == 0 {
		return "-"
	}
	d := time.Duration(seconds * float64(time.Second))
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd%dh", int(d.Hours())/24, int(d.Hours())%24)
}

// fmtCount groups thousands: 12,345.
func fmtCount(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
