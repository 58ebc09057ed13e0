package dashboard_test

import (
	"context"
	"fmt"
	"net/http/httptest"
	"testing"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"
	metastorage "schneider.vip/retryspool/storage/meta"

	"schneider.vip/retryspool/storage/meta/sqlite/dashboard"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/browser"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/queueseed"
)

type css = chromedp.CSS

// startApp serves the example application (the dashboard under
// /ops/queue/, behind Basic authentication) on the store at path, and
// opens a browser that knows the password.
func startApp(t *testing.T, path string, opts ...dashboard.Option) (context.Context, string, func() int64) {
	t.Helper()
	ctx := browser.Start(t)
	app, err := newApp(queueseed.Open(t, path), opts...)
	require.NoError(t, err)
	srv := httptest.NewServer(app)
	t.Cleanup(srv.Close)
	asked := browser.Auth(t, ctx, "ops", "s3cret")
	return ctx, srv.URL + "/ops/queue/", asked
}

// In a real browser, under a prefix and behind authentication: the
// counts are the store's, the chart is drawn, a message's record opens,
// paging walks a state without repeats, and the read-only page cannot act.
func TestBrowserDashboard(t *testing.T) {
	path := queueseed.Many(t, 10000)
	ctx, page, asked := startApp(t, path, dashboard.WithName("mail queue"))
	r := queueseed.Open(t, path)
	stats, err := r.Stats(context.Background())
	require.NoError(t, err)

	browser.Do(t, ctx,
		chromedp.Navigate(page),
		chromedp.WaitVisible(css(`#rows tr[data-id]`)),
		// The chart is drawn once the first refresh has come back.
		chromedp.WaitVisible(css(`#shape-chart rect`)),
	)
	require.Positive(t, asked(), "the browser was asked for the password")

	// The counts on the page are the store's, live-refreshed ones included.
	shown := browser.Get(t, ctx, chromedp.Evaluate[map[string]browser.ShownCount](browser.PageCounts))
	require.Len(t, shown, 6)
	var total int64
	for _, s := range stats {
		got := shown[s.State.String()]
		require.Equal(t, s.Count, got.N, s.State.String())
		total += s.Count
	}
	require.EqualValues(t, 10000, total)
	require.Equal(t, "10,000", browser.Get(t, ctx, chromedp.Text(css(`#total`))))
	require.Equal(t, "read-only", browser.Get(t, ctx, chromedp.Text(css(`#mode`))))
	require.Equal(t, "mail queue", browser.Get(t, ctx, chromedp.Text(css(`.db`))))
	// The page, its assets and its API calls stayed under the prefix.
	urls := browser.Get(t, ctx, chromedp.Evaluate[[]string](`performance.getEntriesByType('resource').map(e => new URL(e.name).pathname)`))
	require.NotEmpty(t, urls)
	for _, u := range urls {
		require.Regexp(t, `^/ops/queue/(static|api)/`, u)
	}

	// The age table's row totals are the counts too.
	shapeTotals := browser.Get(t, ctx, chromedp.Evaluate[map[string]string](`Object.fromEntries([...document.querySelectorAll('#shape-body tr')].map(r => [r.dataset.state, r.querySelector('td.t').textContent]))`))
	for _, s := range stats {
		require.Equal(t, fmt.Sprintf("%d", s.Count), removeCommas(shapeTotals[s.State.String()]))
	}

	// One message's record, for the screenshot.
	browser.Do(t, ctx,
		chromedp.Click(css(`#tabs button[data-state="deferred"]`)),
		browser.Until(`document.querySelector('#list-title').textContent.startsWith('deferred')`),
	)
	firstID := browser.Get(t, ctx, chromedp.AttributeValue(css(`#rows tr[data-id] a.id`), "data-id")).Value
	require.NotEmpty(t, firstID)
	browser.Do(t, ctx,
		chromedp.Click(css(`#rows tr[data-id] a.id`)),
		chromedp.WaitVisible(css(`#detail .kv`)),
	)
	require.Equal(t, firstID, browser.Get(t, ctx, chromedp.Text(css(`#detail-id`))))
	browser.Artifact(t, "dashboard.png", browser.Get(t, ctx, chromedp.FullScreenshot(100)))

	// Paging walks a state without repeats: incoming, 250 a page.
	browser.Do(t, ctx, chromedp.SetValue(css(`#limit`), "250"))
	browser.Get(t, ctx, chromedp.Evaluate[bool](`document.querySelector('#limit').dispatchEvent(new Event('change'))`))
	browser.Do(t, ctx,
		chromedp.Click(css(`#tabs button[data-state="incoming"]`)),
		browser.Until(`document.querySelector('#list-title').textContent.startsWith('incoming') && document.querySelectorAll('#rows tr[data-id]').length == 250`),
	)
	seen := map[string]bool{}
	for want := 0; ; want += 250 {
		browser.Do(t, ctx, browser.Until(fmt.Sprintf(`document.querySelector('#range').dataset.offset == "%d"`, want)))
		pg := browser.Get(t, ctx, chromedp.Evaluate[browser.ShownPage](browser.PageIDs))
		require.Equal(t, want, pg.Offset)
		for _, id := range pg.IDs {
			require.False(t, seen[id], "%s listed twice", id)
			seen[id] = true
		}
		if !pg.Next {
			break
		}
		browser.Do(t, ctx, chromedp.Click(css(`#next`)))
	}
	require.Len(t, seen, int(stats[metastorage.StateIncoming].Count))

	// Read-only: no action on the page, and the API refuses one sent from it.
	require.False(t, browser.Get(t, ctx, chromedp.Evaluate[bool](`!!document.querySelector('#actions, #act-move, dialog')`)))
	status := browser.Get(t, ctx, chromedp.Evaluate[int](fmt.Sprintf(`fetch('api/actions/move', {method: 'POST', headers: {'Content-Type': 'application/json'},
		body: JSON.stringify({id: %q, from: 'deferred', to: 'hold'})}).then(r => r.status)`, firstID), chromedp.EvalAwaitPromise))
	require.Equal(t, 403, status)
	require.Equal(t, metastorage.StateDeferred, queueseed.StateOf(t, r, firstID))
}

func removeCommas(s string) string {
	out := make([]rune, 0, len(s))
	for _, c := range s {
		if c != ',' {
			out = append(out, c)
		}
	}
	return string(out)
}

// With actions, under the prefix and behind authentication: a dry run
// first, nothing moves; then the confirmation moves the message.
func TestBrowserAction(t *testing.T) {
	path := queueseed.SmallFile(t)
	ctx, page, _ := startApp(t, path, dashboard.WithActions())
	r := queueseed.Open(t, path)

	browser.Do(t, ctx,
		chromedp.Navigate(page),
		chromedp.WaitVisible(css(`#rows tr[data-id]`)),
	)
	require.Equal(t, "actions allowed", browser.Get(t, ctx, chromedp.Text(css(`#mode`))))
	browser.Do(t, ctx, browser.OpenMove("hold-1", "hold", "incoming")...)
	require.True(t, browser.Get(t, ctx, chromedp.Evaluate[bool](`document.querySelector('#confirm-go').disabled`)), "no confirmation before a dry run")

	// The dry run first: nothing moves.
	browser.Do(t, ctx,
		chromedp.Click(css(`#confirm-dry`)),
		chromedp.WaitVisible(css(`#confirm-result.dry`)),
	)
	require.Equal(t, "would move hold-1 from hold to incoming", browser.Get(t, ctx, chromedp.Text(css(`#confirm-result`))))
	require.Equal(t, metastorage.StateHold, queueseed.StateOf(t, r, "hold-1"))
	browser.Artifact(t, "dashboard-confirm.png", browser.Get(t, ctx, chromedp.CaptureScreenshot()))

	// Then the confirmation.
	browser.Do(t, ctx,
		chromedp.Click(css(`#confirm-go`)),
		chromedp.WaitVisible(css(`#confirm-result.done`)),
	)
	require.Equal(t, "moved hold-1 from hold to incoming", browser.Get(t, ctx, chromedp.Text(css(`#confirm-result`))))
	require.Equal(t, metastorage.StateIncoming, queueseed.StateOf(t, r, "hold-1"))
}
