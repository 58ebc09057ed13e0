package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"
	metastorage "schneider.vip/retryspool/storage/meta"
)

// browserEnv, set to "require" (as .ci/run does), makes a missing browser
// a failure instead of a skip.
const browserEnv = "SPOOLMETA_BROWSER_TESTS"

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
	if os.Getenv(browserEnv) == "require" {
		t.Fatalf("%s=require but no chromium on the PATH (apt-get install chromium)", browserEnv)
	}
	t.Skip("browser test skipped: no chromium on the PATH (apt-get install chromium, or set SPOOLMETA_CHROMIUM)")
	return ""
}

// browser starts a headless Chromium with a user-data directory of its
// own and returns a tab's context.
func browser(t *testing.T) context.Context {
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

// artifact writes a test artifact to $ARTIFACTS_DIR, or to a temporary
// directory, and logs where.
func artifact(t *testing.T, name string, data []byte) {
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

// pageCounts reads the per-state counts the dashboard shows, as numbers
// and as the text a person reads.
const pageCounts = `(() => {
  const out = {};
  for (const c of document.querySelectorAll('.card[data-state]')) {
    const e = c.querySelector('.count');
    out[c.dataset.state] = {n: Number(e.dataset.count), text: e.textContent.trim()};
  }
  return out;
})()`

type shownCount struct {
	N    int64  `json:"n"`
	Text string `json:"text"`
}

// pageIDs reads the IDs of the listed page and its offset.
const pageIDs = `({offset: Number(document.querySelector('#range').dataset.offset),
  ids: [...document.querySelectorAll('#rows tr[data-id]')].map(r => r.dataset.id),
  next: !document.querySelector('#next').disabled})`

type shownPage struct {
	Offset int      `json:"offset"`
	IDs    []string `json:"ids"`
	Next   bool     `json:"next"`
}

// do runs browser steps.
func do(t *testing.T, ctx context.Context, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	require.NoError(t, chromedp.Do(ctx, steps...))
}

// get runs one browser action and returns its value.
func get[T any](t *testing.T, ctx context.Context, a chromedp.Action[T]) T {
	t.Helper()
	v, err := chromedp.Run(ctx, a)
	require.NoError(t, err)
	return v
}

// until waits for a JavaScript condition.
func until(expr string) chromedp.Action[chromedp.Void] { return chromedp.Poll[chromedp.Void](expr) }

type css = chromedp.CSS

func TestBrowserDashboard(t *testing.T) {
	ctx := browser(t)
	ts := startServer(t, seedMany(t, 10000), false)
	stats, err := ts.r.Stats(context.Background())
	require.NoError(t, err)

	do(t, ctx,
		chromedp.Navigate(ts.URL+"/"),
		chromedp.WaitVisible(css(`#rows tr[data-id]`)),
		// The chart is drawn once the first refresh has come back.
		chromedp.WaitVisible(css(`#shape-chart rect`)),
	)

	// The counts on the page are the store's, live-refreshed ones included.
	shown := get(t, ctx, chromedp.Evaluate[map[string]shownCount](pageCounts))
	require.Len(t, shown, 6)
	var total int64
	for _, s := range stats {
		got := shown[s.State.String()]
		require.Equal(t, s.Count, got.N, s.State.String())
		require.Equal(t, fmtCount(s.Count), got.Text, s.State.String())
		total += s.Count
	}
	require.EqualValues(t, 10000, total)
	require.Equal(t, "10,000", get(t, ctx, chromedp.Text(css(`#total`))))
	require.Equal(t, "read-only", get(t, ctx, chromedp.Text(css(`#mode`))))

	// The age table's row totals are the counts too.
	shapeTotals := get(t, ctx, chromedp.Evaluate[map[string]string](`Object.fromEntries([...document.querySelectorAll('#shape-body tr')].map(r => [r.dataset.state, r.querySelector('td.t').textContent]))`))
	for _, s := range stats {
		require.Equal(t, fmtCount(s.Count), shapeTotals[s.State.String()])
	}

	// One message's record, for the screenshot.
	do(t, ctx,
		chromedp.Click(css(`#tabs button[data-state="deferred"]`)),
		until(`document.querySelector('#list-title').textContent.startsWith('deferred')`),
	)
	firstID := get(t, ctx, chromedp.AttributeValue(css(`#rows tr[data-id] a.id`), "data-id")).Value
	require.NotEmpty(t, firstID)
	do(t, ctx,
		chromedp.Click(css(`#rows tr[data-id] a.id`)),
		chromedp.WaitVisible(css(`#detail .kv`)),
	)
	require.Equal(t, firstID, get(t, ctx, chromedp.Text(css(`#detail-id`))))
	artifact(t, "dashboard.png", get(t, ctx, chromedp.FullScreenshot(100)))

	// Paging walks a state without repeats: incoming, 250 a page.
	do(t, ctx, chromedp.SetValue(css(`#limit`), "250"))
	get(t, ctx, chromedp.Evaluate[bool](`document.querySelector('#limit').dispatchEvent(new Event('change'))`))
	do(t, ctx,
		chromedp.Click(css(`#tabs button[data-state="incoming"]`)),
		until(`document.querySelector('#list-title').textContent.startsWith('incoming') && document.querySelectorAll('#rows tr[data-id]').length == 250`),
	)
	seen := map[string]bool{}
	for want := 0; ; want += 250 {
		do(t, ctx, until(fmt.Sprintf(`document.querySelector('#range').dataset.offset == "%d"`, want)))
		page := get(t, ctx, chromedp.Evaluate[shownPage](pageIDs))
		require.Equal(t, want, page.Offset)
		for _, id := range page.IDs {
			require.False(t, seen[id], "%s listed twice", id)
			seen[id] = true
		}
		if !page.Next {
			break
		}
		do(t, ctx, chromedp.Click(css(`#next`)))
	}
	require.Len(t, seen, int(stats[metastorage.StateIncoming].Count))

	// Read-only: no action on the page, and the API refuses one sent from it.
	require.False(t, get(t, ctx, chromedp.Evaluate[bool](`!!document.querySelector('#actions, #act-move, dialog')`)))
	status := get(t, ctx, chromedp.Evaluate[int](fmt.Sprintf(`fetch('/api/actions/move', {method: 'POST', headers: {'Content-Type': 'application/json'},
		body: JSON.stringify({id: %q, from: 'deferred', to: 'hold'})}).then(r => r.status)`, firstID), chromedp.EvalAwaitPromise))
	require.Equal(t, 403, status)
	require.Equal(t, metastorage.StateDeferred, stateOf(t, ts.r, firstID))
}

func TestBrowserAction(t *testing.T) {
	ctx := browser(t)
	ts := startServer(t, seedFile(t), true)

	do(t, ctx,
		chromedp.Navigate(ts.URL+"/"),
		chromedp.WaitVisible(css(`#rows tr[data-id]`)),
	)
	require.Equal(t, "actions allowed", get(t, ctx, chromedp.Text(css(`#mode`))))
	do(t, ctx,
		chromedp.Click(css(`#tabs button[data-state="hold"]`)),
		chromedp.WaitVisible(css(`#rows tr[data-id="hold-1"]`)),
		chromedp.Click(css(`#rows tr[data-id="hold-1"] a.id`)),
		chromedp.WaitVisible(css(`#act-move`)),
		chromedp.Click(css(`#act-move`)),
		chromedp.WaitVisible(css(`#confirm`)),
		chromedp.SetValue(css(`#f-to`), "incoming"),
	)
	require.True(t, get(t, ctx, chromedp.Evaluate[bool](`document.querySelector('#confirm-go').disabled`)), "no confirmation before a dry run")

	// The dry run first: nothing moves.
	do(t, ctx,
		chromedp.Click(css(`#confirm-dry`)),
		chromedp.WaitVisible(css(`#confirm-result.dry`)),
	)
	require.Equal(t, "would move hold-1 from hold to incoming", get(t, ctx, chromedp.Text(css(`#confirm-result`))))
	require.Equal(t, metastorage.StateHold, stateOf(t, ts.r, "hold-1"))
	artifact(t, "dashboard-confirm.png", get(t, ctx, chromedp.CaptureScreenshot()))

	// Then the confirmation.
	do(t, ctx,
		chromedp.Click(css(`#confirm-go`)),
		chromedp.WaitVisible(css(`#confirm-result.done`)),
	)
	require.Equal(t, "moved hold-1 from hold to incoming", get(t, ctx, chromedp.Text(css(`#confirm-result`))))
	require.Equal(t, metastorage.StateIncoming, stateOf(t, ts.r, "hold-1"))
}
