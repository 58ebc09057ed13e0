package dashboard_test

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"time"

	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
	"schneider.vip/retryspool/storage/meta/sqlite/dashboard"
)

// requireUser lets through the requests that carry user and password in
// their Basic authentication, and asks the others for them. An
// application would use its own authentication here.
func requireUser(user, password string, next http.Handler) http.Handler {
	want := sha256.Sum256([]byte(user + ":" + password))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, _ := r.BasicAuth()
		got := sha256.Sum256([]byte(u + ":" + p))
		if subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
			w.Header().Set("WWW-Authenticate", `Basic realm="queue", charset="UTF-8"`)
			http.Error(w, "authentication required", http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// newApp is an application's router with the dashboard of repo under
// /ops/queue/, behind its authentication.
func newApp(repo *sqlitemeta.Repository, opts ...dashboard.Option) (http.Handler, error) {
	h, err := dashboard.New(repo, opts...)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "the application's own page\n")
	})
	mux.Handle("/ops/queue/", requireUser("ops", "s3cret", http.StripPrefix("/ops/queue", h)))
	return mux, nil
}

// An application mounts the dashboard in its own http.ServeMux, under a
// prefix, behind its own authentication.
func ExampleNew() {
	dir, err := os.MkdirTemp("", "dashboard-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()
	repo, err := sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(filepath.Join(dir, "meta.db"))).Open(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer repo.Close()
	now := time.Now()
	err = repo.StoreMeta(ctx, "msg-1", metastorage.MessageMetadata{ID: "msg-1", State: metastorage.StateIncoming,
		MaxAttempts: 5, Created: now, Updated: now})
	if err != nil {
		log.Fatal(err)
	}

	h, err := dashboard.New(repo, dashboard.WithName("mail queue"))
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/ops/queue/", requireUser("ops", "s3cret", http.StripPrefix("/ops/queue", h)))

	srv := httptest.NewServer(mux) // in an application: http.Server{Handler: mux, ...}
	defer srv.Close()
	get := func(path string, auth bool) {
		req, _ := http.NewRequest("GET", srv.URL+path, nil)
		if auth {
			req.SetBasicAuth("ops", "s3cret")
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			log.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		first, _, _ := strings.Cut(strings.TrimSpace(string(body)), "\n")
		fmt.Println(res.StatusCode, path, first)
	}
	get("/ops/queue/api/stats", false)
	get("/ops/queue/api/message?id=msg-1", true)
	get("/ops/queue/api/messages?state=nosuch", true)
	// Output:
	// 401 /ops/queue/api/stats authentication required
	// 200 /ops/queue/api/message?id=msg-1 {
	// 400 /ops/queue/api/messages?state=nosuch {
}
