// Package systemtest holds the suites that exercise the library as a
// whole, from outside: hostile files, read-only access, opening time,
// recovery of a damaged schema.
package systemtest
