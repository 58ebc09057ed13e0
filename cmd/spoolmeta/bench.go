package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/glebarez/sqlite"
	"gorm.io/gorm"

	"schneider.vip/retryspool/storage/meta/sqlite/internal/bench/workload"
)

var cmdBench = &command{
	name:    "bench",
	summary: "run a synthetic queue workload and print its rates and latencies",
	help: `Runs enqueue, claim, defer, retry-due, archive and delete phases with
--workers concurrent workers, on the library and on a raw database/sql
baseline in the same run, and prints ops/s, p50 and p99 per phase. --queue
also runs --messages messages, all enqueued at once, through the real
RetrySpool queue, on this store (queue-e2e) and on RetrySpool's filesystem
metadata backend (queue-e2e-fs), and checks that each backend handled every
message exactly once; --queue-only runs just that, for deep queues
(--messages 100000).

By default it uses a temporary SQLite file, removed afterwards. --path
chooses the file: it must be new or empty, or a file an earlier bench made
(which is then made anew); any other file, such as a live queue's, is
refused with exit code 2 and left untouched, since bench writes test
messages and moves messages between states. With --dsn it runs on
PostgreSQL or MySQL/MariaDB, in tables of its own. It never touches --db.

Columns: ops is the operations of the phase; ops_per_s the library's rate;
p50 and p99 the median and 99th-percentile latency of one operation
(retry-due: of one claim of 100 due messages; queue-e2e: from enqueue to
the handler's completion); floor_ops_per_s the rate of the floor, a plain
database/sql store with the same schema, indexes, count triggers and
pragmas, one statement per transaction (for queue-e2e: queue-e2e-fs); ratio
the library's rate divided by the floor's (above 1x the library is faster).
Under it, per queue run: messages enqueued, handled (distinct), handled
twice, left in the metadata store, and the process's peak resident memory
during the run (Linux).`,
}

func init() { cmdBench.run = runBench }

type benchResultJSON struct {
	Op             string  `json:"op"`
	Ops            int     `json:"ops"`
	OpsPerSec      float64 `json:"ops_per_sec"`
	P50ns          int64   `json:"p50_ns"`
	P99ns          int64   `json:"p99_ns"`
	FloorOpsPerSec float64 `json:"floor_ops_per_sec,omitempty"`
	Ratio          float64 `json:"ratio,omitempty"`
	// Baseline names what the floor fields measured when it is another
	// result: "queue-e2e-fs" for queue-e2e.
	Baseline string          `json:"baseline,omitempty"`
	Queue    *benchQueueJSON `json:"queue,omitempty"`
}

// benchQueueJSON is what a queue run counted.
type benchQueueJSON struct {
	Enqueued     int   `json:"enqueued"`
	Handled      int   `json:"handled"`
	HandledTwice int   `json:"handled_twice"`
	Left         int64 `json:"left"`
	PeakRSS      int64 `json:"peak_rss_bytes,omitempty"`
}

type benchJSON struct {
	Engine      string            `json:"engine"`
	Messages    int               `json:"messages"`
	Workers     int               `json:"workers"`
	Synchronous string            `json:"synchronous,omitempty"`
	Queue       bool              `json:"queue"`
	Settings    map[string]string `json:"settings"`
	Results     []benchResultJSON `json:"results"`
}

func runBench(ctx context.Context, a *app, args []string) error {
	c := cmdBench
	fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	engine := fs.String("engine", "", "`engine`: sqlite, postgres or mysql (default: from --dsn, else sqlite)")
	path := fs.String("path", "", "SQLite `file` to run on (default: a temporary file)")
	dsn := fs.String("dsn", "", "PostgreSQL or MySQL/MariaDB `DSN`")
	messages := fs.Int("messages", workload.DefaultMessages, "`n` messages per phase")
	workers := fs.Int("workers", workload.DefaultWorkers, "`n` concurrent workers")
	sync := fs.String("synchronous", workload.DefaultSynchronous, "SQLite synchronous `mode`: OFF, NORMAL, FULL or EXTRA")
	queue := fs.Bool("queue", false, "also run the messages through the real RetrySpool queue, on this store and on its filesystem backend")
	queueOnly := fs.Bool("queue-only", false, "run only the queue, not the phases")
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := a.parse(c, fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(c, pos, 0); err != nil {
		return err
	}
	if *messages < 1 || *workers < 1 {
		return usagef(c.name, "--messages and --workers must be positive")
	}
	cfg := workload.Config{Path: *path, Messages: *messages, Workers: *workers, Synchronous: *sync, Queue: *queue, QueueOnly: *queueOnly}
	eng := strings.ToLower(*engine)
	if eng == "mariadb" {
		eng = engineMySQL
	}
	if *dsn != "" {
		detected, driverDSN, ok := detectDSN(*dsn)
		if !ok {
			return usagef(c.name, "--dsn: cannot tell the engine; give postgres://..., \"host=... dbname=...\" or user@tcp(host:3306)/db")
		}
		if eng != "" && eng != detected {
			return usagef(c.name, "--engine %s does not match the %s DSN", eng, detected)
		}
		eng, cfg.DSN = detected, driverDSN
		if *path != "" {
			return usagef(c.name, "--path is for SQLite; it cannot go with --dsn")
		}
	}
	switch eng {
	case "":
		eng = engineSQLite
	case engineSQLite:
	case enginePostgres, engineMySQL:
		if cfg.DSN == "" {
			return usagef(c.name, "--engine %s needs --dsn", eng)
		}
	default:
		return usagef(c.name, "unknown --engine %q (want sqlite, postgres or mysql)", *engine)
	}
	switch strings.ToUpper(*sync) {
	case "OFF", "NORMAL", "FULL", "EXTRA":
	default:
		return usagef(c.name, "unknown --synchronous %q (want OFF, NORMAL, FULL or EXTRA)", *sync)
	}
	cfg.Engine = eng
	if eng == engineSQLite && *path != "" {
		if err := claimBenchFile(ctx, c.name, *path); err != nil {
			return err
		}
	}

	bar := a.newProgress("bench")
	var progress func(done, total int)
	if bar != nil {
		progress = func(done, total int) { bar.update(int64(done), int64(total)) }
	}
	rep, err := workload.Run(ctx, cfg, progress)
	bar.done()
	if err != nil {
		return err
	}
	if *asJSON {
		out := benchJSON{Engine: rep.Config.Engine, Messages: rep.Config.Messages, Workers: rep.Config.Workers,
			Queue: rep.Config.Queue, Settings: rep.Settings, Results: []benchResultJSON{}}
		if rep.Config.Engine == engineSQLite {
			out.Synchronous = rep.Config.Synchronous
		}
		for _, r := range rep.Results {
			res := benchResultJSON{Op: r.Op, Ops: r.Ops, OpsPerSec: r.OpsPerSec,
				P50ns: r.P50.Nanoseconds(), P99ns: r.P99.Nanoseconds(), FloorOpsPerSec: r.FloorOpsPerSec, Ratio: r.Ratio,
				Baseline: r.Baseline}
			if q := r.Queue; q != nil {
				res.Queue = &benchQueueJSON{Enqueued: q.Enqueued, Handled: q.Handled, HandledTwice: q.Twice,
					Left: q.Left, PeakRSS: q.PeakRSS}
			}
			out.Results = append(out.Results, res)
		}
		return writeJSON(a.stdout, out)
	}
	fmt.Fprintf(a.stdout, "%s, %d messages, %d workers", rep.Config.Engine, rep.Config.Messages, rep.Config.Workers)
	if rep.Config.Engine == engineSQLite {
		fmt.Fprintf(a.stdout, ", synchronous %s", strings.ToUpper(rep.Config.Synchronous))
	}
	fmt.Fprintln(a.stdout)
	if err := rep.WriteTable(a.stdout); err != nil {
		return err
	}
	fmt.Fprint(a.stdout, benchLegend)
	if rep.Config.Queue {
		fmt.Fprint(a.stdout, benchQueueLegend)
	}
	keys := make([]string, 0, len(rep.Settings))
	for k := range rep.Settings {
		keys = append(keys, k)
	}
	if len(keys) > 0 {
		sort.Strings(keys)
		fmt.Fprintln(a.stdout, "\nsettings:")
		tw := newTable(a.stdout)
		for _, k := range keys {
			fmt.Fprintf(tw, "  %s\t%s\n", k, settingName(k, rep.Settings[k]))
		}
		return tw.Flush()
	}
	return nil
}

// benchLegend explains the columns under the table.
const benchLegend = `
ops_per_s        operations per second of the library
p50, p99         median and 99th-percentile latency of one operation
                 (retry-due: one claim of 100 due messages; queue-e2e: enqueue to handler end)
floor_ops_per_s  the same phase on the floor: plain database/sql, same schema, indexes,
                 triggers and pragmas, one statement per transaction, no group commit;
                 for queue-e2e: queue-e2e-fs, the same queue on RetrySpool's filesystem
                 metadata backend
ratio            ops_per_s / floor_ops_per_s: above 1x the library is faster
`

// benchQueueLegend explains the table of the queue runs.
const benchQueueLegend = `enqueued         messages the queue accepted
handled, twice   distinct messages the handler completed, and completions of a message
                 already handled: exactly once is handled = enqueued, twice = 0
left             messages the metadata backend still held afterwards, in any state
peak_rss         the process's peak resident memory during that run
`

// pragmaNames names the numeric values SQLite reports for its settings.
var pragmaNames = map[string][]string{
	"synchronous":  {"OFF", "NORMAL", "FULL", "EXTRA"},
	"auto_vacuum":  {"NONE", "FULL", "INCREMENTAL"},
	"foreign_keys": {"OFF", "ON"},
	"temp_store":   {"DEFAULT", "FILE", "MEMORY"},
}

// settingName shows a setting by name: "synchronous NORMAL", not "1".
func settingName(key, value string) string {
	base, _, _ := strings.Cut(key, " ")
	if names, ok := pragmaNames[base]; ok {
		if n, err := strconv.Atoi(value); err == nil && n >= 0 && n < len(names) {
			return names[n]
		}
	}
	switch base {
	case "journal_mode":
		return strings.ToUpper(value)
	case "cache_size":
		if n, err := strconv.Atoi(value); err == nil && n < 0 {
			return fmt.Sprintf("%d KiB", -n)
		} else if err == nil {
			return fmt.Sprintf("%d pages", n)
		}
	case "busy_timeout":
		if _, err := strconv.Atoi(value); err == nil {
			return value + " ms"
		}
	}
	return value
}

// benchMarker is the table bench puts into a --path file it creates, so
// that it knows the file for its own later.
const benchMarker = "spoolmeta_bench"

// claimBenchFile makes path a file bench may use: a missing or empty file
// is created with the marker; a file with the marker is removed (with its
// -wal and -shm) and created anew; any other file is refused, untouched.
func claimBenchFile(ctx context.Context, cmd, path string) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	fi, err := os.Stat(abs)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return err
	case !fi.Mode().IsRegular():
		return usagef(cmd, "--path %s is not a regular file", abs)
	case fi.Size() > 0:
		mine, err := hasBenchMarker(ctx, abs)
		if err != nil || !mine {
			why := "it was not made by spoolmeta bench"
			if err != nil {
				why = fmt.Sprintf("it cannot be read as a bench file (%v)", err)
			}
			return usagef(cmd, "--path %s exists and %s; bench writes test messages and moves messages between states, so it runs only on a new or empty file or on one it made; the file was not changed", abs, why)
		}
		for _, suffix := range []string{"", "-wal", "-shm", "-journal"} {
			if err := os.Remove(abs + suffix); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
	}
	if err := os.MkdirAll(filepath.Dir(abs), 0o750); err != nil {
		return err
	}
	db, err := gorm.Open(sqlite.Open("file:"+uriEscape(abs)+"?_pragma=busy_timeout(10000)"), gormConfig())
	if err != nil {
		return err
	}
	pool, err := db.DB()
	if err != nil {
		return err
	}
	defer pool.Close()
	// auto_vacuum first, as the library sets it on a new file.
	for _, stmt := range []string{"PRAGMA auto_vacuum = INCREMENTAL",
		"CREATE TABLE IF NOT EXISTS " + benchMarker + " (created INTEGER NOT NULL)",
		"INSERT INTO " + benchMarker + " (created) VALUES (strftime('%s', 'now'))"} {
		if err := db.WithContext(ctx).Exec(stmt).Error; err != nil {
			return fmt.Errorf("prepare %s: %w", abs, err)
		}
	}
	return nil
}

// hasBenchMarker reports whether the file holds bench's marker table,
// reading it without changing it or leaving a file beside it.
func hasBenchMarker(ctx context.Context, path string) (bool, error) {
	if err := checkSQLiteHeader(path); err != nil {
		return false, err
	}
	return fileHasTable(ctx, path, benchMarker)
}

// checkSQLiteHeader refuses a file that does not start as a SQLite
// database.
func checkSQLiteHeader(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	h := make([]byte, 16)
	if _, err := io.ReadFull(f, h); err != nil || string(h) != "SQLite format 3\x00" {
		return errors.New("not a SQLite database")
	}
	return nil
}

// uriEscape escapes what an SQLite URI gives meaning to.
func uriEscape(p string) string {
	return strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23").Replace(filepath.ToSlash(p))
}
