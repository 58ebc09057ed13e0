package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"
	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
)

// testServer is "spoolmeta serve" on a SQLite file, in the test's process.
type testServer struct {
	*httptest.Server
	sv *server
	r  *sqlitemeta.Repository
}

// startServer serves the store at path the way runServe does: the store
// opened with a meter provider feeding the Prometheus exporter.
func startServer(t testing.TB, path string, allowActions bool) *testServer {
	t.Helper()
	mp, metrics, err := newMetrics()
	require.NoError(t, err)
	s, err := openStore(context.Background(), "serve", &connFlags{db: path, table: defaultTable,
		opts: []sqlitemeta.Option{sqlitemeta.WithMeterProvider(mp)}}, readWrite)
	require.NoError(t, err)
	sv, err := newServer(s, allowActions, time.Second, metrics)
	require.NoError(t, err)
	sv.loopback = true
	ts := httptest.NewServer(sv.routes())
	t.Cleanup(func() {
		ts.Close()
		require.NoError(t, s.close())
		_ = mp.Shutdown(context.Background())
	})
	return &testServer{Server: ts, sv: sv, r: s.r}
}

func (ts *testServer) getJSON(t testing.TB, path string, v any) int {
	t.Helper()
	res, err := http.Get(ts.URL + path)
	require.NoError(t, err)
	defer res.Body.Close()
	require.Equal(t, "application/json; charset=utf-8", res.Header.Get("Content-Type"))
	require.NoError(t, json.NewDecoder(res.Body).Decode(v))
	return res.StatusCode
}

// post sends an action the way the dashboard does, with changes applied
// to the request first.
func (ts *testServer) post(t testing.TB, action string, body any, change func(*http.Request)) (int, map[string]any) {
	t.Helper()
	b, err := json.Marshal(body)
	require.NoError(t, err)
	req, err := http.NewRequest("POST", ts.URL+"/api/actions/"+action, bytes.NewReader(b))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Origin", ts.URL)
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	req.Header.Set(tokenHeader, ts.sv.token)
	if change != nil {
		change(req)
	}
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	var out map[string]any
	_ = json.Unmarshal(raw, &out)
	return res.StatusCode, out
}

func TestServeStatsEqualStore(t *testing.T) {
	t.Parallel()
	ts := startServer(t, seedMany(t, 2000), false)
	want, err := ts.r.Stats(context.Background())
	require.NoError(t, err)
	var got statsView
	require.Equal(t, http.StatusOK, ts.getJSON(t, "/api/stats", &got))
	require.Len(t, got.States, len(want))
	var total int64
	for i, st := range want {
		require.Equal(t, st.State.String(), got.States[i].State)
		require.Equal(t, st.Count, got.States[i].Count)
		require.Equal(t, st.OldestID, got.States[i].OldestID)
		total += st.Count
	}
	require.EqualValues(t, 2000, total)
	require.Equal(t, total, got.Total)
}

// The age table equals a count made by walking every message, at the same
// instant.
func TestShapeEqualsWalk(t *testing.T) {
	t.Parallel()
	path := seedMany(t, 3000)
	r := openCheck(t, path)
	ctx := context.Background()
	now := time.Now()
	shape, err := ageShape(ctx, r, now, allStates())
	require.NoError(t, err)
	require.Equal(t, bucketLabels, shape.Buckets)
	require.Equal(t, []string{"5m", "10m", "20m", "40m", "80m", "160m", "320m", "more"}, shape.Buckets)

	var grand int64
	for i, st := range allStates() {
		want := make([]int64, len(bucketLabels))
		it, err := r.NewMessageIterator(ctx, st, 500)
		require.NoError(t, err)
		for {
			md, ok, err := it.Next(ctx)
			require.NoError(t, err)
			if !ok {
				break
			}
			age := now.Sub(md.Created)
			b := len(ageBuckets)
			for j, edge := range ageBuckets {
				if age <= edge {
					b = j
					break
				}
			}
			want[b]++
		}
		require.NoError(t, it.Close())
		require.Equal(t, st.String(), shape.States[i].State)
		require.Equal(t, want, shape.States[i].Counts, st.String())
		var sum int64
		for _, n := range want {
			sum += n
		}
		require.Equal(t, sum, shape.States[i].Total)
		grand += sum
	}
	require.EqualValues(t, 3000, grand)
	require.Equal(t, grand, shape.Total)
	// The seed spreads ages over ten hours: every bucket has messages.
	for i, n := range shape.Totals {
		require.Positive(t, n, shape.Buckets[i])
	}
}

func TestShapeCommand(t *testing.T) {
	t.Parallel()
	path := seedMany(t, 500)
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"shape", "--db", path, "deferred", "incoming"}, &out, &errb)
	require.Equal(t, exitOK, code, errb.String())
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	require.Len(t, lines, 5, out.String()) // header, two states, total, note
	require.Equal(t, []string{"STATE", "TOTAL", "5m", "10m", "20m", "40m", "80m", "160m", "320m", "more"}, strings.Fields(lines[0]))
	require.Equal(t, "deferred", strings.Fields(lines[1])[0])
	require.Equal(t, "290", strings.Fields(lines[1])[1]) // 58 of every 100
	require.Equal(t, "incoming", strings.Fields(lines[2])[0])
	require.Equal(t, "60", strings.Fields(lines[2])[1])
	require.Equal(t, []string{"total", "350"}, strings.Fields(lines[3])[:2])

	out.Reset()
	code = run(context.Background(), []string{"shape", "--db", path, "--json"}, &out, &errb)
	require.Equal(t, exitOK, code, errb.String())
	var js shapeJSON
	require.NoError(t, json.Unmarshal(out.Bytes(), &js))
	require.Len(t, js.States, 6)
	require.EqualValues(t, 500, js.Total)

	code = run(context.Background(), []string{"shape", "--db", path, "nosuch"}, &out, &errb)
	require.Equal(t, exitUsage, code)
}

func TestServeMessages(t *testing.T) {
	t.Parallel()
	ts := startServer(t, seedMany(t, 1000), false)
	// Paging a state: every message once, in order.
	seen := map[string]bool{}
	var last string
	for offset := 0; ; offset += 70 {
		var page pageJSON
		require.Equal(t, http.StatusOK, ts.getJSON(t, "/api/messages?state=deferred&limit=70&offset="+strconv.Itoa(offset), &page))
		require.Equal(t, 580, page.Total)
		for _, m := range page.Messages {
			require.False(t, seen[m.ID], "repeated %s", m.ID)
			seen[m.ID] = true
			require.Equal(t, "deferred", m.State)
			require.GreaterOrEqual(t, *m.Created, last)
			last = *m.Created
		}
		if !page.HasMore {
			break
		}
	}
	require.Len(t, seen, 580)

	var page pageJSON
	require.Equal(t, http.StatusOK, ts.getJSON(t, "/api/messages?state=hold&sort=priority&order=desc&limit=5", &page))
	require.Len(t, page.Messages, 5)
	require.Equal(t, "priority", page.Sort)
	for i := 1; i < len(page.Messages); i++ {
		require.LessOrEqual(t, page.Messages[i].Priority, page.Messages[i-1].Priority)
	}
	var one messageJSON
	require.Equal(t, http.StatusOK, ts.getJSON(t, "/api/message?id="+page.Messages[0].ID, &one))
	require.Equal(t, page.Messages[0], one)
	require.NotEmpty(t, one.Headers["Subject"])

	var e apiError
	require.Equal(t, http.StatusNotFound, ts.getJSON(t, "/api/message?id=nosuch", &e))
	require.Contains(t, e.Error, "not found")
	require.Equal(t, http.StatusBadRequest, ts.getJSON(t, "/api/messages?state=nosuch", &e))
	require.Equal(t, http.StatusBadRequest, ts.getJSON(t, "/api/messages?state=hold&limit=0", &e))
	require.Equal(t, http.StatusBadRequest, ts.getJSON(t, "/api/messages?state=hold&sort=size", &e))
}

func TestServeDashboardHTML(t *testing.T) {
	t.Parallel()
	ts := startServer(t, seedMany(t, 300), false)
	res, err := http.Get(ts.URL + "/")
	require.NoError(t, err)
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	require.Equal(t, http.StatusOK, res.StatusCode)
	require.Contains(t, res.Header.Get("Content-Security-Policy"), "script-src 'self'")
	require.Equal(t, "DENY", res.Header.Get("X-Frame-Options"))
	html := string(body)
	require.Contains(t, html, `data-count="174"`) // deferred: 58 of every 100
	require.Contains(t, html, "read-only")
	require.NotContains(t, html, `id="actions"`)
	require.Contains(t, html, `data-token=""`, "no token in a read-only page")
	for _, asset := range []string{"/static/app.js", "/static/style.css"} {
		res, err := http.Get(ts.URL + asset)
		require.NoError(t, err)
		res.Body.Close()
		require.Equal(t, http.StatusOK, res.StatusCode, asset)
	}
	// A page reached through another Host name (DNS rebinding) is refused.
	req, _ := http.NewRequest("GET", ts.URL+"/api/stats", nil)
	req.Host = "attacker.example:80"
	res, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	res.Body.Close()
	require.Equal(t, http.StatusMisdirectedRequest, res.StatusCode)
}

func TestServeActionsRefusedReadOnly(t *testing.T) {
	t.Parallel()
	path := seedFile(t)
	ts := startServer(t, path, false)
	code, out := ts.post(t, "move", map[string]any{"id": "hold-1", "from": "hold", "to": "incoming"}, nil)
	require.Equal(t, http.StatusForbidden, code)
	require.Contains(t, out["error"], "--allow-actions")
	code, _ = ts.post(t, "purge", map[string]any{"state": "bounce", "older_than": "1h"}, nil)
	require.Equal(t, http.StatusForbidden, code)
	require.Equal(t, metastorage.StateHold, stateOf(t, ts.r, "hold-1"))
	require.EqualValues(t, 3, ts.r.GetStateCount(metastorage.StateBounce))
}

func TestServeActions(t *testing.T) {
	t.Parallel()
	path := seedFile(t)
	ts := startServer(t, path, true)
	move := map[string]any{"id": "hold-1", "from": "hold", "to": "incoming"}

	// Requests that do not come from the dashboard are refused.
	for name, change := range map[string]func(*http.Request){
		"no token":            func(r *http.Request) { r.Header.Del(tokenHeader) },
		"wrong token":         func(r *http.Request) { r.Header.Set(tokenHeader, strings.Repeat("0", 32)) },
		"cross-site fetch":    func(r *http.Request) { r.Header.Set("Sec-Fetch-Site", "cross-site") },
		"other origin":        func(r *http.Request) { r.Header.Del("Sec-Fetch-Site"); r.Header.Set("Origin", "https://evil.example") },
		"form content type":   func(r *http.Request) { r.Header.Set("Content-Type", "application/x-www-form-urlencoded") },
		"same-site subdomain": func(r *http.Request) { r.Header.Set("Sec-Fetch-Site", "same-site") },
	} {
		code, _ := ts.post(t, "move", move, change)
		require.Contains(t, []int{http.StatusForbidden, http.StatusUnsupportedMediaType}, code, name)
	}
	require.Equal(t, metastorage.StateHold, stateOf(t, ts.r, "hold-1"))

	// Dry runs change nothing.
	move["dry_run"] = true
	code, out := ts.post(t, "move", move, nil)
	require.Equal(t, http.StatusOK, code, out)
	require.Equal(t, "would move hold-1 from hold to incoming", out["message"])
	require.Equal(t, metastorage.StateHold, stateOf(t, ts.r, "hold-1"))
	code, out = ts.post(t, "requeue-stale", map[string]any{"older_than": "2h", "dry_run": true}, nil)
	require.Equal(t, http.StatusOK, code, out)
	require.EqualValues(t, 1, out["count"]) // act-stale, claimed 3h ago
	code, out = ts.post(t, "purge", map[string]any{"state": "bounce", "older_than": "24h", "dry_run": true}, nil)
	require.Equal(t, http.StatusOK, code, out)
	require.EqualValues(t, 2, out["count"])
	require.EqualValues(t, 3, ts.r.GetStateCount(metastorage.StateBounce))
	require.Equal(t, metastorage.StateActive, stateOf(t, ts.r, "act-stale"))

	// Then for real.
	move["dry_run"] = false
	code, out = ts.post(t, "move", move, nil)
	require.Equal(t, http.StatusOK, code, out)
	require.Equal(t, metastorage.StateIncoming, stateOf(t, ts.r, "hold-1"))
	code, out = ts.post(t, "move", move, nil)
	require.Equal(t, http.StatusConflict, code, out)
	code, out = ts.post(t, "requeue-stale", map[string]any{"older_than": "2h"}, nil)
	require.Equal(t, http.StatusOK, code, out)
	require.Equal(t, metastorage.StateIncoming, stateOf(t, ts.r, "act-stale"))
	require.Equal(t, metastorage.StateActive, stateOf(t, ts.r, "act-fresh"))
	code, out = ts.post(t, "purge", map[string]any{"state": "bounce", "older_than": "24h", "archive": true}, nil)
	require.Equal(t, http.StatusOK, code, out)
	require.Equal(t, "archived 2 bounce messages created before", out["message"].(string)[:41])
	require.EqualValues(t, 1, ts.r.GetStateCount(metastorage.StateBounce))

	// Bad requests.
	code, _ = ts.post(t, "move", map[string]any{"id": "nosuch", "from": "hold", "to": "incoming"}, nil)
	require.Equal(t, http.StatusNotFound, code)
	code, _ = ts.post(t, "purge", map[string]any{"state": "bounce", "older_than": "-1h"}, nil)
	require.Equal(t, http.StatusBadRequest, code)
	code, _ = ts.post(t, "explode", map[string]any{}, nil)
	require.Equal(t, http.StatusNotFound, code)
	code, _ = ts.post(t, "move", map[string]any{"id": "x", "unknown": 1}, nil)
	require.Equal(t, http.StatusBadRequest, code)
}

// scrape reads /metrics with the Prometheus text parser.
func scrape(t testing.TB, url string) map[string]*dto.MetricFamily {
	t.Helper()
	res, err := http.Get(url + "/metrics")
	require.NoError(t, err)
	defer res.Body.Close()
	require.Equal(t, http.StatusOK, res.StatusCode)
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(res.Body)
	require.NoError(t, err)
	return fams
}

func labelsOf(m *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, l := range m.GetLabel() {
		out[l.GetName()] = l.GetValue()
	}
	return out
}

func TestServeMetricsEqualStats(t *testing.T) {
	t.Parallel()
	ts := startServer(t, seedMany(t, 2000), false)
	var st statsView
	require.Equal(t, http.StatusOK, ts.getJSON(t, "/api/stats", &st)) // some calls to measure
	fams := scrape(t, ts.URL)
	gauge, ok := fams["retryspool_meta_messages"]
	if !ok {
		_, calls := fams["db_client_operation_duration_seconds"]
		require.False(t, calls, "the store measures its calls but reports no queue gauges")
		t.Skip("the store does not report its metrics yet")
	}
	require.Equal(t, dto.MetricType_GAUGE, gauge.GetType())
	stats, err := ts.r.Stats(context.Background())
	require.NoError(t, err)
	got := map[string]float64{}
	for _, m := range gauge.GetMetric() {
		l := labelsOf(m)
		require.Equal(t, "sqlite", l["db_system_name"])
		require.Equal(t, "messages", l["db_collection_name"])
		got[l["retryspool_state"]] = m.GetGauge().GetValue()
	}
	for _, s := range stats {
		require.Equal(t, float64(s.Count), got[s.State.String()], s.State.String())
	}
	ages := fams["retryspool_meta_oldest_age_seconds"]
	require.NotNil(t, ages)
	for _, m := range ages.GetMetric() {
		state := labelsOf(m)["retryspool_state"]
		for _, s := range stats {
			if s.State.String() == state && s.Count > 0 {
				want := time.Since(s.Oldest).Seconds()
				require.InDelta(t, want, m.GetGauge().GetValue(), 60, state)
			}
		}
	}
	due := fams["retryspool_meta_due"]
	require.NotNil(t, due)
	require.InDelta(t, float64(st.Due.Count), due.GetMetric()[0].GetGauge().GetValue(), 3) // messages fall due as time passes
	dur := fams["db_client_operation_duration_seconds"]
	require.NotNil(t, dur)
	require.Equal(t, dto.MetricType_HISTOGRAM, dur.GetType())
	ops := map[string]bool{}
	for _, m := range dur.GetMetric() {
		ops[labelsOf(m)["db_operation_name"]] = true
	}
	require.True(t, ops["Stats"], "%v", ops)
}
