package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"gorm.io/gorm"
	metastorage "schneider.vip/retryspool/storage/meta"
	metafs "schneider.vip/retryspool/storage/meta/filesystem"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/notice"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/testdb"
)

// binary is the spoolmeta built once for all tests.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "spoolmeta-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "spoolmeta")
	out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput()
	if other := os.Getenv("SPOOLMETA_TEST_BINARY"); other != "" && err == nil {
		// Run the tests against another build, e.g. an earlier version.
		out, err = exec.Command("cp", other, binary).CombinedOutput()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "build spoolmeta: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	notice.Print()
	os.RemoveAll(dir)
	os.Exit(code)
}

// result is one run of the binary.
type result struct {
	stdout, stderr string
	code           int
}

// spool runs the binary in dir (a temporary directory when empty).
func spool(t *testing.T, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Dir = t.TempDir()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := result{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		res.code = ee.ExitCode()
	default:
		t.Fatalf("run spoolmeta %v: %v", args, err)
	}
	return res
}

// ok runs the binary and requires exit code 0.
func ok(t *testing.T, args ...string) string {
	t.Helper()
	res := spool(t, args...)
	require.Equal(t, 0, res.code, "spoolmeta %v\nstdout: %s\nstderr: %s", args, res.stdout, res.stderr)
	return res.stdout
}

// okJSON runs the binary with --json and decodes its output into v.
func okJSON(t *testing.T, v any, args ...string) {
	t.Helper()
	out := ok(t, append(args, "--json")...)
	require.NoError(t, json.Unmarshal([]byte(out), v), "output: %s", out)
}

// fails runs the binary and requires exit code code.
func fails(t *testing.T, code int, args ...string) result {
	t.Helper()
	res := spool(t, args...)
	require.Equal(t, code, res.code, "spoolmeta %v\nstdout: %s\nstderr: %s", args, res.stdout, res.stderr)
	require.NotEmpty(t, res.stderr, "an error is explained on stderr")
	return res
}

// The JSON shapes scripts rely on, written out independently of the code.
type (
	statsOut struct {
		Engine string `json:"engine"`
		Path   string `json:"path"`
		Table  string `json:"table"`
		States []struct {
			State    string  `json:"state"`
			Count    int64   `json:"count"`
			OldestID string  `json:"oldest_id"`
			Oldest   *string `json:"oldest_created"`
			NewestID string  `json:"newest_id"`
			Newest   *string `json:"newest_created"`
		} `json:"states"`
		Total int64 `json:"total"`
		Due   struct {
			Count     int     `json:"count"`
			Limit     int     `json:"limit"`
			AtLeast   bool    `json:"at_least"`
			FirstID   string  `json:"first_id"`
			FirstNext *string `json:"first_next_retry"`
		} `json:"due"`
		DBBytes  *int64 `json:"db_bytes"`
		WALBytes *int64 `json:"wal_bytes"`
	}
	messageOut struct {
		ID              string            `json:"id"`
		State           string            `json:"state"`
		Attempts        int               `json:"attempts"`
		MaxAttempts     int               `json:"max_attempts"`
		NextRetry       *string           `json:"next_retry"`
		Created         *string           `json:"created"`
		Updated         *string           `json:"updated"`
		LastError       string            `json:"last_error"`
		Size            int64             `json:"size"`
		Priority        int               `json:"priority"`
		Headers         map[string]string `json:"headers"`
		RetryPolicyName string            `json:"retry_policy_name"`
	}
	listOut struct {
		State    string       `json:"state"`
		Total    int          `json:"total"`
		Offset   int          `json:"offset"`
		HasMore  bool         `json:"has_more"`
		IDs      []string     `json:"ids"`
		Messages []messageOut `json:"messages"`
	}
)

func (s statsOut) byState() map[string]int64 {
	m := map[string]int64{}
	for _, st := range s.States {
		m[st.State] = st.Count
	}
	return m
}

func TestHelp(t *testing.T) {
	t.Parallel()
	out := ok(t, "help")
	for _, want := range []string{"stats", "list STATE", "show ID", "move ID FROM TO", "requeue-stale", "purge STATE",
		"backup FILE", "copy", "bench", "Exit codes:", "3  not found", "4  state conflict", "2  usage error"} {
		require.Contains(t, out, want)
	}
	require.Equal(t, out, ok(t, "--help"))
	require.Equal(t, out, ok(t, "-h"))

	for _, c := range commands {
		help := ok(t, "help", c.name)
		require.Contains(t, help, "Usage: spoolmeta "+c.name, c.name)
		require.Contains(t, help, "Exit codes:", c.name)
		require.Contains(t, help, "--json", c.name)
		require.Equal(t, help, ok(t, c.name, "--help"), "help %s and %s --help agree", c.name, c.name)
		require.Equal(t, help, ok(t, c.name, "-h"))
	}
	require.Contains(t, ok(t, "help", "purge"), "--older-than")
	require.Contains(t, ok(t, "help", "copy"), "fs:DIR")

	res := fails(t, exitUsage)
	require.Contains(t, res.stderr, "Commands:")
	res = fails(t, exitUsage, "frobnicate")
	require.Contains(t, res.stderr, `unknown command "frobnicate"`)
	fails(t, exitUsage, "help", "frobnicate")
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	db := seedFile(t)
	for _, args := range [][]string{
		{"list", "--db", db},                                // missing state
		{"list", "bogus", "--db", db},                       // unknown state
		{"list", "incoming", "extra", "--db", db},           // too many arguments
		{"list", "incoming", "--sort", "size", "--db", db},  // library refuses the sort
		{"list", "incoming", "--limit", "0", "--db", db},    // bad limit
		{"list", "incoming", "--since", "soon", "--db", db}, // bad time
		{"stats", "--nope", "--db", db},                     // unknown flag
		{"stats", "--due-limit", "0", "--db", db},
		{"show", "--db", db},
		{"move", "inc-old", "incoming", "--db", db},
		{"move", "inc-old", "incoming", "limbo", "--db", db},
		{"requeue-stale", "--db", db}, // --older-than is required
		{"requeue-stale", "--older-than", "-5m", "--db", db},
		{"requeue-stale", "--older-than", "soon", "--db", db},
		{"requeue-stale", "--older-than", "1h", "--batch", "-1", "--db", db},
		{"purge", "bounce", "--db", db},
		{"purge", "--older-than", "1h", "--db", db},
		{"purge", "archived", "--archive", "--older-than", "1h", "--db", db},
		{"stats", "--dsn", "what is this"},
		{"stats", "--table", "bad-name", "--db", db},
		{"backup", "--db", db},
		{"copy", "--db", db},
		{"bench", "--engine", "oracle"},
		{"bench", "--engine", "postgres"},
		{"bench", "--messages", "0"},
		{"bench", "--dsn", "postgres://x@127.0.0.1:1/x", "--engine", "mysql"},
	} {
		fails(t, exitUsage, args...)
	}
	// Nothing of the above changed the store.
	var st statsOut
	okJSON(t, &st, "stats", "--db", db)
	require.EqualValues(t, 11, st.Total)
	require.EqualValues(t, 3, st.byState()["bounce"])
}

func TestNotFound(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	missing := filepath.Join(dir, "nope.db")
	res := fails(t, exitNotFound, "stats", "--db", missing)
	require.Contains(t, res.stderr, "no database at")
	_, err := os.Stat(missing)
	require.ErrorIs(t, err, os.ErrNotExist, "inspecting must not create a database")

	db := seedFile(t)
	res = fails(t, exitNotFound, "show", "no-such-id", "--db", db)
	require.Contains(t, res.stderr, "no-such-id")
	fails(t, exitNotFound, "move", "no-such-id", "incoming", "active", "--db", db)
	res = fails(t, exitNotFound, "stats", "--db", db, "--table", "other_queue")
	require.Contains(t, res.stderr, "other_queue")
	fails(t, exitNotFound, "copy", "--from", "fs:"+filepath.Join(dir, "no-dir"), "--db", filepath.Join(dir, "dst.db"))
	fails(t, exitNotFound, "copy", "--from", missing, "--db", filepath.Join(dir, "dst.db"))
	// The table was not created by the failed lookups.
	r := openCheck(t, db)
	require.False(t, r.DB().Migrator().HasTable("other_queue"))
}

func TestStats(t *testing.T) {
	t.Parallel()
	db := seedFile(t)
	var st statsOut
	okJSON(t, &st, "stats", "--db", db)
	require.Equal(t, "sqlite", st.Engine)
	require.Equal(t, db, st.Path)
	require.Equal(t, "messages", st.Table)
	require.EqualValues(t, 11, st.Total)
	require.Equal(t, map[string]int64{"incoming": 2, "active": 2, "deferred": 3, "hold": 1, "bounce": 3, "archived": 0}, st.byState())
	require.Len(t, st.States, 6)
	byName := map[string]int{}
	for i, s := range st.States {
		byName[s.State] = i
	}
	inc := st.States[byName["incoming"]]
	require.Equal(t, "inc-old", inc.OldestID)
	require.Equal(t, "inc-new", inc.NewestID)
	require.NotNil(t, inc.Oldest)
	_, err := time.Parse(time.RFC3339Nano, *inc.Oldest)
	require.NoError(t, err)
	bnc := st.States[byName["bounce"]]
	require.Equal(t, "bnc-old1", bnc.OldestID)
	require.Equal(t, "bnc-new", bnc.NewestID)
	arch := st.States[byName["archived"]]
	require.Empty(t, arch.OldestID)
	require.Nil(t, arch.Oldest)

	require.Equal(t, 2, st.Due.Count)
	require.False(t, st.Due.AtLeast)
	require.Equal(t, "def-due1", st.Due.FirstID)
	require.NotNil(t, st.DBBytes)
	require.Positive(t, *st.DBBytes)
	require.NotNil(t, st.WALBytes)

	okJSON(t, &st, "stats", "--db", db, "--due-limit", "1")
	require.Equal(t, 1, st.Due.Count)
	require.True(t, st.Due.AtLeast)

	out := ok(t, "stats", "--db", db)
	for _, want := range []string{"STATE", "incoming", "inc-old", "bnc-old1", "total", "11", "due now:", "2 deferred", "def-due1", "file size:", "WAL size:"} {
		require.Contains(t, out, want)
	}
	// One dash works as well as two.
	require.Contains(t, ok(t, "stats", "-db", db), "inc-old")
}

func TestListAndShow(t *testing.T) {
	t.Parallel()
	db := seedFile(t)
	var l listOut
	okJSON(t, &l, "list", "deferred", "--db", db)
	require.Equal(t, "deferred", l.State)
	require.Equal(t, 3, l.Total)
	require.False(t, l.HasMore)
	require.Equal(t, []string{"def-due1", "def-due2", "def-later"}, l.IDs)
	require.Len(t, l.Messages, 3)
	require.Equal(t, "451 try again later", l.Messages[0].LastError)

	okJSON(t, &l, "list", "--db", db, "--order", "desc", "--limit", "2", "deferred")
	require.Equal(t, []string{"def-later", "def-due2"}, l.IDs)
	require.True(t, l.HasMore)
	require.Equal(t, 3, l.Total)
	okJSON(t, &l, "list", "deferred", "--order", "desc", "--limit", "2", "--offset", "2", "--db", db)
	require.Equal(t, []string{"def-due1"}, l.IDs)
	require.False(t, l.HasMore)
	okJSON(t, &l, "list", "bounce", "--sort", "created", "--since", "10h", "--db", db)
	require.Equal(t, []string{"bnc-new"}, l.IDs)
	require.Equal(t, 1, l.Total)
	since := time.Now().Add(-90 * time.Hour).UTC().Format(time.RFC3339)
	okJSON(t, &l, "list", "bounce", "--since", since, "--db", db)
	require.Equal(t, []string{"bnc-old2", "bnc-new"}, l.IDs)
	okJSON(t, &l, "list", "archived", "--db", db)
	require.Empty(t, l.IDs)
	require.NotNil(t, l.Messages, "an empty page is [], not null")

	out := ok(t, "list", "deferred", "--db", db, "--limit", "2")
	require.Contains(t, out, "LAST_ERROR")
	require.Contains(t, out, "451 try again later")
	require.Contains(t, out, "2/5")
	require.Contains(t, out, "next page: --offset 2")

	var m messageOut
	okJSON(t, &m, "show", "def-due1", "--db", db)
	require.Equal(t, "def-due1", m.ID)
	require.Equal(t, "deferred", m.State)
	require.Equal(t, 2, m.Attempts)
	require.Equal(t, 5, m.MaxAttempts)
	require.Equal(t, 3, m.Priority)
	require.EqualValues(t, 100, m.Size)
	require.Equal(t, "exponential", m.RetryPolicyName)
	require.Equal(t, map[string]string{"tenant": "acme", "to": "a@example.com"}, m.Headers)
	require.NotNil(t, m.NextRetry)
	next, err := time.Parse(time.RFC3339Nano, *m.NextRetry)
	require.NoError(t, err)
	require.True(t, next.Before(time.Now()))

	out = ok(t, "show", "def-due1", "--db", db)
	for _, want := range []string{"state:", "deferred", "attempts:", "2 of 5", "tenant: acme", "to: a@example.com", "exponential"} {
		require.Contains(t, out, want)
	}
}

func TestMove(t *testing.T) {
	t.Parallel()
	db := seedFile(t)
	var mv map[string]string
	okJSON(t, &mv, "move", "hold-1", "hold", "incoming", "--db", db)
	require.Equal(t, map[string]string{"id": "hold-1", "from": "hold", "to": "incoming"}, mv)
	out := ok(t, "move", "inc-old", "INCOMING", "active", "--db", db)
	require.Contains(t, out, "moved inc-old from incoming to active")

	res := fails(t, exitConflict, "move", "hold-1", "hold", "active", "--db", db)
	require.Contains(t, res.stderr, "hold-1")
	require.Contains(t, res.stderr, "is incoming, not hold")

	r := openCheck(t, db)
	require.Equal(t, metastorage.StateIncoming, stateOf(t, r, "hold-1"))
	require.Equal(t, metastorage.StateActive, stateOf(t, r, "inc-old"))
	require.EqualValues(t, 0, r.GetStateCount(metastorage.StateHold))
	require.EqualValues(t, 3, r.GetStateCount(metastorage.StateActive))
}

func TestRequeueStale(t *testing.T) {
	t.Parallel()
	db := seedFile(t)
	var out struct {
		Requeued int64   `json:"requeued"`
		Cutoff   *string `json:"cutoff"`
	}
	okJSON(t, &out, "requeue-stale", "--older-than", "1h", "--db", db)
	require.EqualValues(t, 1, out.Requeued)
	require.NotNil(t, out.Cutoff)
	r := openCheck(t, db)
	require.Equal(t, metastorage.StateIncoming, stateOf(t, r, "act-stale"))
	require.Equal(t, metastorage.StateActive, stateOf(t, r, "act-fresh"))

	text := ok(t, "requeue-stale", "--older-than", "1h", "--db", db)
	require.Contains(t, text, "requeued 0 active messages")
}

func TestPurge(t *testing.T) {
	t.Parallel()
	db := seedFile(t)
	type purgeOut struct {
		State  string `json:"state"`
		Count  int64  `json:"count"`
		DryRun bool   `json:"dry_run"`
		Arch   bool   `json:"archive"`
	}
	var p purgeOut
	okJSON(t, &p, "purge", "bounce", "--older-than", "3d", "--dry-run", "--db", db)
	require.Equal(t, purgeOut{State: "bounce", Count: 2, DryRun: true}, p)
	require.Contains(t, ok(t, "purge", "bounce", "--older-than", "3d", "--dry-run", "--archive", "--db", db),
		"would archive 2 bounce messages")
	r := openCheck(t, db)
	require.EqualValues(t, 3, r.GetStateCount(metastorage.StateBounce), "a dry run changes nothing")

	// 90h: only bnc-old1 (100h); then 3d: bnc-old2 (80h).
	okJSON(t, &p, "purge", "bounce", "--older-than", "90h", "--archive", "--db", db)
	require.Equal(t, purgeOut{State: "bounce", Count: 1, Arch: true}, p)
	require.Equal(t, metastorage.StateArchived, stateOf(t, r, "bnc-old1"))
	require.Contains(t, ok(t, "purge", "bounce", "--older-than", "3d", "--batch", "1", "--db", db), "deleted 1 bounce messages")
	_, err := r.GetMeta(context.Background(), "bnc-old2")
	require.ErrorIs(t, err, metastorage.ErrMessageNotFound)
	require.Equal(t, metastorage.StateBounce, stateOf(t, r, "bnc-new"))
	require.EqualValues(t, 1, r.GetStateCount(metastorage.StateBounce))
	require.EqualValues(t, 1, r.GetStateCount(metastorage.StateArchived))
}

func TestBackup(t *testing.T) {
	t.Parallel()
	db := seedFile(t)
	dst := filepath.Join(t.TempDir(), "backup.db")
	var out struct {
		Backup string `json:"backup"`
		Bytes  int64  `json:"bytes"`
	}
	okJSON(t, &out, "backup", dst, "--db", db)
	require.Equal(t, dst, out.Backup)
	require.Positive(t, out.Bytes)

	var st statsOut
	okJSON(t, &st, "stats", "--db", dst)
	require.EqualValues(t, 11, st.Total)
	require.Equal(t, map[string]int64{"incoming": 2, "active": 2, "deferred": 3, "hold": 1, "bounce": 3, "archived": 0}, st.byState())

	res := fails(t, exitUsage, "backup", dst, "--db", db)
	require.Contains(t, res.stderr, "exists")
}

func TestCopy(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	fsDir := filepath.Join(dir, "fsmeta")
	fsb, err := metafs.NewBackend(fsDir)
	require.NoError(t, err)
	for _, md := range seed(time.Now()) {
		require.NoError(t, fsb.StoreMeta(ctx, md.ID, md))
	}
	require.NoError(t, fsb.Close())

	dst := filepath.Join(dir, "from-fs.db")
	var out struct {
		Copied   int64            `json:"copied"`
		PerState map[string]int64 `json:"per_state"`
	}
	res := spool(t, "copy", "--from", "fs:"+fsDir, "--db", dst, "--json", "--batch", "4")
	require.Equal(t, 0, res.code, res.stderr)
	require.NotContains(t, res.stderr, "\r", "no progress bar when stdout is not a terminal")
	require.NoError(t, json.Unmarshal([]byte(res.stdout), &out))
	require.EqualValues(t, 11, out.Copied)
	want := map[string]int64{"incoming": 2, "active": 2, "deferred": 3, "hold": 1, "bounce": 3, "archived": 0}
	require.Equal(t, want, out.PerState)
	r := openCheck(t, dst)
	md, err := r.GetMeta(ctx, "def-due1")
	require.NoError(t, err)
	require.Equal(t, "451 try again later", md.LastError)
	require.Equal(t, map[string]string{"tenant": "acme", "to": "a@example.com"}, md.Headers)

	// Again, from the SQLite copy into a new file under another table
	// name; a rerun replaces and stays consistent.
	dst2 := filepath.Join(dir, "second.db")
	text := ok(t, "copy", "--from", dst, "--db", dst2, "--table", "queue2")
	require.Contains(t, text, "copied 11 messages")
	require.Contains(t, text, "verified")
	ok(t, "copy", "--from", "sqlite:"+dst, "--db", dst2, "--table", "queue2")
	var st statsOut
	okJSON(t, &st, "stats", "--db", dst2, "--table", "queue2")
	require.Equal(t, want, st.byState())

	fails(t, exitUsage, "copy", "--from", dst, "--db", dst)
}

func TestBench(t *testing.T) {
	t.Parallel()
	var out struct {
		Engine   string `json:"engine"`
		Messages int    `json:"messages"`
		Results  []struct {
			Op        string  `json:"op"`
			Ops       int     `json:"ops"`
			OpsPerSec float64 `json:"ops_per_sec"`
			P99ns     int64   `json:"p99_ns"`
		} `json:"results"`
	}
	path := filepath.Join(t.TempDir(), "bench.db")
	okJSON(t, &out, "bench", "--messages", "60", "--workers", "2", "--path", path)
	require.Equal(t, "sqlite", out.Engine)
	require.Equal(t, 60, out.Messages)
	ops := map[string]int{}
	for _, r := range out.Results {
		ops[r.Op] = r.Ops
		require.Positive(t, r.OpsPerSec, r.Op)
	}
	require.Equal(t, 60, ops["enqueue"])
	require.Contains(t, ops, "claim")
	require.Contains(t, ops, "delete")

	text := ok(t, "bench", "--messages", "30", "--workers", "2")
	require.Contains(t, text, "sqlite, 30 messages, 2 workers")
	require.Contains(t, text, "ops_per_s")
}

// TestServers runs the commands against PostgreSQL and MySQL/MariaDB.
func TestServers(t *testing.T) {
	for _, e := range testdb.Servers() {
		t.Run(e.Name, func(t *testing.T) {
			if e.Skip != "" {
				t.Skip(e.Skip)
			}
			t.Parallel()
			db := e.Open(t)
			table := e.Table(t, db)
			seedServer(t, db, table)
			conn := []string{"--dsn", e.DSN, "--table", table}

			var st statsOut
			okJSON(t, &st, append([]string{"stats"}, conn...)...)
			require.Equal(t, e.Name, st.Engine)
			require.EqualValues(t, 11, st.Total)
			require.Equal(t, map[string]int64{"incoming": 2, "active": 2, "deferred": 3, "hold": 1, "bounce": 3, "archived": 0}, st.byState())
			require.Equal(t, 2, st.Due.Count)
			require.Nil(t, st.DBBytes)

			var l listOut
			okJSON(t, &l, append([]string{"list", "deferred", "--order", "desc"}, conn...)...)
			require.Equal(t, []string{"def-later", "def-due2", "def-due1"}, l.IDs)

			var m messageOut
			okJSON(t, &m, append([]string{"show", "def-due1"}, conn...)...)
			require.Equal(t, map[string]string{"tenant": "acme", "to": "a@example.com"}, m.Headers)
			fails(t, exitNotFound, append([]string{"show", "nope"}, conn...)...)

			ok(t, append([]string{"move", "hold-1", "hold", "incoming"}, conn...)...)
			fails(t, exitConflict, append([]string{"move", "hold-1", "hold", "incoming"}, conn...)...)

			var p struct {
				Count int64 `json:"count"`
			}
			okJSON(t, &p, append([]string{"purge", "bounce", "--older-than", "3d", "--dry-run"}, conn...)...)
			require.EqualValues(t, 2, p.Count)
			okJSON(t, &st, append([]string{"stats"}, conn...)...)
			require.EqualValues(t, 3, st.byState()["bounce"])
			require.EqualValues(t, 3, st.byState()["incoming"])

			var rq struct {
				Requeued int64 `json:"requeued"`
			}
			okJSON(t, &rq, append([]string{"requeue-stale", "--older-than", "1h"}, conn...)...)
			require.EqualValues(t, 1, rq.Requeued)

			// Copy a SQLite file into a new table on the server.
			copied := e.Table(t, db)
			var cp struct {
				Copied int64 `json:"copied"`
			}
			okJSON(t, &cp, "copy", "--from", seedFile(t), "--dsn", e.DSN, "--table", copied)
			require.EqualValues(t, 11, cp.Copied)
			okJSON(t, &st, "stats", "--dsn", e.DSN, "--table", copied)
			require.Equal(t, map[string]int64{"incoming": 2, "active": 2, "deferred": 3, "hold": 1, "bounce": 3, "archived": 0}, st.byState())

			fails(t, exitNotFound, "stats", "--dsn", e.DSN, "--table", testdb.UniqueName("missing"))
			fails(t, exitUsage, append([]string{"backup", filepath.Join(t.TempDir(), "b.db")}, conn...)...)
		})
	}
}

func seedServer(t *testing.T, db *gorm.DB, table string) {
	t.Helper()
	r, err := sqlitemeta.NewFactory(sqlitemeta.WithDB(db), sqlitemeta.WithTableName(table)).Open(context.Background())
	require.NoError(t, err)
	defer r.Close()
	require.NoError(t, r.StoreMetaBatch(context.Background(), seed(time.Now())))
}

func TestDetectDSN(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ in, engine, dsn string }{
		{"postgres://u@h:5432/db?sslmode=disable", enginePostgres, "postgres://u@h:5432/db?sslmode=disable"},
		{"postgresql://h/db", enginePostgres, "postgresql://h/db"},
		{"host=127.0.0.1 user=postgres dbname=test sslmode=disable", enginePostgres, "host=127.0.0.1 user=postgres dbname=test sslmode=disable"},
		{"root@tcp(127.0.0.1:3306)/test", engineMySQL, "root@tcp(127.0.0.1:3306)/test"},
		{"u:p@unix(/run/mysqld.sock)/db", engineMySQL, "u:p@unix(/run/mysqld.sock)/db"},
		{"tcp(localhost:3306)/db", engineMySQL, "tcp(localhost:3306)/db"},
		{"mysql://u:p@h:3306/db?charset=utf8mb4", engineMySQL, "u:p@tcp(h:3306)/db?charset=utf8mb4"},
		{"/var/spool/meta.db", "", ""},
		{"meta.db", "", ""},
		{"./dir/meta.db", "", ""},
	} {
		engine, dsn, ok := detectDSN(c.in)
		require.Equal(t, c.engine != "", ok, c.in)
		require.Equal(t, c.engine, engine, c.in)
		require.Equal(t, c.dsn, dsn, c.in)
	}
}

func TestParseAge(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]time.Duration{"90m": 90 * time.Minute, "36h": 36 * time.Hour, "7d": 7 * 24 * time.Hour, "1h30m": 90 * time.Minute} {
		got, err := parseAge("x", "older-than", in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
	for _, in := range []string{"", "0", "-1h", "0d", "d", "1.5d", "x7d", "soon"} {
		_, err := parseAge("x", "older-than", in)
		require.Error(t, err, in)
		require.Equal(t, exitUsage, exitCode(err), in)
	}
}

func TestProgressBar(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	p := newBar(&buf, "copy")
	p.update(50, 100)
	line := buf.String()
	require.Contains(t, line, "copy")
	require.Contains(t, line, " 50%")
	require.Contains(t, line, "(50/100")
	// The last step is always drawn, and done ends the line.
	p.update(100, 100)
	p.done()
	last := buf.String()[len(line):]
	require.Contains(t, last, "100%")
	require.Contains(t, last, "(100/100")
	require.True(t, strings.HasSuffix(last, "\n"))

	// Stopped early: the bar stays where it was.
	buf.Reset()
	p = newBar(&buf, "purge")
	p.update(3, 10)
	p.done()
	require.Contains(t, buf.String(), "(3/10")
	require.NotContains(t, buf.String(), "100%")

	var nilBar *progressBar
	nilBar.update(1, 2) // no bar when stdout is not a terminal
	nilBar.done()
	a := &app{stderr: &buf}
	require.Nil(t, a.newProgress("x"))
}
