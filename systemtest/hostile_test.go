package systemtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/fixture"
	"schneider.vip/retryspool/storage/meta/sqlite/repository"
)

// These tests hand the factory files it must refuse, and check that the
// refusal is clear (errors.Is with the library's errors) and that the file
// is left byte for byte as it was, with no journal created beside it.

var hostileSidecars = []string{"-wal", "-shm", "-journal"}

// hostileSidecarsOf lists the journal files that exist beside path.
func hostileSidecarsOf(path string) []string {
	var out []string
	for _, s := range hostileSidecars {
		if _, err := os.Lstat(path + s); err == nil {
			out = append(out, path+s)
		}
	}
	return out
}

// hostileRefused opens path with the factory and expects want; the file
// (if any) must be unchanged and no journal file may have appeared.
func hostileRefused(t *testing.T, path string, want error, opts ...sqlitemeta.Option) error {
	t.Helper()
	var before string
	fi, err := os.Stat(path)
	isFile := err == nil && fi.Mode().IsRegular()
	if isFile {
		before = fixture.SHA256(t, path)
	}
	sidecars := hostileSidecarsOf(path)
	b, err := sqlitemeta.NewFactory(append([]sqlitemeta.Option{sqlitemeta.WithDatabasePath(path)}, opts...)...).Create()
	if err == nil {
		_ = b.Close()
	}
	require.ErrorIs(t, err, want)
	if isFile {
		require.Equal(t, before, fixture.SHA256(t, path), "the refused file was changed")
	}
	require.Equal(t, sidecars, hostileSidecarsOf(path), "journal files appeared beside a refused file")
	return err
}

// hostileValidDB makes a database of this library with n messages in the
// six states and closes it cleanly. It returns the path and the page size.
func hostileValidDB(t *testing.T, n int) (string, int) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "valid.db")
	r := openFile(t, path)
	var batch []metastorage.MessageMetadata
	for i := 0; i < n; i++ {
		md := fixture.Sample(fmt.Sprintf("msg-%05d", i), fixture.States[i%6], i)
		md.LastError = fmt.Sprintf("MARKER-%05d %s", i, strings.Repeat("x", 200))
		batch = append(batch, md)
	}
	require.NoError(t, r.StoreMetaBatch(context.Background(), batch))
	var pageSize int
	require.NoError(t, r.DB().Raw("PRAGMA page_size").Scan(&pageSize).Error)
	require.NoError(t, r.Close())
	require.Empty(t, hostileSidecarsOf(path), "a clean close leaves no journal")
	return path, pageSize
}

// hostileRootPage finds the root page of a table or index.
func hostileRootPage(t *testing.T, path, name string) int {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
	require.NoError(t, err)
	defer db.Close()
	var root int
	require.NoError(t, db.QueryRow("SELECT rootpage FROM sqlite_master WHERE name = ?", name).Scan(&root))
	return root
}

// hostilePatch overwrites the bytes at off.
func hostilePatch(t *testing.T, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	_, err = f.WriteAt(b, off)
	require.NoError(t, err)
	require.NoError(t, f.Close())
}

func hostileRead(t *testing.T, path string, off int64, n int) []byte {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	b := make([]byte, n)
	_, err = f.ReadAt(b, off)
	require.NoError(t, err)
	return b
}

func TestHostileNotADatabase(t *testing.T) {
	t.Parallel()
	random := make([]byte, 8192)
	_, err := rand.Read(random)
	require.NoError(t, err)
	cases := map[string][]byte{
		"random bytes":  random,
		"text file":     []byte("retryspool metadata lives here\nnot really\n"),
		"short garbage": []byte("SQLite"),
		"header only":   []byte("SQLite format 3\x00"),
	}
	for name, content := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "meta.db")
			require.NoError(t, os.WriteFile(path, content, 0o600))
			hostileRefused(t, path, sqlitemeta.ErrNotDatabase)
		})
	}
}

func TestHostileTruncated(t *testing.T) {
	t.Parallel()
	path, pageSize := hostileValidDB(t, 600)
	fi, err := os.Stat(path)
	require.NoError(t, err)
	require.Greater(t, fi.Size(), int64(8*pageSize))
	for _, cut := range []int64{fi.Size() / 2, int64(pageSize) + 10, fi.Size() - int64(pageSize)} {
		t.Run(fmt.Sprint(cut), func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "cut.db")
			b, err := os.ReadFile(path)
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(p, b[:cut], 0o600))
			err = hostileRefused(t, p, sqlitemeta.ErrNotDatabase)
			require.Contains(t, err.Error(), "truncated")
		})
	}
}

func TestHostileCorruptHeader(t *testing.T) {
	t.Parallel()
	valid, _ := hostileValidDB(t, 50)
	cases := map[string]func(t *testing.T, path string){
		"magic": func(t *testing.T, path string) { hostilePatch(t, path, 0, []byte("SQLite format 4")) },
		"page size not a power of two": func(t *testing.T, path string) {
			hostilePatch(t, path, 16, []byte{0x03, 0xe8}) // 1000
		},
		"page size too small": func(t *testing.T, path string) { hostilePatch(t, path, 16, []byte{0x00, 0x80}) },
		"page count past the end": func(t *testing.T, path string) {
			b := make([]byte, 4)
			binary.BigEndian.PutUint32(b, 1<<20)
			hostilePatch(t, path, 28, b)
		},
	}
	for name, corrupt := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "meta.db")
			legacyCopyFile(t, valid, path)
			corrupt(t, path)
			hostileRefused(t, path, sqlitemeta.ErrNotDatabase)
		})
	}
}

// TestHostileCorruptTablePages damages the b-tree structure of the message
// table: quick_check, run read-only before anything is written, finds it.
func TestHostileCorruptTablePages(t *testing.T) {
	t.Parallel()
	valid, pageSize := hostileValidDB(t, 600)
	root := hostileRootPage(t, valid, "messages")
	rootHeader := hostileRead(t, valid, int64(root-1)*int64(pageSize), 12)
	require.Equal(t, byte(0x05), rootHeader[0], "with 600 messages the table's root is an interior page")
	leaf := int(binary.BigEndian.Uint32(rootHeader[8:12])) // its right-most child
	leafHeader := hostileRead(t, valid, int64(leaf-1)*int64(pageSize), 8)
	require.Equal(t, byte(0x0d), leafHeader[0], "the right-most child is a leaf")
	index := hostileRootPage(t, valid, "idx_messages_state_created")

	cases := map[string]struct {
		page int
		off  int
		b    []byte
	}{
		"root page type":           {root, 0, []byte{0x42}},
		"root page child pointers": {root, 8, []byte{0xff, 0xff, 0xff, 0x00}},
		"leaf page cell count":     {leaf, 3, []byte{0xff, 0xff}},
		"leaf page cell pointers":  {leaf, 8, bytes.Repeat([]byte{0xee}, 16)},
		"index root page type":     {index, 0, []byte{0x42}},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "meta.db")
			legacyCopyFile(t, valid, path)
			hostilePatch(t, path, int64(c.page-1)*int64(pageSize)+int64(c.off), c.b)
			err := hostileRefused(t, path, sqlitemeta.ErrNotDatabase)
			require.Contains(t, err.Error(), "quick_check")
		})
	}
}

// TestHostileCorruptPayloadIsNotDetected documents the limit of any check
// at open: bytes changed inside a record's text, with the page structure
// intact, are indistinguishable from data. quick_check and integrity_check
// pass and the record reads back changed. Only a checksum over the data,
// which SQLite files do not carry, could tell.
func TestHostileCorruptPayloadIsNotDetected(t *testing.T) {
	t.Parallel()
	path, _ := hostileValidDB(t, 60)
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	off := bytes.Index(b, []byte("MARKER-00042"))
	require.Positive(t, off)
	hostilePatch(t, path, int64(off), []byte("MANGLE"))

	r := openFile(t, path)
	fixture.RequireIntegrity(t, r.DB())
	md, err := r.GetMeta(context.Background(), "msg-00042")
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(md.LastError, "MANGLE-00042"), md.LastError)
}

func TestHostileForeignTable(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "app.db")
	db := legacyOpen(t, path)
	for _, s := range []string{
		"CREATE TABLE messages (id INTEGER PRIMARY KEY, sender TEXT, body BLOB)",
		"INSERT INTO messages (sender, body) VALUES ('a@example.org', x'00ff')",
	} {
		_, err := db.Exec(s)
		require.NoError(t, err)
	}
	require.NoError(t, db.Close())
	err := hostileRefused(t, path, sqlitemeta.ErrForeignTable)
	require.Contains(t, err.Error(), `table "messages"`)
	// The same file serves a queue under another name.
	r := openFile(t, path, sqlitemeta.WithTableName("retryspool_messages"))
	require.NoError(t, r.StoreMeta(context.Background(), "m", fixture.Sample("m", metastorage.StateIncoming, 1)))
}

func TestHostilePaths(t *testing.T) {
	t.Parallel()
	if os.Geteuid() == 0 {
		t.Log("running as root: permissions do not stop root, so the factory's own mode checks are what is tested")
	}
	valid, _ := hostileValidDB(t, 10)

	t.Run("read-only file", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "ro.db")
		legacyCopyFile(t, valid, path)
		require.NoError(t, os.Chmod(path, 0o444))
		err := hostileRefused(t, path, sqlitemeta.ErrPath)
		require.Contains(t, err.Error(), "read-only")
	})
	t.Run("read-only directory", func(t *testing.T) {
		t.Parallel()
		dir := filepath.Join(t.TempDir(), "ro")
		require.NoError(t, os.Mkdir(dir, 0o755))
		path := filepath.Join(dir, "meta.db")
		legacyCopyFile(t, valid, path)
		require.NoError(t, os.Chmod(dir, 0o555))
		t.Cleanup(func() { _ = os.Chmod(dir, 0o755) })
		err := hostileRefused(t, path, sqlitemeta.ErrPath)
		require.Contains(t, err.Error(), "read-only")
	})
	t.Run("new file in a read-only directory", func(t *testing.T) {
		t.Parallel()
		dir := filepath.Join(t.TempDir(), "ro")
		require.NoError(t, os.Mkdir(dir, 0o555))
		t.Cleanup(func() { _ = os.Chmod(dir, 0o755) })
		path := filepath.Join(dir, "meta.db")
		hostileRefused(t, path, sqlitemeta.ErrPath)
		_, err := os.Stat(path)
		require.ErrorIs(t, err, os.ErrNotExist)
	})
	t.Run("directory", func(t *testing.T) {
		t.Parallel()
		path := t.TempDir()
		err := hostileRefused(t, path, sqlitemeta.ErrPath)
		require.Contains(t, err.Error(), "is a directory")
	})
	t.Run("parent is a file", func(t *testing.T) {
		t.Parallel()
		parent := filepath.Join(t.TempDir(), "file")
		require.NoError(t, os.WriteFile(parent, []byte("x"), 0o600))
		hostileRefused(t, filepath.Join(parent, "meta.db"), sqlitemeta.ErrPath)
		b, err := os.ReadFile(parent)
		require.NoError(t, err)
		require.Equal(t, "x", string(b))
	})
	t.Run("symlink to a directory", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		link := filepath.Join(dir, "link.db")
		require.NoError(t, os.Symlink(t.TempDir(), link))
		hostileRefused(t, link, sqlitemeta.ErrPath)
	})
}

// TestHostileInjection passes SQL and DSN syntax through every option and
// list parameter that reaches SQL or the DSN: all are refused, and the
// database is unchanged.
func TestHostileInjection(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	path, _ := hostileValidDB(t, 30)
	sum := fixture.SHA256(t, path)

	refused := map[string]sqlitemeta.Option{
		"table name statement":   sqlitemeta.WithTableName(`messages"; DROP TABLE messages; --`),
		"table name quote":       sqlitemeta.WithTableName(`x" (id TEXT); --`),
		"table name backtick":    sqlitemeta.WithTableName("x`; DROP TABLE messages; --"),
		"table name space":       sqlitemeta.WithTableName("messages WHERE 1=1"),
		"journal mode pragma":    sqlitemeta.WithJournalMode("WAL); DROP TABLE messages; --"),
		"journal mode dsn":       sqlitemeta.WithJournalMode("WAL)&_pragma=writable_schema(1"),
		"synchronous pragma":     sqlitemeta.WithSynchronous("NORMAL); PRAGMA writable_schema=1; --"),
		"synchronous dsn":        sqlitemeta.WithSynchronous("OFF)&_pragma=journal_mode(OFF"),
		"auto vacuum dsn":        sqlitemeta.WithAutoVacuum("NONE)&_txlock=exclusive&_pragma=foreign_keys(0"),
		"auto vacuum statement":  sqlitemeta.WithAutoVacuum("FULL; DELETE FROM messages"),
		"auto vacuum percent":    sqlitemeta.WithAutoVacuum("NONE%29%26_pragma%3Djournal_mode%28OFF"),
		"journal mode lowercase": sqlitemeta.WithJournalMode("wal; --"),
	}
	for name, opt := range refused {
		_, err := sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(path), opt).Create()
		require.ErrorIs(t, err, sqlitemeta.ErrConfig, name)
		require.Equal(t, sum, fixture.SHA256(t, path), name)
		require.Empty(t, hostileSidecarsOf(path), name)
	}
	for _, name := range []string{`a"b`, "a;b", "a b", "a-b", "1abc", "", strings.Repeat("a", 41), "a\x00b", "ä"} {
		require.ErrorIs(t, repository.CheckTableName(name), sqlitemeta.ErrInvalidInput, name)
	}

	r := openFile(t, path)
	before := fixture.All(t, r)
	for _, o := range []metastorage.MessageListOptions{
		{SortBy: "created; DROP TABLE messages"},
		{SortBy: "created DESC, (SELECT COUNT(*) FROM messages)"},
		{SortBy: "id"},
		{SortBy: "CREATED"},
		{SortBy: "priority", SortOrder: "asc; DELETE FROM messages"},
		{SortOrder: "desc --"},
		{SortOrder: "DESC"},
		{SortOrder: "asc, id"},
	} {
		_, err := r.ListMessages(ctx, metastorage.StateIncoming, o)
		require.ErrorIs(t, err, sqlitemeta.ErrInvalidInput, "%+v", o)
	}
	// SQL in data is only data.
	evil := `x'); DROP TABLE messages; --`
	md := fixture.Sample(evil, metastorage.StateHold, 1)
	md.LastError = `'); DELETE FROM messages; --`
	md.Headers = map[string]string{`"; DROP TABLE messages; --`: `'`}
	require.NoError(t, r.StoreMeta(ctx, evil, md))
	got, err := r.GetMeta(ctx, evil)
	require.NoError(t, err)
	fixture.RequireSameMeta(t, md, got, false)
	require.NoError(t, r.DeleteMeta(ctx, evil))
	require.Equal(t, before, fixture.All(t, r))
	fixture.RequireCounts(t, r)
}

// TestHostilePathCharacters: characters that mean something in an SQLite
// URI are part of the file name, not parameters.
func TestHostilePathCharacters(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	names := []string{
		"100%.db",
		"meta#frag.db",
		"meta%3fmode=ro.db",
		"meta.db?_pragma=journal_mode(OFF)&_txlock=exclusive",
		"meta.db?mode=memory",
	}
	for _, name := range names {
		path := filepath.Join(dir, name)
		r := openFile(t, path)
		require.NoError(t, r.StoreMeta(context.Background(), "m", fixture.Sample("m", metastorage.StateIncoming, 1)))
		var mode string
		require.NoError(t, r.DB().Raw("PRAGMA journal_mode").Scan(&mode).Error)
		require.Equal(t, "wal", mode, name)
		require.NoError(t, r.Close())
		fi, err := os.Stat(path)
		require.NoError(t, err, "the file is named %q", name)
		require.Positive(t, fi.Size())
		r = openFile(t, path)
		_, err = r.GetMeta(context.Background(), "m")
		require.NoError(t, err, name)
		require.NoError(t, r.Close())
	}
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	require.Equal(t, names, got, "exactly the named files, and no others")
}
