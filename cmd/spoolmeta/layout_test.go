package main

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

const module = "schneider.vip/retryspool/storage/meta/sqlite"

// The command and the dashboard use the library through its one public
// home, the root package (the benchmark's workload aside), and their
// files stay short enough to read.
func TestLayout(t *testing.T) {
	t.Parallel()
	allowed := map[string]bool{module: true, module + "/dashboard": true}
	for _, dir := range []string{".", "../../dashboard"} {
		files, err := filepath.Glob(filepath.Join(dir, "*.go"))
		require.NoError(t, err)
		require.NotEmpty(t, files)
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			src, err := os.ReadFile(f)
			require.NoError(t, err)
			require.LessOrEqual(t, strings.Count(string(src), "\n"), 450, "%s is too long: split it", f)
			parsed, err := parser.ParseFile(token.NewFileSet(), f, src, parser.ImportsOnly)
			require.NoError(t, err)
			for _, imp := range parsed.Imports {
				path, _ := strconv.Unquote(imp.Path.Value)
				if !strings.HasPrefix(path, module+"/") && path != module {
					continue
				}
				if filepath.Base(f) == "bench.go" && path == module+"/internal/bench/workload" {
					continue // the benchmark tool's workload, not the library
				}
				require.True(t, allowed[path], "%s imports %s: use the root package", f, path)
			}
		}
	}
}
