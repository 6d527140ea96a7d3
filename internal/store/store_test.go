package store_test

import (
	"context"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/store"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func open(t *testing.T) (*store.Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "events.db")
	s, err := store.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func ev(seq uint64, kind string, pid uint32, at time.Time) *vigilv1.Event {
	e := &vigilv1.Event{
		Seq:     seq,
		Time:    timestamppb.New(at),
		Kind:    kind,
		Backend: "tracepoint",
		Process: &vigilv1.Process{Pid: pid, Exe: "/usr/bin/x", Comm: "x"},
	}
	switch kind {
	case "exec":
		e.Detail = &vigilv1.Event_Exec{Exec: &vigilv1.Exec{Filename: "/usr/bin/x", Argv: []string{"x", "-v"}}}
	case "gap":
		e.Detail = &vigilv1.Event_Gap{Gap: &vigilv1.Gap{Lost: 3, AfterSeq: seq}}
	}
	return e
}

func appendAll(t *testing.T, s *store.Store, evs ...*vigilv1.Event) {
	t.Helper()
	if err := s.Append(context.Background(), evs); err != nil {
		t.Fatal(err)
	}
}

func query(t *testing.T, s *store.Store, f store.Filter) []*vigilv1.Event {
	t.Helper()
	got, err := s.Query(context.Background(), f)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func seqs(evs []*vigilv1.Event) []uint64 {
	var out []uint64
	for _, e := range evs {
		out = append(out, e.GetSeq())
	}
	return out
}

func TestAppendQueryRoundTrip(t *testing.T) {
	s, _ := open(t)
	in := []*vigilv1.Event{
		ev(1, "exec", 100, t0),
		ev(2, "fork", 100, t0.Add(time.Second)),
		ev(5, "gap", 0, t0.Add(2*time.Second)),
	}
	appendAll(t, s, in...)
	for i, e := range in {
		if e.GetId() != uint64(i+1) {
			t.Errorf("event %d: id = %d, want %d", i, e.GetId(), i+1)
		}
	}
	got := query(t, s, store.Filter{})
	if len(got) != len(in) {
		t.Fatalf("got %d events, want %d", len(got), len(in))
	}
	for i := range in {
		if !proto.Equal(got[i], in[i]) {
			t.Errorf("event %d:\n got %v\nwant %v", i, got[i], in[i])
		}
	}
}

func TestIDsSurviveReopenAndPrune(t *testing.T) {
	ctx := context.Background()
	s, path := open(t)
	appendAll(t, s, ev(1, "exec", 1, t0), ev(2, "exec", 1, t0))
	// Prune everything: ids must still not be reused.
	if n, err := s.Prune(ctx, store.Retention{MaxAge: time.Hour}, t0.Add(2*time.Hour)); err != nil || n != 2 {
		t.Fatalf("Prune = %d, %v; want 2, nil", n, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := store.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if id, err := s2.LastID(ctx); err != nil || id != 2 {
		t.Fatalf("LastID after reopen = %d, %v; want 2", id, err)
	}
	// seq restarts with the kernel programs; the id does not.
	e := ev(1, "exec", 1, t0)
	appendAll(t, s2, e)
	if e.GetId() != 3 {
		t.Fatalf("id after reopen = %d, want 3", e.GetId())
	}
}

func TestQueryFilters(t *testing.T) {
	s, _ := open(t)
	appendAll(t, s,
		ev(1, "exec", 10, t0),
		ev(2, "fork", 10, t0.Add(1*time.Second)),
		ev(3, "exec", 20, t0.Add(2*time.Second)),
		ev(4, "exit", 20, t0.Add(3*time.Second)),
		ev(5, "gap", 0, t0.Add(4*time.Second)),
		ev(6, "exec", 10, t0.Add(5*time.Second)),
	)
	tests := []struct {
		name string
		f    store.Filter
		want []uint64
	}{
		{"all", store.Filter{}, []uint64{1, 2, 3, 4, 5, 6}},
		{"one kind", store.Filter{Kinds: []string{"exec"}}, []uint64{1, 3, 6}},
		{"kinds", store.Filter{Kinds: []string{"exit", "gap"}}, []uint64{4, 5}},
		{"pid", store.Filter{PID: 20}, []uint64{3, 4}},
		{"kind and pid", store.Filter{Kinds: []string{"exec"}, PID: 10}, []uint64{1, 6}},
		{"after id", store.Filter{AfterID: 4}, []uint64{5, 6}},
		{"max id", store.Filter{MaxID: 2}, []uint64{1, 2}},
		{"after seq", store.Filter{AfterSeq: 3}, []uint64{4, 5, 6}},
		{"since", store.Filter{Since: t0.Add(3 * time.Second)}, []uint64{4, 5, 6}},
		{"limit oldest", store.Filter{Limit: 2}, []uint64{1, 2}},
		{"limit latest", store.Filter{Limit: 2, Latest: true}, []uint64{5, 6}},
		{"limit latest filtered", store.Filter{Kinds: []string{"exec"}, Limit: 2, Latest: true}, []uint64{3, 6}},
		{"latest more than stored", store.Filter{Limit: 100, Latest: true}, []uint64{1, 2, 3, 4, 5, 6}},
		{"latest with max id", store.Filter{Limit: 2, Latest: true, MaxID: 4}, []uint64{3, 4}},
		{"no match", store.Filter{Kinds: []string{"inject"}}, nil},
	}
	all := query(t, s, store.Filter{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := seqs(query(t, s, tt.f))
			if !slices.Equal(got, tt.want) {
				t.Errorf("Query(%+v) seqs = %v, want %v", tt.f, got, tt.want)
			}
			// Filter.Match must agree with the SQL (Limit aside).
			if tt.f.Limit == 0 {
				var matched []uint64
				for _, e := range all {
					if tt.f.Match(e) {
						matched = append(matched, e.GetSeq())
					}
				}
				if !slices.Equal(matched, tt.want) {
					t.Errorf("Match(%+v) seqs = %v, want %v", tt.f, matched, tt.want)
				}
			}
		})
	}
}

func TestScanPagesInOrder(t *testing.T) {
	s, _ := open(t)
	const n = 1500 // several pages
	var batch []*vigilv1.Event
	for i := range n {
		batch = append(batch, ev(uint64(i+1), "exec", uint32(i%7), t0.Add(time.Duration(i)*time.Millisecond)))
		if len(batch) == 400 {
			appendAll(t, s, batch...)
			batch = nil
		}
	}
	appendAll(t, s, batch...)

	got := query(t, s, store.Filter{})
	if len(got) != n {
		t.Fatalf("got %d events, want %d", len(got), n)
	}
	for i, e := range got {
		if e.GetId() != uint64(i+1) || e.GetSeq() != uint64(i+1) {
			t.Fatalf("event %d: id %d seq %d, want both %d", i, e.GetId(), e.GetSeq(), i+1)
		}
	}
	if got := query(t, s, store.Filter{Limit: 1000}); len(got) != 1000 || got[999].GetId() != 1000 {
		t.Errorf("Limit 1000: got %d events", len(got))
	}
	if got := query(t, s, store.Filter{Limit: 600, Latest: true}); len(got) != 600 || got[0].GetId() != 901 || got[599].GetId() != n {
		t.Errorf("Limit 600 latest: got %d events, first id %d", len(got), got[0].GetId())
	}
	count, err := s.Count(context.Background())
	if err != nil || count != n {
		t.Errorf("Count = %d, %v; want %d", count, err, n)
	}
}

func TestRetention(t *testing.T) {
	ctx := context.Background()
	s, _ := open(t)
	for i := range 10 {
		appendAll(t, s, ev(uint64(i+1), "exec", 1, t0.Add(time.Duration(i)*time.Hour)))
	}
	now := t0.Add(10 * time.Hour)

	// Nothing to do.
	if n, err := s.Prune(ctx, store.Retention{MaxAge: 24 * time.Hour, MaxRows: 100}, now); err != nil || n != 0 {
		t.Fatalf("Prune(no-op) = %d, %v", n, err)
	}
	// Age: events at hours 0..4 are older than 5h30m before hour 10.
	if n, err := s.Prune(ctx, store.Retention{MaxAge: 5*time.Hour + 30*time.Minute}, now); err != nil || n != 5 {
		t.Fatalf("Prune(age) = %d, %v; want 5", n, err)
	}
	if got := seqs(query(t, s, store.Filter{})); !slices.Equal(got, []uint64{6, 7, 8, 9, 10}) {
		t.Fatalf("after age prune: %v", got)
	}
	// Rows: keep the newest 2.
	if n, err := s.Prune(ctx, store.Retention{MaxRows: 2}, now); err != nil || n != 3 {
		t.Fatalf("Prune(rows) = %d, %v; want 3", n, err)
	}
	if got := seqs(query(t, s, store.Filter{})); !slices.Equal(got, []uint64{9, 10}) {
		t.Fatalf("after row prune: %v", got)
	}
	// Zero retention keeps everything.
	if n, err := s.Prune(ctx, store.Retention{}, now.Add(1000*time.Hour)); err != nil || n != 0 {
		t.Fatalf("Prune(zero) = %d, %v", n, err)
	}
}

func TestRetentionLarge(t *testing.T) {
	// More rows than one delete chunk.
	ctx := context.Background()
	s, _ := open(t)
	const n = 25_000
	batch := make([]*vigilv1.Event, 0, 5000)
	for i := range n {
		batch = append(batch, ev(uint64(i+1), "fork", 1, t0))
		if len(batch) == cap(batch) {
			appendAll(t, s, batch...)
			batch = batch[:0]
		}
	}
	if got, err := s.Prune(ctx, store.Retention{MaxRows: 1000}, t0); err != nil || got != n-1000 {
		t.Fatalf("Prune = %d, %v; want %d", got, err, n-1000)
	}
	first := query(t, s, store.Filter{Limit: 1})
	if len(first) != 1 || first[0].GetId() != n-999 {
		t.Fatalf("oldest kept = %v, want id %d", first, n-999)
	}
}

func TestAppendKeepsNoIDInBlob(t *testing.T) {
	// An event that already has an id (re-stored) gets a fresh one.
	s, _ := open(t)
	e := ev(1, "exec", 1, t0)
	e.Id = 77
	appendAll(t, s, e)
	if e.GetId() != 1 {
		t.Fatalf("id = %d, want 1", e.GetId())
	}
	got := query(t, s, store.Filter{})
	if len(got) != 1 || got[0].GetId() != 1 {
		t.Fatalf("stored id = %v", got)
	}
}

func TestWALMode(t *testing.T) {
	_, path := open(t)
	// WAL mode leaves a -wal file next to the database while open.
	if m, _ := filepath.Glob(path + "-wal"); len(m) != 1 {
		t.Errorf("no WAL file next to %s", path)
	}
}
