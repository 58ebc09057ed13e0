package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"

	"schneider.vip/retryspool/storage/meta/sqlite/internal/bench/workload"
)

var cmdBench = &command{
	name:    "bench",
	summary: "run a synthetic queue workload and print its rates and latencies",
	help: `Runs enqueue, claim, defer, retry-due, archive and delete phases with
--workers concurrent workers, on the library and on a raw database/sql
baseline in the same run, and prints ops/s, p50 and p99 per phase. --queue
also runs messages through the real RetrySpool queue.

By default it uses a temporary SQLite file, removed afterwards; --path
chooses the file. With --dsn it runs on PostgreSQL or MySQL/MariaDB, in
tables of its own. It never touches --db.`,
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
	queue := fs.Bool("queue", false, "also run the messages through the real RetrySpool queue")
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
	cfg := workload.Config{Path: *path, Messages: *messages, Workers: *workers, Synchronous: *sync, Queue: *queue}
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
			out.Results = append(out.Results, benchResultJSON{Op: r.Op, Ops: r.Ops, OpsPerSec: r.OpsPerSec,
				P50ns: r.P50.Nanoseconds(), P99ns: r.P99.Nanoseconds(), FloorOpsPerSec: r.FloorOpsPerSec, Ratio: r.Ratio})
		}
		return writeJSON(a.stdout, out)
	}
	fmt.Fprintf(a.stdout, "%s, %d messages, %d workers", rep.Config.Engine, rep.Config.Messages, rep.Config.Workers)
	if rep.Config.Engine == engineSQLite {
		fmt.Fprintf(a.stdout, ", synchronous=%s", rep.Config.Synchronous)
	}
	fmt.Fprintln(a.stdout)
	if err := rep.WriteTable(a.stdout); err != nil {
		return err
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
			fmt.Fprintf(tw, "  %s\t%s\n", k, rep.Settings[k])
		}
		return tw.Flush()
	}
	return nil
}
