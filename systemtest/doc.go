// Package systemtest holds the system tests of the library: suites that put
// the store under the conditions of a real deployment rather than test one
// file's code.
//
//   - several processes on one database (race_test.go) and the busy
//     timeout between them (busy_test.go);
//   - processes killed with SIGKILL in the middle of writes, of a group
//     commit, of an upgrade and of a checkpoint (crash_test.go);
//   - hostile files and paths: not a database, truncated, corrupt, foreign
//     tables, injection in names (hostile_test.go);
//   - the upgrade of the legacy schema (legacy_test.go);
//   - the real RetrySpool queue end to end on every engine (e2e_test.go);
//   - Close under load (close_test.go) and Backup while writing
//     (backup_test.go).
//
// The child processes are the test binary itself, run by the harness of
// internal/testkit/proc; TestMain hands a child to its role. The package
// has no code of its own beyond this comment.
package systemtest
