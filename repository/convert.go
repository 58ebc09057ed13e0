package repository

import (
	"database/sql"
	"fmt"
	"strings"
	"sync"
	"unicode/utf8"

	"gorm.io/gorm/schema"

	metastorage "schneider.vip/retryspool/storage/meta"

	"schneider.vip/retryspool/storage/meta/sqlite/model"
)

// columns are the message columns, in the order of model.Message's fields:
// every query selects them and every insert writes them in this order. The
// model is the one source of truth; rowArgs and scanDest follow the same
// order, which a test holds against the model's GORM schema.
var columns = modelColumns()

var columnList = strings.Join(columns, ", ")

func modelColumns() []string {
	s, err := schema.Parse(&model.Message{}, &sync.Map{}, schema.NamingStrategy{})
	if err != nil {
		panic(fmt.Sprintf("repository: parse model.Message: %v", err))
	}
	cols := make([]string, len(s.Fields))
	for i, f := range s.Fields {
		cols[i] = f.DBName
	}
	return cols
}

// rowArgs are the values of m in the order of columns, with the headers
// already encoded.
func rowArgs(m *model.Message, headers any) []any {
	return []any{
		string(m.ID), m.State, m.Attempts, m.MaxAttempts, m.NextRetry, m.Created,
		m.Updated, m.LastError, m.Size, m.Priority, headers, m.RetryPolicyName, m.Stamp,
	}
}

// scanDest appends the fields of m, in the order of columns, to dst.
func scanDest(m *model.Message, dst []any) []any {
	return append(dst,
		&m.ID, &m.State, &m.Attempts, &m.MaxAttempts, &m.NextRetry, &m.Created,
		&m.Updated, &m.LastError, &m.Size, &m.Priority, &m.Headers, &m.RetryPolicyName, &m.Stamp,
	)
}

// allStates are the six states of the contract, in order; the one list of
// them in the library.
var allStates = []metastorage.QueueState{
	metastorage.StateIncoming, metastorage.StateActive, metastorage.StateDeferred,
	metastorage.StateHold, metastorage.StateBounce, metastorage.StateArchived,
}

// checkID enforces the documented ID rules.
func checkID(id string) error {
	switch {
	case id == "":
		return fmt.Errorf("%w: empty message ID", ErrInvalidInput)
	case len(id) > model.MaxIDLength:
		return fmt.Errorf("%w: message ID is %d bytes, the maximum is %d", ErrInvalidInput, len(id), model.MaxIDLength)
	}
	return checkText("message ID", id)
}

// checkText refuses what some engine would alter or reject: invalid UTF-8
// and NUL bytes (PostgreSQL text cannot hold NUL).
func checkText(what, s string) error {
	if !utf8.ValidString(s) {
		return fmt.Errorf("%w: %s is not valid UTF-8", ErrInvalidInput, what)
	}
	if strings.IndexByte(s, 0) >= 0 {
		return fmt.Errorf("%w: %s contains a NUL byte", ErrInvalidInput, what)
	}
	return nil
}

// checkState accepts the six states of the contract.
func checkState(s metastorage.QueueState) error {
	if s < allStates[0] || s > allStates[len(allStates)-1] {
		return fmt.Errorf("%w: unknown state %d", metastorage.ErrInvalidState, int(s))
	}
	return nil
}

// row is a message ready to be written: the GORM row plus its column values
// in the order of columns, headers already encoded.
type row struct {
	m    model.Message
	args []any
}

// setStamp sets the stamp of the write that is about to store the row: the
// last of its column values, as stamp is the model's last column.
func (rw row) setStamp(stamp int64) { rw.args[len(rw.args)-1] = stamp }

// toRow validates metadata and converts it to a storage row. Times are
// normalised to UTC nanoseconds.
func toRow(id string, md metastorage.MessageMetadata) (row, error) {
	if err := checkID(id); err != nil {
		return row{}, err
	}
	if md.ID != "" && md.ID != id {
		return row{}, fmt.Errorf("%w: metadata.ID %q differs from message ID %q", ErrInvalidInput, md.ID, id)
	}
	if err := checkState(md.State); err != nil {
		return row{}, err
	}
	if err := checkText("last error", md.LastError); err != nil {
		return row{}, err
	}
	if err := checkText("retry policy name", md.RetryPolicyName); err != nil {
		return row{}, err
	}
	if len(md.RetryPolicyName) > 255 {
		return row{}, fmt.Errorf("%w: retry policy name is longer than 255 bytes", ErrInvalidInput)
	}
	m := model.Message{
		ID:              model.MessageID(id),
		State:           int(md.State),
		Attempts:        md.Attempts,
		MaxAttempts:     md.MaxAttempts,
		LastError:       md.LastError,
		Size:            md.Size,
		Priority:        md.Priority,
		Headers:         model.Headers(md.Headers),
		RetryPolicyName: md.RetryPolicyName,
	}
	var err error
	if m.NextRetry, err = model.EncodeTime(md.NextRetry); err != nil {
		return row{}, fmt.Errorf("%w: next retry: %w", ErrInvalidInput, err)
	}
	if m.Created, err = model.EncodeTime(md.Created); err != nil {
		return row{}, fmt.Errorf("%w: created: %w", ErrInvalidInput, err)
	}
	if m.Updated, err = model.EncodeTime(md.Updated); err != nil {
		return row{}, fmt.Errorf("%w: updated: %w", ErrInvalidInput, err)
	}
	headers, err := m.Headers.Value()
	if err != nil {
		return row{}, fmt.Errorf("%w: %w", ErrInvalidInput, err)
	}
	return row{m: m, args: rowArgs(&m, headers)}, nil
}

// fromRow converts a storage row back to the contract's type.
func fromRow(m *model.Message) metastorage.MessageMetadata {
	return metastorage.MessageMetadata{
		ID:              string(m.ID),
		State:           metastorage.QueueState(m.State),
		Attempts:        m.Attempts,
		MaxAttempts:     m.MaxAttempts,
		NextRetry:       model.DecodeTime(m.NextRetry),
		Created:         model.DecodeTime(m.Created),
		Updated:         model.DecodeTime(m.Updated),
		LastError:       m.LastError,
		Size:            m.Size,
		Priority:        m.Priority,
		Headers:         map[string]string(m.Headers),
		RetryPolicyName: m.RetryPolicyName,
	}
}

// scanMessage reads one row selected with columnList.
func scanMessage(rows *sql.Rows) (metastorage.MessageMetadata, error) {
	var m model.Message
	var dest [16]any
	if err := rows.Scan(scanDest(&m, dest[:0])...); err != nil {
		return metastorage.MessageMetadata{}, err
	}
	return fromRow(&m), nil
}
