package dashboard

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/queueseed"
)

// testServer is the dashboard of a SQLite file served by httptest.
type testServer struct {
	*httptest.Server
	h *Handler
	r *sqlitemeta.Repository
}

// start serves the store at path, mounted at the root.
func start(t testing.TB, path string, opts ...Option) *testServer {
	t.Helper()
	r := queueseed.Open(t, path)
	h, err := New(r, append([]Option{WithRefresh(time.Second), WithLogger(slog.New(slog.DiscardHandler))}, opts...)...)
	require.NoError(t, err)
	ts := httptest.NewServer(h)
	t.Cleanup(ts.Close)
	return &testServer{Server: ts, h: h, r: r}
}

func (ts *testServer) getJSON(t testing.TB, path string, v any) int {
	t.Helper()
	res, err := http.Get(ts.URL + path)
	require.NoError(t, err)
	defer res.Body.Close()
	require.Equal(t, "application/json; charset=utf-8", res.Header.Get("Content-Type"), path)
	require.NoError(t, json.NewDecoder(res.Body).Decode(v))
	return res.StatusCode
}

// post sends an action the way the page does, as user (none: ""), with
// changes applied to the request first.
func (ts *testServer) post(t testing.TB, action string, body any, change func(*http.Request)) (int, map[string]any) {
	t.Helper()
	b, err := json.Marshal(body)
	require.NoError(t, err)
	req, err := http.NewRequest("POST", ts.URL+"/api/actions/"+action, bytes.NewReader(b))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Origin", ts.URL)
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	req.Header.Set(TokenHeader, ts.h.token(req))
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

func TestNewValidates(t *testing.T) {
	t.Parallel()
	r := queueseed.Open(t, queueseed.SmallFile(t))
	_, err := New(nil)
	require.Error(t, err)
	_, err = New(r, WithRefresh(100*time.Millisecond))
	require.ErrorContains(t, err, "refresh")
	_, err = New(r, WithLogger(nil))
	require.Error(t, err)
	h, err := New(r)
	require.NoError(t, err)
	require.Equal(t, "sqlite, table messages", h.cfg.name)
}

func TestStatsEqualStore(t *testing.T) {
	t.Parallel()
	ts := start(t, queueseed.Many(t, 2000))
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
	require.Equal(t, "sqlite", got.Engine)
	require.Equal(t, "messages", got.Table)
}

func TestMessages(t *testing.T) {
	t.Parallel()
	ts := start(t, queueseed.Many(t, 1000))
	// Paging a state: every message once, in order.
	seen := map[string]bool{}
	var last string
	for offset := 0; ; offset += 70 {
		var page pageView
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

	var page pageView
	require.Equal(t, http.StatusOK, ts.getJSON(t, "/api/messages?state=Hold&sort=priority&order=desc&limit=5", &page))
	require.Len(t, page.Messages, 5)
	require.Equal(t, "priority", page.Sort)
	for i := 1; i < len(page.Messages); i++ {
		require.LessOrEqual(t, page.Messages[i].Priority, page.Messages[i-1].Priority)
	}
	var one Message
	require.Equal(t, http.StatusOK, ts.getJSON(t, "/api/message?id="+page.Messages[0].ID, &one))
	require.Equal(t, page.Messages[0], one)
	require.NotEmpty(t, one.Headers["Subject"])

	var e apiError
	require.Equal(t, http.StatusNotFound, ts.getJSON(t, "/api/message?id=nosuch", &e))
	require.Equal(t, `get meta "nosuch": message not found`, e.Error)
}

// Every bad query parameter is a 400 that says what is wrong.
func TestBadParameters(t *testing.T) {
	t.Parallel()
	ts := start(t, queueseed.SmallFile(t))
	for query, want := range map[string]string{
		"/api/messages":                                               "state is required",
		"/api/messages?state=nosuch":                                  `unknown state "nosuch"`,
		"/api/messages?state=":                                        `unknown state ""`,
		"/api/messages?state=hold&state=bounce":                       `"state" given 2 times`,
		"/api/messages?state=hold&sort=size":                          `unknown sort "size"`,
		"/api/messages?state=hold&order=up":                           `unknown order "up"`,
		"/api/messages?state=hold&limit=0":                            "limit must be a whole number in 1..1000",
		"/api/messages?state=hold&limit=1001":                         "limit must be a whole number in 1..1000",
		"/api/messages?state=hold&limit=ten":                          "limit must be",
		"/api/messages?state=hold&offset=-1":                          "offset must be a whole number in 0..",
		"/api/messages?state=hold&offset=1e99":                        "offset must be",
		"/api/messages?state=hold&offset=9" + strings.Repeat("9", 30): "offset must be",
		"/api/messages?state=hold&page=2":                             `unknown parameter "page"`,
		"/api/messages?state=%zz":                                     "malformed query string",
		"/api/message":                                                "id is required",
		"/api/message?id=":                                            "id is required",
		"/api/message?id=a&id=b":                                      `"id" given 2 times`,
		"/api/message?id=" + strings.Repeat("x", 256):                 "id is 256 bytes, the maximum is 255",
		"/api/message?id=%ff%fe":                                      "not valid UTF-8",
		"/api/message?id=a%00b":                                       "not valid UTF-8",
		"/api/stats?x=1":                                              "takes no parameters",
		"/api/shape?state=hold":                                       "takes no parameters",
	} {
		var e apiError
		require.Equal(t, http.StatusBadRequest, ts.getJSON(t, query, &e), query)
		require.Contains(t, e.Error, want, query)
	}
	res, err := http.Get(ts.URL + "/?x=1")
	require.NoError(t, err)
	res.Body.Close()
	require.Equal(t, http.StatusBadRequest, res.StatusCode)
}

// The security headers are on every response: the page, the assets, the
// JSON, errors and unknown paths.
func TestSecurityHeaders(t *testing.T) {
	t.Parallel()
	ts := start(t, queueseed.SmallFile(t), WithMetrics(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "# metrics\n")
	})))
	for path, code := range map[string]int{
		"/": 200, "/static/app.js": 200, "/static/style.css": 200, "/api/stats": 200, "/api/shape": 200,
		"/api/messages?state=hold": 200, "/api/message?id=hold-1": 200, "/metrics": 200,
		"/api/messages": 400, "/api/message?id=nosuch": 404, "/nosuch": 404, "/static/": 404,
		"/static/dashboard.html": 404, "/static/../assets/app.js": 404,
	} {
		res, err := http.Get(ts.URL + path)
		require.NoError(t, err)
		res.Body.Close()
		require.Equal(t, code, res.StatusCode, path)
		h := res.Header
		csp := h.Get("Content-Security-Policy")
		require.Contains(t, csp, "script-src 'self';", path)
		require.Contains(t, csp, "frame-ancestors 'none'", path)
		require.NotContains(t, csp, "unsafe-inline", path)
		require.Equal(t, "nosniff", h.Get("X-Content-Type-Options"), path)
		require.Equal(t, "no-referrer", h.Get("Referrer-Policy"), path)
		require.Equal(t, "DENY", h.Get("X-Frame-Options"), path)
		require.Equal(t, "no-store", h.Get("Cache-Control"), path)
	}
	res, err := http.Get(ts.URL + "/static/app.js")
	require.NoError(t, err)
	res.Body.Close()
	require.Equal(t, "text/javascript; charset=utf-8", res.Header.Get("Content-Type"))
}

func TestPageHTML(t *testing.T) {
	t.Parallel()
	ts := start(t, queueseed.Many(t, 300))
	res, err := http.Get(ts.URL + "/")
	require.NoError(t, err)
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	require.Equal(t, http.StatusOK, res.StatusCode)
	html := string(body)
	require.Contains(t, html, `data-count="174"`) // deferred: 58 of every 100
	require.Contains(t, html, "read-only")
	require.NotContains(t, html, `id="actions"`)
	require.Contains(t, html, `data-token=""`, "no token in a read-only page")
	require.NotContains(t, html, `href="metrics"`, "no metrics link without WithMetrics")
	// No inline script or style: the policy would block it.
	require.NotContains(t, html, "<script>")
	require.NotContains(t, html, "<style")
	require.NotContains(t, html, "style=")
	require.NotContains(t, html, " on") // no onclick= and the like
	// Every link is relative, so that the page works under a prefix.
	for _, attr := range []string{`href="/`, `src="/`, `action="/`} {
		require.NotContains(t, html, attr)
	}
}

// Under a prefix, the page, its assets and its API answer there.
func TestUnderPrefix(t *testing.T) {
	t.Parallel()
	r := queueseed.Open(t, queueseed.SmallFile(t))
	h, err := New(r)
	require.NoError(t, err)
	mux := http.NewServeMux()
	mux.Handle("/ops/queue/", http.StripPrefix("/ops/queue", h))
	ts := httptest.NewServer(mux)
	t.Cleanup(ts.Close)
	for path, code := range map[string]int{
		"/ops/queue/": 200, "/ops/queue/static/app.js": 200, "/ops/queue/api/stats": 200,
		"/ops/queue/api/messages?state=hold": 200, "/api/stats": 404, "/static/app.js": 404,
	} {
		res, err := http.Get(ts.URL + path)
		require.NoError(t, err)
		res.Body.Close()
		require.Equal(t, code, res.StatusCode, path)
	}
	// Without the trailing slash the mux sends the browser to the page.
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	res, err := client.Get(ts.URL + "/ops/queue")
	require.NoError(t, err)
	res.Body.Close()
	require.Contains(t, []int{http.StatusMovedPermanently, http.StatusTemporaryRedirect}, res.StatusCode)
	require.Equal(t, "/ops/queue/", res.Header.Get("Location"))
}

// Errors of the store are answered without their detail, which is logged.
func TestStoreErrorsHideDetail(t *testing.T) {
	t.Parallel()
	path := queueseed.SmallFile(t)
	r, err := sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(path)).Open(context.Background())
	require.NoError(t, err)
	var logged bytes.Buffer
	h, err := New(r, WithLogger(slog.New(slog.NewTextHandler(&logged, nil))))
	require.NoError(t, err)
	require.NoError(t, r.Close())
	for _, target := range []string{"/", "/api/stats", "/api/shape", "/api/messages?state=hold", "/api/message?id=hold-1"} {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest("GET", target, nil))
		require.Equal(t, http.StatusInternalServerError, w.Code, target)
		body := w.Body.String()
		require.Contains(t, body, "internal error", target)
		require.NotContains(t, body, path, target)
		require.NotContains(t, strings.ToUpper(body), "SELECT", target)
		require.NotContains(t, body, "sql", target)
	}
	require.Contains(t, logged.String(), "request failed")
}
