package repository

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"time"

	metastorage "schneider.vip/retryspool/storage/meta"
)

// DefaultCopyBatchSize is how many records Copy writes per transaction when
// CopyOptions.BatchSize is 0.
const DefaultCopyBatchSize = 500

// maxReportedDifferences bounds how many differences Copy's verification
// error spells out; it always gives their number.
const maxReportedDifferences = 20

// ErrCopyMismatch reports that, after a copy, the destination does not hold
// some source message as the source has it. The error names the messages
// and what differs.
var ErrCopyMismatch = errors.New("copy verification failed")

// CopyOptions tunes Copy.
type CopyOptions struct {
	// BatchSize is how many records are written per transaction; default
	// DefaultCopyBatchSize, at most MaxBatchSize.
	BatchSize int
	// Progress, when set, is called after each batch with the number of
	// records copied so far and the number the source held when the copy
	// started.
	Progress func(copied, total int64)
}

// CopyReport tells what Copy did.
type CopyReport struct {
	PerState map[metastorage.QueueState]int64 // messages copied per state
	Copied   int64
}

// Copy copies every message of every state from src (any
// metastorage.Backend, e.g. RetrySpool's filesystem meta backend) into dst,
// in batches (StoreMetaBatch: create or replace, so a rerun after an
// interruption resumes and is idempotent), then verifies per state that
// every source message is in dst in the same state, with the same record,
// returning an error that names the differences (ErrCopyMismatch)
// otherwise.
//
// Copy is meant for a stopped source: it walks src with
// NewMessageIterator, state after state, and a message that moves in src
// during the copy may be copied twice, in two states, or reported as a
// difference. Messages that dst already holds and src does not are left
// alone. A record that dst cannot store exactly (for example a time outside
// the storable range) stops the copy with an error naming the message and
// wrapping ErrInvalidInput; what was copied before stays.
func Copy(ctx context.Context, src metastorage.Backend, dst *Repository, opts CopyOptions) (CopyReport, error) {
	report := CopyReport{PerState: make(map[metastorage.QueueState]int64, len(allStates))}
	switch {
	case src == nil || dst == nil:
		return report, fmt.Errorf("copy: %w: nil source or destination", ErrInvalidInput)
	case opts.BatchSize < 0 || opts.BatchSize > MaxBatchSize:
		return report, fmt.Errorf("copy: %w: BatchSize %d outside 0..%d", ErrInvalidInput, opts.BatchSize, MaxBatchSize)
	}
	batchSize := opts.BatchSize
	if batchSize == 0 {
		batchSize = DefaultCopyBatchSize
	}
	var total int64
	if opts.Progress != nil {
		var err error
		if total, err = countSource(ctx, src); err != nil {
			return report, fmt.Errorf("copy: count source: %w", err)
		}
	}
	for _, state := range allStates {
		err := eachSourceBatch(ctx, src, state, batchSize, func(batch []metastorage.MessageMetadata) error {
			for _, md := range batch {
				if _, err := toRow(md.ID, md); err != nil {
					return fmt.Errorf("message %q: %w", md.ID, err)
				}
			}
			if err := dst.StoreMetaBatch(ctx, batch); err != nil {
				return err
			}
			report.Copied += int64(len(batch))
			report.PerState[state] += int64(len(batch))
			if opts.Progress != nil {
				opts.Progress(report.Copied, total)
			}
			return nil
		})
		if err != nil {
			return report, fmt.Errorf("copy %s messages: %w", state, err)
		}
	}
	if err := verifyCopy(ctx, src, dst, batchSize); err != nil {
		return report, err
	}
	return report, nil
}

// countSource sums the source's per-state counts: GetStateCount when the
// source has it, ListMessages' Total otherwise.
func countSource(ctx context.Context, src metastorage.Backend) (int64, error) {
	var total int64
	counter, ok := src.(metastorage.StateCounterBackend)
	for _, state := range allStates {
		if ok {
			total += counter.GetStateCount(state)
			continue
		}
		res, err := src.ListMessages(ctx, state, metastorage.MessageListOptions{Limit: 1})
		if err != nil {
			return 0, fmt.Errorf("list %s: %w", state, err)
		}
		total += int64(res.Total)
	}
	return total, nil
}

// eachSourceBatch walks one state of src and hands fn its messages, up to
// size at a time. A record whose State is not the state it is listed in
// stops the walk: the source is inconsistent, and copying it would put the
// message in a state the source does not agree on.
func eachSourceBatch(ctx context.Context, src metastorage.Backend, state metastorage.QueueState, size int, fn func([]metastorage.MessageMetadata) error) error {
	it, err := src.NewMessageIterator(ctx, state, size)
	if err != nil {
		return fmt.Errorf("iterate source: %w", err)
	}
	defer it.Close()
	batch := make([]metastorage.MessageMetadata, 0, size)
	for {
		md, _, err := it.Next(ctx)
		if err != nil {
			return fmt.Errorf("iterate source: %w", err)
		}
		if md.ID == "" {
			break // the contract's end of iteration
		}
		if md.State != state {
			return fmt.Errorf("%w: source lists message %q in state %s but its record says %s",
				ErrInvalidInput, md.ID, state, md.State)
		}
		batch = append(batch, md)
		if len(batch) == size {
			if err := fn(batch); err != nil {
				return err
			}
			batch = batch[:0]
		}
	}
	if len(batch) > 0 {
		return fn(batch)
	}
	return nil
}

// verifyCopy walks src again and compares each of its records with dst's.
func verifyCopy(ctx context.Context, src metastorage.Backend, dst *Repository, size int) error {
	var diffs []string
	n := 0
	for _, state := range allStates {
		err := eachSourceBatch(ctx, src, state, size, func(batch []metastorage.MessageMetadata) error {
			ids := make([]string, len(batch))
			for i, md := range batch {
				ids[i] = md.ID
			}
			got, err := dst.records(ctx, ids)
			if err != nil {
				return err
			}
			for _, want := range batch {
				have, ok := got[want.ID]
				var d string
				switch {
				case !ok:
					d = fmt.Sprintf("message %q (%s in the source) is missing", want.ID, state)
				case have.State != want.State:
					d = fmt.Sprintf("message %q is %s in the source but %s in the destination", want.ID, want.State, have.State)
				default:
					if fields := differingFields(want, have); len(fields) > 0 {
						d = fmt.Sprintf("message %q (%s) differs in %s", want.ID, state, strings.Join(fields, ", "))
					}
				}
				if d != "" {
					n++
					if len(diffs) < maxReportedDifferences {
						diffs = append(diffs, d)
					}
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("copy: verify %s messages: %w", state, err)
		}
	}
	if n == 0 {
		return nil
	}
	more := ""
	if n > len(diffs) {
		more = fmt.Sprintf("; and %d more", n-len(diffs))
	}
	return fmt.Errorf("copy: %w: %d difference(s): %s%s", ErrCopyMismatch, n, strings.Join(diffs, "; "), more)
}

// differingFields names the fields, other than ID and State, in which two
// records differ. Times compare as instants.
func differingFields(a, b metastorage.MessageMetadata) []string {
	var out []string
	add := func(differ bool, name string) {
		if differ {
			out = append(out, name)
		}
	}
	timeDiffers := func(x, y time.Time) bool { return !x.Equal(y) }
	add(a.Attempts != b.Attempts, "Attempts")
	add(a.MaxAttempts != b.MaxAttempts, "MaxAttempts")
	add(timeDiffers(a.NextRetry, b.NextRetry), "NextRetry")
	add(timeDiffers(a.Created, b.Created), "Created")
	add(timeDiffers(a.Updated, b.Updated), "Updated")
	add(a.LastError != b.LastError, "LastError")
	add(a.Size != b.Size, "Size")
	add(a.Priority != b.Priority, "Priority")
	add((a.Headers == nil) != (b.Headers == nil) || !maps.Equal(a.Headers, b.Headers), "Headers")
	add(a.RetryPolicyName != b.RetryPolicyName, "RetryPolicyName")
	return out
}

// records reads the records of those ids that exist, keyed by ID.
func (r *Repository) records(ctx context.Context, ids []string) (out map[string]metastorage.MessageMetadata, err error) {
	ctx, c, err := r.enter(ctx, "Copy", "", long)
	if err != nil {
		return nil, err
	}
	defer func() { err = c.end(err) }()
	out = make(map[string]metastorage.MessageMetadata, len(ids))
	err = r.ex.read(ctx, false, func(c conn) error {
		mds, err := r.getMany(c, ids)
		for _, md := range mds {
			out[md.ID] = md
		}
		return err
	})
	return out, r.closedOr(err)
}
