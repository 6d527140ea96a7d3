package fleetstream_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/fleet/fleetdb"
	"github.com/vigil-hips/vigil/internal/fleet/fleetstream"
	"github.com/vigil-hips/vigil/internal/testutil"
	"github.com/vigil-hips/vigil/internal/testutil/pgtest"
)

func event(id uint64, sha string) *vigilv1.Event {
	return &vigilv1.Event{Id: id, Kind: "exec", Time: timestamppb.Now(), Process: &vigilv1.Process{Pid: 7, Exe: "/bin/sh"},
		Trust:   &vigilv1.Trust{Sha256: sha, Verdict: "unknown"},
		Verdict: &vigilv1.Verdict{Refused: true}}
}

// TestStreamAppliesInOrderOnce: uploads published through two replicas'
// sinks reach the store through two competing appliers (one pinned at a
// time) exactly once and in order: retried publishes are stored once, the
// loss count is exact, an upload of an unknown host is dropped and
// counted, and change notices reach every replica.
//
// With PostgreSQL the consumer stores each fetched batch in one
// transaction (AppendBatch), and a batch holding the unknown host's upload
// is stored one by one.
func TestStreamAppliesInOrderOnce(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) {
		db, err := fleetdb.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), fleetdb.FileName))
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		streamApplies(t, db)
	})
	t.Run("postgres", func(t *testing.T) {
		pg := pgtest.Start(t)
		db, err := fleetdb.OpenPostgres(context.Background(), pg.CreateDB(t, "vigil"))
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		streamApplies(t, db)
	})
}

type storeSink interface {
	fleetdb.Store
	fleetdb.EventSink
}

func streamApplies(t *testing.T, db storeSink) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ns, err := fleetstream.Embedded(filepath.Join(dir, "js"))
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Shutdown()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	var (
		conns [2]*fleetstream.Conn
		stats [2]fleetstream.Stats
		wg    sync.WaitGroup
	)
	for i := range conns {
		if conns[i], err = fleetstream.Connect(ctx, "", ns, fmt.Sprintf("replica-%d", i)); err != nil {
			t.Fatal(err)
		}
		defer conns[i].Close()
		cons, err := conns[i].Consumer(ctx)
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() { conns[i].Apply(ctx, cons, db, &stats[i], log) })
	}
	defer wg.Wait()
	defer cancel()

	// Change notices: one published on replica 0 reaches replica 1.
	got := make(chan string, 4)
	if _, err := conns[1].OnChanged(func(h string) { got <- h }); err != nil {
		t.Fatal(err)
	}
	conns[1].NC.Flush()
	if err := conns[0].Changed("host-x"); err != nil {
		t.Fatal(err)
	}
	select {
	case h := <-got:
		if h != "host-x" {
			t.Fatalf("notice for %q", h)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no change notice on the other replica within 5 s")
	}

	const hosts, batches, per = 5, 40, 5
	sha := "ab" + fmt.Sprintf("%062d", time.Now().UnixNano())
	for h := range hosts {
		if _, err := db.Enroll(ctx, fleetdb.Host{ID: fmt.Sprintf("h%d", h), CertSerial: "1"}); err != nil {
			t.Fatal(err)
		}
	}
	var pub sync.WaitGroup
	for h := range hosts {
		pub.Go(func() {
			host := fmt.Sprintf("h%d", h)
			for n := range batches {
				u := fleetdb.Upload{Host: host, AfterID: uint64(n * per), ThroughID: uint64((n + 1) * per)}
				if h == 0 && n == 10 {
					u.AfterID += 2 // two ids pruned before upload: lost
				}
				for id := u.AfterID + 1; id <= u.ThroughID; id++ {
					u.Events = append(u.Events, event(id, sha))
				}
				sink := &fleetstream.Sink{C: conns[(h+n)%2], Store: db}
				last, err := sink.Append(ctx, u)
				if err != nil || last != u.ThroughID {
					t.Errorf("%s batch %d: %d %v", host, n, last, err)
					return
				}
				if n%4 == 0 { // the agent retries: the same upload again
					if _, err := sink.Append(ctx, u); err != nil {
						t.Errorf("%s batch %d retry: %v", host, n, err)
					}
				}
			}
		})
	}
	pub.Wait()
	sink := &fleetstream.Sink{C: conns[0], Store: db}
	if _, err := sink.Append(ctx, fleetdb.Upload{Host: "h1", AfterID: 9, ThroughID: 2}); err == nil {
		t.Fatal("a backwards range was published")
	}
	want := uint64(hosts*batches*per - 2)
	if err := testutil.Within(30*time.Second, 50*time.Millisecond, func() error {
		q, err := sink.Queue(ctx)
		if err != nil {
			return err
		}
		if len(q) != 1 || q[0].Count != want {
			return fmt.Errorf("queue %+v, want one entry of count %d", q, want)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, ok := db.(fleetdb.BatchAppender); ok && stats[0].Batches.Load()+stats[1].Batches.Load() == 0 {
		t.Error("the store takes batches, but every upload was stored on its own")
	}
	// An unknown host's upload right after another's: with a batch store
	// the two are fetched together, the batch fails, and they are stored
	// one by one: the good one kept, the unknown one dropped and counted.
	next := fleetdb.Upload{Host: "h1", AfterID: batches * per, ThroughID: batches*per + 3}
	for id := next.AfterID + 1; id <= next.ThroughID; id++ {
		next.Events = append(next.Events, event(id, sha))
	}
	if _, err := sink.Append(ctx, next); err != nil {
		t.Fatal(err)
	}
	if _, err := sink.Append(ctx, fleetdb.Upload{Host: "unknown", ThroughID: 1, Events: []*vigilv1.Event{event(1, sha)}}); err != nil {
		t.Fatal(err)
	}
	want += 3
	if err := testutil.Within(30*time.Second, 50*time.Millisecond, func() error {
		q, err := sink.Queue(ctx)
		if err != nil {
			return err
		}
		if len(q) != 1 || q[0].Count != want {
			return fmt.Errorf("queue %+v, want one entry of count %d", q, want)
		}
		if stats[0].Refused.Load()+stats[1].Refused.Load() != 1 {
			return fmt.Errorf("refused %d+%d, want 1", stats[0].Refused.Load(), stats[1].Refused.Load())
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	applied := stats[0].Applied.Load() + stats[1].Applied.Load()
	t.Logf("applied by replica 0: %d, by replica 1: %d", stats[0].Applied.Load(), stats[1].Applied.Load())
	if applied != hosts*batches+1 {
		t.Errorf("applied %d uploads, want %d (retries deduplicated in the stream)", applied, hosts*batches+1)
	}
	for h := range hosts {
		host, _ := db.Host(ctx, fmt.Sprintf("h%d", h))
		wantLost, wantLast := map[int]uint64{0: 2}[h], map[int]uint64{1: batches*per + 3}[h]
		if wantLast == 0 {
			wantLast = batches * per
		}
		if host.LastEventID != wantLast || host.EventsLost != wantLost {
			t.Errorf("h%d: last %d lost %d, want %d, %d", h, host.LastEventID, host.EventsLost, wantLast, wantLost)
		}
	}
	t.Logf("batches of more than one upload: %d", stats[0].Batches.Load()+stats[1].Batches.Load())
	if n, err := conns[1].Pending(ctx); err != nil || n != 0 {
		t.Errorf("stream still holds %d uploads (%v), want 0", n, err)
	}
}
