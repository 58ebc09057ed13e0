package dashboard

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
)

// apiError is the JSON body of an error.
type apiError struct {
	Error string `json:"error"`
}

// badRequest is a request the dashboard cannot answer; its message is
// shown.
type badRequest struct{ msg string }

func (e *badRequest) Error() string { return e.msg }

func badRequestf(format string, args ...any) error {
	return &badRequest{msg: fmt.Sprintf(format, args...)}
}

func writeAPI(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// classify returns the status and the message to show for err. The
// message of an error the caller made (a bad request, an unknown message,
// a state conflict) is shown; other errors may carry SQL or file paths,
// so they are logged and answered with a fixed text.
func (h *Handler) classify(r *http.Request, err error) (int, string) {
	var br *badRequest
	switch {
	case errors.As(err, &br), errors.Is(err, sqlitemeta.ErrInvalidInput), errors.Is(err, metastorage.ErrInvalidState):
		return http.StatusBadRequest, err.Error()
	case errors.Is(err, metastorage.ErrMessageNotFound):
		return http.StatusNotFound, err.Error()
	case errors.Is(err, metastorage.ErrStateConflict):
		return http.StatusConflict, err.Error()
	case errors.Is(err, sqlitemeta.ErrReadOnly):
		return http.StatusForbidden, "the store is open read-only"
	}
	code, msg := http.StatusInternalServerError, "internal error; the server's log has the details"
	if errors.Is(err, sqlitemeta.ErrBusy) {
		code, msg = http.StatusServiceUnavailable, "the database is busy; try again"
	}
	if r.Context().Err() == nil {
		h.cfg.logger.Error("dashboard: request failed", "method", r.Method, "path", r.URL.Path, "status", code, "err", err)
	}
	return code, msg
}

// fail answers err with the status its kind calls for.
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	code, msg := h.classify(r, err)
	writeAPI(w, code, apiError{Error: msg})
}

// query parses the query string of r: each parameter at most once, none
// but those named.
func query(r *http.Request, allowed ...string) (url.Values, error) {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, badRequestf("malformed query string")
	}
	for name, vs := range q {
		known := false
		for _, a := range allowed {
			known = known || name == a
		}
		switch {
		case !known && len(allowed) == 0:
			return nil, badRequestf("%s takes no parameters", r.URL.Path)
		case !known:
			return nil, badRequestf("unknown parameter %q (want %s)", name, strings.Join(allowed, ", "))
		case len(vs) > 1:
			return nil, badRequestf("parameter %q given %d times", name, len(vs))
		}
	}
	return q, nil
}

// intParam reads a whole number in lo..hi, def when absent.
func intParam(q url.Values, name string, def, lo, hi int) (int, error) {
	v, ok := q[name]
	if !ok {
		return def, nil
	}
	n, err := strconv.Atoi(v[0])
	if err != nil || n < lo || n > hi {
		return 0, badRequestf("%s must be a whole number in %d..%d", name, lo, hi)
	}
	return n, nil
}

// oneOf reads a parameter that takes one of values, the first when absent.
func oneOf(q url.Values, name string, values ...string) (string, error) {
	v, ok := q[name]
	if !ok {
		return values[0], nil
	}
	for _, want := range values {
		if v[0] == want {
			return want, nil
		}
	}
	return "", badRequestf("unknown %s %q (want %s)", name, v[0], strings.Join(values, ", "))
}

func (h *Handler) apiStats(w http.ResponseWriter, r *http.Request) {
	if _, err := query(r); err != nil {
		h.fail(w, r, err)
		return
	}
	st, err := h.stats(r.Context())
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeAPI(w, http.StatusOK, st)
}

func (h *Handler) apiShape(w http.ResponseWriter, r *http.Request) {
	if _, err := query(r); err != nil {
		h.fail(w, r, err)
		return
	}
	shape, err := Shape(r.Context(), h.r, time.Now(), allStates())
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeAPI(w, http.StatusOK, shape)
}

// pageView is one page of /api/messages.
type pageView struct {
	State    string    `json:"state"`
	Sort     string    `json:"sort"`
	Order    string    `json:"order"`
	Total    int       `json:"total"`
	Offset   int       `json:"offset"`
	Limit    int       `json:"limit"`
	HasMore  bool      `json:"has_more"`
	Messages []Message `json:"messages"`
}

// Page sizes of /api/messages.
const (
	defaultPageSize = 50
	maxPageSize     = 1000
	maxOffset       = 1<<31 - 1
)

func (h *Handler) apiMessages(w http.ResponseWriter, r *http.Request) {
	page, err := h.messages(r)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeAPI(w, http.StatusOK, page)
}

func (h *Handler) messages(r *http.Request) (pageView, error) {
	q, err := query(r, "state", "sort", "order", "limit", "offset")
	if err != nil {
		return pageView{}, err
	}
	if _, ok := q["state"]; !ok {
		return pageView{}, badRequestf("state is required (incoming, active, deferred, hold, bounce or archived)")
	}
	state, err := ParseState(q.Get("state"))
	if err != nil {
		return pageView{}, &badRequest{msg: err.Error()}
	}
	limit, err := intParam(q, "limit", defaultPageSize, 1, maxPageSize)
	if err != nil {
		return pageView{}, err
	}
	offset, err := intParam(q, "offset", 0, 0, maxOffset)
	if err != nil {
		return pageView{}, err
	}
	sortBy, err := oneOf(q, "sort", "created", "updated", "priority", "attempts")
	if err != nil {
		return pageView{}, err
	}
	order, err := oneOf(q, "order", "asc", "desc")
	if err != nil {
		return pageView{}, err
	}
	ctx := r.Context()
	res, err := h.r.ListMessages(ctx, state, metastorage.MessageListOptions{Limit: limit, Offset: offset, SortBy: sortBy, SortOrder: order})
	if err != nil {
		return pageView{}, err
	}
	out := pageView{State: state.String(), Sort: sortBy, Order: order, Total: res.Total, Offset: offset, Limit: limit,
		HasMore: res.HasMore, Messages: make([]Message, 0, len(res.MessageIDs))}
	for _, id := range res.MessageIDs {
		md, err := h.r.GetMeta(ctx, id)
		if errors.Is(err, metastorage.ErrMessageNotFound) {
			continue // gone since the page was read
		}
		if err != nil {
			return pageView{}, err
		}
		out.Messages = append(out.Messages, MessageOf(md))
	}
	return out, nil
}

// checkID refuses what cannot be a message's ID, before the store sees
// it.
func checkID(id string) error {
	switch {
	case id == "":
		return badRequestf("id is required")
	case len(id) > sqlitemeta.MaxIDLength:
		return badRequestf("id is %d bytes, the maximum is %d", len(id), sqlitemeta.MaxIDLength)
	case !utf8.ValidString(id) || strings.ContainsRune(id, 0):
		return badRequestf("id is not valid UTF-8 text")
	}
	return nil
}

func (h *Handler) apiMessage(w http.ResponseWriter, r *http.Request) {
	q, err := query(r, "id")
	if err == nil {
		err = checkID(q.Get("id"))
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	md, err := h.r.GetMeta(r.Context(), q.Get("id"))
	if err != nil { // it names the ID
		h.fail(w, r, err)
		return
	}
	writeAPI(w, http.StatusOK, MessageOf(md))
}
