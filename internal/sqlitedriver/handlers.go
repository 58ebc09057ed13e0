package sqlitedriver

import (
	"sync"
	"time"
	"unsafe"

	"modernc.org/libc"
	sqlite3 "modernc.org/sqlite/lib"
)

// conns maps an open connection's SQLite handle to its conn, for the
// progress and busy handlers, which SQLite calls with the handle, and for
// AllStats.
var conns sync.Map // uintptr -> *conn

// progressOps is how many virtual machine steps run between two checks of
// the statement's context.
const progressOps = 1000

// register makes the connection known to the handlers and installs the
// progress handler.
func (c *conn) register() {
	conns.Store(c.db, c)
	sqlite3.Xsqlite3_progress_handler(c.tls, c.db, progressOps, cFuncPointer(progress), c.db)
}

func (c *conn) unregister() { conns.Delete(c.db) }

func liveConns() []*conn {
	var out []*conn
	conns.Range(func(_, v any) bool {
		out = append(out, v.(*conn))
		return true
	})
	return out
}

// progress interrupts the running statement once its context is done. It
// runs on the goroutine of the call (SQLite calls it from sqlite3_step), so
// it reads c.ctx without a lock, and it ends only that statement: unlike
// sqlite3_interrupt, it leaves the connection's other statements alone.
func progress(_ *libc.TLS, db uintptr) int32 {
	v, ok := conns.Load(db)
	if !ok {
		return 0
	}
	if ctx := v.(*conn).ctx; ctx != nil && ctx.Err() != nil {
		return 1
	}
	return 0
}

// The retry schedule of SQLite's own busy handler (sqliteDefaultBusyCallback):
// the sleep before the n-th retry and the time slept before it, in ms.
var (
	busyDelays = [...]int32{1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100}
	busyTotals = [...]int32{0, 1, 3, 8, 18, 33, 53, 78, 103, 128, 178, 228}
)

// ensureBusyHandler replaces SQLite's default busy handler, which PRAGMA
// busy_timeout installs, by busy, which keeps its schedule and timeout and
// also gives up once the context of the call is done. It is checked at the
// start of every call and after every statement that is not cached (a
// PRAGMA busy_timeout among them): one comparison when nothing changed.
func (c *conn) ensureBusyHandler() {
	db := (*sqlite3.Tsqlite3)(cptr(c.db))
	if h := db.FbusyHandler.FxBusyHandler; h == 0 || h == busyPtr || db.FbusyTimeout <= 0 {
		return
	}
	// sqlite3_busy_handler clears busyTimeout, which PRAGMA busy_timeout
	// reports and busy reads: keep it.
	timeout := db.FbusyTimeout
	sqlite3.Xsqlite3_busy_handler(c.tls, c.db, busyPtr, c.db)
	db.FbusyTimeout = timeout
}

var busyPtr = cFuncPointer(busy)

// busy is SQLite's default busy handler but for one thing: the sleep ends,
// and the handler gives up (the statement fails with SQLITE_BUSY), as soon
// as the context of the call is done.
func busy(_ *libc.TLS, db uintptr, count int32) int32 {
	timeout := (*sqlite3.Tsqlite3)(cptr(db)).FbusyTimeout
	n := int32(len(busyDelays))
	var delay, prior int32
	if count < n {
		delay, prior = busyDelays[count], busyTotals[count]
	} else {
		delay = busyDelays[n-1]
		prior = busyTotals[n-1] + delay*(count-(n-1))
	}
	if prior+delay > timeout {
		if delay = timeout - prior; delay <= 0 {
			return 0
		}
	}
	d := time.Duration(delay) * time.Millisecond
	var c *conn
	if v, ok := conns.Load(db); ok {
		c = v.(*conn)
	}
	if c == nil || c.ctx == nil {
		time.Sleep(d)
		return 1
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-c.ctx.Done():
		return 0
	case <-t.C:
		return 1
	}
}

// cFuncPointer turns a Go function into the function pointer SQLite's
// callbacks take, as modernc.org/sqlite does: the function value is a
// pointer to its code, which does not move.
func cFuncPointer[T any](f T) uintptr {
	return *(*uintptr)(unsafe.Pointer(&struct{ f T }{f}))
}
