package repository

import (
	"context"
	"fmt"

	metastorage "schneider.vip/retryspool/storage/meta"

	"schneider.vip/retryspool/storage/meta/sqlite/model"
)

// sortColumns maps MessageListOptions.SortBy to a column; "" is created.
var sortColumns = map[string]string{
	"":         "created",
	"created":  "created",
	"updated":  "updated",
	"priority": "priority",
	"attempts": "attempts",
}

// ListMessages returns one page of the IDs in state, ordered by SortBy
// (created, updated, priority or attempts; created when empty) and SortOrder
// (asc or desc; asc when empty), ties broken by ID in the same direction so
// that pages are stable. Since keeps messages created at or after it. Limit
// 0 means DefaultListLimit. Total counts every match and HasMore tells
// whether a later page exists; both come from the same snapshot as the page.
func (r *Repository) ListMessages(ctx context.Context, state metastorage.QueueState, opts metastorage.MessageListOptions) (res metastorage.MessageListResult, err error) {
	if err := checkState(state); err != nil {
		return metastorage.MessageListResult{}, err
	}
	col, ok := sortColumns[opts.SortBy]
	if !ok {
		return metastorage.MessageListResult{}, fmt.Errorf("list messages: %w: unknown SortBy %q (want created, updated, priority or attempts)", ErrInvalidInput, opts.SortBy)
	}
	dir := "ASC"
	switch opts.SortOrder {
	case "", "asc":
	case "desc":
		dir = "DESC"
	default:
		return metastorage.MessageListResult{}, fmt.Errorf("list messages: %w: unknown SortOrder %q (want asc or desc)", ErrInvalidInput, opts.SortOrder)
	}
	if opts.Limit < 0 || opts.Offset < 0 {
		return metastorage.MessageListResult{}, fmt.Errorf("list messages: %w: negative Limit %d or Offset %d", ErrInvalidInput, opts.Limit, opts.Offset)
	}
	limit := opts.Limit
	if limit == 0 {
		limit = DefaultListLimit
	}
	if limit > MaxListLimit {
		return metastorage.MessageListResult{}, fmt.Errorf("list messages: %w: Limit %d is over the maximum %d", ErrInvalidInput, opts.Limit, MaxListLimit)
	}
	var since int64
	if !opts.Since.IsZero() {
		var err error
		if since, err = model.EncodeTime(opts.Since); err != nil {
			return metastorage.MessageListResult{}, fmt.Errorf("list messages: %w: since: %w", ErrInvalidInput, err)
		}
	}
	ctx, c, err := r.enter(ctx, "ListMessages", "", long)
	if err != nil {
		return metastorage.MessageListResult{}, err
	}
	defer func() { err = c.end(err) }()

	where, args := "state = ?", []any{int(state)}
	if !opts.Since.IsZero() {
		where += " AND created >= ?"
		args = append(args, since)
	}
	page := r.d.bind(fmt.Sprintf("SELECT id FROM %s WHERE %s ORDER BY %s %s, id %s LIMIT ? OFFSET ?",
		r.d.ident(r.t.messages), where, col, dir, dir))

	res = metastorage.MessageListResult{MessageIDs: make([]string, 0, min(limit, 1024))}
	err = r.ex.read(ctx, true, func(c conn) error {
		rows, err := c.query(page, append(args, limit, opts.Offset)...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var id model.MessageID
			if err := rows.Scan(&id); err != nil {
				return err
			}
			res.MessageIDs = append(res.MessageIDs, string(id))
		}
		if err := rows.Err(); err != nil {
			return err
		}
		var total int64
		if opts.Since.IsZero() {
			err = c.scalar(r.s.count, []any{int(state)}, &total)
		} else {
			err = c.scalar(r.s.sinceCount, []any{int(state), since}, &total)
		}
		res.Total = int(total)
		return err
	})
	if err != nil {
		return metastorage.MessageListResult{}, fmt.Errorf("list messages in %s: %w", state, r.closedOr(err))
	}
	res.HasMore = opts.Offset+len(res.MessageIDs) < res.Total
	return res, nil
}
