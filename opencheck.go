package sqlite

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"gorm.io/gorm"
	sqlite3 "modernc.org/sqlite/lib"
	"schneider.vip/retryspool/storage/meta/sqlite/model"
	"schneider.vip/retryspool/storage/meta/sqlite/repository"
)

// What the factory checks before it opens a file: the path, the header, the
// schema, and the edges of each b-tree (checkEdges), all without reading
// the whole file.

// sqliteHeader starts every SQLite database file.
var sqliteHeader = []byte("SQLite format 3\x00")

// checkPath makes the path absolute, creates missing parent directories and
// refuses what SQLite would open wrongly or not at all: a directory, a
// read-only file or directory, a file that is not a database or is cut
// short. It reports whether the file exists with content.
func checkPath(p string) (string, bool, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", false, fmt.Errorf("%w: %w", ErrPath, err)
	}
	dir := filepath.Dir(abs)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return "", false, fmt.Errorf("%w: create directory: %w", ErrPath, err)
	}
	di, err := os.Stat(dir)
	if err != nil {
		return "", false, fmt.Errorf("%w: %w", ErrPath, err)
	}
	if di.Mode().Perm()&0o222 == 0 {
		return "", false, fmt.Errorf("%w: directory %s is read-only (the journal and WAL files live beside the database)", ErrPath, dir)
	}
	fi, err := os.Stat(abs)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return abs, false, nil
	case err != nil:
		return "", false, fmt.Errorf("%w: %w", ErrPath, err)
	case fi.IsDir():
		return "", false, fmt.Errorf("%w: %s is a directory", ErrPath, abs)
	case !fi.Mode().IsRegular():
		return "", false, fmt.Errorf("%w: %s is not a regular file", ErrPath, abs)
	case fi.Mode().Perm()&0o222 == 0:
		return "", false, fmt.Errorf("%w: %s is read-only", ErrPath, abs)
	case fi.Size() == 0:
		return abs, false, nil // SQLite treats an empty file as a new database
	}
	if err := checkHeader(abs, fi.Size()); err != nil {
		return "", false, err
	}
	return abs, true, nil
}

// checkHeader reads the 100-byte database header: the magic string, and the
// page size and count, which must fit in the file.
func checkHeader(path string, size int64) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrPath, err)
	}
	defer f.Close()
	h := make([]byte, 100)
	if _, err := io.ReadFull(f, h); err != nil || !bytes.Equal(h[:16], sqliteHeader) {
		return fmt.Errorf("%w: %s does not start with the SQLite header", ErrNotDatabase, path)
	}
	pageSize := int64(binary.BigEndian.Uint16(h[16:18]))
	if pageSize == 1 {
		pageSize = 65536
	}
	if pageSize < 512 || pageSize&(pageSize-1) != 0 {
		return fmt.Errorf("%w: %s has an invalid page size %d", ErrNotDatabase, path, pageSize)
	}
	// The page count is valid when the version-valid-for number matches
	// the change counter. It is judged only when the file is the whole
	// database: a process that dies during a checkpoint, which writes page
	// 1 first, leaves a file shorter than its header says, and SQLite
	// completes it from the WAL (or rolls it back from the journal) on
	// open.
	if !journalHolds(path) && binary.BigEndian.Uint32(h[92:96]) == binary.BigEndian.Uint32(h[24:28]) {
		pages := int64(binary.BigEndian.Uint32(h[28:32]))
		if pages*pageSize > size {
			return fmt.Errorf("%w: %s is truncated (%d bytes, the header says %d pages of %d)", ErrNotDatabase, path, size, pages, pageSize)
		}
	}
	return nil
}

// journalHolds reports whether a WAL or rollback journal with content lies
// beside the database.
func journalHolds(path string) bool {
	for _, suffix := range []string{"-wal", "-journal"} {
		if fi, err := os.Stat(path + suffix); err == nil && fi.Size() > 0 {
			return true
		}
	}
	return false
}

// probe inspects an existing file on a read-only connection.
func probe(ctx context.Context, path string, c config) error {
	db, err := gorm.Open(dialector(probeDSN(path, c)), gormConfig())
	if err != nil {
		return translateOpen(err)
	}
	if pool, err := db.DB(); err == nil {
		defer pool.Close()
	}
	return inspect(ctx, db, path, c)
}

// inspect decides, reading only, whether an existing file can be used. Its
// cost does not grow with the file: the header was checked before; here
// the schema is read and the edges of every b-tree are walked (see
// checkEdges). Only when that walk finds something wrong, or
// WithIntegrityCheck asks for it, does PRAGMA quick_check read the whole
// file; its verdict decides. In read-only mode the table must exist.
func inspect(ctx context.Context, db *gorm.DB, path string, c config) error {
	db = db.WithContext(ctx)
	suspect := c.integrityCheck
	if !suspect {
		if err := checkEdges(ctx, db, path); err != nil {
			var se interface{ Code() int }
			if !errors.Is(err, errEdge) && !errors.As(err, &se) {
				return err
			}
			suspect = true
		}
	}
	if suspect {
		var check string
		if err := db.Raw("PRAGMA quick_check(1)").Row().Scan(&check); err != nil {
			return translateOpen(err)
		}
		if check != "ok" {
			return fmt.Errorf("%w: quick_check: %s", ErrNotDatabase, check)
		}
	}
	if err := translateOpen(repository.Check(ctx, db, c.tableName)); err != nil {
		return err
	}
	if c.readOnly {
		// A table the migration would create, upgrade or repair cannot be
		// read as it is: its schema record must say it is current.
		var version int
		err := db.Raw("SELECT version FROM "+model.SchemaTableName+" WHERE table_name = ?", c.tableName).Row().Scan(&version)
		if err != nil || version != repository.SchemaVersion {
			return fmt.Errorf("table %q %w in %s with the current schema (a read-only open cannot create or upgrade it)", c.tableName, errNoTable, path)
		}
		for _, t := range []string{c.tableName, c.tableName + "_counts"} {
			var n int64
			if err := db.Raw("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?", t).Row().Scan(&n); err != nil {
				return translateOpen(err)
			}
			if n == 0 {
				return fmt.Errorf("table %q %w in %s (a read-only open cannot create it)", t, errNoTable, path)
			}
		}
	}
	return nil
}

// errNoTable wraps os.ErrNotExist: a read-only open of a file without the
// table.
var errNoTable = fmt.Errorf("does not exist: %w", os.ErrNotExist)

// checkReadablePath is checkPath for a read-only open: the file must exist
// and be a database; nothing is created and nothing needs to be writable.
func checkReadablePath(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrPath, err)
	}
	fi, err := os.Stat(abs)
	switch {
	case err != nil:
		return "", fmt.Errorf("%w: %w", ErrPath, err)
	case fi.IsDir():
		return "", fmt.Errorf("%w: %s is a directory", ErrPath, abs)
	case !fi.Mode().IsRegular():
		return "", fmt.Errorf("%w: %s is not a regular file", ErrPath, abs)
	case fi.Size() == 0:
		return "", fmt.Errorf("%w: %s is empty (a read-only open cannot create a database)", ErrNotDatabase, abs)
	}
	if err := checkHeader(abs, fi.Size()); err != nil {
		return "", err
	}
	return abs, nil
}

// translateOpen names the SQLite errors that mean a damaged or unusable
// file.
func translateOpen(err error) error {
	var se interface{ Code() int }
	if err == nil || !errors.As(err, &se) {
		return err
	}
	switch se.Code() & 0xff {
	case sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT:
		return fmt.Errorf("%w: %w", ErrNotDatabase, err)
	case sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM:
		return fmt.Errorf("%w: %w", ErrPath, err)
	}
	return err
}

// errEdge marks damage found by checkEdges.
var errEdge = errors.New("b-tree edge damaged")

// maxTreeDepth bounds the walk of checkEdges; a b-tree of 4 KiB pages is
// at most 5 or 6 levels deep even at billions of rows.
const maxTreeDepth = 20

// checkEdges walks, for every b-tree of the schema (tables and indexes,
// sqlite_master included), the path from its root to its first and to its
// last leaf, and checks the header of every page on the way: page type,
// cell count against the page size, cell pointers inside the page, child
// page numbers inside the file. That is a few pages per b-tree, whatever
// the size of the file, and it is where SQLite goes first (appends land on
// the last leaf), so the damage a write would meet at once is found before
// anything is written. It reads the file itself and is skipped while a
// WAL or rollback journal with content lies beside it, since the file's
// pages may then be older than the database's.
//
// An error wrapping errEdge, or a SQLite error, means "suspect": the
// caller then lets PRAGMA quick_check judge.
func checkEdges(ctx context.Context, db *gorm.DB, path string) error {
	if journalHolds(path) {
		return nil
	}
	var roots []uint32
	rows, err := db.WithContext(ctx).Raw("SELECT rootpage FROM sqlite_master WHERE rootpage > 0").Rows()
	if err != nil {
		return err
	}
	for rows.Next() {
		var r int64
		if err := rows.Scan(&r); err != nil {
			rows.Close()
			return err
		}
		roots = append(roots, uint32(r))
	}
	if err := rows.Close(); err != nil {
		return err
	}
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrPath, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrPath, err)
	}
	h := make([]byte, 100)
	if _, err := io.ReadFull(f, h); err != nil {
		return fmt.Errorf("%w: header: %w", errEdge, err)
	}
	pageSize := int64(binary.BigEndian.Uint16(h[16:18]))
	if pageSize == 1 {
		pageSize = 65536
	}
	w := &edgeWalker{
		f:        f,
		pageSize: pageSize,
		usable:   pageSize - int64(h[20]),
		pages:    uint32(fi.Size() / pageSize),
		buf:      make([]byte, pageSize),
		seen:     map[uint32]bool{},
	}
	for _, root := range append([]uint32{1}, roots...) {
		if err := w.walk(root, 0); err != nil {
			return err
		}
	}
	return nil
}

type edgeWalker struct {
	f        *os.File
	pageSize int64
	usable   int64
	pages    uint32 // pages in the file
	buf      []byte
	seen     map[uint32]bool
}

// walk checks page n and descends to its first and last child.
func (w *edgeWalker) walk(n uint32, depth int) error {
	if n < 1 || n > w.pages {
		return fmt.Errorf("%w: page %d outside the file's %d pages", errEdge, n, w.pages)
	}
	if depth > maxTreeDepth {
		return fmt.Errorf("%w: b-tree deeper than %d at page %d", errEdge, maxTreeDepth, n)
	}
	if w.seen[n] {
		return nil
	}
	w.seen[n] = true
	if _, err := w.f.ReadAt(w.buf, int64(n-1)*w.pageSize); err != nil {
		return fmt.Errorf("%w: read page %d: %w", errEdge, n, err)
	}
	off := int64(0)
	if n == 1 {
		off = 100
	}
	b := w.buf
	var hdr int64
	switch b[off] {
	case 0x02, 0x05: // interior index, interior table
		hdr = 12
	case 0x0a, 0x0d: // leaf index, leaf table
		hdr = 8
	default:
		return fmt.Errorf("%w: page %d has type %#x", errEdge, n, b[off])
	}
	cells := int64(binary.BigEndian.Uint16(b[off+3 : off+5]))
	if cells > (w.usable-8)/6 {
		return fmt.Errorf("%w: page %d claims %d cells", errEdge, n, cells)
	}
	ptrEnd := off + hdr + 2*cells
	if ptrEnd > w.usable {
		return fmt.Errorf("%w: page %d: cell pointers run past the page", errEdge, n)
	}
	for i := int64(0); i < cells; i++ {
		p := int64(binary.BigEndian.Uint16(b[off+hdr+2*i:]))
		if p < ptrEnd || p+4 > w.usable {
			return fmt.Errorf("%w: page %d: cell %d at offset %d", errEdge, n, i, p)
		}
	}
	if hdr == 8 {
		return nil
	}
	right := binary.BigEndian.Uint32(b[off+8 : off+12])
	var first uint32
	if cells > 0 {
		p := int64(binary.BigEndian.Uint16(b[off+hdr:]))
		first = binary.BigEndian.Uint32(b[p : p+4])
	}
	if err := w.walk(right, depth+1); err != nil {
		return err
	}
	if first != 0 {
		// w.buf is overwritten by the walk above; first was read before.
		return w.walk(first, depth+1)
	}
	return nil
}
