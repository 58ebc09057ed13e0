package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
)

// operatorUser is the account the read-only tests run spoolmeta as when
// the tests run as root: an operator who may read the spool but not
// write its directory.
const operatorUser = "spoolmeta-operator"

// operator runs the binary as a user who cannot write the spool. As root
// it runs it as operatorUser (created with useradd when missing); as
// another user it runs it as that user, the spool being made read-only
// with chmod.
type operator struct {
	cred *syscall.Credential // nil: the current user
	bin  string
}

func newOperator(t *testing.T) *operator {
	t.Helper()
	if os.Geteuid() != 0 {
		return &operator{bin: binary}
	}
	u, err := user.Lookup(operatorUser)
	if err != nil {
		out, uerr := exec.Command("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", operatorUser).CombinedOutput()
		if uerr != nil {
			t.Skipf("running as root and cannot create the user %s to test read-only access: %v: %s", operatorUser, uerr, out)
		}
		if u, err = user.Lookup(operatorUser); err != nil {
			t.Skipf("user %s: %v", operatorUser, err)
		}
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	// The test binary's directory is private to root: copy spoolmeta to a
	// directory the operator can reach.
	dir := publicDir(t)
	bin := filepath.Join(dir, "spoolmeta")
	src, err := os.Open(binary)
	require.NoError(t, err)
	defer src.Close()
	dst, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
	require.NoError(t, err)
	_, err = io.Copy(dst, src)
	require.NoError(t, err)
	require.NoError(t, dst.Close())
	return &operator{cred: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, bin: bin}
}

// publicDir is a directory everyone may read but only its owner write.
func publicDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "spoolmeta-ro-")
	require.NoError(t, err)
	require.NoError(t, os.Chmod(dir, 0o755))
	t.Cleanup(func() { os.Chmod(dir, 0o755); os.RemoveAll(dir) })
	return dir
}

func (o *operator) run(t *testing.T, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, o.bin, args...)
	cmd.Dir = "/"
	if o.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: o.cred}
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := result{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		res.code = ee.ExitCode()
	} else {
		require.NoError(t, err)
	}
	return res
}

func (o *operator) ok(t *testing.T, args ...string) string {
	t.Helper()
	res := o.run(t, args...)
	require.Equal(t, 0, res.code, "spoolmeta %v as the operator\nstdout: %s\nstderr: %s", args, res.stdout, res.stderr)
	return res.stdout
}

// lockDown makes the spool read-only for the operator: as root the files
// are root's, so only their modes matter; as another user the modes are
// the only barrier. It then proves the barrier holds, so that the test
// cannot pass because permissions were never checked (root's bypass).
func lockDown(t *testing.T, o *operator, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	for _, e := range entries {
		require.NoError(t, os.Chmod(filepath.Join(dir, e.Name()), 0o444))
	}
	mode := os.FileMode(0o755)
	if o.cred == nil {
		mode = 0o555
	}
	require.NoError(t, os.Chmod(dir, mode))
	res := o.run(t, "move", "inc-old", "incoming", "hold", "--db", filepath.Join(dir, "meta.db"))
	require.NotEqual(t, 0, res.code, "the operator could write the spool: the test would prove nothing\n%s", res.stderr)
}

func listing(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return out
}

// readOnlyCommands are what an operator with read access runs.
func readOnlyCommands(t *testing.T, o *operator, db, backupDir string, n int) {
	t.Helper()
	require.Contains(t, o.ok(t, "stats", "--db", db), "total     "+strconv.Itoa(n))
	require.Contains(t, o.ok(t, "list", "deferred", "--db", db), "def-due1")
	require.Contains(t, o.ok(t, "show", "def-due1", "--db", db), "451 try again later")
	require.Contains(t, o.ok(t, "check", "--integrity", "quick", "--db", db), "no problems found")
	require.Contains(t, o.ok(t, "purge", "bounce", "--older-than", "3d", "--dry-run", "--db", db), "would delete 2")
	require.Contains(t, o.ok(t, "requeue-stale", "--older-than", "1h", "--dry-run", "--db", db), "would requeue 1")
	o.ok(t, "backup", filepath.Join(backupDir, "sub", "copy.db"), "--db", db)
}

// TestReadOnlyStopped: with the queue stopped (no -wal), an operator who
// can read the file but not write its directory inspects it; the file is
// unchanged and no file appears beside it.
func TestReadOnlyStopped(t *testing.T) {
	t.Parallel()
	o := newOperator(t)
	dir := publicDir(t)
	db := filepath.Join(dir, "meta.db")
	r, err := sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(db)).Open(context.Background())
	require.NoError(t, err)
	require.NoError(t, r.StoreMetaBatch(context.Background(), seed(time.Now())))
	require.NoError(t, r.Close())
	lockDown(t, o, dir)
	before, files := fileSHA(t, db), listing(t, dir)

	backups := publicDir(t)
	require.NoError(t, os.Chmod(backups, 0o777))
	readOnlyCommands(t, o, db, backups, len(seed(time.Now())))
	require.Equal(t, before, fileSHA(t, db))
	require.Equal(t, files, listing(t, dir), "files appeared beside the database")
}

// TestReadOnlyRunning: while the queue runs (its -wal and -shm exist and
// are readable), the operator sees every committed write, as the sqlite3
// shell does, and leaves no file behind.
func TestReadOnlyRunning(t *testing.T) {
	t.Parallel()
	o := newOperator(t)
	dir := publicDir(t)
	db := filepath.Join(dir, "meta.db")
	r, err := sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(db)).Open(context.Background())
	require.NoError(t, err)
	defer r.Close()
	require.NoError(t, r.StoreMetaBatch(context.Background(), seed(time.Now())))
	require.NoError(t, r.StoreMeta(context.Background(), "late", metastorage.MessageMetadata{State: metastorage.StateHold, Created: time.Now()}))
	require.FileExists(t, db+"-wal")
	require.FileExists(t, db+"-shm")
	// The files stay writable for the queue (root, or the owner); the
	// operator may only read them.
	mode := os.FileMode(0o755)
	if o.cred == nil {
		t.Skip("not root: the running queue needs its directory writable, which would let the operator write too")
	}
	for _, f := range []string{db, db + "-wal", db + "-shm"} {
		require.NoError(t, os.Chmod(f, 0o644))
	}
	require.NoError(t, os.Chmod(dir, mode))
	res := o.run(t, "move", "inc-old", "incoming", "hold", "--db", db)
	require.NotEqual(t, 0, res.code, "the operator could write the spool: the test would prove nothing")
	files := listing(t, dir)

	backups := publicDir(t)
	require.NoError(t, os.Chmod(backups, 0o777))
	readOnlyCommands(t, o, db, backups, len(seed(time.Now()))+1)
	require.Equal(t, files, listing(t, dir))
	// The queue goes on writing.
	require.NoError(t, r.MoveToState(context.Background(), "late", metastorage.StateHold, metastorage.StateIncoming))
	require.Contains(t, o.ok(t, "show", "late", "--db", db), "incoming")
}
