package repository_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"gorm.io/gorm"
	metastorage "schneider.vip/retryspool/storage/meta"

	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/faultdb"
	"schneider.vip/retryspool/storage/meta/sqlite/internal/testkit/testdb"
	"schneider.vip/retryspool/storage/meta/sqlite/repository"
)

// settleRig is a repository on a server engine whose connection can be
// made to die at one chosen moment of a write.
type settleRig struct {
	r      *repository.Repository
	f      *faultdb.Faults
	admin  *gorm.DB
	table  string
	quoted string // the message table as statements name it
	reader *sdkmetric.ManualReader
}

func newSettleRig(t *testing.T, e testdb.Engine) *settleRig {
	t.Helper()
	db, f := faultdb.Open(t, e.Name, e.DSN)
	admin := e.Open(t)
	rig := &settleRig{f: f, admin: admin, table: e.Table(t, admin), reader: sdkmetric.NewManualReader()}
	rig.quoted = `"` + rig.table + `"`
	if e.Name == "mysql" {
		rig.quoted = "`" + rig.table + "`"
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(rig.reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	r, err := repository.New(context.Background(), db, repository.Config{TableName: rig.table, MeterProvider: mp})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, r.Close()) })
	rig.r = r
	return rig
}

// settled returns how many writes the store settled, by verdict.
func (rig *settleRig) settled(t *testing.T) map[string]int64 { return faultdb.Settled(t, rig.reader) }

func (rig *settleRig) state(t *testing.T, id string) (metastorage.QueueState, bool) {
	t.Helper()
	md, err := rig.r.GetMeta(context.Background(), id)
	if errors.Is(err, metastorage.ErrMessageNotFound) {
		return 0, false
	}
	require.NoError(t, err)
	return md.State, true
}

func seedMeta(id string, state metastorage.QueueState, age time.Duration) metastorage.MessageMetadata {
	at := time.Now().Add(-age)
	return metastorage.MessageMetadata{ID: id, State: state, Created: at, Updated: at, NextRetry: at, Attempts: 1}
}

// settleCase is one write whose connection dies: match picks the statement
// (or faultdb.Commit), run makes the call and check what it left.
type settleCase struct {
	name  string
	seed  []metastorage.MessageMetadata
	match func(rig *settleRig) string
	run   func(t *testing.T, rig *settleRig) error
	check func(t *testing.T, rig *settleRig)
	// replay, for a write of one statement, brings the message back to
	// where the faulted statement would apply again, for a late run of it.
	replay func(t *testing.T, rig *settleRig)
	// replayed checks the message after the late run.
	replayed func(t *testing.T, rig *settleRig)
}

var settleCases = []settleCase{{
	name:   "StoreMeta",
	match:  func(rig *settleRig) string { return "INSERT INTO " + rig.quoted + " (" },
	replay: func(*testing.T, *settleRig) {},
	run: func(t *testing.T, rig *settleRig) error {
		return rig.r.StoreMeta(context.Background(), "m1", seedMeta("m1", metastorage.StateIncoming, 0))
	},
	check: func(t *testing.T, rig *settleRig) {
		s, ok := rig.state(t, "m1")
		require.True(t, ok)
		require.Equal(t, metastorage.StateIncoming, s)
	},
}, {
	name:   "UpdateMeta",
	seed:   []metastorage.MessageMetadata{seedMeta("m1", metastorage.StateActive, time.Minute)},
	match:  func(rig *settleRig) string { return "attempts = " },
	replay: func(*testing.T, *settleRig) {},
	run: func(t *testing.T, rig *settleRig) error {
		md := seedMeta("m1", metastorage.StateDeferred, 0)
		md.Attempts = 2
		return rig.r.UpdateMeta(context.Background(), "m1", md)
	},
	check: func(t *testing.T, rig *settleRig) {
		md, err := rig.r.GetMeta(context.Background(), "m1")
		require.NoError(t, err)
		require.Equal(t, metastorage.StateDeferred, md.State)
		require.Equal(t, 2, md.Attempts)
	},
}, {
	name:  "MoveToState",
	seed:  []metastorage.MessageMetadata{seedMeta("m1", metastorage.StateIncoming, time.Minute)},
	match: func(rig *settleRig) string { return "UPDATE " + rig.quoted + " SET state = " },
	replay: func(t *testing.T, rig *settleRig) {
		require.NoError(t, rig.r.MoveToState(context.Background(), "m1", metastorage.StateActive, metastorage.StateIncoming))
	},
	replayed: func(t *testing.T, rig *settleRig) {
		s, _ := rig.state(t, "m1")
		require.Equal(t, metastorage.StateIncoming, s)
	},
	run: func(t *testing.T, rig *settleRig) error {
		return rig.r.MoveToState(context.Background(), "m1", metastorage.StateIncoming, metastorage.StateActive)
	},
	check: func(t *testing.T, rig *settleRig) {
		s, _ := rig.state(t, "m1")
		require.Equal(t, metastorage.StateActive, s)
	},
}, {
	name:  "DeleteMeta",
	seed:  []metastorage.MessageMetadata{seedMeta("m1", metastorage.StateArchived, time.Minute)},
	match: func(rig *settleRig) string { return "DELETE FROM " + rig.quoted },
	replay: func(t *testing.T, rig *settleRig) {
		require.NoError(t, rig.r.StoreMeta(context.Background(), "m1", seedMeta("m1", metastorage.StateArchived, 0)))
	},
	replayed: func(t *testing.T, rig *settleRig) {
		_, ok := rig.state(t, "m1")
		require.True(t, ok)
	},
	run: func(t *testing.T, rig *settleRig) error { return rig.r.DeleteMeta(context.Background(), "m1") },
	check: func(t *testing.T, rig *settleRig) {
		_, ok := rig.state(t, "m1")
		require.False(t, ok)
	},
}, {
	name:  "StoreMetaBatch",
	match: func(*settleRig) string { return faultdb.Commit },
	run: func(t *testing.T, rig *settleRig) error {
		return rig.r.StoreMetaBatch(context.Background(), []metastorage.MessageMetadata{
			seedMeta("m1", metastorage.StateIncoming, 0), seedMeta("m2", metastorage.StateHold, 0)})
	},
	check: func(t *testing.T, rig *settleRig) {
		for _, id := range []string{"m1", "m2"} {
			_, ok := rig.state(t, id)
			require.True(t, ok, id)
		}
	},
}, claimCase("ClaimMessages", metastorage.StateIncoming, func(r *repository.Repository) ([]metastorage.MessageMetadata, error) {
	return r.ClaimMessages(context.Background(), metastorage.StateIncoming, metastorage.StateActive, 3)
}), claimCase("ClaimDue", metastorage.StateDeferred, func(r *repository.Repository) ([]metastorage.MessageMetadata, error) {
	return r.ClaimDue(context.Background(), time.Now(), 3)
}), queueOpCase("RequeueStale", metastorage.StateActive, metastorage.StateIncoming, 5, func(r *repository.Repository) (int64, error) {
	return r.RequeueStale(context.Background(), time.Now().Add(-time.Second), 0)
}), queueOpCase("Purge", metastorage.StateArchived, metastorage.StateArchived, 0, func(r *repository.Repository) (int64, error) {
	return r.Purge(context.Background(), metastorage.StateArchived, time.Now().Add(-time.Second), repository.PurgeOptions{})
})}

// queueOpCase runs a queue operation over 5 messages of state from: it
// counts each message once, and leaves want messages in state after.
func queueOpCase(name string, from, after metastorage.QueueState, want int64, op func(*repository.Repository) (int64, error)) settleCase {
	return settleCase{
		name:  name,
		seed:  seedN(5, from),
		match: func(*settleRig) string { return faultdb.Commit },
		run: func(t *testing.T, rig *settleRig) error {
			n, err := op(rig.r)
			if err == nil {
				require.EqualValues(t, 5, n, "each message counted once")
			}
			return err
		},
		check: func(t *testing.T, rig *settleRig) {
			n, err := rig.r.StateCount(context.Background(), after)
			require.NoError(t, err)
			require.Equal(t, want, n)
		},
	}
}

func seedN(n int, state metastorage.QueueState) []metastorage.MessageMetadata {
	out := make([]metastorage.MessageMetadata, n)
	for i := range out {
		out[i] = seedMeta(fmt.Sprintf("m%d", i), state, time.Duration(n-i)*time.Minute)
	}
	return out
}

// claimCase claims 3 of 5 messages: whether its first commit landed or
// not, the caller gets 3 messages, now active, and no other message left
// its state.
func claimCase(name string, from metastorage.QueueState, claim func(*repository.Repository) ([]metastorage.MessageMetadata, error)) settleCase {
	return settleCase{
		name:  name,
		seed:  seedN(5, from),
		match: func(*settleRig) string { return faultdb.Commit },
		run: func(t *testing.T, rig *settleRig) error {
			got, err := claim(rig.r)
			if err != nil {
				return err
			}
			require.Len(t, got, 3)
			for _, md := range got {
				require.Equal(t, metastorage.StateActive, md.State)
			}
			return nil
		},
		check: func(t *testing.T, rig *settleRig) {
			n, err := rig.r.StateCount(context.Background(), metastorage.StateActive)
			require.NoError(t, err)
			require.EqualValues(t, 3, n, "only the returned messages left %s", from)
		},
	}
}

// Every write whose connection dies after it was sent and before its
// answer (it landed), or before it was sent (it did not), on both
// servers: the call reports success once, the write is there once, and
// the settle counter says which way it went. A write that did not land is
// run again with a new stamp; one that landed is not. The faulted write of
// one statement, replayed afterwards as a session that outlived its
// connection would, is refused by the fence.
func TestSettleLostWrites(t *testing.T) {
	for _, e := range testdb.Servers() {
		t.Run(e.Name, func(t *testing.T) {
			if e.Skip != "" {
				t.Skip(e.Skip)
			}
			t.Parallel()
			for _, tc := range settleCases {
				for _, when := range []faultdb.When{faultdb.After, faultdb.Before} {
					name := map[faultdb.When]string{faultdb.After: "landed", faultdb.Before: "not_landed"}[when]
					t.Run(tc.name+"/"+name, func(t *testing.T) {
						rig := newSettleRig(t, e)
						if len(tc.seed) > 0 {
							require.NoError(t, rig.r.StoreMetaBatch(context.Background(), tc.seed))
						}
						match := tc.match(rig)
						rig.f.Arm(when, match)
						require.NoError(t, tc.run(t, rig))
						require.Equal(t, 1, rig.f.Struck(), "the fault struck")
						runs := map[faultdb.When]int{faultdb.After: 1, faultdb.Before: 2}[when]
						require.Equal(t, runs, rig.f.Matched(), "runs of the write")
						require.Equal(t, map[string]int64{name: 1}, rig.settled(t))
						tc.check(t, rig)
						if tc.replay != nil && when == faultdb.Before {
							tc.replay(t, rig)
							err := rig.admin.Exec(rig.f.Query(), rig.f.Args()...).Error
							require.Error(t, err, "a late run of the write that did not land is refused")
							require.Regexp(t, rig.table+"_writes|Duplicate entry", err.Error(), "refused by the fence")
							if tc.replayed != nil {
								tc.replayed(t, rig)
							} else {
								tc.check(t, rig)
							}
						}
					})
				}
			}
		})
	}
}

// When the server stays unreachable after the connection died, the write
// is not run again and the call says that its outcome is unknown,
// wrapping the connection's error; once the server is back, the record
// shows what happened.
func TestSettleOutcomeUnknown(t *testing.T) {
	repository.SetSettleTimeout(t, 300*time.Millisecond)
	for _, e := range testdb.Servers() {
		t.Run(e.Name, func(t *testing.T) {
			if e.Skip != "" {
				t.Skip(e.Skip)
			}
			for _, when := range []faultdb.When{faultdb.After, faultdb.Before} {
				rig := newSettleRig(t, e)
				rig.f.ArmDown(when, "INSERT INTO "+rig.quoted+" (")
				err := rig.r.StoreMeta(context.Background(), "m1", seedMeta("m1", metastorage.StateIncoming, 0))
				require.ErrorIs(t, err, repository.ErrOutcomeUnknown)
				require.ErrorIs(t, err, io.ErrUnexpectedEOF, "wraps the connection's error")
				require.Equal(t, 1, rig.f.Matched(), "not run again")
				rig.f.Up()
				require.Equal(t, map[string]int64{"unknown": 1}, rig.settled(t))
				_, ok := rig.state(t, "m1")
				require.Equal(t, when == faultdb.After, ok)
			}
		})
	}
}

// The fence keeps a write's pairs for its retention, then a prune removes
// them; pairs within it stay.
func TestSettlePruneFence(t *testing.T) {
	for _, e := range testdb.Servers() {
		t.Run(e.Name, func(t *testing.T) {
			if e.Skip != "" {
				t.Skip(e.Skip)
			}
			t.Parallel()
			rig := newSettleRig(t, e)
			ctx := context.Background()
			require.NoError(t, rig.r.StoreMeta(ctx, "fresh", seedMeta("fresh", metastorage.StateIncoming, 0)))
			old := repository.Stamp(time.Now().Add(-time.Hour))
			require.NoError(t, rig.admin.Exec("INSERT INTO "+rig.table+"_writes (stamp, id, fenced) VALUES (?, 'gone', 0)", old).Error)
			require.NoError(t, rig.r.PruneFence(ctx))
			var ids []string
			require.NoError(t, rig.admin.Table(rig.table+"_writes").Order("id").Pluck("id", &ids).Error)
			require.Equal(t, []string{"fresh"}, ids)
		})
	}
}
