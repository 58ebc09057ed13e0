package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/glebarez/sqlite"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"
	metastorage "schneider.vip/retryspool/storage/meta"
)

// The rough edges of the command line, each as an operator met it.

// TestDSNWithDB: --dsn and --db name two databases; that is a usage
// error, found before anything is opened.
func TestDSNWithDB(t *testing.T) {
	t.Parallel()
	res := fails(t, exitUsage, "stats", "--db", "x.db", "--dsn", "host=127.0.0.1 user=nobody dbname=none")
	require.Contains(t, res.stderr, "--db and --dsn")
}

// TestJSONErrors: with --json, errors are one JSON object on stderr.
func TestJSONErrors(t *testing.T) {
	t.Parallel()
	db := seedFile(t)
	type errOut struct {
		Error    string `json:"error"`
		Kind     string `json:"kind"`
		ExitCode int    `json:"exit_code"`
	}
	for _, c := range []struct {
		args []string
		code int
		kind string
	}{
		{[]string{"show", "nope", "--db", db, "--json"}, exitNotFound, "not_found"},
		{[]string{"list", "bogus", "--db", db, "--json"}, exitUsage, "usage"},
		{[]string{"move", "inc-old", "active", "hold", "--db", db, "--json"}, exitConflict, "state_conflict"},
	} {
		res := fails(t, c.code, c.args...)
		var e errOut
		require.NoError(t, json.Unmarshal([]byte(res.stderr), &e), "stderr: %s", res.stderr)
		require.Equal(t, c.kind, e.Kind)
		require.Equal(t, c.code, e.ExitCode)
		require.NotEmpty(t, e.Error)
		require.Empty(t, res.stdout)
	}
}

// TestListSortChoices: a bad --sort names the choices.
func TestListSortChoices(t *testing.T) {
	t.Parallel()
	db := seedFile(t)
	res := fails(t, exitUsage, "list", "deferred", "--sort", "size", "--db", db)
	require.Contains(t, res.stderr, "created, updated, priority, attempts")
	res = fails(t, exitUsage, "list", "deferred", "--order", "up", "--db", db)
	require.Contains(t, res.stderr, "asc or desc")
	require.Contains(t, ok(t, "help", "list"), "created, updated, priority, attempts")
}

// TestRequeueStaleDryRun counts without moving.
func TestRequeueStaleDryRun(t *testing.T) {
	t.Parallel()
	db := seedFile(t)
	require.Contains(t, ok(t, "requeue-stale", "--older-than", "1h", "--dry-run", "--db", db), "would requeue 1 active")
	r := openCheck(t, db)
	require.Equal(t, metastorage.StateActive, stateOf(t, r, "act-stale"))
}

// TestQuotedIDs: IDs with tabs, line breaks or edge spaces are quoted in
// tables, so that the columns hold; plain IDs are not.
func TestQuotedIDs(t *testing.T) {
	t.Parallel()
	db := filepath.Join(t.TempDir(), "meta.db")
	r := openCheckNew(t, db)
	now := time.Now()
	ids := []string{"plain", "tab\there", "new\nline", " edge "}
	for i, id := range ids {
		require.NoError(t, r.StoreMeta(context.Background(), id, metastorage.MessageMetadata{
			State: metastorage.StateIncoming, Created: now.Add(time.Duration(i) * time.Second)}))
	}
	require.NoError(t, r.Close())
	out := ok(t, "list", "incoming", "--db", db)
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	require.Len(t, lines, 1+len(ids)+1, out) // header, one line per message, footer
	require.Contains(t, out, "plain ")
	require.Contains(t, out, `"tab\there"`)
	require.Contains(t, out, `"new\nline"`)
	require.Contains(t, out, `" edge "`)
	require.Contains(t, ok(t, "show", "tab\there", "--db", db), `"tab\there"`)
}

func openCheckNew(t *testing.T, path string) interface {
	StoreMeta(context.Context, string, metastorage.MessageMetadata) error
	Close() error
} {
	t.Helper()
	return openCheck(t, path)
}

// TestBackupMissingDirectory: the directory of the backup is created.
func TestBackupMissingDirectory(t *testing.T) {
	t.Parallel()
	db := seedFile(t)
	dst := filepath.Join(t.TempDir(), "new", "dir", "meta.db")
	ok(t, "backup", dst, "--db", db)
	fi, err := os.Stat(dst)
	require.NoError(t, err)
	require.Positive(t, fi.Size())
}

// TestInterrupt: SIGINT while a command waits for the write lock stops it
// cleanly, with exit code 130 and nothing changed.
func TestInterrupt(t *testing.T) {
	t.Parallel()
	db := seedFile(t)
	// Another process's write transaction, held open.
	holder, err := gorm.Open(sqlite.Open("file:"+db+"?_pragma=busy_timeout(5000)"), &gorm.Config{})
	require.NoError(t, err)
	pool, err := holder.DB()
	require.NoError(t, err)
	pool.SetMaxOpenConns(1)
	defer pool.Close()
	conn, err := pool.Conn(context.Background())
	require.NoError(t, err)
	defer conn.Close()
	_, err = conn.ExecContext(context.Background(), "BEGIN IMMEDIATE")
	require.NoError(t, err)

	cmd := exec.Command(binary, "move", "inc-old", "incoming", "hold", "--db", db)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	time.Sleep(time.Second) // started, signal handler installed, waiting for the lock
	require.NoError(t, cmd.Process.Signal(syscall.SIGINT))

	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("spoolmeta did not stop on SIGINT")
	}
	require.Equal(t, exitInterrupt, cmd.ProcessState.ExitCode(), "stderr: %s", stderr.String())
	require.Contains(t, stderr.String(), "stopped by interrupt")
	_, err = conn.ExecContext(context.Background(), "ROLLBACK")
	require.NoError(t, err)
	conn.Close()
	pool.Close()
	r := openCheck(t, db)
	require.Equal(t, metastorage.StateIncoming, stateOf(t, r, "inc-old"))
}

// TestBenchOutput: columns explained, settings by name, headers without
// spaces.
func TestBenchOutput(t *testing.T) {
	t.Parallel()
	out := ok(t, "bench", "--messages", "20", "--workers", "2")
	require.Contains(t, out, "synchronous NORMAL")
	header := ""
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "op ") {
			header = l
		}
	}
	require.Equal(t, []string{"op", "ops", "ops_per_s", "p50", "p99", "floor_ops_per_s", "ratio"}, strings.Fields(header))
	require.Contains(t, out, "one claim of 100")
	require.Contains(t, out, "floor_ops_per_s  the same phase on the floor")
	require.Regexp(t, `\n  synchronous +NORMAL\n`, out)
	require.Regexp(t, `\n  auto_vacuum +INCREMENTAL\n`, out)
}
