package sqlite

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"gorm.io/gorm"
)

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
