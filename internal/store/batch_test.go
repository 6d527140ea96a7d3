package store

import (
	"context"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/proto"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
)

// TestAppendBatchSizes: batches that take several INSERT statements of
// different sizes store every event, in order, with consecutive ids that
// Append reports and Query returns.
func TestAppendBatchSizes(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(t.TempDir(), "events.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var all []*vigilv1.Event
	seq := uint64(0)
	for _, n := range []int{300, 1, 517, 128, 255} {
		evs := benchEvents(n, seq+1)
		seq += uint64(n)
		if err := s.Append(ctx, evs); err != nil {
			t.Fatal(err)
		}
		all = append(all, evs...)
	}
	got, err := s.Query(ctx, Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(all) {
		t.Fatalf("stored %d events, want %d", len(got), len(all))
	}
	for i, ev := range all {
		if ev.GetId() != uint64(i+1) || got[i].GetId() != ev.GetId() {
			t.Fatalf("event %d: Append set id %d, stored id %d; want %d", i, ev.GetId(), got[i].GetId(), i+1)
		}
		if !proto.Equal(got[i], ev) {
			t.Fatalf("event %d: stored %v\nwant %v", i, got[i], ev)
		}
	}
	if id, err := s.LastID(ctx); err != nil || id != uint64(len(all)) {
		t.Fatalf("LastID = %d, %v; want %d", id, err, len(all))
	}
	// The filter columns are the event's.
	f := Filter{Kinds: []string{"exec"}, PID: all[5].GetProcess().GetPid()}
	var want []uint64
	for _, ev := range all {
		if f.Match(ev) {
			want = append(want, ev.GetId())
		}
	}
	matched, err := s.Query(ctx, f)
	if err != nil || len(matched) != len(want) || len(want) < 2 {
		t.Fatalf("query by kind and pid: %d events, %v; want %d (at least 2)", len(matched), err, len(want))
	}
	for i, ev := range matched {
		if ev.GetId() != want[i] {
			t.Fatalf("query by kind and pid: id %d, want %d", ev.GetId(), want[i])
		}
	}
}

// TestOpenDropsThePIDIndex: a store made before the pid index was dropped
// loses it at Open (appends stop paying for it), and pid queries still
// answer.
func TestOpenDropsThePIDIndex(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "events.db")
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.db.ExecContext(ctx, `CREATE INDEX events_pid ON events(pid, id)`); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if s, err = Open(ctx, path); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var n int
	if err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = 'events_pid'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("events_pid after Open: %d (%v)", n, err)
	}
	evs := benchEvents(8, 0)
	if err := s.Append(ctx, evs); err != nil {
		t.Fatal(err)
	}
	got, err := s.Query(ctx, Filter{PID: evs[3].GetProcess().GetPid()})
	if err != nil || len(got) == 0 || got[0].GetProcess().GetPid() != evs[3].GetProcess().GetPid() {
		t.Fatalf("pid query: %v %v", got, err)
	}
}
