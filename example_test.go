package sqlite_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/glebarez/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
)

// exOpen opens a backend on a new database in a temporary directory, with
// opts, and returns it with a function that closes and removes it.
func exOpen(opts ...sqlitemeta.Option) (*sqlitemeta.Repository, func()) {
	dir, err := os.MkdirTemp("", "retryspool-meta-example")
	if err != nil {
		log.Fatal(err)
	}
	opts = append([]sqlitemeta.Option{sqlitemeta.WithDatabasePath(filepath.Join(dir, "meta.db"))}, opts...)
	r, err := sqlitemeta.NewFactory(opts...).Open(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	return r, func() {
		r.Close()
		os.RemoveAll(dir)
	}
}

// exMessage is a new message created at the given minute of a fixed day.
func exMessage(id string, minute int) metastorage.MessageMetadata {
	at := time.Date(2024, 5, 1, 8, minute, 0, 0, time.UTC)
	return metastorage.MessageMetadata{
		ID: id, State: metastorage.StateIncoming, MaxAttempts: 5,
		Created: at, Updated: at, NextRetry: at,
		Headers: map[string]string{"to": "user@example.com"},
	}
}

// A queue passes the factory to retryspool.WithMetaStorage, which calls
// Create; here it is called directly.
func ExampleNewFactory() {
	dir, err := os.MkdirTemp("", "retryspool-meta-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	factory := sqlitemeta.NewFactory(
		// Missing directories are created.
		sqlitemeta.WithDatabasePath(filepath.Join(dir, "spool", "meta.db")),
		sqlitemeta.WithSynchronous("FULL"),
		sqlitemeta.WithBusyTimeout(5000),
		sqlitemeta.WithTableName("mail_queue"),
	)
	backend, err := factory.Create()
	if err != nil {
		log.Fatal(err)
	}
	defer backend.Close()

	ctx := context.Background()
	if err := backend.StoreMeta(ctx, "msg-1", exMessage("msg-1", 0)); err != nil {
		log.Fatal(err)
	}
	md, err := backend.GetMeta(ctx, "msg-1")
	if err != nil {
		log.Fatal(err)
	}
	counter := backend.(metastorage.StateCounterBackend)

	fmt.Println("factory:", factory.Name())
	fmt.Println("msg-1 is", md.State, "to", md.Headers["to"])
	fmt.Println("incoming:", counter.GetStateCount(metastorage.StateIncoming))
	// Output:
	// factory: sqlite-meta
	// msg-1 is incoming to user@example.com
	// incoming: 1
}

// MoveToState is a compare-and-swap: of several workers claiming the same
// message, exactly one wins and the others get ErrStateConflict.
func ExampleRepository_MoveToState() {
	r, done := exOpen()
	defer done()
	ctx := context.Background()
	if err := r.StoreMeta(ctx, "msg-1", exMessage("msg-1", 0)); err != nil {
		log.Fatal(err)
	}

	for worker := 1; worker <= 2; worker++ {
		err := r.MoveToState(ctx, "msg-1", metastorage.StateIncoming, metastorage.StateActive)
		switch {
		case err == nil:
			fmt.Printf("worker %d claimed msg-1\n", worker)
		case errors.Is(err, metastorage.ErrStateConflict):
			fmt.Printf("worker %d lost: %v\n", worker, err)
		default:
			log.Fatal(err)
		}
	}
	err := r.MoveToState(ctx, "msg-2", metastorage.StateIncoming, metastorage.StateActive)
	fmt.Println("msg-2:", errors.Is(err, metastorage.ErrMessageNotFound))
	fmt.Println("active:", r.GetStateCount(metastorage.StateActive))
	// Output:
	// worker 1 claimed msg-1
	// worker 2 lost: state conflict: message not in expected state
	// msg-2: true
	// active: 1
}

// The iterator walks a state oldest first, one batch per query. Moving the
// messages it returns out of the state, as RetrySpool's scheduler does,
// neither skips nor repeats one. The end is an empty ID.
func ExampleRepository_NewMessageIterator() {
	r, done := exOpen()
	defer done()
	ctx := context.Background()
	for i, id := range []string{"msg-c", "msg-a", "msg-b", "msg-d", "msg-e"} {
		if err := r.StoreMeta(ctx, id, exMessage(id, i)); err != nil {
			log.Fatal(err)
		}
	}

	it, err := r.NewMessageIterator(ctx, metastorage.StateIncoming, 2)
	if err != nil {
		log.Fatal(err)
	}
	defer it.Close()
	for {
		md, _, err := it.Next(ctx)
		if err != nil {
			log.Fatal(err)
		}
		if md.ID == "" {
			break
		}
		if err := r.MoveToState(ctx, md.ID, metastorage.StateIncoming, metastorage.StateActive); err != nil {
			log.Fatal(err)
		}
		fmt.Println("claimed", md.ID, "created", md.Created.Format("15:04"))
	}
	fmt.Println("incoming:", r.GetStateCount(metastorage.StateIncoming), "active:", r.GetStateCount(metastorage.StateActive))
	// Output:
	// claimed msg-c created 08:00
	// claimed msg-a created 08:01
	// claimed msg-b created 08:02
	// claimed msg-d created 08:03
	// claimed msg-e created 08:04
	// incoming: 0 active: 5
}

// A transition hook runs inside the transaction of each state change. What
// it writes through t.Tx commits with the change; an error rolls the change
// back.
func ExampleWithTransitionHook() {
	errPaused := errors.New("archiving is paused")
	hook := func(ctx context.Context, t sqlitemeta.Transition) error {
		if t.Created {
			fmt.Printf("hook: %s created in %s\n", t.MessageID, t.To)
			return nil
		}
		if t.To == metastorage.StateArchived {
			return errPaused
		}
		fmt.Printf("hook: %s %s -> %s\n", t.MessageID, t.From, t.To)
		return nil
	}
	r, done := exOpen(sqlitemeta.WithTransitionHook(hook))
	defer done()
	ctx := context.Background()

	if err := r.StoreMeta(ctx, "msg-1", exMessage("msg-1", 0)); err != nil {
		log.Fatal(err)
	}
	if err := r.MoveToState(ctx, "msg-1", metastorage.StateIncoming, metastorage.StateActive); err != nil {
		log.Fatal(err)
	}
	err := r.MoveToState(ctx, "msg-1", metastorage.StateActive, metastorage.StateArchived)
	fmt.Println("archive refused:", errors.Is(err, errPaused))
	md, err := r.GetMeta(ctx, "msg-1")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("msg-1 is still", md.State)
	// Output:
	// hook: msg-1 created in incoming
	// hook: msg-1 incoming -> active
	// archive refused: true
	// msg-1 is still active
}

// WithStrictTransitions refuses moves outside RetrySpool's state diagram
// with ErrInvalidState.
func ExampleWithStrictTransitions() {
	r, done := exOpen(sqlitemeta.WithStrictTransitions())
	defer done()
	ctx := context.Background()
	if err := r.StoreMeta(ctx, "msg-1", exMessage("msg-1", 0)); err != nil {
		log.Fatal(err)
	}

	err := r.MoveToState(ctx, "msg-1", metastorage.StateIncoming, metastorage.StateArchived)
	fmt.Println("incoming -> archived refused:", errors.Is(err, metastorage.ErrInvalidState))
	err = r.MoveToState(ctx, "msg-1", metastorage.StateIncoming, metastorage.StateActive)
	fmt.Println("incoming -> active:", err)
	fmt.Println("allowed active -> deferred:", sqlitemeta.AllowedTransition(metastorage.StateActive, metastorage.StateDeferred))
	// Output:
	// incoming -> archived refused: true
	// incoming -> active: <nil>
	// allowed active -> deferred: true
}

// exAppDB opens an application's own SQLite database with GORM, with an
// orders table.
func exAppDB(dir string) *gorm.DB {
	db, err := gorm.Open(sqlite.Open(filepath.Join(dir, "app.db")+"?_pragma=busy_timeout(5000)"),
		&gorm.Config{Logger: logger.Discard})
	if err != nil {
		log.Fatal(err)
	}
	if err := db.Exec("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT NOT NULL)").Error; err != nil {
		log.Fatal(err)
	}
	return db
}

// WithDB stores the metadata in an application's own database, here a
// SQLite file it opened with GORM (PostgreSQL and MySQL/MariaDB work the
// same way). Closing the backend leaves the application's database open.
func ExampleWithDB() {
	dir, err := os.MkdirTemp("", "retryspool-meta-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	db := exAppDB(dir)
	sqlDB, _ := db.DB()
	defer sqlDB.Close()

	factory := sqlitemeta.NewFactory(sqlitemeta.WithDB(db), sqlitemeta.WithTableName("outbox"))
	backend, err := factory.Create()
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	if err := backend.StoreMeta(ctx, "msg-1", exMessage("msg-1", 0)); err != nil {
		log.Fatal(err)
	}
	if err := backend.Close(); err != nil {
		log.Fatal(err)
	}

	var n int64
	if err := db.Table("outbox").Count(&n).Error; err != nil {
		log.Fatal(err)
	}
	fmt.Println("dialect:", backend.(*sqlitemeta.Repository).Dialect())
	fmt.Println("rows in the application's outbox table:", n)
	// Output:
	// dialect: sqlite
	// rows in the application's outbox table: 1
}

// WithTx stores metadata in the application's own transaction: the message
// is queued exactly when the application's change commits.
func ExampleRepository_WithTx() {
	dir, err := os.MkdirTemp("", "retryspool-meta-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	db := exAppDB(dir)
	sqlDB, _ := db.DB()
	defer sqlDB.Close()
	ctx := context.Background()
	r, err := sqlitemeta.NewFactory(sqlitemeta.WithDB(db)).Open(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close()

	placeOrder := func(id int, item string, fail error) error {
		return db.Transaction(func(tx *gorm.DB) error {
			if err := tx.Exec("INSERT INTO orders (id, item) VALUES (?, ?)", id, item).Error; err != nil {
				return err
			}
			msgID := fmt.Sprintf("order-%d", id)
			if err := r.WithTx(tx).StoreMeta(ctx, msgID, exMessage(msgID, 0)); err != nil {
				return err
			}
			return fail // a non-nil error rolls back the order and its message
		})
	}
	fmt.Println("order 1:", placeOrder(1, "book", nil))
	fmt.Println("order 2:", placeOrder(2, "lamp", errors.New("payment declined")))

	for _, id := range []string{"order-1", "order-2"} {
		_, err := r.GetMeta(ctx, id)
		fmt.Printf("%s queued: %v\n", id, err == nil)
	}
	var orders int64
	if err := db.Table("orders").Count(&orders).Error; err != nil {
		log.Fatal(err)
	}
	fmt.Println("orders:", orders, "incoming:", r.GetStateCount(metastorage.StateIncoming))
	// Output:
	// order 1: <nil>
	// order 2: payment declined
	// order-1 queued: true
	// order-2 queued: false
	// orders: 1 incoming: 1
}
