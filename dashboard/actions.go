package dashboard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"strconv"
	"time"

	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
)

// actionRequest is the JSON body of an action; each action reads its own
// fields.
type actionRequest struct {
	ID        string `json:"id"`
	From      string `json:"from"`
	To        string `json:"to"`
	State     string `json:"state"`
	OlderThan string `json:"older_than"`
	Archive   bool   `json:"archive"`
	DryRun    bool   `json:"dry_run"`
}

// actionResult is what an action answers.
type actionResult struct {
	Action  string `json:"action"`
	DryRun  bool   `json:"dry_run"`
	Count   int64  `json:"count"`
	Message string `json:"message"`
}

func (h *Handler) action(w http.ResponseWriter, r *http.Request) {
	if !h.cfg.actions {
		writeAPI(w, http.StatusForbidden, apiError{Error: "actions are disabled: this dashboard is read-only"})
		return
	}
	if !h.tokenOK(r) {
		writeAPI(w, http.StatusForbidden, apiError{Error: "missing or wrong " + TokenHeader + ": send actions from the dashboard"})
		return
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		writeAPI(w, http.StatusUnsupportedMediaType, apiError{Error: "want Content-Type application/json"})
		return
	}
	var req actionRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxActionBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			writeAPI(w, http.StatusRequestEntityTooLarge, apiError{Error: fmt.Sprintf("request body over %d bytes", MaxActionBody)})
			return
		}
		writeAPI(w, http.StatusBadRequest, apiError{Error: "bad request body: " + err.Error()})
		return
	}
	var (
		res actionResult
		err error
	)
	switch name := r.PathValue("action"); name {
	case "move":
		res, err = h.actMove(r.Context(), req)
	case "requeue-stale":
		res, err = h.actRequeue(r.Context(), req)
	case "purge":
		res, err = h.actPurge(r.Context(), req)
	default:
		writeAPI(w, http.StatusNotFound, apiError{Error: "unknown action " + strconv.Quote(name)})
		return
	}
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeAPI(w, http.StatusOK, res)
}

// stateField reads a state of an action's body.
func stateField(field, v string) (metastorage.QueueState, error) {
	s, err := ParseState(v)
	if err != nil {
		return 0, badRequestf("%s: %v", field, err)
	}
	return s, nil
}

// cutoffField reads the older_than of an action's body as a cutoff time.
func cutoffField(v string) (time.Time, error) {
	if v == "" {
		return time.Time{}, badRequestf("older_than is required (for example 30m, 24h or 7d)")
	}
	age, err := ParseAge(v)
	if err != nil {
		return time.Time{}, badRequestf("older_than %v", err)
	}
	return time.Now().Add(-age), nil
}

func (h *Handler) actMove(ctx context.Context, req actionRequest) (actionResult, error) {
	res := actionResult{Action: "move", DryRun: req.DryRun}
	from, err := stateField("from", req.From)
	if err != nil {
		return res, err
	}
	to, err := stateField("to", req.To)
	if err != nil {
		return res, err
	}
	if err := checkID(req.ID); err != nil {
		return res, err
	}
	md, err := h.r.GetMeta(ctx, req.ID)
	if err != nil { // it names the ID
		return res, err
	}
	if md.State != from {
		return res, fmt.Errorf("message %q is %s, not %s: %w", req.ID, md.State, from, metastorage.ErrStateConflict)
	}
	if req.DryRun {
		res.Count, res.Message = 1, fmt.Sprintf("would move %s from %s to %s", req.ID, from, to)
		return res, nil
	}
	if err := h.r.MoveToState(ctx, req.ID, from, to); err != nil {
		return res, fmt.Errorf("message %q: %w", req.ID, err)
	}
	res.Count, res.Message = 1, fmt.Sprintf("moved %s from %s to %s", req.ID, from, to)
	return res, nil
}

func (h *Handler) actRequeue(ctx context.Context, req actionRequest) (actionResult, error) {
	res := actionResult{Action: "requeue-stale", DryRun: req.DryRun}
	cutoff, err := cutoffField(req.OlderThan)
	if err != nil {
		return res, err
	}
	if req.DryRun {
		// Count with the iterator: bounded memory, and Active is small
		// in a healthy queue.
		it, err := h.r.NewMessageIterator(ctx, metastorage.StateActive, 1000)
		if err != nil {
			return res, err
		}
		defer it.Close()
		for {
			md, ok, err := it.Next(ctx)
			if err != nil {
				return res, err
			}
			if !ok {
				break
			}
			if md.Updated.Before(cutoff) {
				res.Count++
			}
		}
		res.Message = fmt.Sprintf("would requeue %d active messages claimed before %s", res.Count, fmtTime(cutoff))
		return res, nil
	}
	n, err := h.r.RequeueStale(ctx, cutoff, 0)
	res.Count = n
	if err != nil {
		return res, fmt.Errorf("%w (%d requeued before the error)", err, n)
	}
	res.Message = fmt.Sprintf("requeued %d active messages claimed before %s", n, fmtTime(cutoff))
	return res, nil
}

func (h *Handler) actPurge(ctx context.Context, req actionRequest) (actionResult, error) {
	res := actionResult{Action: "purge", DryRun: req.DryRun}
	state, err := stateField("state", req.State)
	if err != nil {
		return res, err
	}
	cutoff, err := cutoffField(req.OlderThan)
	if err != nil {
		return res, err
	}
	n, err := h.r.Purge(ctx, state, cutoff, sqlitemeta.PurgeOptions{Archive: req.Archive, DryRun: req.DryRun})
	res.Count = n
	if err != nil {
		return res, fmt.Errorf("%w (%d purged before the error)", err, n)
	}
	verb := map[[2]bool]string{{false, false}: "deleted", {false, true}: "archived", {true, false}: "would delete", {true, true}: "would archive"}[[2]bool{req.DryRun, req.Archive}]
	res.Message = fmt.Sprintf("%s %d %s messages created before %s", verb, n, state, fmtTime(cutoff))
	return res, nil
}

// fmtTime is a time for people: RFC 3339 in UTC.
func fmtTime(t time.Time) string { return t.UTC().Format(time.RFC3339) }
