// Package browser drives a headless Chromium for the dashboard's browser
// tests: it finds and starts the browser, answers Basic authentication
// challenges, runs steps and writes screenshots as test artifacts.
package browser

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/fetch"
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"
)

// Env, set to "require" (as .ci/run does), makes a missing browser a
// failure instead of a skip.
const Env = "SPOOLMETA_BROWSER_TESTS"

// chromiumPath finds Chromium: $SPOOLMETA_CHROMIUM, or chromium (Debian's
// package), chromium-browser or google-chrome on the PATH.
func chromiumPath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("SPOOLMETA_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv(Env) == "require" {
		t.Fatalf("%s=require but no chromium on the PATH (apt-get install chromium)", Env)
	}
	t.Skip("browser test skipped: no chromium on the PATH (apt-get install chromium, or set SPOOLMETA_CHROMIUM)")
	return ""
}

// Start starts a headless Chromium with a user-data directory of its own
// and returns a tab's context.
func Start(t *testing.T) context.Context {
	t.Helper()
	exe := chromiumPath(t)
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(exe),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.Flag("ignore-certificate-errors", true), // the tests' own certificates
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1360, 900),
	}
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelB := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	ctx, cancelT := context.WithTimeout(ctx, 3*time.Minute)
	t.Cleanup(func() { cancelT(); cancelB(); cancelA() })
	require.NoError(t, chromedp.Do(ctx), "start chromium %s", exe)
	return ctx
}

// Auth answers the Basic authentication challenges of the tab as a person
// typing user and password into the browser's prompt would. It returns
// the number of challenges answered so far.
func Auth(t *testing.T, ctx context.Context, user, password string) func() int64 {
	t.Helper()
	var (
		mu      sync.Mutex
		pending []any
		wake    = make(chan struct{}, 1)
		asked   atomic.Int64
	)
	// The listener must not block nor run commands: it queues the events
	// for a goroutine that answers them.
	require.NoError(t, chromedp.Listen(ctx, func(ev any) {
		switch ev.(type) {
		case *fetch.EventRequestPaused, *fetch.EventAuthRequired:
			mu.Lock()
			pending = append(pending, ev)
			mu.Unlock()
			select {
			case wake <- struct{}{}:
			default:
			}
		}
	}))
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-wake:
			}
			mu.Lock()
			evs := pending
			pending = nil
			mu.Unlock()
			for _, ev := range evs {
				switch e := ev.(type) {
				case *fetch.EventRequestPaused:
					_, _ = chromedp.Call(ctx, fetch.ContinueRequest, fetch.ContinueRequestParams{RequestID: e.RequestID})
				case *fetch.EventAuthRequired:
					asked.Add(1)
					_, _ = chromedp.Call(ctx, fetch.ContinueWithAuth, fetch.ContinueWithAuthParams{RequestID: e.RequestID,
						AuthChallengeResponse: &fetch.AuthChallengeResponse{Response: fetch.AuthChallengeResponseResponseProvideCredentials,
							Username: user, Password: password}})
				}
			}
		}
	}()
	yes := true
	_, err := chromedp.Call(ctx, fetch.Enable, fetch.EnableParams{HandleAuthRequests: &yes})
	require.NoError(t, err)
	return asked.Load
}

// Artifact writes a test artifact to $ARTIFACTS_DIR, or to a temporary
// directory, and logs where.
func Artifact(t *testing.T, name string, data []byte) {
	t.Helper()
	dir := os.Getenv("ARTIFACTS_DIR")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "spoolmeta-artifacts")
	}
	require.NoError(t, os.MkdirAll(dir, 0o755))
	p := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(p, data, 0o644))
	t.Logf("artifact: %s", p)
}

// Do runs browser steps.
func Do(t *testing.T, ctx context.Context, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	require.NoError(t, chromedp.Do(ctx, steps...))
}

// Get runs one browser action and returns its value.
func Get[T any](t *testing.T, ctx context.Context, a chromedp.Action[T]) T {
	t.Helper()
	v, err := chromedp.Run(ctx, a)
	require.NoError(t, err)
	return v
}

// Until waits for a JavaScript condition.
func Until(expr string) chromedp.Action[chromedp.Void] { return chromedp.Poll[chromedp.Void](expr) }

// PageCounts reads the per-state counts the dashboard shows, as numbers
// and as the text a person reads, into a map[string]ShownCount.
const PageCounts = `(() => {
  const out = {};
  for (const c of document.querySelectorAll('.card[data-state]')) {
    const e = c.querySelector('.count');
    out[c.dataset.state] = {n: Number(e.dataset.count), text: e.textContent.trim()};
  }
  return out;
})()`

// ShownCount is one state's count on the dashboard.
type ShownCount struct {
	N    int64  `json:"n"`
	Text string `json:"text"`
}

// PageIDs reads the IDs of the listed page and its offset into a
// ShownPage.
const PageIDs = `({offset: Number(document.querySelector('#range').dataset.offset),
  ids: [...document.querySelectorAll('#rows tr[data-id]')].map(r => r.dataset.id),
  next: !document.querySelector('#next').disabled})`

// ShownPage is the listed page of the dashboard.
type ShownPage struct {
	Offset int      `json:"offset"`
	IDs    []string `json:"ids"`
	Next   bool     `json:"next"`
}

// OpenMove opens the dashboard's move dialog for message id of state and
// picks the state to move it to.
func OpenMove(id, state, to string) []chromedp.Action[chromedp.Void] {
	row := `#rows tr[data-id="` + id + `"]`
	return []chromedp.Action[chromedp.Void]{
		chromedp.Click(chromedp.CSS(`#tabs button[data-state="` + state + `"]`)),
		chromedp.WaitVisible(chromedp.CSS(row)),
		chromedp.Click(chromedp.CSS(row + ` a.id`)),
		chromedp.WaitVisible(chromedp.CSS(`#act-move`)),
		chromedp.Click(chromedp.CSS(`#act-move`)),
		chromedp.WaitVisible(chromedp.CSS(`#confirm`)),
		chromedp.SetValue(chromedp.CSS(`#f-to`), to),
	}
}
