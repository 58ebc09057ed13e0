package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	datafs "schneider.vip/retryspool/storage/data/filesystem"
)

// bodyStore is RetrySpool's filesystem data store (module
// schneider.vip/retryspool/storage/data/filesystem v0.0.5) in a directory:
// the body of message ID is DIR/<first two bytes of ID>/ID.data, or
// DIR/misc/ID.data for a one-byte ID. Deleting goes through the store's
// own backend; listing reads that layout (pathOf mirrors the backend's).
type bodyStore struct {
	dir string
	b   *datafs.Backend // opened on the first delete
}

// openBodies opens the --data of a command: "fs:DIR", an existing
// directory.
func openBodies(cmd, spec string) (*bodyStore, error) {
	dir, ok := strings.CutPrefix(spec, "fs:")
	if !ok || dir == "" {
		return nil, usagef(cmd, "--data %q: give fs:DIR, the directory of RetrySpool's filesystem data store", spec)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	fi, err := os.Stat(abs)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("%w: no data store directory %s", errNotFound, abs)
	case err != nil:
		return nil, err
	case !fi.IsDir():
		return nil, usagef(cmd, "--data fs:%s is not a directory", abs)
	}
	return &bodyStore{dir: abs}, nil
}

// pathOf is where the filesystem data store keeps the body of id.
func (d *bodyStore) pathOf(id string) string {
	if len(id) >= 2 {
		return filepath.Join(d.dir, id[:2], id+".data")
	}
	return filepath.Join(d.dir, "misc", id+".data")
}

// storable reports whether the filesystem data store accepts id at all;
// for other IDs it can hold no body.
func storable(id string) bool {
	return id != "" && len(id) <= 255 && !strings.Contains(id, "..") && !strings.ContainsAny(id, `/\`)
}

// has reports whether the body of id exists.
func (d *bodyStore) has(id string) (bool, error) {
	if !storable(id) {
		return false, nil
	}
	_, err := os.Lstat(d.pathOf(id))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	return err == nil, err
}

// delete removes the bodies of ids that exist and returns how many it
// removed; missing bodies are no error.
func (d *bodyStore) delete(ctx context.Context, ids []string) (int64, error) {
	if d.b == nil {
		b, err := datafs.NewBackend(d.dir)
		if err != nil {
			return 0, fmt.Errorf("open data store %s: %w", d.dir, err)
		}
		d.b = b
	}
	var n int64
	for _, id := range ids {
		ok, err := d.has(id)
		if err != nil {
			return n, err
		}
		if !ok {
			continue
		}
		if err := d.b.DeleteData(ctx, id); err != nil {
			return n, fmt.Errorf("delete body of %q: %w", id, err)
		}
		n++
	}
	return n, nil
}

// body is one file found in the data store.
type body struct {
	id   string
	path string
	info fs.FileInfo
}

// walk calls fn for every body in the store, and stray for every file that
// is not where the store would keep a body (left alone by every fix).
func (d *bodyStore) walk(ctx context.Context, fn func(body) error, stray func(path string)) error {
	dirs, err := os.ReadDir(d.dir)
	if err != nil {
		return err
	}
	for _, sub := range dirs {
		p := filepath.Join(d.dir, sub.Name())
		if !sub.IsDir() {
			stray(p)
			continue
		}
		files, err := os.ReadDir(p)
		if err != nil {
			return err
		}
		for _, f := range files {
			if err := ctx.Err(); err != nil {
				return err
			}
			fp := filepath.Join(p, f.Name())
			id, ok := strings.CutSuffix(f.Name(), ".data")
			if !ok || !f.Type().IsRegular() || !storable(id) || d.pathOf(id) != fp {
				stray(fp)
				continue
			}
			info, err := f.Info()
			if err != nil {
				if errors.Is(err, os.ErrNotExist) {
					continue // deleted since the listing
				}
				return err
			}
			if err := fn(body{id: id, path: fp, info: info}); err != nil {
				return err
			}
		}
	}
	return nil
}
