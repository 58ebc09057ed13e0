package main

import (
	"context"
	"testing"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"
	metastorage "schneider.vip/retryspool/storage/meta"

	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/browser"
)

type css = chromedp.CSS

// The dashboard of "spoolmeta serve" behind the basic authentication of a
// web config, with actions: the browser is asked for the password, shows
// the store's counts, and moves a message after a dry run.
func TestBrowserServe(t *testing.T) {
	ctx := browser.Start(t)
	db := seedFile(t)
	cfg := webConfigFile(t, map[string]string{"alice": "s3cret"}, "")
	s := serve(t, "--db", db, "--listen", "127.0.0.1:0", "--web-config", cfg, "--allow-actions")
	asked := browser.Auth(t, ctx, "alice", "s3cret")

	browser.Do(t, ctx,
		chromedp.Navigate(s.url+"/"),
		chromedp.WaitVisible(css(`#rows tr[data-id]`)),
		chromedp.WaitVisible(css(`#shape-chart rect`)),
	)
	require.Positive(t, asked(), "the browser was asked for credentials")
	r := openCheck(t, db)
	stats, err := r.Stats(context.Background())
	require.NoError(t, err)
	shown := browser.Get(t, ctx, chromedp.Evaluate[map[string]browser.ShownCount](browser.PageCounts))
	for _, st := range stats {
		require.Equal(t, st.Count, shown[st.State.String()].N, st.State.String())
	}
	require.Equal(t, "actions allowed", browser.Get(t, ctx, chromedp.Text(css(`#mode`))))
	require.Contains(t, browser.Get(t, ctx, chromedp.Text(css(`.db`))), "table messages")
	// The footer links the metrics of the store, behind the same password.
	require.Equal(t, 200, browser.Get(t, ctx, chromedp.Evaluate[int](`fetch(document.querySelector('footer a[href="metrics"]').href).then(r => r.status)`, chromedp.EvalAwaitPromise)))

	browser.Artifact(t, "serve.png", browser.Get(t, ctx, chromedp.FullScreenshot(100)))

	browser.Do(t, ctx, browser.OpenMove("hold-1", "hold", "incoming")...)
	browser.Do(t, ctx,
		chromedp.Click(css(`#confirm-dry`)),
		chromedp.WaitVisible(css(`#confirm-result.dry`)),
	)
	require.Equal(t, "would move hold-1 from hold to incoming", browser.Get(t, ctx, chromedp.Text(css(`#confirm-result`))))
	require.Equal(t, metastorage.StateHold, stateOf(t, r, "hold-1"))
	browser.Artifact(t, "serve-confirm.png", browser.Get(t, ctx, chromedp.CaptureScreenshot()))
	browser.Do(t, ctx,
		chromedp.Click(css(`#confirm-go`)),
		chromedp.WaitVisible(css(`#confirm-result.done`)),
	)
	require.Equal(t, "moved hold-1 from hold to incoming", browser.Get(t, ctx, chromedp.Text(css(`#confirm-result`))))
	require.Equal(t, metastorage.StateIncoming, stateOf(t, r, "hold-1"))
}
