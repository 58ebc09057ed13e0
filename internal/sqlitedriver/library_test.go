package sqlitedriver_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"gorm.io/gorm"
	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/sqlitedriver"
)

// openLibrary opens the library on a new file.
func openLibrary(t *testing.T) (*sqlitemeta.Repository, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "spool.db")
	repo, err := sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(path)).Open(context.Background())
	require.NoError(t, err)
	t.Cleanup(func() { repo.Close() })
	return repo, path
}

func message(i int, state metastorage.QueueState, now time.Time) metastorage.MessageMetadata {
	return metastorage.MessageMetadata{
		ID:          fmt.Sprintf("msg-%06d", i),
		State:       state,
		MaxAttempts: 5,
		NextRetry:   now.Add(-time.Minute),
		Created:     now.Add(time.Duration(i) * time.Millisecond),
		Updated:     now,
		Size:        int64(100 + i),
		Priority:    i % 3,
		Headers:     map[string]string{"to": fmt.Sprintf("rcpt-%d@example.org", i)},
	}
}

// After 1,000 mixed operations through the library, every statement it
// runs over and over (store, update, move, get, delete, iterator and list
// pages, claims) has been compiled once per connection, and SQLite has not
// had to plan it again on every run.
func TestLibraryCompilesHotStatementsOnce(t *testing.T) {
	t.Parallel()
	repo, path := openLibrary(t)
	ctx := context.Background()
	now := time.Now().UTC()
	next := 0
	store := func(state metastorage.QueueState) string {
		m := message(next, state, now)
		next++
		require.NoError(t, repo.StoreMeta(ctx, m.ID, m))
		return m.ID
	}
	for i := 0; i < 1000; i++ {
		switch i % 10 {
		case 0, 1:
			store(metastorage.StateIncoming)
		case 2:
			id := store(metastorage.StateIncoming)
			m, err := repo.GetMeta(ctx, id)
			require.NoError(t, err)
			m.Attempts++
			m.LastError = fmt.Sprintf("try %d", i)
			require.NoError(t, repo.UpdateMeta(ctx, id, m))
		case 3:
			id := store(metastorage.StateIncoming)
			require.NoError(t, repo.MoveToState(ctx, id, metastorage.StateIncoming, metastorage.StateDeferred))
		case 4:
			id := store(metastorage.StateHold)
			require.NoError(t, repo.DeleteMeta(ctx, id))
		case 5:
			batch := make([]metastorage.MessageMetadata, 1+i%7)
			for j := range batch {
				batch[j] = message(next, metastorage.StateIncoming, now)
				next++
			}
			require.NoError(t, repo.StoreMetaBatch(ctx, batch))
		case 6:
			// Claims of a worker's batch size: they find from none to
			// all of it, so their IN-lists have many lengths. (A new
			// LIMIT makes SQLite 3.54 plan a statement again, rightly:
			// the batch size stays.)
			_, err := repo.ClaimMessages(ctx, metastorage.StateIncoming, metastorage.StateActive, 8)
			require.NoError(t, err)
			_, err = repo.ClaimDue(ctx, now, 5)
			require.NoError(t, err)
		case 7:
			_, err := repo.ListMessages(ctx, metastorage.StateIncoming, metastorage.MessageListOptions{Limit: 20, Offset: (i / 10 % 3) * 20, SortBy: "created", SortOrder: "asc"})
			require.NoError(t, err)
		case 8:
			it, err := repo.NewMessageIterator(ctx, metastorage.StateActive, 10)
			require.NoError(t, err)
			for n := 0; n < 25; n++ {
				_, ok, err := it.Next(ctx)
				require.NoError(t, err)
				if !ok {
					break
				}
			}
			require.NoError(t, it.Close())
		case 9:
			_, err := repo.DueMessages(ctx, now, 10)
			require.NoError(t, err)
			_, err = repo.GetMeta(ctx, fmt.Sprintf("msg-%06d", i/2))
			if err != nil && !errors.Is(err, metastorage.ErrMessageNotFound) {
				require.NoError(t, err)
			}
		}
	}

	abs, err := filepath.Abs(path)
	require.NoError(t, err)
	all := sqlitedriver.AllStats(abs)
	require.NotEmpty(t, all)
	// The kinds of statement that must be among the hot ones, by a piece
	// of their text.
	kinds := map[string]func(q string) bool{
		"store":  func(q string) bool { return strings.HasPrefix(q, "INSERT INTO") },
		"update": func(q string) bool { return strings.HasPrefix(q, "UPDATE") && strings.Contains(q, "last_error") },
		"move":   func(q string) bool { return strings.HasPrefix(q, "UPDATE") && strings.Contains(q, "state") },
		"get":    func(q string) bool { return strings.HasPrefix(q, "SELECT") && strings.Contains(q, "id = ?") },
		"delete": func(q string) bool { return strings.HasPrefix(q, "DELETE") },
		"page":   func(q string) bool { return strings.HasPrefix(q, "SELECT") && strings.Contains(q, "LIMIT") },
		"claim":  func(q string) bool { return strings.HasPrefix(q, "SELECT") && strings.Contains(q, "next_retry") },
	}
	seen := map[string]int{}
	var hot int
	var hits, misses uint64
	for _, st := range all {
		t.Logf("connection: %d hits, %d misses, %d evictions, %d statements", st.Hits, st.Misses, st.Evictions, len(st.Statements))
		hits, misses = hits+st.Hits, misses+st.Misses
		for _, s := range st.Statements {
			if s.Runs < 20 {
				continue
			}
			hot++
			t.Logf("  runs %5d  compiles %d  reprepares %d  %.110s", s.Runs, s.Compiles, s.Reprepares, s.SQL)
			for kind, match := range kinds {
				if match(s.SQL) {
					seen[kind]++
				}
			}
			require.Equal(t, uint64(1), s.Compiles, "compiled more than once on a connection: %s", s.SQL)
			require.LessOrEqual(t, s.Reprepares, 1, "planned again by SQLite %d times in %d runs: %s", s.Reprepares, s.Runs, s.SQL)
		}
	}
	for kind := range kinds {
		require.NotZero(t, seen[kind], "no hot %s statement", kind)
	}
	require.Greater(t, hot, 10)
	// Misses include the checkpointer's PRAGMA wal_checkpoint, never cached.
	require.Greater(t, hits, 10*misses, "cache hits against compilations")
}

// A small GORM application of its own on the library's file, through
// Repository.DB(): its own models, AutoMigrate, create, duplicate keys,
// time columns, transactions.
func TestGORMApplicationOnLibraryFile(t *testing.T) {
	t.Parallel()
	repo, _ := openLibrary(t)
	ctx := context.Background()
	db := repo.DB().WithContext(ctx)

	type Customer struct {
		ID        uint   `gorm:"primaryKey"`
		Email     string `gorm:"uniqueIndex;size:200"`
		Name      string
		Born      time.Time  `gorm:"type:DATE"`
		LastSeen  *time.Time `gorm:"type:TIMESTAMP"`
		CreatedAt time.Time
		UpdatedAt time.Time
	}
	type Order struct {
		ID         uint `gorm:"primaryKey"`
		CustomerID uint
		Customer   Customer
		Total      float64
		PlacedAt   time.Time `gorm:"type:DATETIME"`
	}
	require.NoError(t, db.AutoMigrate(&Customer{}, &Order{}))
	// AutoMigrate again changes nothing and does not fail.
	require.NoError(t, db.AutoMigrate(&Customer{}, &Order{}))

	born := time.Date(1990, 5, 17, 0, 0, 0, 0, time.UTC)
	seen := time.Date(2026, 1, 2, 3, 4, 5, 600000000, time.UTC)
	alice := Customer{Email: "alice@example.org", Name: "Alice", Born: born, LastSeen: &seen}
	require.NoError(t, db.Create(&alice).Error)
	require.NotZero(t, alice.ID)

	err := db.Create(&Customer{Email: "alice@example.org", Name: "Other"}).Error
	require.ErrorIs(t, err, gorm.ErrDuplicatedKey)
	var de *sqlitedriver.Error
	require.ErrorAs(t, err, &de, "the driver's error stays in the chain")

	var got Customer
	require.NoError(t, db.First(&got, alice.ID).Error)
	require.Equal(t, "Alice", got.Name)
	require.True(t, born.Equal(got.Born), "%v", got.Born)
	require.NotNil(t, got.LastSeen)
	require.True(t, seen.Equal(*got.LastSeen), "%v", *got.LastSeen)
	require.False(t, got.CreatedAt.IsZero())
	require.WithinDuration(t, alice.CreatedAt, got.CreatedAt, time.Millisecond)

	// A transaction that fails leaves nothing; one that succeeds commits.
	placed := time.Date(2026, 2, 3, 4, 5, 6, 0, time.UTC)
	err = db.Transaction(func(tx *gorm.DB) error {
		if err := tx.Create(&Order{CustomerID: alice.ID, Total: 10, PlacedAt: placed}).Error; err != nil {
			return err
		}
		return tx.Create(&Customer{Email: "alice@example.org"}).Error
	})
	require.ErrorIs(t, err, gorm.ErrDuplicatedKey)
	var n int64
	require.NoError(t, db.Model(&Order{}).Count(&n).Error)
	require.Zero(t, n)
	require.NoError(t, db.Transaction(func(tx *gorm.DB) error {
		if err := tx.Create(&Order{CustomerID: alice.ID, Total: 12.5, PlacedAt: placed}).Error; err != nil {
			return err
		}
		// A nested transaction (a savepoint) rolled back alone.
		_ = tx.Transaction(func(tx2 *gorm.DB) error {
			tx2.Create(&Order{CustomerID: alice.ID, Total: 99, PlacedAt: placed})
			return errors.New("not this one")
		})
		return nil
	}))
	var orders []Order
	require.NoError(t, db.Preload("Customer").Find(&orders).Error)
	require.Len(t, orders, 1)
	require.Equal(t, 12.5, orders[0].Total)
	require.True(t, placed.Equal(orders[0].PlacedAt), "%v", orders[0].PlacedAt)
	require.Equal(t, "alice@example.org", orders[0].Customer.Email)

	// Raw SQL scans a DATETIME column into time.Time too.
	var at time.Time
	require.NoError(t, db.Raw("SELECT placed_at FROM orders").Row().Scan(&at))
	require.True(t, placed.Equal(at))

	// The store still works beside the application's tables.
	m := message(1, metastorage.StateIncoming, time.Now().UTC())
	require.NoError(t, repo.StoreMeta(ctx, m.ID, m))
	_, err = repo.GetMeta(ctx, m.ID)
	require.NoError(t, err)
}
