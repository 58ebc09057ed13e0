// Package model holds the GORM rows behind the metadata store. They are
// storage rows, not the domain type: the repository converts them to and from
// metastorage.MessageMetadata and never hands them to callers of the Backend
// interface.
package model

import (
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"
	"unicode/utf8"

	"gorm.io/gorm"
	"gorm.io/gorm/schema"
)

// DefaultTableName is the table that holds message rows unless the caller
// chooses another name.
const DefaultTableName = "messages"

// SchemaTableName is the table that records the schema version of every
// message table in the database.
const SchemaTableName = "retryspool_schema"

// MaxIDLength is the longest message ID, in bytes, that the store accepts.
const MaxIDLength = 255

// Message is one metadata record. Times are Unix nanoseconds in BIGINT
// columns, so that no engine rounds them (see EncodeTime). The index tags
// use composite names so that GORM derives index names from the table name
// (idx_<table>_state_created and so on) and several queues can share a
// database.
type Message struct {
	ID          MessageID `gorm:"column:id;primaryKey;index:,composite:state_created,priority:3"`
	State       int       `gorm:"column:state;not null;index:,composite:state_created,priority:1;index:,composite:state_priority,priority:1;index:,composite:due,priority:1,where:state = 2"`
	Attempts    int       `gorm:"column:attempts;not null"`
	MaxAttempts int       `gorm:"column:max_attempts;not null"`
	NextRetry   int64     `gorm:"column:next_retry;not null;index:,composite:due,priority:2,where:state = 2"`
	Created     int64     `gorm:"column:created;not null;index:,composite:state_created,priority:2;index:,composite:state_priority,priority:3;index"`
	Updated     int64     `gorm:"column:updated;not null;index"`
	LastError   string    `gorm:"column:last_error;not null"`
	Size        int64     `gorm:"column:size;not null"`
	Priority    int       `gorm:"column:priority;not null;index:,composite:state_priority,priority:2,sort:desc"`
	Headers     Headers   `gorm:"column:headers"`
	// RetryPolicyName came after the first schema; the default lets
	// AutoMigrate add it to tables that already hold rows.
	RetryPolicyName string `gorm:"column:retry_policy_name;size:255;not null;default:''"`
	// Stamp identifies the last write of the store that changed the row:
	// a number of its own per write, which the write fence (see Write)
	// records on PostgreSQL and MySQL/MariaDB. It is not part of the
	// record callers see. The default lets AutoMigrate add it to tables
	// of schema version 1.
	Stamp int64 `gorm:"column:stamp;not null;default:0"`
}

// TableName is the default table; callers pick another with db.Table.
func (Message) TableName() string { return DefaultTableName }

// StateCount holds one shard of the number of messages in one state. The
// counts are kept by triggers in the same transaction as the row change, so
// they are exact for every writer, and sharded so that writers on a server
// engine do not all queue on one hot row.
type StateCount struct {
	State int   `gorm:"column:state;primaryKey;autoIncrement:false"`
	Shard int   `gorm:"column:shard;primaryKey;autoIncrement:false"`
	N     int64 `gorm:"column:n;not null"`
}

// Write is one row of a queue's write fence, <table>_writes, on the server
// engines: a trigger records (stamp, id) for every message row that a
// write of the store inserts, updates or deletes, in the same transaction.
// When a connection dies while a write's commit is in flight, the store
// inserts the write's own (stamp, id) pairs itself: a duplicate key proves
// that the write committed, and a successful insert proves that it did not
// and never will, since the write's trigger would now fail on the same
// key. Fenced tells the two apart: 0 for the write's own pairs, 1 for
// those the store inserted to fence a write off (so that a check whose own
// connection dies, run again, does not take its own pairs for the
// write's). Rows older than the fence's retention are pruned.
type Write struct {
	Stamp  int64     `gorm:"column:stamp;primaryKey;autoIncrement:false"`
	ID     MessageID `gorm:"column:id;primaryKey"`
	Fenced int16     `gorm:"column:fenced;not null;default:0"`
}

// SchemaVersion records which version of this library's schema a message
// table has.
type SchemaVersion struct {
	Table   string `gorm:"column:table_name;primaryKey;size:64"`
	Version int    `gorm:"column:version;not null"`
	Updated int64  `gorm:"column:updated;not null"`
}

// TableName is SchemaTableName.
func (SchemaVersion) TableName() string { return SchemaTableName }

// MessageID is the primary key. On MySQL and MariaDB it is VARBINARY so that
// IDs compare byte for byte (the default collations ignore case and trailing
// spaces); elsewhere it is VARCHAR.
type MessageID string

// GormDBDataType picks the column type per engine.
func (MessageID) GormDBDataType(db *gorm.DB, _ *schema.Field) string {
	if db.Dialector.Name() == "mysql" {
		return fmt.Sprintf("VARBINARY(%d)", MaxIDLength)
	}
	return fmt.Sprintf("VARCHAR(%d)", MaxIDLength)
}

// Scan reads the ID from a string or, on MySQL, from bytes.
func (id *MessageID) Scan(src any) error {
	switch v := src.(type) {
	case string:
		*id = MessageID(v)
	case []byte:
		*id = MessageID(v)
	default:
		return fmt.Errorf("model: cannot scan %T into MessageID", src)
	}
	return nil
}

// Value writes the ID as a string.
func (id MessageID) Value() (driver.Value, error) { return string(id), nil }

// ErrHeaders reports headers that cannot be stored without changing them.
var ErrHeaders = errors.New("headers cannot be stored exactly")

// Headers is stored as a JSON object in a text column. A nil map is NULL and
// an empty one is "{}", so both come back as they went in.
type Headers map[string]string

// GormDataType makes the column a plain string column (TEXT, or LONGTEXT on
// MySQL), so large header maps fit on every engine.
func (Headers) GormDataType() string { return string(schema.String) }

// Value encodes the headers. encoding/json would silently replace invalid
// UTF-8 with U+FFFD, so such strings are refused instead of altered.
func (h Headers) Value() (driver.Value, error) {
	if h == nil {
		return nil, nil
	}
	for k, v := range h {
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			return nil, fmt.Errorf("%w: header %q is not valid UTF-8", ErrHeaders, k)
		}
	}
	b, err := json.Marshal(map[string]string(h))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrHeaders, err)
	}
	return string(b), nil
}

// Scan decodes the headers; NULL gives a nil map.
func (h *Headers) Scan(src any) error {
	var b []byte
	switch v := src.(type) {
	case nil:
		*h = nil
		return nil
	case string:
		b = []byte(v)
	case []byte:
		b = v
	default:
		return fmt.Errorf("model: cannot scan %T into Headers", src)
	}
	m := map[string]string{}
	if err := json.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("model: decode headers: %w", err)
	}
	*h = m
	return nil
}

// ZeroTime is how a zero time.Time is stored: the smallest int64. It sorts
// before every real time, so a zero NextRetry is always due.
const ZeroTime = math.MinInt64

// ErrTimeRange reports a time that Unix nanoseconds in an int64 cannot hold
// (before 1677-09-21 or after 2262-04-11).
var ErrTimeRange = errors.New("time outside the storable range 1677-09-21 to 2262-04-11")

var (
	minTime = time.Unix(0, math.MinInt64+1)
	maxTime = time.Unix(0, math.MaxInt64)
)

// EncodeTime turns a time into Unix nanoseconds; the zero time becomes
// ZeroTime.
func EncodeTime(t time.Time) (int64, error) {
	if t.IsZero() {
		return ZeroTime, nil
	}
	if t.Before(minTime) || t.After(maxTime) {
		return 0, fmt.Errorf("%w: %s", ErrTimeRange, t.UTC().Format(time.RFC3339Nano))
	}
	return t.UnixNano(), nil
}

// DecodeTime is the inverse of EncodeTime; times come back in UTC.
func DecodeTime(n int64) time.Time {
	if n == ZeroTime {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}
