package main

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"io/fs"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/attribute"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
)

var cmdServe = &command{
	name:    "serve",
	summary: "serve a dashboard, JSON endpoints and Prometheus /metrics over HTTP",
	help: `Serves, on --listen (localhost only by default):
  /                    the dashboard: counts and oldest ages per state, refreshed
                       live; message ages per state (as "spoolmeta shape"); a
                       state's messages page by page; one message's record
  /metrics             the store's OpenTelemetry metrics in Prometheus text format
  /api/stats           counts, oldest and newest message per state, due messages
  /api/shape           message ages per state
  /api/messages        ?state=S&sort=created|updated|priority|attempts&order=asc|desc
                       &limit=N&offset=N: one page of a state
  /api/message         ?id=ID: one message
  /api/actions/ACTION  POST, only with --allow-actions: move, requeue-stale, purge
                       (JSON body; "dry_run": true only counts)
Without --allow-actions the server changes nothing. With it, each action
on the dashboard shows a dry run and asks for confirmation; requests
from other sites are refused (a per-process token, Origin and
Sec-Fetch-Site checks). Stop it with Ctrl-C.`,
}

//go:embed assets
var assets embed.FS

// server is what "spoolmeta serve" runs.
type server struct {
	s            *store
	allowActions bool
	token        string // sent by the dashboard with every action
	refresh      time.Duration
	page         *template.Template
	metrics      http.Handler
	loopback     bool // listening on a loopback address: only local Host names
}

// maxPageSize is the largest page of /api/messages.
const maxPageSize = 1000

func runServe(ctx context.Context, a *app, args []string) error {
	c := cmdServe
	fs, cf := a.newFlags(c)
	listen := fs.String("listen", "127.0.0.1:8080", "`address` to listen on")
	allow := fs.Bool("allow-actions", false, "allow moving, requeueing and purging messages from the dashboard")
	refresh := fs.Duration("refresh", 5*time.Second, "how often the dashboard refreshes its numbers")
	pos, err := a.parse(c, fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(c, pos, 0); err != nil {
		return err
	}
	if *refresh < 500*time.Millisecond {
		return usagef(c.name, "--refresh must be at least 500ms")
	}
	mp, metrics, err := newMetrics()
	if err != nil {
		return err
	}
	defer mp.Shutdown(context.Background())
	cf.opts = append(cf.opts, sqlitemeta.WithMeterProvider(mp))

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", *listen, err)
	}
	defer ln.Close()
	acc := readOnly
	if *allow {
		acc = readWrite
	}
	return withStore(ctx, c, cf, acc, func(s *store) error {
		sv, err := newServer(s, *allow, *refresh, metrics)
		if err != nil {
			return err
		}
		sv.loopback = isLoopback(ln.Addr())
		mode := "read-only"
		if *allow {
			mode = "actions allowed"
		}
		fmt.Fprintf(a.stdout, "serving %s (%s) on http://%s/\n", s.describe(), mode, ln.Addr())
		hs := &http.Server{Handler: sv.routes(), ReadHeaderTimeout: 10 * time.Second}
		errc := make(chan error, 1)
		go func() { errc <- hs.Serve(ln) }()
		select {
		case err := <-errc:
			return err
		case <-ctx.Done():
		}
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		fmt.Fprintln(a.stdout, "stopping")
		return hs.Shutdown(shutdown)
	})
}

// newMetrics returns the meter provider to hand to the store and the
// /metrics handler that serves what it records: the OpenTelemetry
// Prometheus exporter on a registry of its own (no Go runtime metrics of
// this process), the scope labels left out (there is one scope).
func newMetrics() (*sdkmetric.MeterProvider, http.Handler, error) {
	reg := prometheus.NewRegistry()
	exporter, err := otelprom.New(otelprom.WithRegisterer(reg), otelprom.WithoutScopeInfo())
	if err != nil {
		return nil, nil, err
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter),
		sdkmetric.WithResource(resource.NewSchemaless(attribute.String("service.name", "spoolmeta"))))
	return mp, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}), nil
}

func newServer(s *store, allowActions bool, refresh time.Duration, metrics http.Handler) (*server, error) {
	var tok [16]byte
	if _, err := rand.Read(tok[:]); err != nil {
		return nil, err
	}
	page, err := template.New("dashboard.html").Funcs(template.FuncMap{
		"age":   fmtAge,
		"count": fmtCount,
		"int64": func(n int) int64 { return int64(n) },
		"seconds": func(ms int64) string {
			return strconv.FormatFloat(float64(ms)/1000, 'f', -1, 64)
		},
		"json": func(v any) (template.JS, error) {
			b, err := json.Marshal(v)
			return template.JS(b), err
		},
	}).ParseFS(assets, "assets/dashboard.html")
	if err != nil {
		return nil, err
	}
	return &server{s: s, allowActions: allowActions, token: hex.EncodeToString(tok[:]),
		refresh: refresh, page: page, metrics: metrics}, nil
}

func isLoopback(addr net.Addr) bool {
	ta, ok := addr.(*net.TCPAddr)
	return ok && ta.IP.IsLoopback()
}

func (sv *server) routes() http.Handler {
	mux := http.NewServeMux()
	static, _ := fs.Sub(assets, "assets")
	mux.HandleFunc("GET /{$}", sv.dashboard)
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	mux.Handle("GET /metrics", sv.metrics)
	mux.HandleFunc("GET /api/stats", sv.apiStats)
	mux.HandleFunc("GET /api/shape", sv.apiShape)
	mux.HandleFunc("GET /api/messages", sv.apiMessages)
	mux.HandleFunc("GET /api/message", sv.apiMessage)
	cop := http.NewCrossOriginProtection()
	mux.Handle("POST /api/actions/{action}", cop.Handler(http.HandlerFunc(sv.action)))
	return sv.guard(mux)
}

// guard adds the security headers and, on a loopback listener, refuses
// Host names other than local ones (a DNS rebinding page could otherwise
// read the dashboard).
func (sv *server) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if sv.loopback && !localHost(r.Host) {
			http.Error(w, "spoolmeta serve: unexpected Host "+strconv.Quote(r.Host), http.StatusMisdirectedRequest)
			return
		}
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-store")
		next.ServeHTTP(w, r)
	})
}

func localHost(hostport string) bool {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		host = hostport
	}
	host = strings.Trim(host, "[]")
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// apiError is the JSON body of an error.
type apiError struct {
	Error string `json:"error"`
}

func writeAPI(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// fail answers err with the status its kind calls for.
func fail(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	var ue *usageError
	switch {
	case errors.As(err, &ue), errors.Is(err, sqlitemeta.ErrInvalidInput), errors.Is(err, metastorage.ErrInvalidState):
		code = http.StatusBadRequest
	case errors.Is(err, metastorage.ErrMessageNotFound):
		code = http.StatusNotFound
	case errors.Is(err, metastorage.ErrStateConflict):
		code = http.StatusConflict
	case errors.Is(err, sqlitemeta.ErrBusy):
		code = http.StatusServiceUnavailable
	}
	writeAPI(w, code, apiError{Error: err.Error()})
}

// stateView is one state as the dashboard and /api/stats show it.
type stateView struct {
	State      string  `json:"state"`
	Count      int64   `json:"count"`
	OldestID   string  `json:"oldest_id,omitempty"`
	Oldest     *string `json:"oldest_created"`
	OldestAge  float64 `json:"oldest_age_seconds"`
	NewestID   string  `json:"newest_id,omitempty"`
	Newest     *string `json:"newest_created"`
	NewestAge  float64 `json:"newest_age_seconds"`
	oldestTime time.Time
}

type statsView struct {
	Engine   string      `json:"engine"`
	Database string      `json:"database"`
	Table    string      `json:"table"`
	Now      string      `json:"now"`
	States   []stateView `json:"states"`
	Total    int64       `json:"total"`
	Due      dueJSON     `json:"due"`
}

// dueLimit caps the due messages counted for the dashboard.
const dueLimit = 1000

func (sv *server) stats(ctx context.Context) (statsView, error) {
	now := time.Now()
	stats, err := sv.s.r.Stats(ctx)
	if err != nil {
		return statsView{}, err
	}
	due, err := sv.s.r.DueMessages(ctx, now, dueLimit)
	if err != nil {
		return statsView{}, err
	}
	out := statsView{Engine: sv.s.engine, Database: sv.s.describe(), Table: sv.s.table, Now: now.UTC().Format(time.RFC3339Nano),
		Due: dueJSON{Count: len(due), Limit: dueLimit, AtLeast: len(due) == dueLimit}}
	if len(due) > 0 {
		out.Due.FirstID, out.Due.FirstNext = due[0].ID, jsonTime(due[0].NextRetry)
	}
	for _, st := range stats {
		v := stateView{State: st.State.String(), Count: st.Count, OldestID: st.OldestID, Oldest: jsonTime(st.Oldest),
			NewestID: st.NewestID, Newest: jsonTime(st.Newest), oldestTime: st.Oldest}
		if st.Count > 0 {
			v.OldestAge = max(now.Sub(st.Oldest).Seconds(), 0)
			v.NewestAge = max(now.Sub(st.Newest).Seconds(), 0)
		}
		out.Total += st.Count
		out.States = append(out.States, v)
	}
	return out, nil
}

func (sv *server) apiStats(w http.ResponseWriter, r *http.Request) {
	st, err := sv.stats(r.Context())
	if err != nil {
		fail(w, err)
		return
	}
	writeAPI(w, http.StatusOK, st)
}

func (sv *server) apiShape(w http.ResponseWriter, r *http.Request) {
	shape, err := ageShape(r.Context(), sv.s.r, time.Now(), allStates())
	if err != nil {
		fail(w, err)
		return
	}
	writeAPI(w, http.StatusOK, shape)
}

// pageJSON is one page of /api/messages.
type pageJSON struct {
	State    string        `json:"state"`
	Sort     string        `json:"sort"`
	Order    string        `json:"order"`
	Total    int           `json:"total"`
	Offset   int           `json:"offset"`
	Limit    int           `json:"limit"`
	HasMore  bool          `json:"has_more"`
	Messages []messageJSON `json:"messages"`
}

func (sv *server) apiMessages(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	state, err := parseState("serve", q.Get("state"))
	if err != nil {
		fail(w, err)
		return
	}
	intParam := func(name string, def, lo, hi int) (int, error) {
		v := q.Get(name)
		if v == "" {
			return def, nil
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < lo || n > hi {
			return 0, usagef("", "%s must be a number in %d..%d", name, lo, hi)
		}
		return n, nil
	}
	limit, err := intParam("limit", 50, 1, maxPageSize)
	if err != nil {
		fail(w, err)
		return
	}
	offset, err := intParam("offset", 0, 0, 1<<31-1)
	if err != nil {
		fail(w, err)
		return
	}
	sortBy, order := q.Get("sort"), q.Get("order")
	if sortBy == "" {
		sortBy = "created"
	}
	if order == "" {
		order = "asc"
	}
	ctx := r.Context()
	res, err := sv.s.r.ListMessages(ctx, state, metastorage.MessageListOptions{Limit: limit, Offset: offset, SortBy: sortBy, SortOrder: order})
	if err != nil {
		fail(w, err)
		return
	}
	out := pageJSON{State: state.String(), Sort: sortBy, Order: order, Total: res.Total, Offset: offset, Limit: limit,
		HasMore: res.HasMore, Messages: make([]messageJSON, 0, len(res.MessageIDs))}
	for _, id := range res.MessageIDs {
		md, err := sv.s.r.GetMeta(ctx, id)
		if errors.Is(err, metastorage.ErrMessageNotFound) {
			continue // gone since the page was read
		}
		if err != nil {
			fail(w, err)
			return
		}
		out.Messages = append(out.Messages, toJSON(md))
	}
	writeAPI(w, http.StatusOK, out)
}

func (sv *server) apiMessage(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("id")
	md, err := sv.s.r.GetMeta(r.Context(), id)
	if err != nil {
		fail(w, err) // names the ID
		return
	}
	writeAPI(w, http.StatusOK, toJSON(md))
}

// actionRequest is the JSON body of an action; each action reads its own
// fields.
type actionRequest struct {
	ID        string `json:"id"`
	From      string `json:"from"`
	To        string `json:"to"`
	State     string `json:"state"`
	OlderThan string `json:"older_than"`
	Archive   bool   `json:"archive"`
	DryRun    bool   `json:"dry_run"`
}

// actionResult is what an action answers.
type actionResult struct {
	Action  string `json:"action"`
	DryRun  bool   `json:"dry_run"`
	Count   int64  `json:"count"`
	Message string `json:"message"`
}

// tokenHeader carries the per-process token of an action.
const tokenHeader = "X-Spoolmeta-Token"

func (sv *server) action(w http.ResponseWriter, r *http.Request) {
	if !sv.allowActions {
		writeAPI(w, http.StatusForbidden, apiError{Error: "actions are disabled: this dashboard is read-only (start spoolmeta serve with --allow-actions)"})
		return
	}
	if subtle.ConstantTimeCompare([]byte(r.Header.Get(tokenHeader)), []byte(sv.token)) != 1 {
		writeAPI(w, http.StatusForbidden, apiError{Error: "missing or wrong " + tokenHeader + ": send actions from the dashboard"})
		return
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		writeAPI(w, http.StatusUnsupportedMediaType, apiError{Error: "want Content-Type application/json"})
		return
	}
	var req actionRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<16))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeAPI(w, http.StatusBadRequest, apiError{Error: "bad request body: " + err.Error()})
		return
	}
	var (
		res actionResult
		err error
	)
	switch name := r.PathValue("action"); name {
	case "move":
		res, err = sv.actMove(r.Context(), req)
	case "requeue-stale":
		res, err = sv.actRequeue(r.Context(), req)
	case "purge":
		res, err = sv.actPurge(r.Context(), req)
	default:
		writeAPI(w, http.StatusNotFound, apiError{Error: "unknown action " + strconv.Quote(name)})
		return
	}
	if err != nil {
		fail(w, err)
		return
	}
	writeAPI(w, http.StatusOK, res)
}

func (sv *server) actMove(ctx context.Context, req actionRequest) (actionResult, error) {
	res := actionResult{Action: "move", DryRun: req.DryRun}
	from, err := parseState("move", req.From)
	if err != nil {
		return res, err
	}
	to, err := parseState("move", req.To)
	if err != nil {
		return res, err
	}
	if req.ID == "" {
		return res, usagef("", "move needs an id")
	}
	md, err := sv.s.r.GetMeta(ctx, req.ID)
	if err != nil {
		return res, fmt.Errorf("message %q: %w", req.ID, err)
	}
	if md.State != from {
		return res, fmt.Errorf("message %q is %s, not %s: %w", req.ID, md.State, from, metastorage.ErrStateConflict)
	}
	if req.DryRun {
		res.Count, res.Message = 1, fmt.Sprintf("would move %s from %s to %s", req.ID, from, to)
		return res, nil
	}
	if err := sv.s.r.MoveToState(ctx, req.ID, from, to); err != nil {
		return res, fmt.Errorf("message %q: %w", req.ID, err)
	}
	res.Count, res.Message = 1, fmt.Sprintf("moved %s from %s to %s", req.ID, from, to)
	return res, nil
}

func (sv *server) actRequeue(ctx context.Context, req actionRequest) (actionResult, error) {
	res := actionResult{Action: "requeue-stale", DryRun: req.DryRun}
	age, err := parseAge("requeue-stale", "older_than", req.OlderThan)
	if err != nil {
		return res, err
	}
	cutoff := time.Now().Add(-age)
	if req.DryRun {
		// Count with the iterator: bounded memory, and Active is small
		// in a healthy queue.
		it, err := sv.s.r.NewMessageIterator(ctx, metastorage.StateActive, 1000)
		if err != nil {
			return res, err
		}
		defer it.Close()
		for {
			md, ok, err := it.Next(ctx)
			if err != nil {
				return res, err
			}
			if !ok {
				break
			}
			if md.Updated.Before(cutoff) {
				res.Count++
			}
		}
		res.Message = fmt.Sprintf("would requeue %d active messages claimed before %s", res.Count, fmtTime(cutoff))
		return res, nil
	}
	n, err := sv.s.r.RequeueStale(ctx, cutoff, 0)
	res.Count = n
	if err != nil {
		return res, fmt.Errorf("%w (%d requeued before the error)", err, n)
	}
	res.Message = fmt.Sprintf("requeued %d active messages claimed before %s", n, fmtTime(cutoff))
	return res, nil
}

func (sv *server) actPurge(ctx context.Context, req actionRequest) (actionResult, error) {
	res := actionResult{Action: "purge", DryRun: req.DryRun}
	state, err := parseState("purge", req.State)
	if err != nil {
		return res, err
	}
	age, err := parseAge("purge", "older_than", req.OlderThan)
	if err != nil {
		return res, err
	}
	cutoff := time.Now().Add(-age)
	n, err := sv.s.r.Purge(ctx, state, cutoff, sqlitemeta.PurgeOptions{Archive: req.Archive, DryRun: req.DryRun})
	res.Count = n
	if err != nil {
		return res, fmt.Errorf("%w (%d purged before the error)", err, n)
	}
	verb := map[[2]bool]string{{false, false}: "deleted", {false, true}: "archived", {true, false}: "would delete", {true, true}: "would archive"}[[2]bool{req.DryRun, req.Archive}]
	res.Message = fmt.Sprintf("%s %d %s messages created before %s", verb, n, state, fmtTime(cutoff))
	return res, nil
}

// pageData fills the dashboard's template.
type pageData struct {
	Stats        statsView
	Shape        shapeJSON
	AllowActions bool
	Token        string
	RefreshMS    int64
	States       []string
}

func (sv *server) dashboard(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	st, err := sv.stats(ctx)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	shape, err := ageShape(ctx, sv.s.r, time.Now(), allStates())
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	data := pageData{Stats: st, Shape: shape, AllowActions: sv.allowActions, RefreshMS: sv.refresh.Milliseconds()}
	for _, s := range allStates() {
		data.States = append(data.States, s.String())
	}
	if sv.allowActions {
		data.Token = sv.token
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := sv.page.Execute(w, data); err != nil {
		// The header is out; the page ends where the error happened.
		fmt.Fprintf(w, "<!-- %s -->", template.HTMLEscapeString(err.Error()))
	}
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
