package main

import (
	"strconv"
	"strings"
	"unicode"
)

// fmtID shows a message ID in a table. IDs may hold any UTF-8 but NUL: one
// with a tab, a line break or another control or invisible character, or
// with a space at either end, or that starts with a double quote, is shown
// quoted as a Go string literal ("a\tb"), so that the table keeps its
// columns and the ID can be told exactly. Others are shown as they are.
func fmtID(id string) string {
	if id == "" {
		return ""
	}
	needs := strings.HasPrefix(id, `"`) || strings.TrimSpace(id) != id
	for _, r := range id {
		if needs {
			break
		}
		needs = r == unicode.ReplacementChar || !unicode.IsPrint(r)
	}
	if !needs {
		return id
	}
	return strconv.Quote(id)
}
