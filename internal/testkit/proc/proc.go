// Package proc runs a test binary again as child processes, for the tests
// in which several processes share one database: races between processes,
// a process killed in the middle of its writes, a process that holds the
// write lock on command.
//
// The parent starts a child with Start: the same test binary, told by an
// environment variable which role to play (and given its parameters the
// same way) and told by -test.run=^$ to run no test. The TestMain of the
// package hands a child to its role:
//
//	func TestMain(m *testing.M) {
//		if proc.Role() != "" {
//			os.Exit(proc.Main(map[string]func() error{"crash": crashChild}))
//		}
//		...
//	}
//
// The two talk in lines. A child writes lines to its standard output with
// Say, each in one unbuffered write, so that what the parent read was
// written before the child died; the parent collects every line as it
// comes (Lines, WaitLine, WaitCount). A role that fails makes its child say
// "ERR <error>" and exit 1; WaitLine, Kill and Finish fail the test on such
// a line. The parent writes commands to the child's standard input with
// Tell; the child reads them with Command. Ready and Go are a start barrier
// on top: the child says READY and waits for "go", so that the parent can
// release several children at once.
//
// A child never outlives its parent: it exits (status 2) when its standard
// input closes, and after five minutes in any case.
package proc

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// EnvRole names the role of a child process; it is empty in the parent.
const EnvRole = "SQLITEMETA_TEST_CHILD_ROLE"

// envParam prefixes the names of the parameters' environment variables.
const envParam = "SQLITEMETA_TEST_CHILD_"

// Lines of the protocol.
const (
	// ReadyLine is what Ready says; the parent waits for it with
	// WaitReady.
	ReadyLine = "READY"
	// ErrPrefix starts the line of a child whose role failed.
	ErrPrefix = "ERR"
	goLine    = "go"
)

// Wait bounds every wait of the parent for a child: a deadline against a
// hang, not a speed requirement.
const Wait = 60 * time.Second

// lifetime is how long a child lives at most.
const lifetime = 5 * time.Minute

// --- The child ----------------------------------------------------------

// Role returns the role this process was started with, or "" when it is
// not a child.
func Role() string { return os.Getenv(EnvRole) }

// Param returns a parameter the parent passed to this child.
func Param(name string) string { return os.Getenv(envParam + name) }

// ParamInt returns an integer parameter, or def when it is not set or not a
// number.
func ParamInt(name string, def int) int {
	if v, err := strconv.Atoi(Param(name)); err == nil {
		return v
	}
	return def
}

// commands are the lines the parent wrote to the child's standard input.
var commands = make(chan string)

// Main runs the role of this child process, one of roles, and returns the
// exit code: 0 when the role returned nil, 1 (after saying "ERR <error>")
// when it failed or is unknown.
func Main(roles map[string]func() error) int {
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			commands <- sc.Text()
		}
		os.Exit(2) // the parent went away
	}()
	time.AfterFunc(lifetime, func() { os.Exit(3) })
	role := Role()
	fn, ok := roles[role]
	err := fmt.Errorf("unknown role %q", role)
	if ok {
		err = fn()
	}
	if err != nil {
		Say(ErrPrefix + " " + strings.ReplaceAll(err.Error(), "\n", " "))
		return 1
	}
	return 0
}

// Say writes one line to the parent, in one unbuffered write. It is safe
// for concurrent use.
func Say(line string) {
	_, _ = os.Stdout.Write([]byte(line + "\n"))
}

// Command returns the next line the parent sent with Tell.
func Command() string { return <-commands }

// Ready says READY and waits for the parent's Go.
func Ready() error {
	Say(ReadyLine)
	if line := Command(); line != goLine {
		return fmt.Errorf("proc: unexpected line %q from the parent, want %q", line, goLine)
	}
	return nil
}

// --- The parent ---------------------------------------------------------

// Child is a running child process and what it said.
type Child struct {
	name   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stderr bytes.Buffer
	eof    chan struct{} // closed when the child's standard output ends

	mu    sync.Mutex
	lines []string
	next  int // first line WaitLine has not looked at
}

// Start starts the test binary as a child named name (for messages) in
// role, with params as its parameters (read with Param). The child is
// killed when the test ends, if it still runs.
func Start(tb testing.TB, name, role string, params map[string]string) *Child {
	tb.Helper()
	exe, err := os.Executable()
	if err != nil {
		tb.Fatalf("proc: %v", err)
	}
	c := &Child{name: name, eof: make(chan struct{})}
	c.cmd = exec.Command(exe, "-test.run=^$", "-test.count=1")
	c.cmd.Env = append(os.Environ(), EnvRole+"="+role)
	for k, v := range params {
		c.cmd.Env = append(c.cmd.Env, envParam+k+"="+v)
	}
	c.cmd.Stderr = &c.stderr
	if c.stdin, err = c.cmd.StdinPipe(); err != nil {
		tb.Fatalf("proc: %v", err)
	}
	out, err := c.cmd.StdoutPipe()
	if err != nil {
		tb.Fatalf("proc: %v", err)
	}
	if err := c.cmd.Start(); err != nil {
		tb.Fatalf("proc: start %s: %v", name, err)
	}
	go func() {
		defer close(c.eof)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		for sc.Scan() {
			c.mu.Lock()
			c.lines = append(c.lines, sc.Text())
			c.mu.Unlock()
		}
	}()
	tb.Cleanup(func() {
		if c.cmd.ProcessState == nil {
			_ = c.cmd.Process.Kill()
			<-c.eof
			_ = c.cmd.Wait()
		}
	})
	return c
}

// Lines returns a copy of every line the child said so far.
func (c *Child) Lines() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.lines...)
}

// Stderr returns the child's standard error once it has ended.
func (c *Child) Stderr() string {
	if c.cmd.ProcessState == nil {
		return "(still running)"
	}
	return c.stderr.String()
}

// WaitLine waits for the next line that starts with prefix and returns it;
// it fails the test on a line starting with ERR, or when the child ends
// first or does not say it within Wait.
func (c *Child) WaitLine(tb testing.TB, prefix string) string {
	tb.Helper()
	deadline := time.Now().Add(Wait)
	for {
		c.mu.Lock()
		for ; c.next < len(c.lines); c.next++ {
			l := c.lines[c.next]
			if strings.HasPrefix(l, ErrPrefix) {
				c.mu.Unlock()
				tb.Fatalf("%s: %s\nstderr: %s", c.name, l, c.Stderr())
			}
			if strings.HasPrefix(l, prefix) {
				c.next++
				c.mu.Unlock()
				return l
			}
		}
		c.mu.Unlock()
		select {
		case <-c.eof:
			c.mu.Lock()
			more := c.next < len(c.lines)
			c.mu.Unlock()
			if !more {
				tb.Fatalf("%s ended without saying %q\nstderr: %s", c.name, prefix, c.Stderr())
			}
		case <-time.After(2 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s did not say %q within %s\nstderr: %s", c.name, prefix, Wait, c.Stderr())
		}
	}
}

// WaitCount waits until the child has said at least n lines that start
// with one of prefixes.
func (c *Child) WaitCount(tb testing.TB, n int, prefixes ...string) {
	tb.Helper()
	deadline := time.Now().Add(Wait)
	for {
		c.mu.Lock()
		got := 0
		for _, l := range c.lines {
			for _, p := range prefixes {
				if strings.HasPrefix(l, p) {
					got++
					break
				}
			}
		}
		c.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-c.eof:
			tb.Fatalf("%s ended after %d lines starting with %q\nstderr: %s", c.name, got, prefixes, c.Stderr())
		case <-time.After(2 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s said %d lines starting with %q in %s", c.name, got, prefixes, Wait)
		}
	}
}

// WaitReady waits until the child has called Ready.
func (c *Child) WaitReady(tb testing.TB) {
	tb.Helper()
	c.WaitLine(tb, ReadyLine)
}

// Tell sends the child a command, read there with Command.
func (c *Child) Tell(tb testing.TB, cmd string) {
	tb.Helper()
	if _, err := io.WriteString(c.stdin, cmd+"\n"); err != nil {
		tb.Fatalf("proc: tell %s %q: %v", c.name, cmd, err)
	}
}

// Go releases a child that waits in Ready.
func (c *Child) Go(tb testing.TB) {
	tb.Helper()
	c.Tell(tb, goLine)
}

// requireNoErr fails the test on an ERR line; c.mu is held.
func (c *Child) requireNoErr(tb testing.TB) {
	tb.Helper()
	for _, l := range c.lines {
		if strings.HasPrefix(l, ErrPrefix) {
			tb.Fatalf("%s: %s\nstderr: %s", c.name, l, c.stderr.String())
		}
	}
}

// Kill sends SIGKILL, waits for the child to die and returns everything it
// said. It fails the test if the child had ended on its own or said ERR.
func (c *Child) Kill(tb testing.TB) []string {
	tb.Helper()
	if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		tb.Fatalf("proc: kill %s: %v", c.name, err)
	}
	<-c.eof
	err := c.cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		tb.Fatalf("%s: %v", c.name, err)
	}
	if ws := ee.Sys().(syscall.WaitStatus); !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		tb.Fatalf("%s was not killed but ended: %v\nstderr: %s", c.name, err, c.stderr.String())
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.requireNoErr(tb)
	return append([]string(nil), c.lines...)
}

// Finish waits, up to Wait, for a child that ends on its own, and returns
// everything it said. It fails the test if the child fails or said ERR.
func (c *Child) Finish(tb testing.TB) []string {
	tb.Helper()
	select {
	case <-c.eof:
	case <-time.After(Wait):
		tb.Fatalf("%s did not end within %s", c.name, Wait)
	}
	err := c.cmd.Wait()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.requireNoErr(tb)
	if err != nil {
		tb.Fatalf("%s: %v\nstderr: %s", c.name, err, c.stderr.String())
	}
	return append([]string(nil), c.lines...)
}
