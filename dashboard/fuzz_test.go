package dashboard

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"unicode/utf8"

	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/queueseed"
)

// FuzzQuery sends any query string to the JSON endpoints: each answers
// with 200, 400 or 404 and a JSON body, never a 5xx and never a panic;
// a 400 says what is wrong.
func FuzzQuery(f *testing.F) {
	r := queueseed.Open(f, queueseed.SmallFile(f))
	h, err := New(r, WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		f.Fatal(err)
	}
	endpoints := []string{"/api/messages", "/api/message", "/api/stats", "/api/shape"}
	for _, seed := range []struct {
		endpoint uint8
		query    string
	}{
		{0, "state=hold&sort=priority&order=desc&limit=5&offset=0"},
		{0, "state=DEFERRED&limit=1000&offset=2147483647"},
		{0, "state=hold&limit=-1"},
		{0, "state=hold&offset=99999999999999999999"},
		{0, "state=%zz"},
		{0, "state=hold;sort=created"},
		{0, "state=hold&state=hold"},
		{1, "id=hold-1"},
		{1, "id=%00"},
		{1, "id=%ff"},
		{1, "id=" + url.QueryEscape("' OR 1=1 --")},
		{2, ""},
		{3, "x"},
	} {
		f.Add(seed.endpoint, seed.query)
	}
	f.Fuzz(func(t *testing.T, endpoint uint8, query string) {
		u := &url.URL{Path: endpoints[int(endpoint)%len(endpoints)], RawQuery: query}
		req := httptest.NewRequest("GET", "/", nil)
		req.URL = u
		req.RequestURI = u.RequestURI()
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		switch w.Code {
		case http.StatusOK, http.StatusBadRequest, http.StatusNotFound:
		default:
			t.Fatalf("%s: status %d: %s", u, w.Code, w.Body)
		}
		var body map[string]any
		if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
			t.Fatalf("%s: not JSON: %v: %q", u, err, w.Body)
		}
		if w.Code != http.StatusOK {
			msg, _ := body["error"].(string)
			if msg == "" || !utf8.ValidString(msg) {
				t.Fatalf("%s: %d without a message: %s", u, w.Code, w.Body)
			}
		}
	})
}
