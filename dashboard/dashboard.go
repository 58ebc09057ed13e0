// Package dashboard serves a RetrySpool metadata store as a web dashboard:
// counts and oldest ages per state, refreshed live; message ages per state
// (like Postfix's qshape); a state's messages page by page; one message's
// record; and, only when enabled, actions that change the queue (move a
// message, requeue stale active messages, purge old ones), each run as a
// dry run first. The same data is served as JSON.
//
// New returns an http.Handler that an application mounts under a path of
// its own router, behind its own authentication:
//
//	h, err := dashboard.New(repo)
//	...
//	mux.Handle("/queue/", requireLogin(http.StripPrefix("/queue", h)))
//
// Every link, asset and API call of the page is relative to the page, so
// the dashboard works under any prefix; mount it with http.StripPrefix on
// a pattern that ends in a slash, so that the page is at PREFIX/.
//
// # Paths
//
//	/                   the dashboard (HTML)
//	/static/app.js      its script; /static/style.css its style sheet
//	/api/stats          counts, oldest and newest message per state, due messages
//	/api/shape          message ages per state
//	/api/messages       ?state=S&sort=created|updated|priority|attempts
//	                    &order=asc|desc&limit=N&offset=N: one page of a state
//	/api/message        ?id=ID: one message
//	/api/actions/NAME   POST, only with WithActions: move, requeue-stale, purge
//	/metrics            the handler of WithMetrics, when given
//
// A bad query parameter (an unknown state, sort or order, a limit or
// offset out of range, a missing or malformed id, a parameter the endpoint
// does not take or one given twice) is answered with 400 and a JSON
// {"error": ...}. Errors of the store are answered without their detail
// (no SQL, no file path): 503 when the database is busy, 500 otherwise;
// the detail goes to the logger.
//
// # Security
//
// The dashboard shows every message's headers, which often hold personal
// data: serve it only behind authentication. Every response carries a
// Content-Security-Policy that allows no inline script and no framing
// (frame-ancestors 'none'), X-Content-Type-Options: nosniff, a
// Referrer-Policy of no-referrer and Cache-Control: no-store.
//
// Actions are off unless WithActions is given. Then they are refused
// unless the request comes from the same origin (http.CrossOriginProtection:
// Sec-Fetch-Site and Origin), has a JSON body of at most 64 KiB, and
// carries the action token of the page. The token is an HMAC, under a key
// made at New, of the name of the user who loaded the page (the user of
// the request's Basic authentication, or what WithUser tells): a page
// loaded by one user holds no token that works for another.
package dashboard

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
)

//go:embed assets
var assets embed.FS

// Defaults and limits of the options.
const (
	// DefaultRefresh is how often the page refreshes its numbers.
	DefaultRefresh = 5 * time.Second
	// MinRefresh is the shortest refresh WithRefresh accepts.
	MinRefresh = 500 * time.Millisecond
	// MaxActionBody is the largest request body of an action, in bytes.
	MaxActionBody = 64 << 10
	// TokenHeader carries the action token of a page.
	TokenHeader = "X-Dashboard-Token"
)

// Option configures a Handler.
type Option func(*config)

type config struct {
	actions bool
	refresh time.Duration
	name    string
	metrics http.Handler
	logger  *slog.Logger
	user    func(*http.Request) string
}

// WithActions enables the actions: moving one message, requeueing stale
// active messages and purging old messages. Without it the dashboard
// changes nothing and refuses every action with 403.
func WithActions() Option { return func(c *config) { c.actions = true } }

// WithRefresh sets how often the page refreshes its numbers: at least
// MinRefresh; DefaultRefresh without the option.
func WithRefresh(d time.Duration) Option { return func(c *config) { c.refresh = d } }

// WithName sets what the page's header and title call the store; by
// default its engine and table ("sqlite, table messages").
func WithName(name string) Option { return func(c *config) { c.name = name } }

// WithMetrics serves h at /metrics (typically a Prometheus handler of the
// store's meter provider) and links it from the page.
func WithMetrics(h http.Handler) Option { return func(c *config) { c.metrics = h } }

// WithLogger receives the errors the responses leave out; slog.Default()
// without the option.
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.logger = l } }

// WithUser tells who makes a request, for the action token (see the
// package documentation). By default it is the user name of the request's
// Basic authentication, "" without one.
func WithUser(f func(*http.Request) string) Option { return func(c *config) { c.user = f } }

// Handler is the dashboard; see the package documentation.
type Handler struct {
	r       *sqlitemeta.Repository
	cfg     config
	key     []byte // of the action tokens
	page    *template.Template
	handler http.Handler
}

var _ http.Handler = (*Handler)(nil)

// New returns the dashboard of the store r.
func New(r *sqlitemeta.Repository, opts ...Option) (*Handler, error) {
	if r == nil {
		return nil, errors.New("dashboard: nil store")
	}
	c := config{refresh: DefaultRefresh, logger: slog.Default(), user: basicAuthUser}
	for _, o := range opts {
		o(&c)
	}
	if c.refresh < MinRefresh {
		return nil, fmt.Errorf("dashboard: refresh %s is below the minimum %s", c.refresh, MinRefresh)
	}
	if c.logger == nil || c.user == nil {
		return nil, errors.New("dashboard: nil logger or user function")
	}
	if c.name == "" {
		c.name = fmt.Sprintf("%s, table %s", r.Dialect(), r.TableName())
	}
	page, err := template.New("dashboard.html").Funcs(template.FuncMap{
		"age":   fmtAge,
		"count": fmtCount,
		"int64": func(n int) int64 { return int64(n) },
		"seconds": func(ms int64) string {
			return strconv.FormatFloat(float64(ms)/1000, 'f', -1, 64)
		},
	}).ParseFS(assets, "assets/dashboard.html")
	if err != nil {
		return nil, fmt.Errorf("dashboard: %w", err)
	}
	h := &Handler{r: r, cfg: c, key: make([]byte, 32), page: page}
	_, _ = rand.Read(h.key) // never fails
	h.handler = secure(h.routes())
	return h, nil
}

func basicAuthUser(r *http.Request) string {
	user, _, _ := r.BasicAuth()
	return user
}

// ServeHTTP serves the dashboard.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.handler.ServeHTTP(w, r) }

func (h *Handler) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", h.dashboard)
	mux.HandleFunc("GET /static/{file}", serveAsset)
	if h.cfg.metrics != nil {
		mux.Handle("GET /metrics", h.cfg.metrics)
	}
	mux.HandleFunc("GET /api/stats", h.apiStats)
	mux.HandleFunc("GET /api/shape", h.apiShape)
	mux.HandleFunc("GET /api/messages", h.apiMessages)
	mux.HandleFunc("GET /api/message", h.apiMessage)
	cop := http.NewCrossOriginProtection()
	mux.Handle("POST /api/actions/{action}", cop.Handler(http.HandlerFunc(h.action)))
	return mux
}

// csp allows the page its own script, style sheet and API, and nothing
// inline, framed or from elsewhere.
const csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
	"base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// secure adds the security headers to every response.
func secure(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", csp)
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("Referrer-Policy", "no-referrer")
		hd.Set("Cache-Control", "no-store")
		next.ServeHTTP(w, r)
	})
}

// assetTypes are the files under /static/ and their content types; no
// other name is served (and no directory listed).
var assetTypes = map[string]string{
	"app.js":    "text/javascript; charset=utf-8",
	"style.css": "text/css; charset=utf-8",
}

func serveAsset(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("file")
	ct, ok := assetTypes[name]
	if !ok {
		http.NotFound(w, r)
		return
	}
	b, err := assets.ReadFile("assets/" + name)
	if err != nil {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", ct)
	_, _ = w.Write(b)
}

// token is the action token of the user of req.
func (h *Handler) token(req *http.Request) string {
	mac := hmac.New(sha256.New, h.key)
	mac.Write([]byte(h.cfg.user(req)))
	return hex.EncodeToString(mac.Sum(nil))
}

// tokenOK reports whether req carries the action token of its user.
func (h *Handler) tokenOK(req *http.Request) bool {
	return subtle.ConstantTimeCompare([]byte(req.Header.Get(TokenHeader)), []byte(h.token(req))) == 1
}

// pageData fills the dashboard's template.
type pageData struct {
	Name         string
	Stats        statsView
	Shape        ShapeTable
	AllowActions bool
	Token        string
	RefreshMS    int64
	States       []string
	Metrics      bool
}

func (h *Handler) dashboard(w http.ResponseWriter, r *http.Request) {
	data, err := h.pageData(r)
	if err != nil {
		code, msg := h.classify(r, err)
		http.Error(w, msg, code)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := h.page.Execute(w, data); err != nil {
		// The header is out; the page ends where the error happened.
		h.cfg.logger.Error("dashboard: render the page", "err", err)
	}
}

// pageData reads what the page shows for the request r.
func (h *Handler) pageData(r *http.Request) (pageData, error) {
	if _, err := query(r); err != nil {
		return pageData{}, err
	}
	ctx := r.Context()
	st, err := h.stats(ctx)
	if err != nil {
		return pageData{}, err
	}
	shape, err := Shape(ctx, h.r, time.Now(), allStates())
	if err != nil {
		return pageData{}, err
	}
	data := pageData{Name: h.cfg.name, Stats: st, Shape: shape, AllowActions: h.cfg.actions,
		RefreshMS: h.cfg.refresh.Milliseconds(), Metrics: h.cfg.metrics != nil}
	for _, s := range allStates() {
		data.States = append(data.States, s.String())
	}
	if h.cfg.actions {
		data.Token = h.token(r)
	}
	return data, nil
}
