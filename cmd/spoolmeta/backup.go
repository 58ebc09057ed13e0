package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
)

var cmdBackup = &command{
	name:    "backup",
	args:    "FILE",
	summary: "write a consistent copy of a live SQLite database to FILE",
	help: `FILE must not exist; its directory is created when missing. Writers
may go on during the backup, and it needs only read access to the
database. For
PostgreSQL and MySQL/MariaDB use the server's own tools (pg_dump,
mariadb-dump).`,
}

var cmdCopy = &command{
	name:    "copy",
	summary: "copy every message of another store into this one, then verify",
	help: `--from is one of:
  fs:DIR         RetrySpool's filesystem metadata store in DIR
  sqlite:PATH    a SQLite file of this library (or just PATH)
  a server DSN   as for --dsn
The destination is --db or --dsn (created when missing). Messages that are
already there are replaced, so an interrupted copy can simply be run again.
Stop the queue that uses the source first. A source file of the earlier
raw-SQL RetrySpool SQLite backend is upgraded in place when opened.`,
}

func runBackup(ctx context.Context, a *app, args []string) error {
	c := cmdBackup
	fs, cf := a.newFlags(c)
	arg, err := a.parseOne(c, fs, args)
	if err != nil {
		return err
	}
	dst, err := filepath.Abs(arg)
	if err != nil {
		return err
	}
	return withStore(ctx, c, cf, readOnly, func(s *store) error {
		if s.engine == engineSQLite {
			// A missing directory is created, as for --db.
			if err := os.MkdirAll(filepath.Dir(dst), 0o750); err != nil {
				return fmt.Errorf("backup: cannot create the directory of %s: %w", dst, err)
			}
		}
		if err := s.r.Backup(ctx, dst); err != nil {
			return err
		}
		size := fileSize(dst)
		if cf.json {
			return writeJSON(a.stdout, map[string]any{"source": s.path, "backup": dst, "bytes": size})
		}
		fmt.Fprintf(a.stdout, "backed up %s to %s (%s)\n", s.describe(), dst, fmtBytes(size))
		return nil
	})
}

type copyJSON struct {
	Source      string           `json:"source"`
	Destination string           `json:"destination"`
	Copied      int64            `json:"copied"`
	PerState    map[string]int64 `json:"per_state"`
}

func runCopy(ctx context.Context, a *app, args []string) error {
	c := cmdCopy
	fs, cf := a.newFlags(c)
	from := fs.String("from", "", "the `source`: fs:DIR, sqlite:PATH, PATH or a server DSN; required")
	fromTable := fs.String("from-table", defaultTable, "message `table` of a SQLite or server source")
	batch := fs.Int("batch", sqlitemeta.DefaultCopyBatchSize, "`n` messages per transaction")
	pos, err := a.parse(c, fs, args)
	if err != nil {
		return err
	}
	if err := wantArgs(c, pos, 0); err != nil {
		return err
	}
	if *from == "" {
		return usagef(c.name, "copy needs --from")
	}
	src, err := openSource(ctx, c.name, *from, *fromTable)
	if err != nil {
		return err
	}
	defer src.close()
	return withStore(ctx, c, cf, create, func(s *store) error {
		if src.path != "" && src.path == s.path && src.table == s.table {
			return usagef(c.name, "source and destination are the same table of %s", s.path)
		}
		bar := a.newProgress("copy")
		opts := sqlitemeta.CopyOptions{BatchSize: *batch}
		if bar != nil {
			opts.Progress = bar.update
		}
		report, err := sqlitemeta.Copy(ctx, src.b, s.r, opts)
		bar.done()
		if err != nil {
			return fmt.Errorf("%w (%d copied before the error)", err, report.Copied)
		}
		out := copyJSON{Source: src.desc, Destination: s.describe(), Copied: report.Copied, PerState: map[string]int64{}}
		for st := metastorage.StateIncoming; st <= metastorage.StateArchived; st++ {
			out.PerState[st.String()] = report.PerState[st]
		}
		if cf.json {
			return writeJSON(a.stdout, out)
		}
		fmt.Fprintf(a.stdout, "copied %d messages from %s to %s, verified\n", report.Copied, src.desc, s.describe())
		tw := newTable(a.stdout)
		fmt.Fprintln(tw, "STATE\tCOPIED")
		for st := metastorage.StateIncoming; st <= metastorage.StateArchived; st++ {
			fmt.Fprintf(tw, "%s\t%d\n", st, report.PerState[st])
		}
		return tw.Flush()
	})
}
