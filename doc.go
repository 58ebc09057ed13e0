// Package sqlite is the metadata store of RetrySpool, a Postfix-style
// retrying message queue: it keeps each message's state, attempts, next
// retry, priority and headers, and implements RetrySpool's
// metastorage.Backend and metastorage.StateCounterBackend on GORM.
//
// Import it as sqlitemeta and hand its factory to the queue:
//
//	queue := retryspool.New(
//		retryspool.WithDataStorage(datafs.NewFactory("./spool/data")),
//		retryspool.WithMetaStorage(sqlitemeta.NewFactory(
//			sqlitemeta.WithDatabasePath("./spool/meta.db"),
//		)),
//	)
//
// # Engines
//
// By default the store is an embedded, pure-Go SQLite file (no cgo),
// opened in WAL mode with a pool of read connections and one write
// connection; every option (journal mode, synchronous, busy timeout, cache
// size, foreign keys, auto-vacuum) is applied to each connection. With
// WithDB the store lives in an application's own *gorm.DB instead:
// SQLite, PostgreSQL or MySQL/MariaDB. The schema is created or upgraded
// by Create, tables of the earlier raw-SQL RetrySpool SQLite backend
// included, and WithTableName lets several queues share one database.
//
// # Semantics
//
// MoveToState is one atomic compare-and-swap: among any number of workers,
// in one process or many, racing to move the same message, exactly one
// wins; the others get metastorage.ErrStateConflict itself, and an unknown
// ID gets metastorage.ErrMessageNotFound itself. UpdateMeta and StoreMeta
// replace the whole record, State included.
//
// NewMessageIterator walks a state in creation order with keyset paging:
// each batch starts after the last message returned, so messages moved out
// of the state while iterating, as the scheduler does, are neither skipped
// nor repeated, and memory stays bounded by the batch size. The end is
// exactly (MessageMetadata{}, false, nil).
//
// Per-state counts are kept by triggers in the same transaction as every
// row change, whoever writes it, so GetStateCount is exact and costs one
// lookup whatever the queue's size.
//
// Beyond the contract, a *Repository offers batch and queue operations
// (StoreMetaBatch, ClaimMessages, ClaimDue and others), WithTx to store
// metadata inside an application's transaction, and Transaction.
//
// # Errors
//
// Errors are matched with errors.Is: the contract's sentinels
// (ErrMessageNotFound, ErrStateConflict, ErrInvalidState, ErrBackendClosed)
// where the contract names them, and this package's ErrInvalidInput,
// ErrBusy, ErrSchemaTooNew, ErrForeignTable, ErrIteratorClosed,
// ErrNotDatabase, ErrPath and ErrConfig for the rest. Create validates the
// whole configuration at once and never panics. After Close every method
// returns ErrBackendClosed.
//
// # Transition hooks
//
// WithTransitionHook runs a function inside the transaction of every state
// change: what it writes through Transition.Tx commits with the change,
// and an error rolls the change back and is returned. WithStrictTransitions
// uses a hook to refuse moves outside RetrySpool's state diagram (see
// AllowedTransition); it is off by default. Hooks are called by the
// store, never registered as global GORM callbacks.
//
// # Group commit
//
// On a SQLite file, all writes go through the one write connection in
// BEGIN IMMEDIATE transactions, and concurrent writes share a transaction
// and its commit, each under its own savepoint: one failing write fails
// alone, and with synchronous FULL one fsync serves the whole group.
// Writers in other processes wait for the lock up to the busy timeout,
// then get ErrBusy.
package sqlite
