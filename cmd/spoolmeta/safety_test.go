package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	datafs "schneider.vip/retryspool/storage/data/filesystem"
	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
)

// These tests cover the commands that must never damage a live queue:
// bench on a foreign file, purge with and without the bodies, check and
// its fixes, drop.

func fileSHA(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func sidecars(path string) []string {
	var out []string
	for _, s := range []string{"-wal", "-shm", "-journal"} {
		if _, err := os.Lstat(path + s); err == nil {
			out = append(out, s)
		}
	}
	return out
}

// TestBenchRefusesForeignFile: bench --path on a queue's file is refused
// with exit 2, the file byte for byte as it was, nothing beside it.
func TestBenchRefusesForeignFile(t *testing.T) {
	t.Parallel()
	db := seedFile(t)
	before := fileSHA(t, db)
	res := fails(t, exitUsage, "bench", "--path", db, "--messages", "20", "--workers", "2")
	require.Contains(t, res.stderr, "not made by spoolmeta bench")
	require.Equal(t, before, fileSHA(t, db), "the refused file was changed")
	require.Empty(t, sidecars(db))

	// Not a database at all: refused too.
	junk := filepath.Join(t.TempDir(), "notes.txt")
	require.NoError(t, os.WriteFile(junk, []byte("my notes, not a database\n"), 0o600))
	before = fileSHA(t, junk)
	fails(t, exitUsage, "bench", "--path", junk, "--messages", "20", "--workers", "2")
	require.Equal(t, before, fileSHA(t, junk))
}

// TestBenchOwnFile: a new or empty file is used, and a file bench made
// can be used again (it is made anew, so the run's checks hold).
func TestBenchOwnFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "bench.db")
	ok(t, "bench", "--path", path, "--messages", "20", "--workers", "2")
	ok(t, "bench", "--path", path, "--messages", "20", "--workers", "2")
	empty := filepath.Join(dir, "empty.db")
	require.NoError(t, os.WriteFile(empty, nil, 0o600))
	ok(t, "bench", "--path", empty, "--messages", "20", "--workers", "2")
}

// storeBodies writes a body for each id into a filesystem data store.
func storeBodies(t *testing.T, dir string, ids ...string) {
	t.Helper()
	b, err := datafs.NewBackend(dir)
	require.NoError(t, err)
	for _, id := range ids {
		_, err := b.StoreData(context.Background(), id, strings.NewReader("body of "+id))
		require.NoError(t, err)
	}
}

func hasBody(t *testing.T, dir, id string) bool {
	t.Helper()
	b, err := datafs.NewBackend(dir)
	require.NoError(t, err)
	rc, err := b.GetDataReader(context.Background(), id)
	if err != nil {
		return false
	}
	rc.Close()
	return true
}

var seedIDs = []string{"inc-old", "inc-new", "act-stale", "act-fresh", "def-due1", "def-due2", "def-later",
	"hold-1", "bnc-old1", "bnc-old2", "bnc-new"}

// TestPurgeData: with --data the bodies of the purged messages go, the
// others stay; without it the bodies stay and the output says so.
func TestPurgeData(t *testing.T) {
	t.Parallel()
	db := seedFile(t)
	data := t.TempDir()
	storeBodies(t, data, seedIDs...)

	out := ok(t, "purge", "bounce", "--older-than", "90h", "--db", db)
	require.Contains(t, out, "deleted 1 bounce messages")
	require.Contains(t, out, "bodies stay")
	require.True(t, hasBody(t, data, "bnc-old1"), "without --data the body stays")

	var p struct {
		Count         int64  `json:"count"`
		BodiesDeleted int64  `json:"bodies_deleted"`
		Data          string `json:"data"`
	}
	okJSON(t, &p, "purge", "bounce", "--older-than", "3d", "--data", "fs:"+data, "--db", db)
	require.EqualValues(t, 1, p.Count)
	require.EqualValues(t, 1, p.BodiesDeleted)
	require.False(t, hasBody(t, data, "bnc-old2"))
	require.True(t, hasBody(t, data, "bnc-new"))
	require.True(t, hasBody(t, data, "inc-old"))

	fails(t, exitUsage, "purge", "bounce", "--older-than", "1h", "--data", data, "--db", db) // no fs: prefix
	fails(t, exitUsage, "purge", "bounce", "--older-than", "1h", "--archive", "--data", "fs:"+data, "--db", db)
	fails(t, exitNotFound, "purge", "bounce", "--older-than", "1h", "--data", "fs:"+filepath.Join(data, "nope"), "--db", db)
	require.Contains(t, ok(t, "help", "purge"), "bodies of the purged messages stay")
}

type checkOut struct {
	Counters []struct {
		State   string `json:"state"`
		Counter int64  `json:"counter"`
		Rows    int64  `json:"rows"`
	} `json:"counter_mismatches"`
	InvalidStates []struct {
		ID    string `json:"id"`
		State string `json:"state"`
	} `json:"invalid_states"`
	Integrity *struct {
		Check string `json:"check"`
		OK    bool   `json:"ok"`
	} `json:"integrity"`
	Data *struct {
		Bodies         int      `json:"bodies"`
		OrphanedBodies []string `json:"bodies_without_metadata"`
		MissingBodies  []struct {
			ID    string `json:"id"`
			State string `json:"state"`
		} `json:"messages_without_body"`
		OtherFiles []string `json:"other_files"`
	} `json:"data"`
	Fixed *struct {
		Recounted     bool  `json:"counters_recounted"`
		MovedToHold   int64 `json:"moved_to_hold"`
		BodiesDeleted int64 `json:"bodies_deleted"`
	} `json:"fixed"`
	Problems  int `json:"problems"`
	Remaining int `json:"remaining"`
}

func checkJSONOf(t *testing.T, code int, args ...string) checkOut {
	t.Helper()
	res := spool(t, append(args, "--json")...)
	require.Equal(t, code, res.code, "stdout: %s\nstderr: %s", res.stdout, res.stderr)
	var c checkOut
	require.NoError(t, json.Unmarshal([]byte(res.stdout), &c), res.stdout)
	return c
}

// TestCheck: a clean store passes; broken counters, an invalid state,
// bodies without metadata and messages without a body are found; the dry
// run changes nothing; --fix repairs all of it.
func TestCheck(t *testing.T) {
	t.Parallel()
	db := seedFile(t)
	data := t.TempDir()
	storeBodies(t, data, seedIDs...)
	c := checkJSONOf(t, 0, "check", "--db", db, "--data", "fs:"+data, "--integrity", "quick")
	require.Zero(t, c.Problems)
	require.True(t, c.Integrity.OK)
	require.Equal(t, len(seedIDs), c.Data.Bodies)
	require.Contains(t, ok(t, "check", "--db", db), "no problems found")

	// Break it: a counter off, a state out of range, a body removed, a
	// body without metadata (old enough), a stray file.
	r := openCheck(t, db)
	require.NoError(t, r.DB().Exec("UPDATE messages_counts SET n = n + 5 WHERE state = 1").Error)
	require.NoError(t, r.DB().Exec("UPDATE messages SET state = 9 WHERE id = 'inc-old'").Error)
	require.NoError(t, r.Close())
	b, err := datafs.NewBackend(data)
	require.NoError(t, err)
	require.NoError(t, b.DeleteData(context.Background(), "def-due1"))
	storeBodies(t, data, "ghost-1")
	old := time.Now().Add(-3 * time.Hour)
	require.NoError(t, os.Chtimes(filepath.Join(data, "gh", "ghost-1.data"), old, old))
	storeBodies(t, data, "ghost-young") // younger than --min-age: left out
	require.NoError(t, os.WriteFile(filepath.Join(data, "README"), []byte("keep me"), 0o600))

	c = checkJSONOf(t, exitError, "check", "--db", db, "--data", "fs:"+data)
	require.Len(t, c.Counters, 1)
	require.Equal(t, "active", c.Counters[0].State)
	require.EqualValues(t, 7, c.Counters[0].Counter)
	require.EqualValues(t, 2, c.Counters[0].Rows)
	require.Len(t, c.InvalidStates, 1)
	require.Equal(t, "inc-old", c.InvalidStates[0].ID)
	require.Equal(t, []string{"ghost-1"}, c.Data.OrphanedBodies)
	require.Len(t, c.Data.MissingBodies, 1)
	require.Equal(t, "def-due1", c.Data.MissingBodies[0].ID)
	require.Equal(t, "deferred", c.Data.MissingBodies[0].State)
	require.Len(t, c.Data.OtherFiles, 1)

	before := fileSHA(t, db)
	c = checkJSONOf(t, exitError, "check", "--db", db, "--data", "fs:"+data, "--fix", "--dry-run")
	require.NotNil(t, c.Fixed)
	require.True(t, c.Fixed.Recounted)
	require.EqualValues(t, 1, c.Fixed.BodiesDeleted)
	require.Equal(t, before, fileSHA(t, db), "a dry run changes nothing")
	require.True(t, hasBody(t, data, "ghost-1"))

	c = checkJSONOf(t, 0, "check", "--db", db, "--data", "fs:"+data, "--fix")
	require.Zero(t, c.Remaining)
	require.False(t, hasBody(t, data, "ghost-1"))
	require.True(t, hasBody(t, data, "ghost-young"), "young bodies are left alone")
	_, err = os.Stat(filepath.Join(data, "README"))
	require.NoError(t, err, "other files are left alone")
	r = openCheck(t, db)
	require.Equal(t, metastorage.StateHold, stateOf(t, r, "def-due1"))
	require.Equal(t, metastorage.StateHold, stateOf(t, r, "inc-old"))
	require.EqualValues(t, 2, r.GetStateCount(metastorage.StateActive))
	require.NoError(t, r.Close())
	c = checkJSONOf(t, 0, "check", "--db", db, "--data", "fs:"+data)
	require.Zero(t, c.Problems, "a message held without its body is where --fix puts it")

	fails(t, exitUsage, "check", "--db", db, "--dry-run")
	fails(t, exitUsage, "check", "--db", db, "--integrity", "deep")
}

// TestDrop: refused without --yes, then the table is gone; the next open
// creates it anew.
func TestDrop(t *testing.T) {
	t.Parallel()
	db := seedFile(t)
	before := fileSHA(t, db)
	res := fails(t, exitUsage, "drop", "--db", db)
	require.Contains(t, res.stderr, "--yes")
	require.Equal(t, before, fileSHA(t, db))
	require.Contains(t, ok(t, "drop", "--yes", "--db", db), "dropped")
	fails(t, exitNotFound, "stats", "--db", db)
	r, err := sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(db)).Open(context.Background())
	require.NoError(t, err)
	require.NoError(t, r.StoreMeta(context.Background(), "m1", metastorage.MessageMetadata{State: metastorage.StateIncoming}))
	require.EqualValues(t, 1, r.GetStateCount(metastorage.StateIncoming))
	require.NoError(t, r.Close())
}

// TestBodyLayout: the layout check and purge read matches the filesystem
// data store's own (one- and two-byte prefixes).
func TestBodyLayout(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	storeBodies(t, dir, "a", "ab", "abc")
	d, err := openBodies("test", "fs:"+dir)
	require.NoError(t, err)
	var ids []string
	require.NoError(t, d.walk(context.Background(), func(b body) error { ids = append(ids, b.id); return nil },
		func(p string) { t.Errorf("stray %s", p) }))
	require.ElementsMatch(t, []string{"a", "ab", "abc"}, ids)
	n, err := d.delete(context.Background(), []string{"a", "abc", "missing"})
	require.NoError(t, err)
	require.EqualValues(t, 2, n)
	require.True(t, hasBody(t, dir, "ab"))
	require.False(t, hasBody(t, dir, "abc"))
}

// TestPurgeResultOwnLine: with a progress bar drawn, the result starts on
// a line of its own.
func TestPurgeResultOwnLine(t *testing.T) {
	t.Parallel()
	db := seedFile(t)
	var buf bytes.Buffer
	a := &app{stdout: &buf, stderr: &buf, tty: true}
	require.NoError(t, runPurge(context.Background(), a, []string{"bounce", "--older-than", "3d", "--db", db}))
	out := buf.String()
	i := strings.Index(out, "deleted 2 bounce messages")
	require.Positive(t, i, out)
	require.Equal(t, byte('\n'), out[i-1], "the result is on the progress bar's line: %q", out)
}
