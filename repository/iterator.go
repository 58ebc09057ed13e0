package repository

import (
	"context"
	"database/sql"
	"fmt"

	metastorage "schneider.vip/retryspool/storage/meta"

	"schneider.vip/retryspool/storage/meta/sqlite/model"
)

// Iterator walks the messages of one state in (created, id) order, one
// batch per query. Each batch starts after the last message returned (keyset
// paging), so moving earlier messages out of the state while iterating,
// which RetrySpool's scheduler does, neither skips nor repeats a message.
// Memory is bounded by the batch size. It is not safe for concurrent use.
type Iterator struct {
	r         *Repository
	state     metastorage.QueueState
	batchSize int
	buf       []metastorage.MessageMetadata
	pos       int
	started   bool
	lastKey   int64
	lastID    string
	exhausted bool
	closed    bool
}

var _ metastorage.MessageIterator = (*Iterator)(nil)

// NewMessageIterator returns an iterator over state. A batchSize of 0 or
// less means DefaultBatchSize; it is capped at MaxBatchSize.
func (r *Repository) NewMessageIterator(ctx context.Context, state metastorage.QueueState, batchSize int) (metastorage.MessageIterator, error) {
	if err := checkState(state); err != nil {
		return nil, err
	}
	_, c, err := r.enter(ctx, "NewMessageIterator", "", quick)
	if err != nil {
		return nil, err
	}
	c.end(nil)
	if batchSize <= 0 {
		batchSize = DefaultBatchSize
	}
	batchSize = min(batchSize, MaxBatchSize)
	return &Iterator{r: r, state: state, batchSize: batchSize}, nil
}

// Next returns the next message and true, or, at the end, exactly
// (MessageMetadata{}, false, nil).
func (it *Iterator) Next(ctx context.Context) (metastorage.MessageMetadata, bool, error) {
	switch {
	case it.r.life.isClosed():
		return metastorage.MessageMetadata{}, false, metastorage.ErrBackendClosed
	case it.closed:
		return metastorage.MessageMetadata{}, false, fmt.Errorf("iterator: %w", ErrIteratorClosed)
	}
	if it.pos == len(it.buf) {
		if it.exhausted {
			return metastorage.MessageMetadata{}, false, nil
		}
		if err := it.fetch(ctx); err != nil {
			return metastorage.MessageMetadata{}, false, err
		}
		if len(it.buf) == 0 {
			return metastorage.MessageMetadata{}, false, nil
		}
	}
	md := it.buf[it.pos]
	it.buf[it.pos] = metastorage.MessageMetadata{}
	it.pos++
	return md, true, nil
}

func (it *Iterator) fetch(ctx context.Context) (err error) {
	r := it.r
	ctx, c, err := r.enter(ctx, "Iterator.Next", "", long)
	if err != nil {
		return err
	}
	defer func() { err = c.end(err) }()
	it.buf, it.pos = it.buf[:0], 0
	err = r.ex.read(ctx, false, func(c conn) error {
		var rows *sql.Rows
		var err error
		if it.started {
			rows, err = c.query(r.s.iterNext, int(it.state), it.lastKey, it.lastKey, it.lastID, it.batchSize)
		} else {
			rows, err = c.query(r.s.iterFirst, int(it.state), it.batchSize)
		}
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			md, err := scanMessage(rows)
			if err != nil {
				return err
			}
			it.buf = append(it.buf, md)
		}
		return rows.Err()
	})
	if err != nil {
		it.buf = it.buf[:0]
		return fmt.Errorf("iterate %s: %w", it.state, r.closedOr(err))
	}
	if n := len(it.buf); n > 0 {
		last := it.buf[n-1]
		it.lastKey, _ = model.EncodeTime(last.Created)
		it.lastID = last.ID
		it.started = true
	}
	it.exhausted = len(it.buf) < it.batchSize
	return nil
}

// Close releases the iterator; it holds no database resources between
// calls, so Close only marks it done.
func (it *Iterator) Close() error {
	it.closed = true
	it.buf = nil
	return nil
}
