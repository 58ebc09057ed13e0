// Command spoolmeta inspects and repairs a RetrySpool metadata store: a
// SQLite file made by schneider.vip/retryspool/storage/meta/sqlite, or the
// same tables on PostgreSQL or MySQL/MariaDB.
//
// Run "spoolmeta help" for the commands and "spoolmeta help COMMAND" for
// one command's flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"

	metastorage "schneider.vip/retryspool/storage/meta"

	sqlitemeta "schneider.vip/retryspool/storage/meta/sqlite"
)

// Exit codes.
const (
	exitOK       = 0
	exitError    = 1
	exitUsage    = 2
	exitNotFound = 3
	exitConflict = 4
)

const overview = `spoolmeta inspects and repairs a RetrySpool metadata store: a SQLite file
made by schneider.vip/retryspool/storage/meta/sqlite, or its tables on
PostgreSQL or MySQL/MariaDB.

Usage:
  spoolmeta COMMAND [flags] [arguments]
  spoolmeta help COMMAND        (or: spoolmeta COMMAND --help)

Commands:
%s
Database flags, accepted by every command but bench (see "spoolmeta help bench"):
  --db PATH      SQLite file (default %s); must exist, except for copy and bench
  --dsn DSN      a server instead of a file, told apart by its form:
                   PostgreSQL:     postgres://user@host:5432/db or "host=... user=... dbname=..."
                   MySQL/MariaDB:  user:password@tcp(host:3306)/db or mysql://user@host:3306/db
                 (--db and --dsn together is a usage error)
  --table NAME   message table (default %s)
  --json         print JSON for scripts instead of tables; errors too, on stderr

stats, list, show, backup, check, and purge and requeue-stale with --dry-run
open a SQLite file read-only: they need no write access to it or its
directory, and leave no file behind.

States: incoming, active, deferred, hold, bounce, archived.
Flags may come before or after the arguments; both -flag and --flag work.

Exit codes:
  0  success
  1  any other error (database unreachable or busy, I/O error, ...)
  2  usage error: unknown command or flag, bad argument or combination
  3  not found: the message, database file, table or copy source does not exist
  4  state conflict: the message is not in the state the command expected
  130  stopped by Ctrl-C (143: SIGTERM) after the batch in flight committed or
       rolled back; a second Ctrl-C exits at once
`

// command is one subcommand.
type command struct {
	name    string
	args    string // positional arguments, for the usage line
	summary string
	help    string // more text after the usage line
	// run parses args with the command's own FlagSet and does the work.
	run func(ctx context.Context, a *app, args []string) error
}

var commands []*command

func findCommand(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

func commandList() string {
	var b strings.Builder
	for _, c := range commands {
		left := c.name
		if c.args != "" {
			left += " " + c.args
		}
		fmt.Fprintf(&b, "  %-22s %s\n", left, c.summary)
	}
	return b.String()
}

// app is what the commands write to.
type app struct {
	stdout, stderr io.Writer
	// json: the command line asked for JSON, so errors are JSON too.
	json bool
	// tty reports whether stdout is a terminal: progress bars are drawn
	// (on stderr) only then.
	tty bool
}

// Exit codes after a signal, as a shell reports a process killed by it.
const (
	exitInterrupt = 130 // 128 + SIGINT
	exitTerminate = 143 // 128 + SIGTERM
)

// main runs the command. The first SIGINT or SIGTERM cancels it: it stops
// at its next clean point (a batch commits or rolls back whole) and the
// process exits with 130 (SIGINT) or 143 (SIGTERM); a second one exits at
// once.
func main() {
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	var got atomic.Value
	go func() {
		sig := <-sigs
		got.Store(sig)
		cancel()
		<-sigs
		fmt.Fprintln(os.Stderr, "spoolmeta: interrupted again, exiting at once")
		os.Exit(exitCodeOf(sig))
	}()
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	if sig, ok := got.Load().(os.Signal); ok {
		fmt.Fprintf(os.Stderr, "spoolmeta: stopped by %v\n", sig)
		code = exitCodeOf(sig)
	}
	cancel()
	os.Exit(code)
}

func exitCodeOf(sig os.Signal) int {
	if sig == syscall.SIGTERM {
		return exitTerminate
	}
	return exitInterrupt
}

// run executes one command line and returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	a := &app{stdout: stdout, stderr: stderr, tty: isTerminal(stdout), json: wantsJSON(args)}
	if len(args) == 0 {
		fmt.Fprintf(stderr, overview, commandList(), defaultDBPath, defaultTable)
		return exitUsage
	}
	name, rest := args[0], args[1:]
	switch name {
	case "help", "-h", "-help", "--help":
		if name == "help" && len(rest) > 0 {
			c := findCommand(rest[0])
			if c == nil {
				fmt.Fprintf(stderr, "spoolmeta: unknown command %q; run 'spoolmeta help'\n", rest[0])
				return exitUsage
			}
			return a.finish(c.run(ctx, a, []string{"--help"}))
		}
		fmt.Fprintf(stdout, overview, commandList(), defaultDBPath, defaultTable)
		return exitOK
	}
	c := findCommand(name)
	if c == nil {
		fmt.Fprintf(stderr, "spoolmeta: unknown command %q; run 'spoolmeta help'\n", name)
		return exitUsage
	}
	return a.finish(c.run(ctx, a, rest))
}

// finish prints err and maps it to an exit code.
func (a *app) finish(err error) int {
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	code := exitCode(err)
	if a.json {
		// One JSON object on stderr, so that stdout holds only results.
		_ = writeJSON(a.stderr, errorJSON{Error: err.Error(), Kind: exitKinds[code], ExitCode: code})
		return code
	}
	fmt.Fprintf(a.stderr, "spoolmeta: %v\n", err)
	var ue *usageError
	if errors.As(err, &ue) && ue.cmd != "" {
		fmt.Fprintf(a.stderr, "run 'spoolmeta help %s' for its usage\n", ue.cmd)
	}
	return code
}

// errorJSON is how an error is printed with --json.
type errorJSON struct {
	Error    string `json:"error"`
	Kind     string `json:"kind"`
	ExitCode int    `json:"exit_code"`
}

var exitKinds = map[int]string{
	exitError: "error", exitUsage: "usage", exitNotFound: "not_found", exitConflict: "state_conflict",
}

// wantsJSON reports whether the command line has --json (before a lone
// "--"), whatever its other flags: errors found while parsing them are
// then JSON too.
func wantsJSON(args []string) bool {
	for _, arg := range args {
		switch arg {
		case "--":
			return false
		case "-json", "--json", "-json=true", "--json=true", "-json=1", "--json=1":
			return true
		}
	}
	return false
}

// errNotFound marks a database, table or copy source that does not exist.
var errNotFound = errors.New("not found")

// usageError is a command line the command cannot run.
type usageError struct {
	cmd string
	msg string
}

func (e *usageError) Error() string { return e.msg }

func usagef(cmd, format string, args ...any) error {
	return &usageError{cmd: cmd, msg: fmt.Sprintf(format, args...)}
}

func exitCode(err error) int {
	var ue *usageError
	switch {
	case errors.As(err, &ue), errors.Is(err, sqlitemeta.ErrInvalidInput), errors.Is(err, metastorage.ErrInvalidState):
		return exitUsage
	case errors.Is(err, metastorage.ErrMessageNotFound), errors.Is(err, errNotFound):
		return exitNotFound
	case errors.Is(err, metastorage.ErrStateConflict):
		return exitConflict
	}
	return exitError
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	if err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		return false
	}
	// /dev/null is a character device too.
	null, err := os.Stat(os.DevNull)
	return err != nil || !os.SameFile(fi, null)
}

// newFlags returns the FlagSet of command c with the database flags.
func (a *app) newFlags(c *command) (*flag.FlagSet, *connFlags) {
	fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cf := &connFlags{fs: fs}
	fs.StringVar(&cf.db, "db", defaultDBPath, "SQLite `file`")
	fs.StringVar(&cf.dsn, "dsn", "", "PostgreSQL or MySQL/MariaDB `DSN` instead of a SQLite file")
	fs.StringVar(&cf.table, "table", defaultTable, "message `table`")
	fs.BoolVar(&cf.json, "json", false, "print JSON")
	return fs, cf
}

// parse parses args with fs, accepting flags before, between and after the
// positional arguments (a lone "--" ends the flags). It writes the usage
// to stdout for --help and returns flag.ErrHelp, and wraps other errors as
// usage errors.
func (a *app) parse(c *command, fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		err := fs.Parse(args)
		if errors.Is(err, flag.ErrHelp) {
			a.printUsage(a.stdout, c, fs)
			return nil, flag.ErrHelp
		}
		if err != nil {
			return nil, usagef(c.name, "%s: %v", c.name, err)
		}
		rest := fs.Args()
		consumed := len(args) - len(rest)
		if consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// parseOne parses the flags and the one argument of a command.
func (a *app) parseOne(c *command, fs *flag.FlagSet, args []string) (string, error) {
	pos, err := a.parse(c, fs, args)
	if err != nil {
		return "", err
	}
	if err := wantArgs(c, pos, 1); err != nil {
		return "", err
	}
	return pos[0], nil
}

// parseState parses the flags and the one argument of a command that
// names a state.
func (a *app) parseState(c *command, fs *flag.FlagSet, args []string) (metastorage.QueueState, error) {
	arg, err := a.parseOne(c, fs, args)
	if err != nil {
		return 0, err
	}
	return parseState(c.name, arg)
}

// wantArgs checks the number of positional arguments.
func wantArgs(c *command, pos []string, n int) error {
	if len(pos) != n {
		return usagef(c.name, "%s takes %d argument(s) (%s), got %d", c.name, n, c.args, len(pos))
	}
	return nil
}

func (a *app) printUsage(w io.Writer, c *command, fs *flag.FlagSet) {
	line := "spoolmeta " + c.name
	if c.args != "" {
		line += " " + c.args
	}
	fmt.Fprintf(w, "Usage: %s [flags]\n\n%s\n", line, c.summary)
	if c.help != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimRight(c.help, "\n"))
	}
	fmt.Fprintf(w, "\nFlags:\n")
	var names []string
	fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
	sort.Strings(names)
	for _, n := range names {
		f := fs.Lookup(n)
		kind, usage := flag.UnquoteUsage(f)
		left := "--" + f.Name
		if kind != "" {
			left += " " + kind
		}
		def := ""
		if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" {
			def = fmt.Sprintf(" (default %s)", f.DefValue)
		}
		fmt.Fprintf(w, "  %-22s %s%s\n", left, usage, def)
	}
	fmt.Fprintf(w, "\nExit codes: 0 ok, 1 error, 2 usage error, 3 not found, 4 state conflict, 130 interrupted.\n")
}
