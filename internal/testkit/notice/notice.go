// Package notice tells someone running "go test ./..." in a terminal,
// in one line, which server tests were skipped and how to run them: go
// test shows a passing package's output only with -v, so the line goes to
// the terminal itself, once per go test run.
package notice

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Env names the server DSN variables the server tests need.
var Env = []struct{ Engine, Var string }{
	{"PostgreSQL", "TEST_POSTGRES_DSN"},
	{"MariaDB/MySQL", "TEST_MYSQL_DSN"},
}

// Line is the notice, or "" when every server DSN is set.
func Line() string {
	var missing []string
	for _, e := range Env {
		if os.Getenv(e.Var) == "" {
			missing = append(missing, e.Engine)
		}
	}
	if len(missing) == 0 {
		return ""
	}
	return fmt.Sprintf("note: the %s tests were skipped; run them with TEST_POSTGRES_DSN=\"host=127.0.0.1 user=postgres dbname=test sslmode=disable\" TEST_MYSQL_DSN=\"root@tcp(127.0.0.1:3306)/test\" go test ./... (see README, Engines)",
		strings.Join(missing, " and "))
}

// Print writes Line to the terminal of the go test run, once for all the
// packages of that run (go test starts the test binaries as its children),
// and only when there is a terminal: CI logs stay as they are.
func Print() {
	line := Line()
	if line == "" {
		return
	}
	marker := filepath.Join(os.TempDir(), "retryspool-meta-server-notice-"+strconv.Itoa(os.Getppid()))
	f, err := os.OpenFile(marker, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return // another package of this run has told already
	}
	f.Close()
	tty, err := os.OpenFile("/dev/tty", os.O_WRONLY, 0)
	if err != nil {
		return
	}
	defer tty.Close()
	fmt.Fprintln(tty, line)
}
