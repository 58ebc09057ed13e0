package systemtest

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/fixture"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/proc"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/testdb"
)

// The crash tests run the test binary again as a child process (the
// "crash" and "migrate" roles of proc) that writes to a SQLite file and
// says on stdout every call that returned nil, after it returned. The
// parent kills the child with SIGKILL at random moments, reopens the file
// and checks that every acknowledged write is there, exactly.

// Parameters of the crash, migrate and busy children.
const (
	paramDB          = "DB"
	paramSync        = "SYNC"
	paramJournal     = "JOURNAL"
	paramRound       = "ROUND"
	paramPipes       = "PIPES"
	paramBatchers    = "BATCHERS"
	paramTrap        = "TRAP"
	paramBusyTimeout = "BUSY_TIMEOUT"
)

// longRun tells whether the long variants were asked for with LONG=1.
func longRun() bool { return os.Getenv("LONG") == "1" }

// raceDetector tells whether the test binary was built with -race, under
// which the pure-Go SQLite runs many times slower; sizes scale down with
// it.
func raceDetector() bool {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "-race" {
				return s.Value == "true"
			}
		}
	}
	return false
}

// --- The writing child and its records ---------------------------------

// Each pipe goroutine of the child owns its messages and takes each through
// a fixed sequence of steps, one call each, acknowledging each step:
//
//	1 StoreMeta in incoming     2 MoveToState incoming -> active
//	3 UpdateMeta to deferred    4 MoveToState deferred -> archived (i%3 == 0)
//	5 DeleteMeta (i%6 == 0)
//
// so the record of a message is fully known from its last step, and after
// a kill each message is at its last acknowledged step or the next one.
// Batch goroutines store batches of crashBatchLen new messages with
// StoreMetaBatch, which must land whole or not at all.

const crashBatchLen = 8

func crashFinal(i int) int {
	switch {
	case i%6 == 0:
		return 5
	case i%3 == 0:
		return 4
	}
	return 3
}

func crashPipeID(round string, g, i int) string { return fmt.Sprintf("%s-p%d-%d", round, g, i) }

func crashBatchID(round string, b, i, j int) string {
	return fmt.Sprintf("%s-b%d-%d-%d", round, b, i, j)
}

// crashRecord is the record of message n after step (1 to 4).
func crashRecord(id string, n, step int) metastorage.MessageMetadata {
	created := time.Unix(1_700_000_000, int64(n)*1000+7).UTC()
	md := metastorage.MessageMetadata{
		ID: id, MaxAttempts: 5, Created: created, Updated: created,
		Size: int64(n)*17 + 3, Priority: n%7 - 3, RetryPolicyName: "crash",
		Headers: map[string]string{"id": id, "step": "stored"},
	}
	switch step {
	case 1:
		md.State = metastorage.StateIncoming
	case 2:
		md.State = metastorage.StateActive
	case 3, 4:
		md.State = metastorage.StateDeferred
		if step == 4 {
			md.State = metastorage.StateArchived
		}
		md.Attempts = 1
		md.LastError = "451 4.3.0 try again later: " + id
		md.NextRetry = created.Add(time.Hour + 3)
		md.Headers = map[string]string{"id": id, "step": "updated", "attempt": "1"}
	}
	return md
}

func crashChild() error {
	ctx := context.Background()
	round := proc.Param(paramRound)
	opts := []sqlitemeta.Option{
		sqlitemeta.WithDatabasePath(proc.Param(paramDB)),
		sqlitemeta.WithSynchronous(proc.Param(paramSync)),
		sqlitemeta.WithJournalMode(proc.Param(paramJournal)),
	}
	var repo atomic.Pointer[sqlitemeta.Repository]
	if trap := proc.Param(paramTrap); trap != "" {
		// The hook stops the writer inside the group transaction, at the
		// update of one message, and reports how many messages earlier
		// writes of the same open transaction created: the parent kills
		// the child there.
		opts = append(opts, sqlitemeta.WithTransitionHook(func(ctx context.Context, tr sqlitemeta.Transition) error {
			if tr.MessageID != trap || tr.To != metastorage.StateDeferred {
				return nil
			}
			r := repo.Load()
			var inTx, committed int64
			if err := tr.Tx.Raw("SELECT COUNT(*) FROM " + r.TableName()).Row().Scan(&inTx); err != nil {
				return err
			}
			if err := r.DB().Raw("SELECT COUNT(*) FROM " + r.TableName()).Row().Scan(&committed); err != nil {
				return err
			}
			proc.Say(fmt.Sprintf("TRAP %d", inTx-committed))
			select {} // until killed
		}))
	}
	r, err := sqlitemeta.NewFactory(opts...).Open(ctx)
	if err != nil {
		return err
	}
	repo.Store(r)
	proc.Say("READY")
	errc := make(chan error, 1)
	fail := func(err error) {
		select {
		case errc <- err:
		default:
		}
	}
	for g := 0; g < proc.ParamInt(paramPipes, 4); g++ {
		go func() {
			for i := 1; ; i++ {
				id := crashPipeID(round, g, i)
				steps := []func() error{
					func() error { return r.StoreMeta(ctx, id, crashRecord(id, i, 1)) },
					func() error {
						return r.MoveToState(ctx, id, metastorage.StateIncoming, metastorage.StateActive)
					},
					func() error { return r.UpdateMeta(ctx, id, crashRecord(id, i, 3)) },
					func() error {
						return r.MoveToState(ctx, id, metastorage.StateDeferred, metastorage.StateArchived)
					},
					func() error { return r.DeleteMeta(ctx, id) },
				}
				for k := 1; k <= crashFinal(i); k++ {
					if err := steps[k-1](); err != nil {
						fail(fmt.Errorf("%s step %d: %w", id, k, err))
						return
					}
					proc.Say(fmt.Sprintf("P %d %d %d", g, i, k))
				}
			}
		}()
	}
	for b := 0; b < proc.ParamInt(paramBatchers, 1); b++ {
		go func() {
			for i := 1; ; i++ {
				batch := make([]metastorage.MessageMetadata, crashBatchLen)
				for j := range batch {
					batch[j] = crashRecord(crashBatchID(round, b, i, j), i*crashBatchLen+j, 1)
				}
				if err := r.StoreMetaBatch(ctx, batch); err != nil {
					fail(fmt.Errorf("batch %d/%d: %w", b, i, err))
					return
				}
				proc.Say(fmt.Sprintf("B %d %d", b, i))
			}
		}()
	}
	return <-errc
}

// --- The parent ---------------------------------------------------------

// crashRound is one child's run and what it acknowledged.
type crashRound struct {
	name            string
	pipes, batchers int
	pipeAck         map[int][2]int // goroutine -> last acknowledged (message, step)
	batchAck        map[int]int    // goroutine -> last acknowledged batch
	acks            int
}

// absorb parses the child's acknowledgements, checking that each
// goroutine's follow the step sequence.
func (rd *crashRound) absorb(t *testing.T, lines []string) {
	t.Helper()
	for _, l := range lines {
		f := strings.Fields(l)
		switch {
		case len(f) == 4 && f[0] == "P":
			g, _ := strconv.Atoi(f[1])
			i, _ := strconv.Atoi(f[2])
			k, _ := strconv.Atoi(f[3])
			prev := rd.pipeAck[g]
			next := [2]int{1, 1}
			if prev[0] > 0 {
				next = [2]int{prev[0], prev[1] + 1}
				if prev[1] == crashFinal(prev[0]) {
					next = [2]int{prev[0] + 1, 1}
				}
			}
			require.Equal(t, next, [2]int{i, k}, "acknowledgement out of sequence: %q", l)
			rd.pipeAck[g] = next
			rd.acks++
		case len(f) == 3 && f[0] == "B":
			b, _ := strconv.Atoi(f[1])
			i, _ := strconv.Atoi(f[2])
			require.Equal(t, rd.batchAck[b]+1, i, "batch acknowledgement out of sequence: %q", l)
			rd.batchAck[b] = i
			rd.acks++
		case l == "READY" || strings.HasPrefix(l, "TRAP"):
		default:
			t.Fatalf("unexpected line from child: %q", l)
		}
	}
}

// crashVerify reopens the file and checks every round's messages against
// the acknowledgements, then the counters and the file's integrity. It
// returns the number of messages checked.
func crashVerify(t *testing.T, path, journal string, rounds []*crashRound) int {
	t.Helper()
	r, err := sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(path), sqlitemeta.WithJournalMode(journal)).Open(context.Background())
	require.NoError(t, err, "reopen after the kill")
	defer r.Close()
	fixture.RequireIntegrity(t, r.DB())
	fixture.RequireCounts(t, r)
	all := fixture.All(t, r)
	seen := map[string]bool{}

	// at checks that message id is at one of the allowed steps; step 0 and
	// step 5 mean absent.
	at := func(id string, n int, allowed ...int) {
		seen[id] = true
		md, ok := all[id]
		for _, k := range allowed {
			if k == 0 || k == 5 {
				if !ok {
					return
				}
				continue
			}
			if ok && crashSame(crashRecord(id, n, k), md) {
				return
			}
		}
		if !ok {
			t.Fatalf("message %s is missing; acknowledged steps allow %v", id, allowed)
		}
		t.Fatalf("message %s is %+v; acknowledged steps allow %v", id, md, allowed)
	}
	for _, rd := range rounds {
		for g := 0; g < rd.pipes; g++ {
			last := rd.pipeAck[g]
			for i := 1; i < last[0]; i++ {
				at(crashPipeID(rd.name, g, i), i, crashFinal(i))
			}
			next := 1
			if last[0] > 0 {
				if last[1] < crashFinal(last[0]) {
					// The next step may have committed before the kill.
					at(crashPipeID(rd.name, g, last[0]), last[0], last[1], last[1]+1)
					continue
				}
				at(crashPipeID(rd.name, g, last[0]), last[0], last[1])
				next = last[0] + 1
			}
			// The next message's StoreMeta may have committed.
			at(crashPipeID(rd.name, g, next), next, 0, 1)
		}
		for b := 0; b < rd.batchers; b++ {
			last := rd.batchAck[b]
			for i := 1; i <= last+1; i++ {
				present := 0
				for j := 0; j < crashBatchLen; j++ {
					id := crashBatchID(rd.name, b, i, j)
					seen[id] = true
					if md, ok := all[id]; ok {
						require.True(t, crashSame(crashRecord(id, i*crashBatchLen+j, 1), md), "batch message %s is %+v", id, md)
						present++
					}
				}
				if i <= last {
					require.Equal(t, crashBatchLen, present, "acknowledged batch %s-b%d-%d", rd.name, b, i)
				} else {
					require.Contains(t, []int{0, crashBatchLen}, present, "batch %s-b%d-%d is partly stored", rd.name, b, i)
				}
			}
		}
	}
	for id := range all {
		require.True(t, seen[id], "message %s was never written by an acknowledged or in-flight call", id)
	}
	return len(all)
}

// crashSame compares a stored record with the expected one; Updated is
// left out, since MoveToState sets it to the time of the move.
func crashSame(want, got metastorage.MessageMetadata) bool {
	eq := func(a, b map[string]string) bool {
		if len(a) != len(b) || (a == nil) != (b == nil) {
			return false
		}
		for k, v := range a {
			if w, ok := b[k]; !ok || w != v {
				return false
			}
		}
		return true
	}
	return want.ID == got.ID && want.State == got.State && want.Attempts == got.Attempts &&
		want.MaxAttempts == got.MaxAttempts && want.NextRetry.Equal(got.NextRetry) &&
		want.Created.Equal(got.Created) && want.LastError == got.LastError &&
		want.Size == got.Size && want.Priority == got.Priority && eq(want.Headers, got.Headers) &&
		want.RetryPolicyName == got.RetryPolicyName
}

// crashPlan is one child to run and how to kill it.
type crashPlan struct {
	sync, journal   string
	pipes, batchers int
	trap            bool // stop the writer inside a group transaction first
}

// crashRounds runs the plans one after the other on one file, killing each
// child and verifying everything acknowledged so far after each kill.
func crashRounds(t *testing.T, path string, plans []crashPlan) {
	var rounds []*crashRound
	acks, trapped := 0, 0
	for n, p := range plans {
		rd := &crashRound{
			name: fmt.Sprintf("r%02d", n), pipes: p.pipes, batchers: p.batchers,
			pipeAck: map[int][2]int{}, batchAck: map[int]int{},
		}
		params := map[string]string{
			paramDB: path, paramSync: p.sync, paramJournal: p.journal, paramRound: rd.name,
			paramPipes: strconv.Itoa(p.pipes), paramBatchers: strconv.Itoa(p.batchers),
		}
		trapI := 0
		if p.trap {
			trapI = 2 + rand.IntN(4)
			params[paramTrap] = crashPipeID(rd.name, 0, trapI)
		}
		c := proc.Start(t, "crash child "+rd.name, roleCrash, params)
		c.WaitLine(t, "READY")
		if p.trap {
			line := c.WaitLine(t, "TRAP")
			if open, _ := strconv.Atoi(strings.TrimPrefix(line, "TRAP ")); open > 0 {
				trapped += open
			}
			time.Sleep(time.Duration(rand.IntN(20)) * time.Millisecond)
		} else {
			// Kill once the writes are under way, at a random moment.
			c.WaitCount(t, 1+rand.IntN(40), "P ", "B ")
			time.Sleep(time.Duration(rand.IntN(150)) * time.Millisecond)
		}
		lines := c.Kill(t)
		rd.absorb(t, lines)
		if p.trap {
			// The trapped update never committed, and was never
			// acknowledged.
			require.Equal(t, [2]int{trapI, 2}, rd.pipeAck[0])
		}
		rounds = append(rounds, rd)
		acks += rd.acks
		msgs := crashVerify(t, path, p.journal, rounds)
		if p.trap {
			r := openFile(t, path, sqlitemeta.WithJournalMode(p.journal))
			md, err := r.GetMeta(context.Background(), crashPipeID(rd.name, 0, trapI))
			require.NoError(t, err)
			require.True(t, crashSame(crashRecord(md.ID, trapI, 2), md), "trapped update must have rolled back: %+v", md)
			require.NoError(t, r.Close())
		}
		t.Logf("round %s (%s, %s, %d pipes, %d batchers, trap %v): %d acknowledgements, %d messages verified",
			rd.name, p.journal, p.sync, p.pipes, p.batchers, p.trap, rd.acks, msgs)
	}
	t.Logf("%d kills, %d acknowledged writes verified; %d messages were created by uncommitted batch writes when trapped children were killed",
		len(plans), acks, trapped)
}

// TestCrashKillDuringWrites kills a child that stores, moves, updates,
// deletes and batch-stores messages, at random moments: in WAL mode with
// synchronous NORMAL (the defaults) and FULL, then with a rollback
// journal, which leaves a hot journal for the next open to roll back.
func TestCrashKillDuringWrites(t *testing.T) {
	t.Parallel()
	normal, full, rollback := 14, 3, 3
	if longRun() {
		normal, full, rollback = 45, 15, 15
	}
	var plans []crashPlan
	for i := 0; i < normal; i++ {
		plans = append(plans, crashPlan{sync: "NORMAL", journal: "WAL", pipes: 6, batchers: 2})
	}
	for i := 0; i < full; i++ {
		plans = append(plans, crashPlan{sync: "FULL", journal: "WAL", pipes: 6, batchers: 2})
	}
	for i := 0; i < rollback; i++ {
		plans = append(plans, crashPlan{sync: "FULL", journal: "DELETE", pipes: 6, batchers: 2})
	}
	crashRounds(t, testdb.SQLitePath(t), plans)
}

// TestCrashKillMidGroupCommit kills a child with many concurrent writers,
// whose writes share large group commits: at random moments, and with the
// writer stopped inside an open group transaction.
func TestCrashKillMidGroupCommit(t *testing.T) {
	t.Parallel()
	random, trapped := 4, 2
	if longRun() {
		random, trapped = 20, 10
	}
	var plans []crashPlan
	for i := 0; i < random+trapped; i++ {
		plans = append(plans, crashPlan{sync: "NORMAL", journal: "WAL", pipes: 64, batchers: 8, trap: i >= random})
	}
	crashRounds(t, testdb.SQLitePath(t), plans)
}

// --- Killed while upgrading a legacy database ----------------------------

// migrateChild opens a legacy file with the factory, which upgrades it. Its
// page cache is small, so that the upgrade's transaction spills pages to
// the WAL long before it commits: WAL content beside a file that is still
// legacy shows that a kill landed inside the upgrade.
func migrateChild() error {
	proc.Say("OPENING")
	start := time.Now()
	r, err := sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(proc.Param(paramDB)), sqlitemeta.WithCacheSize(64)).Open(context.Background())
	if err != nil {
		return err
	}
	proc.Say(fmt.Sprintf("MIGRATED %d", time.Since(start)))
	if err := r.Close(); err != nil {
		return err
	}
	proc.Say("CLOSED")
	select {} // until killed, so that every run ends the same way
}

// TestCrashKillDuringMigration kills a child while it upgrades a large
// legacy database. The file must be wholly legacy or wholly upgraded, and
// open and upgrade fully afterwards with every record kept.
func TestCrashKillDuringMigration(t *testing.T) {
	t.Parallel()
	rows, want := 40000, 3
	if raceDetector() {
		rows = 2500
	}
	if longRun() {
		rows, want = rows*5, 15
	}
	template := legacyTemplate(t, rows)
	dir := t.TempDir()

	// A first child upgrades a copy undisturbed, which tells how long an
	// upgrade takes here; the kills then fall inside that time.
	ref := filepath.Join(dir, "ref.db")
	legacyCopyFile(t, template, ref)
	c := proc.Start(t, "migrate child", roleMigrate, map[string]string{paramDB: ref})
	c.WaitLine(t, "OPENING")
	n, err := strconv.ParseInt(strings.TrimPrefix(c.WaitLine(t, "MIGRATED"), "MIGRATED "), 10, 64)
	require.NoError(t, err)
	took := time.Duration(n)
	c.WaitLine(t, "CLOSED")
	c.Kill(t)
	r := openFile(t, ref)
	legacyRequireBulk(t, r, rows)
	require.NoError(t, r.Close())

	states := map[string]int{}
	midUpgrade, kills := 0, 0
	for attempt := 0; midUpgrade < want; attempt++ {
		require.Less(t, attempt, 10*want, "too few kills landed during an upgrade (%d of %d)", midUpgrade, kills)
		path := filepath.Join(dir, fmt.Sprintf("kill-%02d.db", attempt))
		legacyCopyFile(t, template, path)
		c := proc.Start(t, "migrate child", roleMigrate, map[string]string{paramDB: path})
		c.WaitLine(t, "OPENING")
		time.Sleep(time.Duration(float64(took) * (0.1 + 0.8*rand.Float64())))
		lines := c.Kill(t)
		kills++
		finished := false
		for _, l := range lines {
			finished = finished || strings.HasPrefix(l, "MIGRATED")
		}
		// WAL frames beside the file are the upgrade's uncommitted (or
		// not yet checkpointed) writes.
		walSize := int64(0)
		if fi, err := os.Stat(path + "-wal"); err == nil {
			walSize = fi.Size()
		}
		state := legacyState(t, path, rows)
		states[state]++
		if !finished && walSize > 0 && state == "legacy" {
			midUpgrade++
		}
		r := openFile(t, path)
		legacyRequireBulk(t, r, rows)
		require.NoError(t, r.Close())
		t.Logf("kill %d: upgrade finished before the kill: %v, WAL %d bytes, file found %s", kills, finished, walSize, state)
	}
	t.Logf("legacy database of %d rows, upgrade took %s undisturbed; %d kills, %d during the upgrade; states found: %v",
		rows, took, kills, midUpgrade, states)
}

// TestCrashDuringCheckpoint recreates, deterministically, the file a
// process leaves when it dies during a WAL checkpoint: page 1 already says
// the database has all its pages, the file is not yet that long, and the
// WAL holds every page. SQLite completes such a file from the WAL; the
// factory must open it rather than call it truncated.
func TestCrashDuringCheckpoint(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "live.db")
	r := openFile(t, path)
	require.NoError(t, r.Close())
	fi, err := os.Stat(path)
	require.NoError(t, err)
	before := fi.Size()

	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=journal_mode(WAL)&_pragma=wal_autocheckpoint(0)")
	require.NoError(t, err)
	defer db.Close()
	db.SetMaxOpenConns(1)
	_, err = db.Exec(`WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000)
		INSERT INTO messages (id, state, attempts, max_attempts, next_retry, created, updated, last_error, size, priority, headers, retry_policy_name)
		SELECT printf('c%05d', x), x % 6, 0, 3, 0, x, x, printf('%0200d', x), x, 0, NULL, '' FROM c`)
	require.NoError(t, err)
	_, err = db.Exec("PRAGMA wal_checkpoint(PASSIVE)")
	require.NoError(t, err)

	// Copy the files as the dying process left them, then cut the database
	// back to its size before the checkpoint.
	crashed := filepath.Join(dir, "crashed.db")
	legacyCopyFile(t, path, crashed)
	legacyCopyFile(t, path+"-wal", crashed+"-wal")
	require.NoError(t, os.Truncate(crashed, before))
	var pageSize, pages int64
	require.NoError(t, db.QueryRow("PRAGMA page_size").Scan(&pageSize))
	require.NoError(t, db.QueryRow("PRAGMA page_count").Scan(&pages))
	require.Greater(t, pages*pageSize, before, "the header must claim more than the file holds")

	r = openFile(t, crashed)
	fixture.RequireIntegrity(t, r.DB())
	counts := fixture.RequireCounts(t, r)
	var n int64
	for _, c := range counts {
		n += c
	}
	require.Equal(t, int64(3000), n)
	md, err := r.GetMeta(context.Background(), "c02999")
	require.NoError(t, err)
	require.Equal(t, fmt.Sprintf("%0200d", 2999), md.LastError)

	// Without the WAL, the same short file is truncated beyond repair.
	lost := filepath.Join(dir, "lost.db")
	legacyCopyFile(t, path, lost)
	require.NoError(t, os.Truncate(lost, before))
	_, err = sqlitemeta.NewFactory(sqlitemeta.WithDatabasePath(lost)).Create()
	require.ErrorIs(t, err, sqlitemeta.ErrNotDatabase)
}
