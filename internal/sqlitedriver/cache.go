package sqlitedriver

import (
	"errors"
	"sort"
	"strings"

	"modernc.org/libc"
	sqlite3 "modernc.org/sqlite/lib"
)

// Sizes of the two segments of a connection's statement cache: a text
// enters the probation segment when first compiled and moves to the
// protected one when used again; the protected segment's least recently
// used statement moves back to probation when it overflows, and
// probation's least recently used one is finalized.
const (
	protectedSize = 96
	probationSize = 32
)

// ghostSize bounds how many evicted texts keep their compile counts, so
// that Stats can tell a statement compiled again after an eviction.
const ghostSize = 512

// cstmt is a compiled statement, and an entry of the cache when cached.
type cstmt struct {
	p         uintptr
	query     string
	cacheable bool    // DML, a query or transaction control
	kind      int     // kindWrite, kindRead...
	cached    bool    // in the cache (else finalized after its use)
	protected bool    // in the protected segment
	busy      bool    // a Rows is reading it
	unbind    []int32 // the parameters bound to block
	block     uintptr // C memory of the text and blob arguments
	blockSize int

	// Column names and declared types, and the SQLite recompilation count
	// at which they were read.
	cols   []string
	decl   []string
	colsAt int32

	compiles uint64 // compilations of query on this connection
	hits     uint64

	prev, next *cstmt
}

// cache holds a connection's compiled statements by SQL text.
type cache struct {
	m         map[string]*cstmt
	prot      cstmt // sentinel of the protected list, most recent first
	prob      cstmt // sentinel of the probation list
	nProt     int
	nProb     int
	off       bool // while the connection opens: cache nothing
	ghosts    map[string]uint64
	hits      uint64
	misses    uint64
	evictions uint64
}

func (k *cache) init() {
	k.m = map[string]*cstmt{}
	k.ghosts = map[string]uint64{}
	k.prot.prev, k.prot.next = &k.prot, &k.prot
	k.prob.prev, k.prob.next = &k.prob, &k.prob
}

func unlink(s *cstmt) {
	s.prev.next, s.next.prev = s.next, s.prev
	s.prev, s.next = nil, nil
}

func pushFront(head, s *cstmt) {
	s.prev, s.next = head, head.next
	head.next.prev = s
	head.next = s
}

// touch records a use of a cached statement.
func (k *cache) touch(c *conn, s *cstmt) {
	unlink(s)
	if s.protected {
		pushFront(&k.prot, s)
		return
	}
	k.nProb--
	s.protected = true
	pushFront(&k.prot, s)
	k.nProt++
	k.balance(c)
}

// balance keeps the segments within their sizes, finalizing what leaves
// the cache.
func (k *cache) balance(c *conn) {
	for k.nProt > protectedSize {
		s := k.prot.prev
		unlink(s)
		k.nProt--
		s.protected = false
		pushFront(&k.prob, s)
		k.nProb++
	}
	for k.nProb > probationSize {
		s := k.prob.prev
		unlink(s)
		k.nProb--
		k.evict(c, s)
	}
}

func (k *cache) evict(c *conn, s *cstmt) {
	delete(k.m, s.query)
	s.cached = false
	k.evictions++
	if len(k.ghosts) >= ghostSize {
		clear(k.ghosts)
	}
	k.ghosts[s.query] = s.compiles
	if !s.busy { // else the Rows reading it finalizes it
		c.finalize(s)
	}
}

// finalizeAll finalizes every statement, when the connection closes.
func (k *cache) finalizeAll(c *conn) {
	for _, s := range k.m {
		s.cached = false
		c.finalize(s) // a Rows still reading it finds it gone
	}
	k.m = nil
}

// Kinds of statement, by their first keyword.
const (
	kindOther = iota // DDL, PRAGMA, ATTACH, VACUUM...: never cached
	kindWrite        // INSERT, UPDATE, DELETE, REPLACE: counts changes
	kindRead         // SELECT, VALUES: changes nothing
	kindTx           // transaction control: changes nothing
	kindWith         // WITH: either a read or a write
)

// keyword returns the first keyword of query, in upper case, and the
// text after it.
func keyword(query string) (string, string) {
	q := skipComments(query)
	end := 0
	for end < len(q) && (q[end] >= 'a' && q[end] <= 'z' || q[end] >= 'A' && q[end] <= 'Z') {
		end++
	}
	return strings.ToUpper(q[:end]), q[end:]
}

// kindOf judges a statement by its first keyword.
func kindOf(query string) int {
	first, _ := keyword(query)
	switch first {
	case "INSERT", "UPDATE", "DELETE", "REPLACE":
		return kindWrite
	case "SELECT", "VALUES":
		return kindRead
	case "BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE":
		return kindTx
	case "WITH":
		return kindWith
	}
	return kindOther
}

// cacheable reports whether a text may be cached: DML, queries and
// transaction control.
func cacheable(query string) bool { return kindOf(query) != kindOther }

// skipComments returns s after its leading whitespace, comments and
// semicolons.
func skipComments(s string) string {
	for {
		s = strings.TrimLeft(s, " \t\r\n\f\v;")
		switch {
		case strings.HasPrefix(s, "--"):
			i := strings.IndexByte(s, '\n')
			if i < 0 {
				return ""
			}
			s = s[i+1:]
		case strings.HasPrefix(s, "/*"):
			i := strings.Index(s[2:], "*/")
			if i < 0 {
				return ""
			}
			s = s[i+4:]
		default:
			return s
		}
	}
}

// onlyComments reports whether s holds no statement.
func onlyComments(s string) bool { return skipComments(s) == "" }

var errNUL = errors.New("sqlitedriver: SQL text contains a NUL byte")

// prepare returns a compiled statement for query, from the cache when
// possible. tail reports SQL left after the first statement, "" when only
// comments follow it.
func (c *conn) prepare(query string) (*cstmt, string, error) {
	k := &c.cache
	if s, ok := k.m[query]; ok && !s.busy {
		k.hits++
		s.hits++
		k.touch(c, s)
		return s, "", nil
	}
	k.misses++
	s, tail, err := c.compile(query, 0)
	if err != nil {
		return nil, "", err
	}
	if s.p != 0 && tail == "" && s.cacheable && !k.off {
		if _, taken := k.m[query]; !taken {
			s.compiles += k.ghosts[query]
			delete(k.ghosts, query)
			s.cached = true
			k.m[query] = s
			pushFront(&k.prob, s)
			k.nProb++
			k.balance(c)
		}
	}
	return s, tail, nil
}

// compile compiles the first statement of query.
func (c *conn) compile(query string, flags uint32) (*cstmt, string, error) {
	if strings.IndexByte(query, 0) >= 0 {
		return nil, "", errNUL
	}
	z, err := libc.CString(query)
	if err != nil {
		return nil, "", err
	}
	defer libc.Xfree(c.tls, z)
	kind := kindOf(query)
	if kind != kindOther {
		flags |= sqlite3.SQLITE_PREPARE_PERSISTENT
	}
	pp, ptail := c.out, c.out+8
	if rc := sqlite3.Xsqlite3_prepare_v3(c.tls, c.db, z, -1, flags, pp, ptail); rc != sqlite3.SQLITE_OK {
		return nil, "", c.errorFor(rc)
	}
	p := *(*uintptr)(cptr(pp))
	consumed := int(*(*uintptr)(cptr(ptail)) - z)
	tail := ""
	if consumed < len(query) && !onlyComments(query[consumed:]) {
		tail = query[consumed:]
	}
	return &cstmt{p: p, query: query, kind: kind, cacheable: kind != kindOther, compiles: 1, colsAt: -1}, tail, nil
}

// keepBound is the size up to which the text and blob arguments of a
// cached statement stay bound after its use.
const keepBound = 64 << 10

// done returns a statement after use: reset for the next, or finalized.
//
// The parameters of a cached statement keep their values: unbinding one
// (sqlite3_clear_bindings, or binding NULL) makes SQLite plan the statement
// again at its next run whenever its plan depends on the value, which
// since SQLite 3.54 includes "col = ?" with ORDER BY or a join, LIMIT ?,
// and a text key compared with a NULL. Only text and blob arguments larger
// than keepBound in all are unbound, to free their memory at once.
func (c *conn) done(s *cstmt) {
	s.busy = false
	if s.p == 0 {
		return
	}
	if !s.cached {
		c.finalize(s)
		return
	}
	sqlite3.Xsqlite3_reset(c.tls, s.p)
	if s.blockSize > keepBound {
		for _, idx := range s.unbind {
			sqlite3.Xsqlite3_bind_null(c.tls, s.p, idx)
		}
		s.unbind = s.unbind[:0]
		c.free(s.block)
		s.block, s.blockSize = 0, 0
	}
}

// finalize ends a statement and frees its arguments.
func (c *conn) finalize(s *cstmt) {
	if s.p != 0 {
		sqlite3.Xsqlite3_finalize(c.tls, s.p)
		s.p = 0
	}
	c.free(s.block)
	s.block, s.blockSize = 0, 0
	s.unbind = nil
}

// CacheStats describes the statement cache of one connection.
type CacheStats struct {
	// File is the connection's database file ("" for a memory database).
	File string
	// Hits counts statements taken from the cache, Misses statements
	// compiled, Evictions statements that left the cache.
	Hits, Misses, Evictions uint64
	// Statements lists the cached statements, most used first.
	Statements []StatementStats
}

// StatementStats describes one cached statement.
type StatementStats struct {
	SQL string
	// Compiles counts how often the driver compiled this text on the
	// connection, including before an eviction (as far as the cache
	// remembers evicted texts).
	Compiles uint64
	// Hits counts the uses served by the compiled statement.
	Hits uint64
	// Reprepares and Runs are SQLite's counters of the statement
	// (SQLITE_STMTSTATUS_REPREPARE, SQLITE_STMTSTATUS_RUN): how often
	// SQLite compiled it again (after a schema change, or because a new
	// bound value may change its plan), and how often it ran.
	Reprepares, Runs int
}

// stats snapshots the cache; the caller holds c.mu.
func (c *conn) stats() CacheStats {
	k := &c.cache
	st := CacheStats{Hits: k.hits, Misses: k.misses, Evictions: k.evictions}
	if c.closed {
		return st
	}
	main, _ := libc.CString("main")
	st.File = libc.GoString(sqlite3.Xsqlite3_db_filename(c.tls, c.db, main))
	libc.Xfree(c.tls, main)
	for _, s := range k.m {
		if s.p == 0 {
			continue
		}
		st.Statements = append(st.Statements, StatementStats{
			SQL:        s.query,
			Compiles:   s.compiles,
			Hits:       s.hits,
			Reprepares: int(sqlite3.Xsqlite3_stmt_status(c.tls, s.p, sqlite3.SQLITE_STMTSTATUS_REPREPARE, 0)),
			Runs:       int(sqlite3.Xsqlite3_stmt_status(c.tls, s.p, sqlite3.SQLITE_STMTSTATUS_RUN, 0)),
		})
	}
	sort.Slice(st.Statements, func(i, j int) bool {
		a, b := st.Statements[i], st.Statements[j]
		if a.Runs != b.Runs {
			return a.Runs > b.Runs
		}
		return a.SQL < b.SQL
	})
	return st
}

// Stats returns the statement cache statistics of a connection of this
// driver: driverConn is the value (*sql.Conn).Raw passes to its function.
// ok is false for another driver's connection.
func Stats(driverConn any) (st CacheStats, ok bool) {
	c, ok := driverConn.(*conn)
	if !ok {
		return CacheStats{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats(), true
}

// AllStats returns the statement cache statistics of every open connection
// of this driver whose database file is file (every connection when file is
// ""). It waits for each connection's call in progress to end.
func AllStats(file string) []CacheStats {
	var out []CacheStats
	for _, c := range liveConns() {
		c.mu.Lock()
		st, closed := c.stats(), c.closed
		c.mu.Unlock()
		if !closed && (file == "" || st.File == file) {
			out = append(out, st)
		}
	}
	return out
}
