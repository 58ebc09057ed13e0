package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/exporter-toolkit/web"
	"go.opentelemetry.io/otel/attribute"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
	"schneider.vip/retryspool/storage/meta/sqlite/dashboard"
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

--web-config FILE takes the web configuration file of Prometheus exporters:
  basic_auth_users:    # user: bcrypt hash (htpasswd -nBC 10 USER, or mkpasswd)
    ops: $2y$10$...
  tls_server_config:   # paths relative to FILE
    cert_file: server.crt
    key_file: server.key
With users, every path asks for their password (401 otherwise). The file is
read again on every request and every TLS connection: a change needs no
restart.

The dashboard shows every message's headers: serve it only to people who
may read them. An address other than a loopback one (127.0.0.1, ::1,
localhost) is refused without a web config naming users, with exit code 2,
unless --insecure-no-auth says that something in front (a reverse proxy)
authenticates; a warning says so at every start.

Without --allow-actions the server changes nothing. With it, each action
on the dashboard shows a dry run and asks for confirmation; requests from
other sites are refused (Origin and Sec-Fetch-Site checks, and a token
that only the page of the same user carries). Stop it with Ctrl-C.`,
}

// Timeouts of the HTTP server: slow clients cannot hold connections, and
// a request that runs longer than writeTimeout (a purge of millions of
// messages) goes on to its end but its answer is lost.
const (
	readHeaderTimeout = 10 * time.Second
	readTimeout       = 30 * time.Second
	writeTimeout      = 2 * time.Minute
	idleTimeout       = 2 * time.Minute
	maxHeaderBytes    = 64 << 10
	shutdownTimeout   = 5 * time.Second
)

func runServe(ctx context.Context, a *app, args []string) error {
	c := cmdServe
	fs, cf := a.newFlags(c)
	listen := fs.String("listen", "127.0.0.1:8080", "`address` to listen on")
	allow := fs.Bool("allow-actions", false, "allow moving, requeueing and purging messages from the dashboard")
	refresh := fs.Duration("refresh", dashboard.DefaultRefresh, "how often the dashboard refreshes its numbers")
	webConfig := fs.String("web-config", "", "Prometheus web configuration `file`: basic_auth_users, tls_server_config")
	insecure := fs.Bool("insecure-no-auth", false, "serve an address other than a loopback one without authentication")
	pos, err := a.parse(c, fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(c, pos, 0); err != nil {
		return err
	}
	if *refresh < dashboard.MinRefresh {
		return usagef(c.name, "--refresh must be at least %s", dashboard.MinRefresh)
	}
	wc, err := loadWebConfig(*webConfig)
	if err != nil {
		return usagef(c.name, "--web-config: %v", err)
	}
	if *insecure && wc.users > 0 {
		return usagef(c.name, "--insecure-no-auth cannot go with a web config that names users")
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", *listen, err)
	}
	defer ln.Close()
	loopback := isLoopback(ln.Addr())
	if err := checkExposure(a, ln.Addr(), loopback, wc, *insecure, *allow); err != nil {
		return err
	}

	mp, metrics, err := newMetrics()
	if err != nil {
		return err
	}
	defer mp.Shutdown(context.Background())
	cf.opts = append(cf.opts, sqlitemeta.WithMeterProvider(mp))
	acc := readOnly
	if *allow {
		acc = readWrite
	}
	logger := slog.New(slog.NewTextHandler(a.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	return withStore(ctx, c, cf, acc, func(s *store) error {
		opts := []dashboard.Option{dashboard.WithName(s.describe()), dashboard.WithRefresh(*refresh),
			dashboard.WithMetrics(metrics), dashboard.WithLogger(logger)}
		if *allow {
			opts = append(opts, dashboard.WithActions())
		}
		h, err := dashboard.New(s.r, opts...)
		if err != nil {
			return err
		}
		var handler http.Handler = h
		if loopback {
			handler = localOnly(h)
		}
		mode := "read-only"
		if *allow {
			mode = "actions allowed"
		}
		auth := "no authentication"
		if wc.users > 0 {
			auth = fmt.Sprintf("basic authentication, %d user(s)", wc.users)
		}
		fmt.Fprintf(a.stdout, "serving %s (%s, %s) on %s://%s/\n", s.describe(), mode, auth, wc.scheme(), ln.Addr())
		return serveUntil(ctx, a, newHTTPServer(handler, a.stderr), ln, *webConfig, logger)
	})
}

// newHTTPServer is the server of handler, with the timeouts and limits
// above; its errors go to stderr.
func newHTTPServer(handler http.Handler, stderr io.Writer) *http.Server {
	return &http.Server{Handler: handler, ReadHeaderTimeout: readHeaderTimeout, ReadTimeout: readTimeout,
		WriteTimeout: writeTimeout, IdleTimeout: idleTimeout, MaxHeaderBytes: maxHeaderBytes,
		ErrorLog: log.New(stderr, "spoolmeta serve: ", 0)}
}

// serveUntil serves on ln, through the exporter toolkit (authentication
// and TLS of the web config), until ctx ends.
func serveUntil(ctx context.Context, a *app, hs *http.Server, ln net.Listener, webConfig string, logger *slog.Logger) error {
	noSystemd := false
	flags := &web.FlagConfig{WebListenAddresses: &[]string{}, WebSystemdSocket: &noSystemd, WebConfigFile: &webConfig}
	errc := make(chan error, 1)
	go func() { errc <- web.Serve(ln, hs, flags, logger) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	fmt.Fprintln(a.stdout, "stopping")
	if err := hs.Shutdown(shutdown); err != nil {
		return err
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// checkExposure refuses an address other than a loopback one without
// users to authenticate, unless insecure; then it warns.
func checkExposure(a *app, addr net.Addr, loopback bool, wc webConfig, insecure, actions bool) error {
	if loopback || wc.users > 0 {
		return nil
	}
	if !insecure {
		return usagef(cmdServe.name, "refusing to serve %s without authentication: anyone who can reach it would read every "+
			"message's metadata. Give --web-config FILE with basic_auth_users, listen on a loopback address "+
			"(--listen 127.0.0.1:8080), or, when a proxy in front authenticates, --insecure-no-auth", addr)
	}
	what := "read every message's metadata"
	if actions {
		what += " and move, requeue and purge messages"
	}
	fmt.Fprintf(a.stderr, "spoolmeta serve: WARNING: serving %s without authentication (--insecure-no-auth): "+
		"anyone who can reach it can %s\n", addr, what)
	return nil
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

func isLoopback(addr net.Addr) bool {
	ta, ok := addr.(*net.TCPAddr)
	return ok && ta.IP.IsLoopback()
}

// localOnly refuses, on a loopback listener, Host names other than local
// ones: a DNS rebinding page could otherwise read the dashboard.
func localOnly(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !localHost(r.Host) {
			http.Error(w, "unexpected Host "+strconv.Quote(r.Host), http.StatusMisdirectedRequest)
			return
		}
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
