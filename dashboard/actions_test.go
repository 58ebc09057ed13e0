package dashboard

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	metastorage "schneider.vip/retryspool/storage/meta"

	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/queueseed"
)

func TestActionsRefusedReadOnly(t *testing.T) {
	t.Parallel()
	ts := start(t, queueseed.SmallFile(t))
	code, out := ts.post(t, "move", map[string]any{"id": "hold-1", "from": "hold", "to": "incoming"}, nil)
	require.Equal(t, http.StatusForbidden, code)
	require.Contains(t, out["error"], "read-only")
	code, _ = ts.post(t, "purge", map[string]any{"state": "bounce", "older_than": "1h"}, nil)
	require.Equal(t, http.StatusForbidden, code)
	require.Equal(t, metastorage.StateHold, queueseed.StateOf(t, ts.r, "hold-1"))
	require.EqualValues(t, 3, ts.r.GetStateCount(metastorage.StateBounce))
}

func TestActions(t *testing.T) {
	t.Parallel()
	ts := start(t, queueseed.SmallFile(t), WithActions())
	move := map[string]any{"id": "hold-1", "from": "hold", "to": "incoming"}

	// Requests that do not come from the page are refused.
	for name, change := range map[string]func(*http.Request){
		"no token":            func(r *http.Request) { r.Header.Del(TokenHeader) },
		"wrong token":         func(r *http.Request) { r.Header.Set(TokenHeader, strings.Repeat("0", 64)) },
		"another user":        func(r *http.Request) { r.SetBasicAuth("mallory", "x") },
		"cross-site fetch":    func(r *http.Request) { r.Header.Set("Sec-Fetch-Site", "cross-site") },
		"other origin":        func(r *http.Request) { r.Header.Del("Sec-Fetch-Site"); r.Header.Set("Origin", "https://evil.example") },
		"form content type":   func(r *http.Request) { r.Header.Set("Content-Type", "application/x-www-form-urlencoded") },
		"text content type":   func(r *http.Request) { r.Header.Set("Content-Type", "text/plain") },
		"same-site subdomain": func(r *http.Request) { r.Header.Set("Sec-Fetch-Site", "same-site") },
	} {
		code, _ := ts.post(t, "move", move, change)
		require.Contains(t, []int{http.StatusForbidden, http.StatusUnsupportedMediaType}, code, name)
	}
	require.Equal(t, metastorage.StateHold, queueseed.StateOf(t, ts.r, "hold-1"))

	// Dry runs change nothing.
	move["dry_run"] = true
	code, out := ts.post(t, "move", move, nil)
	require.Equal(t, http.StatusOK, code, out)
	require.Equal(t, "would move hold-1 from hold to incoming", out["message"])
	require.Equal(t, metastorage.StateHold, queueseed.StateOf(t, ts.r, "hold-1"))
	code, out = ts.post(t, "requeue-stale", map[string]any{"older_than": "2h", "dry_run": true}, nil)
	require.Equal(t, http.StatusOK, code, out)
	require.EqualValues(t, 1, out["count"]) // act-stale, claimed 3h ago
	code, out = ts.post(t, "purge", map[string]any{"state": "bounce", "older_than": "1d", "dry_run": true}, nil)
	require.Equal(t, http.StatusOK, code, out)
	require.EqualValues(t, 2, out["count"])
	require.EqualValues(t, 3, ts.r.GetStateCount(metastorage.StateBounce))
	require.Equal(t, metastorage.StateActive, queueseed.StateOf(t, ts.r, "act-stale"))

	// Then for real.
	move["dry_run"] = false
	code, out = ts.post(t, "move", move, nil)
	require.Equal(t, http.StatusOK, code, out)
	require.Equal(t, metastorage.StateIncoming, queueseed.StateOf(t, ts.r, "hold-1"))
	code, out = ts.post(t, "move", move, nil)
	require.Equal(t, http.StatusConflict, code, out)
	require.Contains(t, out["error"], `message "hold-1" is incoming, not hold`)
	code, out = ts.post(t, "requeue-stale", map[string]any{"older_than": "2h"}, nil)
	require.Equal(t, http.StatusOK, code, out)
	require.Equal(t, metastorage.StateIncoming, queueseed.StateOf(t, ts.r, "act-stale"))
	require.Equal(t, metastorage.StateActive, queueseed.StateOf(t, ts.r, "act-fresh"))
	code, out = ts.post(t, "purge", map[string]any{"state": "bounce", "older_than": "24h", "archive": true}, nil)
	require.Equal(t, http.StatusOK, code, out)
	require.Equal(t, "archived 2 bounce messages created before", out["message"].(string)[:41])
	require.EqualValues(t, 1, ts.r.GetStateCount(metastorage.StateBounce))

	// Bad requests.
	for name, c := range map[string]struct {
		action string
		body   any
		code   int
	}{
		"unknown message": {"move", map[string]any{"id": "nosuch", "from": "hold", "to": "incoming"}, http.StatusNotFound},
		"no id":           {"move", map[string]any{"from": "hold", "to": "incoming"}, http.StatusBadRequest},
		"bad state":       {"move", map[string]any{"id": "x", "from": "limbo", "to": "incoming"}, http.StatusBadRequest},
		"negative age":    {"purge", map[string]any{"state": "bounce", "older_than": "-1h"}, http.StatusBadRequest},
		"no age":          {"requeue-stale", map[string]any{}, http.StatusBadRequest},
		"huge age":        {"purge", map[string]any{"state": "bounce", "older_than": "99999999d"}, http.StatusBadRequest},
		"unknown action":  {"explode", map[string]any{}, http.StatusNotFound},
		"unknown field":   {"move", map[string]any{"id": "x", "unknown": 1}, http.StatusBadRequest},
		"not an object":   {"move", []int{1}, http.StatusBadRequest},
	} {
		code, out := ts.post(t, c.action, c.body, nil)
		require.Equal(t, c.code, code, "%s: %v", name, out)
		require.NotEmpty(t, out["error"], name)
	}
}

// A body over the limit is refused before it is read whole.
func TestActionBodyLimit(t *testing.T) {
	t.Parallel()
	ts := start(t, queueseed.SmallFile(t), WithActions())
	req, err := http.NewRequest("POST", ts.URL+"/api/actions/move", io.MultiReader(
		strings.NewReader(`{"id": "`), bytes.NewReader(bytes.Repeat([]byte("x"), 2*MaxActionBody)), strings.NewReader(`"}`)))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(TokenHeader, ts.h.token(req))
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	res.Body.Close()
	require.Equal(t, http.StatusRequestEntityTooLarge, res.StatusCode)
}

// The page of one user carries a token that works for that user only.
func TestTokenBoundToUser(t *testing.T) {
	t.Parallel()
	ts := start(t, queueseed.SmallFile(t), WithActions())
	tokenOf := func(user string) string {
		req, _ := http.NewRequest("GET", ts.URL+"/", nil)
		if user != "" {
			req.SetBasicAuth(user, "secret")
		}
		res, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		_, rest, ok := strings.Cut(string(body), `data-token="`)
		require.True(t, ok)
		tok, _, _ := strings.Cut(rest, `"`)
		require.Len(t, tok, 64)
		return tok
	}
	alice, bob := tokenOf("alice"), tokenOf("bob")
	require.NotEqual(t, alice, bob)
	require.Equal(t, alice, tokenOf("alice"))
	dry := map[string]any{"id": "hold-1", "from": "hold", "to": "incoming", "dry_run": true}
	as := func(user, tok string) func(*http.Request) {
		return func(r *http.Request) { r.SetBasicAuth(user, "secret"); r.Header.Set(TokenHeader, tok) }
	}
	code, _ := ts.post(t, "move", dry, as("alice", alice))
	require.Equal(t, http.StatusOK, code)
	code, _ = ts.post(t, "move", dry, as("bob", alice))
	require.Equal(t, http.StatusForbidden, code)
	code, _ = ts.post(t, "move", dry, as("bob", bob))
	require.Equal(t, http.StatusOK, code)

	// WithUser decides who asks.
	ts2 := start(t, queueseed.SmallFile(t), WithActions(), WithUser(func(r *http.Request) string { return r.Header.Get("X-User") }))
	req, _ := http.NewRequest("GET", ts2.URL+"/", nil)
	req.Header.Set("X-User", "carol")
	require.NotEqual(t, ts2.h.token(req), ts2.h.token(httptestGet(ts2.URL)))
}

func httptestGet(url string) *http.Request {
	req, _ := http.NewRequest("GET", url, nil)
	return req
}
