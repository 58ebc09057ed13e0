// Package proc runs a test binary again as child processes, for tests in
// which several processes race on one database.
//
// The parent starts children with Start; each is the same test binary,
// told by an environment variable which role to play and told by
// -test.run=^$ to run no test, so a TestMain that does not know the role
// runs nothing. TestMain hands a child to its role when Role is not empty.
//
// A child opens what it needs, calls Ready, which reports to the parent and
// waits until the parent releases every child at once with Go, then does its
// work and reports results with Emit. The parent reads them from Wait.
package proc

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// EnvRole names the role of a child process; it is empty in the parent.
const EnvRole = "SQLITEMETA_TEST_CHILD_ROLE"

// readyLine and goLine are the start barrier's protocol.
const (
	readyLine = "proc:ready"
	goLine    = "proc:go"
	prefix    = "proc:emit "
)

// Role returns the role this process was started with, or "" when it is
// not a child.
func Role() string { return os.Getenv(EnvRole) }

// Param returns a parameter the parent passed to this child.
func Param(name string) string { return os.Getenv("SQLITEMETA_TEST_CHILD_" + name) }

// Ready tells the parent that the child is set up and waits for Go. It
// fails when the parent goes away first.
func Ready() error {
	fmt.Println(readyLine)
	line, err := bufio.NewReader(os.Stdin).ReadString('\n')
	if err != nil {
		return fmt.Errorf("proc: waiting for the parent: %w", err)
	}
	if strings.TrimSpace(line) != goLine {
		return fmt.Errorf("proc: unexpected line %q from the parent", line)
	}
	return nil
}

// Emitter writes results to the parent; it is safe for concurrent use.
type Emitter struct {
	mu sync.Mutex
	w  *bufio.Writer
}

// NewEmitter returns an emitter on standard output.
func NewEmitter() *Emitter { return &Emitter{w: bufio.NewWriter(os.Stdout)} }

// Emit sends one result (a single line, without newlines).
func (e *Emitter) Emit(result string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.w.WriteString(prefix + result + "\n")
}

// Flush writes what is buffered.
func (e *Emitter) Flush() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.w.Flush()
}

// Child is a running child process.
type Child struct {
	name   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout *bufio.Reader
	stderr bytes.Buffer
	cancel context.CancelFunc
}

// Start starts the test binary as a child in role, with params as its
// parameters (read with Param). The child is killed if it outlives
// timeout or the test.
func Start(tb testing.TB, name, role string, params map[string]string, timeout time.Duration) *Child {
	tb.Helper()
	exe, err := os.Executable()
	if err != nil {
		tb.Fatalf("proc: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	cmd := exec.CommandContext(ctx, exe, "-test.run=^$", "-test.count=1")
	cmd.Env = append(os.Environ(), EnvRole+"="+role)
	for k, v := range params {
		cmd.Env = append(cmd.Env, "SQLITEMETA_TEST_CHILD_"+k+"="+v)
	}
	c := &Child{name: name, cmd: cmd, cancel: cancel}
	cmd.Stderr = &c.stderr
	if c.stdin, err = cmd.StdinPipe(); err != nil {
		cancel()
		tb.Fatalf("proc: %v", err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		cancel()
		tb.Fatalf("proc: %v", err)
	}
	c.stdout = bufio.NewReader(out)
	if err := cmd.Start(); err != nil {
		cancel()
		tb.Fatalf("proc: start %s: %v", name, err)
	}
	tb.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
	})
	return c
}

// WaitReady waits until the child has called Ready.
func (c *Child) WaitReady() error {
	for {
		line, err := c.stdout.ReadString('\n')
		if strings.TrimSpace(line) == readyLine {
			return nil
		}
		if err != nil {
			_ = c.cmd.Wait()
			return fmt.Errorf("proc: %s ended before it was ready: %w\n%s%s", c.name, err, line, c.stderr.String())
		}
	}
}

// Go releases a child that is ready.
func (c *Child) Go() error {
	_, err := io.WriteString(c.stdin, goLine+"\n")
	return err
}

// Wait waits for the child to end and returns what it emitted. A child that
// exits with an error yields an error that includes its standard error.
func (c *Child) Wait() ([]string, error) {
	defer c.cancel()
	var results []string
	var readErr error
	for {
		line, err := c.stdout.ReadString('\n')
		if rest, ok := strings.CutPrefix(strings.TrimRight(line, "\n"), prefix); ok {
			results = append(results, rest)
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				readErr = err
			}
			break
		}
	}
	c.stdin.Close()
	if err := c.cmd.Wait(); err != nil {
		return results, fmt.Errorf("proc: %s: %w\nstderr:\n%s", c.name, err, c.stderr.String())
	}
	return results, readErr
}
