package sqlite

import (
	"context"
	"time"

	"gorm.io/gorm"
	metastorage "schneider.vip/retryspool/storage/meta"

	"schneider.vip/retryspool/storage/meta/sqlite/model"
	"schneider.vip/retryspool/storage/meta/sqlite/repository"
)

// The types and limits of the operations beyond the contract, so that one
// import serves everything a *Repository offers.
type (
	// StateStats describes the messages of one state; see
	// Repository.Stats.
	StateStats = repository.StateStats
	// PurgeOptions tunes Repository.Purge.
	PurgeOptions = repository.PurgeOptions
	// Filter selects the messages of Repository.BulkMove.
	Filter = repository.Filter
	// MoveOptions tunes Repository.BulkMove.
	MoveOptions = repository.MoveOptions
	// CopyOptions tunes Copy.
	CopyOptions = repository.CopyOptions
	// CopyReport tells what Copy did.
	CopyReport = repository.CopyReport
)

// Limits and defaults of the repository's calls.
const (
	// DefaultListLimit is ListMessages' page size when Limit is 0.
	DefaultListLimit = repository.DefaultListLimit
	// MaxListLimit is the largest page ListMessages returns.
	MaxListLimit = repository.MaxListLimit
	// DefaultBatchSize is the iterator's batch size when asked for 0.
	DefaultBatchSize = repository.DefaultBatchSize
	// MaxBatchSize caps the iterator's batch.
	MaxBatchSize = repository.MaxBatchSize
	// MaxClaim caps how many messages one claim may move.
	MaxClaim = repository.MaxClaim
	// DefaultOpBatchSize is the batch of RequeueStale, Purge and BulkMove
	// when asked for 0.
	DefaultOpBatchSize = repository.DefaultOpBatchSize
	// DefaultCopyBatchSize is Copy's batch when asked for 0.
	DefaultCopyBatchSize = repository.DefaultCopyBatchSize
	// SchemaVersion is the version of the schema this library writes.
	SchemaVersion = repository.SchemaVersion
	// MaxIDLength is the longest message ID, in bytes, that the store
	// accepts.
	MaxIDLength = model.MaxIDLength
)

// Copy copies every message of every state from src (any
// metastorage.Backend, e.g. RetrySpool's filesystem meta backend) into dst
// and verifies the copy; see repository.Copy.
func Copy(ctx context.Context, src metastorage.Backend, dst *Repository, opts CopyOptions) (CopyReport, error) {
	return repository.Copy(ctx, src, dst, opts)
}

// Drop removes the queue of tableName from db: its message table, its
// counter table and triggers, and its row in the schema table; other
// queues' tables stay. Stop every process using the queue first; see
// repository.Drop.
func Drop(ctx context.Context, db *gorm.DB, tableName string) error {
	return repository.Drop(ctx, db, tableName)
}

// CheckTableName accepts the table names the store takes: letters, digits
// and underscores, not starting with a digit, at most 40 bytes. Its error
// wraps ErrInvalidInput.
func CheckTableName(name string) error {
	return repository.CheckTableName(name)
}

// EncodeTime is how the store writes a time into its columns (created,
// updated, next_retry): Unix nanoseconds, the zero time as a value of its
// own. Use it to compare with those columns in a query of one's own.
func EncodeTime(t time.Time) (int64, error) {
	return model.EncodeTime(t)
}
