package repository

import (
	"database/sql"
	"fmt"
	"strings"
	"unicode/utf8"

	metastorage "schneider.vip/retryspool/storage/meta"

	"schneider.vip/retryspool/storage/meta/sqlite/model"
)

// columns are the message columns in the order every query selects and
// every insert writes them.
var columns = []string{
	"id", "state", "attempts", "max_attempts", "next_retry", "created",
	"updated", "last_error", "size", "priority", "headers", "retry_policy_name",
}

var columnList = strings.Join(columns, ", ")

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
	if s < metastorage.StateIncoming || s > metastorage.StateArchived {
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
	return row{m: m, args: []any{
		id, m.State, m.Attempts, m.MaxAttempts, m.NextRetry, m.Created,
		m.Updated, m.LastError, m.Size, m.Priority, headers, m.RetryPolicyName,
	}}, nil
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
	if err := rows.Scan(&m.ID, &m.State, &m.Attempts, &m.MaxAttempts, &m.NextRetry, &m.Created,
		&m.Updated, &m.LastError, &m.Size, &m.Priority, &m.Headers, &m.RetryPolicyName); err != nil {
		return metastorage.MessageMetadata{}, err
	}
	return fromRow(&m), nil
}
