package repository

import (
	"context"
	"reflect"
	"slices"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"gorm.io/gorm/schema"
	metastorage "schneider.vip/retryspool/storage/meta"

	"schneider.vip/retryspool/storage/meta/sqlite/model"
)

// The model is the one source of truth for the columns: the statements'
// column list comes from its GORM schema, and the hand-written argument and
// scan orders (kept by hand because they run for every row) must follow it
// field by field.
func TestColumnsFollowTheModel(t *testing.T) {
	t.Parallel()
	s, err := schema.Parse(&model.Message{}, &sync.Map{}, schema.NamingStrategy{})
	require.NoError(t, err)
	require.Len(t, columns, len(s.Fields))

	// A message whose every field holds a value of its own.
	m := model.Message{
		ID: "id", State: 1, Attempts: 2, MaxAttempts: 3, NextRetry: 4, Created: 5, Updated: 6,
		LastError: "err", Size: 7, Priority: 8, Headers: model.Headers{"k": "v"}, RetryPolicyName: "policy", Stamp: 9,
	}
	rv := reflect.ValueOf(&m).Elem()
	headers, err := m.Headers.Value()
	require.NoError(t, err)
	args := rowArgs(&m, headers)
	dest := scanDest(&m, nil)
	require.Len(t, args, len(s.Fields), "rowArgs has a value per model field")
	require.Len(t, dest, len(s.Fields), "scanDest has a destination per model field")
	for i, f := range s.Fields {
		require.Equal(t, f.DBName, columns[i], "column %d", i)
		field := f.ReflectValueOf(context.Background(), rv)
		require.Equal(t, field.Addr().Interface(), dest[i], "scanDest[%d] is the address of %s", i, f.Name)
		want := field.Interface()
		if f.Name == "Headers" {
			want = headers
		} else if id, ok := want.(model.MessageID); ok {
			want = string(id)
		}
		require.Equal(t, want, args[i], "rowArgs[%d] is the value of %s", i, f.Name)
	}
}

// setStamp sets the value of the stamp column, whatever its place.
func TestSetStampSetsTheStampColumn(t *testing.T) {
	t.Parallel()
	rw, err := toRow("id", metastorage.MessageMetadata{State: metastorage.StateIncoming})
	require.NoError(t, err)
	rw.setStamp(42)
	require.Equal(t, int64(42), rw.args[slices.Index(columns, "stamp")])
}
