package fleetdb_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/fleet"
	"github.com/vigil-hips/vigil/internal/fleet/fleetdb"
	"github.com/vigil-hips/vigil/internal/testutil/pgtest"
)

var (
	clusterOnce sync.Once
	cluster     *pgtest.Cluster
)

// openPG opens a new database on a cluster shared by the package's tests;
// two Postgres values on it play two server replicas.
func openPG(t *testing.T) (a, b *fleetdb.Postgres) {
	t.Helper()
	// One cluster per test keeps cleanup simple; initdb takes about a second.
	c := pgtest.Start(t)
	url := c.CreateDB(t, "vigil")
	ctx := context.Background()
	// Two replicas starting together: the schema is made once.
	var (
		wg   sync.WaitGroup
		dbs  [2]*fleetdb.Postgres
		errs [2]error
	)
	for i := range dbs {
		wg.Go(func() { dbs[i], errs[i] = fleetdb.OpenPostgres(ctx, url) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("replica %d: open: %v", i, err)
		}
		t.Cleanup(func() { dbs[i].Close() })
	}
	return dbs[0], dbs[1]
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func TestPostgresHostsSecretsRules(t *testing.T) {
	a, b := openPG(t)
	ctx := context.Background()
	now := time.Now()
	hash := []byte(randHex(16))
	if err := a.AddSecret(ctx, "batch", hash, now.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if n, err := b.CheckSecret(ctx, hash, now); err != nil || n != "batch" {
		t.Fatalf("secret from the other replica: %q %v", n, err)
	}
	if _, err := b.CheckSecret(ctx, hash, now.Add(2*time.Minute)); !errors.Is(err, fleetdb.ErrBadSecret) {
		t.Fatalf("expired secret: %v", err)
	}
	if _, err := b.CheckSecret(ctx, []byte("other"), now); !errors.Is(err, fleetdb.ErrBadSecret) {
		t.Fatalf("unknown secret: %v", err)
	}

	if _, err := a.Enroll(ctx, fleetdb.Host{ID: "h", Hostname: "one", Tags: []string{"b", "a"}, CertSerial: "1", Enrolled: now}); err != nil {
		t.Fatal(err)
	}
	if last, err := b.Append(ctx, fleetdb.Upload{Host: "h", ThroughID: 50}); err != nil || last != 50 {
		t.Fatalf("upload: %d %v", last, err)
	}
	h, err := b.Enroll(ctx, fleetdb.Host{ID: "h", Hostname: "one", Tags: []string{"c", "a"}, CertSerial: "2", Enrolled: now})
	if err != nil || h.CertSerial != "2" || !slices.Equal(h.Tags, []string{"a", "b", "c"}) || h.LastEventID != 0 {
		t.Fatalf("enroll again: %+v %v", h, err)
	}
	if h, _ = a.TagHost(ctx, "h", []string{"d"}, []string{"a"}); !slices.Equal(h.Tags, []string{"b", "c", "d"}) {
		t.Fatalf("tags: %v", h.Tags)
	}
	if err := a.Seen(ctx, "h", fleetdb.Report{AppliedVersion: 3, Backend: "lsm", ExecMode: "lockdown", KernelLost: 4}, now); err != nil {
		t.Fatal(err)
	}
	if h, _ = b.Host(ctx, "h"); h.AppliedVersion != 3 || h.Backend != "lsm" || h.KernelLost != 4 || h.LastSeen.Unix() != now.Unix() {
		t.Fatalf("seen: %+v", h)
	}
	if _, err := a.RevokeHost(ctx, "h"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Enroll(ctx, fleetdb.Host{ID: "h", CertSerial: "3"}); !errors.Is(err, fleetdb.ErrRevoked) {
		t.Fatalf("enroll after revocation: %v", err)
	}
	if _, err := a.RevokeHost(ctx, "nope"); !errors.Is(err, fleetdb.ErrNotFound) {
		t.Fatalf("revoke unknown: %v", err)
	}
	if hs, _ := b.Hosts(ctx); len(hs) != 1 || !hs[0].Revoked {
		t.Fatalf("hosts: %+v", hs)
	}

	r1, err := a.AddRule(ctx, fleetdb.Rule{Kind: "sha256", Value: "aa", Verdict: "deny", Scope: "global"})
	if err != nil {
		t.Fatal(err)
	}
	r2, _ := b.AddRule(ctx, fleetdb.Rule{Kind: "sha256", Value: "aa", Verdict: "allow", Scope: "global"})
	if r2.ID != r1.ID {
		t.Fatalf("the same rule again got a new id: %d, %d", r1.ID, r2.ID)
	}
	if rs, _ := a.Rules(ctx); len(rs) != 1 || rs[0].Verdict != "allow" {
		t.Fatalf("rules: %+v", rs)
	}
	if err := b.DeleteRule(ctx, r1.ID); err != nil {
		t.Fatal(err)
	}
	if err := a.DeleteRule(ctx, r1.ID); !errors.Is(err, fleetdb.ErrNotFound) {
		t.Fatalf("delete twice: %v", err)
	}
}

// TestPostgresBundleVersionsUnderRace: replicas racing to make the next
// bundle of the same hosts never store the same version twice: in every
// round exactly one of the racers wins, and the versions end at the
// number of rounds.
func TestPostgresBundleVersionsUnderRace(t *testing.T) {
	a, b := openPG(t)
	ctx := context.Background()
	const rounds, racers = 25, 6
	hosts := []string{"h1", "h2"}
	for _, h := range hosts {
		if _, err := a.Enroll(ctx, fleetdb.Host{ID: h, CertSerial: "1"}); err != nil {
			t.Fatal(err)
		}
	}
	for _, host := range hosts {
		for round := 1; round <= rounds; round++ {
			var (
				wg   sync.WaitGroup
				mu   sync.Mutex
				wins []int
			)
			for i := range racers {
				db := []*fleetdb.Postgres{a, b}[i%2]
				wg.Go(func() {
					payload := fmt.Appendf(nil, "v%d by %d", round, i)
					err := db.NewBundle(ctx, host, uint64(round), "d", payload, payload)
					switch {
					case err == nil:
						mu.Lock()
						wins = append(wins, i)
						mu.Unlock()
					case !errors.Is(err, fleetdb.ErrConflict):
						t.Errorf("round %d racer %d: %v, want nil or ErrConflict", round, i, err)
					}
				})
			}
			wg.Wait()
			if len(wins) != 1 {
				t.Fatalf("%s round %d: %d racers stored version %d, want exactly 1", host, round, len(wins), round)
			}
			bs, err := b.Bundle(ctx, host)
			if err != nil || bs.Version != uint64(round) || bs.SignedVersion != uint64(round) ||
				string(bs.Envelope) != fmt.Sprintf("v%d by %d", round, wins[0]) {
				t.Fatalf("%s after round %d: %+v %v", host, round, bs, err)
			}
		}
	}
	// A version that skips or repeats is refused.
	if err := a.NewBundle(ctx, "h1", rounds+2, "d", []byte("x"), nil); !errors.Is(err, fleetdb.ErrConflict) {
		t.Fatalf("skipping a version: %v", err)
	}
	if err := a.NewBundle(ctx, "h1", rounds, "d", []byte("x"), nil); !errors.Is(err, fleetdb.ErrConflict) {
		t.Fatalf("repeating a version: %v", err)
	}
	// Offline signing: made unsigned, then signed once.
	if err := a.NewBundle(ctx, "h1", rounds+1, "d2", []byte("p"), nil); err != nil {
		t.Fatal(err)
	}
	if us, _ := b.Unsigned(ctx); len(us) != 1 || us[0].Host != "h1" || us[0].Version != rounds+1 || us[0].SignedVersion != rounds {
		t.Fatalf("unsigned: %+v", us)
	}
	if err := b.SignBundle(ctx, "h1", rounds+2, []byte("e")); !errors.Is(err, fleetdb.ErrConflict) {
		t.Fatalf("signing a version never made: %v", err)
	}
	if err := b.SignBundle(ctx, "h1", rounds+1, []byte("e")); err != nil {
		t.Fatal(err)
	}
	if err := a.SignBundle(ctx, "h1", rounds+1, []byte("e")); !errors.Is(err, fleetdb.ErrOldVersion) {
		t.Fatalf("signing twice: %v", err)
	}
	if us, _ := a.Unsigned(ctx); len(us) != 0 {
		t.Fatalf("unsigned after signing: %+v", us)
	}
}

func upEvent(id uint64, sha string, pid uint32, refused bool) *vigilv1.Event {
	return &vigilv1.Event{Id: id, Kind: "exec", Time: timestamppb.Now(),
		Process: &vigilv1.Process{Pid: pid, Exe: "/bin/sh"},
		Detail:  &vigilv1.Event_Exec{Exec: &vigilv1.Exec{File: &vigilv1.File{Path: "/tmp/" + sha[:8]}}},
		Trust:   &vigilv1.Trust{Sha256: sha, Verdict: "unknown", Mode: "lockdown"},
		Verdict: &vigilv1.Verdict{Action: "deny", Refused: refused}}
}

// TestPostgresQueueUnderConcurrentUploads: checkConcurrentUploads through
// two replicas.
func TestPostgresQueueUnderConcurrentUploads(t *testing.T) {
	a, b := openPG(t)
	checkConcurrentUploads(t, a, b)
}

// store is what the checks shared by both stores use.
type store interface {
	fleetdb.Store
	fleetdb.EventSink
	fleetdb.BatchAppender
	fleetdb.StoreNotifier
}

// checkConcurrentUploads: many hosts upload events about the same digests
// at once, through a and b, retries included, while uploads of unknown
// hosts are refused: the queue's counts are exact, every host is listed,
// nothing is stored twice and the loss count is right. (SQLite commits
// concurrent uploads together: a refused one must fail alone.)
func checkConcurrentUploads(t *testing.T, a, b store) {
	ctx := context.Background()
	const hosts, batches, perBatch = 12, 8, 10
	shas := []string{randHex(32), randHex(32), randHex(32)}
	for h := range hosts {
		if _, err := a.Enroll(ctx, fleetdb.Host{ID: fmt.Sprintf("host-%02d", h), CertSerial: "1"}); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var ghosts sync.WaitGroup
	ghosts.Go(func() {
		for n := 0; ; n++ {
			select {
			case <-stop:
				return
			default:
			}
			u := fleetdb.Upload{Host: "ghost", ThroughID: 1, Events: []*vigilv1.Event{upEvent(1, shas[0], 99, true)}}
			if _, err := []store{a, b}[n%2].Append(ctx, u); !errors.Is(err, fleetdb.ErrNotFound) {
				t.Errorf("upload of an unknown host during the load: %v", err)
				return
			}
		}
	})
	for h := range hosts {
		wg.Go(func() {
			id := fmt.Sprintf("host-%02d", h)
			for n := range batches {
				u := fleetdb.Upload{Host: id, AfterID: uint64(n * perBatch), ThroughID: uint64((n + 1) * perBatch)}
				if h == 0 && n == batches-1 {
					u.AfterID += 5 // ids 71..75 of host-00 were pruned: lost
				}
				for i := u.AfterID + 1; i <= u.ThroughID; i++ {
					u.Events = append(u.Events, upEvent(i, shas[int(i)%len(shas)], uint32(h), i%2 == 0))
				}
				db := []store{a, b}[(h+n)%2]
				if _, err := db.Append(ctx, u); err != nil {
					t.Errorf("%s batch %d: %v", id, n, err)
					return
				}
				// A retry of the same batch through the other replica.
				if n%3 == 0 {
					if _, err := []store{b, a}[(h+n)%2].Append(ctx, u); err != nil {
						t.Errorf("%s batch %d retry: %v", id, n, err)
					}
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	ghosts.Wait()
	if t.Failed() {
		return
	}
	q, err := b.Queue(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(q) != len(shas) {
		t.Fatalf("queue has %d entries, want %d", len(q), len(shas))
	}
	var total, refused uint64
	for _, e := range q {
		total += e.Count
		refused += e.Refused
		if len(e.Hosts) != hosts {
			t.Errorf("%s: %d hosts listed, want %d", e.SHA256[:8], len(e.Hosts), hosts)
		}
		if len(e.Processes) != hosts || len(e.Paths) != 1 || e.FirstSeen.After(e.LastSeen) {
			t.Errorf("%s: %d processes, paths %v, first %v last %v", e.SHA256[:8], len(e.Processes), e.Paths, e.FirstSeen, e.LastSeen)
		}
	}
	want := uint64(hosts*batches*perBatch - 5)
	if total != want {
		t.Fatalf("queue counts add up to %d, want %d (every event once)", total, want)
	}
	evs, _ := a.Events(ctx, "", 100000)
	if uint64(len(evs)) != want {
		t.Fatalf("%d events stored, want %d", len(evs), want)
	}
	for _, id := range []string{"host-00", "host-05"} {
		h, _ := a.Host(ctx, id)
		wantLost := map[string]uint64{"host-00": 5}[id]
		if h.LastEventID != batches*perBatch || h.EventsLost != wantLost {
			t.Errorf("%s: last %d lost %d, want %d, %d", id, h.LastEventID, h.EventsLost, batches*perBatch, wantLost)
		}
	}
	if evs, _ := b.Events(ctx, "host-03", 5); len(evs) != 5 || evs[4].Event.GetId() != batches*perBatch || evs[0].Host != "host-03" {
		t.Fatalf("last 5 events of host-03: %v", evs)
	}
	// Bad input: a range that runs backwards, an unknown host; nothing stored.
	if _, err := a.Append(ctx, fleetdb.Upload{Host: "host-01", AfterID: 9, ThroughID: 3}); err == nil {
		t.Fatal("a backwards range was accepted")
	}
	if _, err := a.Append(ctx, fleetdb.Upload{Host: "nobody", ThroughID: 3, Events: []*vigilv1.Event{upEvent(1, shas[0], 1, true)}}); !errors.Is(err, fleetdb.ErrNotFound) {
		t.Fatalf("upload of an unknown host: %v", err)
	}
	if evs2, _ := a.Events(ctx, "", 100000); len(evs2) != len(evs) {
		t.Fatalf("refused uploads stored events: %d → %d", len(evs), len(evs2))
	}
	if err := b.Dequeue(ctx, shas[0]); err != nil {
		t.Fatal(err)
	}
	if q, _ := a.Queue(ctx); len(q) != 2 || slices.ContainsFunc(q, func(e fleetdb.QueueEntry) bool { return e.SHA256 == shas[0] }) {
		t.Fatalf("queue after dequeue: %+v", q)
	}
}

// TestPostgresAppendBatch: a batch is stored as its uploads one after the
// other (the same host twice, a retry inside the batch, a gap counted
// lost); a batch with an unknown host stores nothing.
func TestPostgresAppendBatch(t *testing.T) {
	a, _ := openPG(t)
	checkAppendBatch(t, a)
}

func checkAppendBatch(t *testing.T, a store) {
	ctx := context.Background()
	sha := randHex(32)
	for _, h := range []string{"x", "y"} {
		if _, err := a.Enroll(ctx, fleetdb.Host{ID: h, Hostname: "name-" + h, CertSerial: "1"}); err != nil {
			t.Fatal(err)
		}
	}
	up := func(host string, after, through uint64) fleetdb.Upload {
		u := fleetdb.Upload{Host: host, AfterID: after, ThroughID: through}
		for id := after + 1; id <= through; id++ {
			u.Events = append(u.Events, upEvent(id, sha, 1, true))
		}
		return u
	}
	// What the StoredFunc is told: each stored event once with its host's
	// name, the retried x (0, 4] not again, nothing of a refused batch.
	var stored []string
	if err := a.OnStored(func(h fleetdb.Host, evs []*vigilv1.Event) {
		if h.Hostname != "name-"+h.ID {
			t.Errorf("told host %q named %q", h.ID, h.Hostname)
		}
		for _, ev := range evs {
			stored = append(stored, fmt.Sprintf("%s:%d", h.ID, ev.GetId()))
		}
	}); err != nil {
		t.Fatal(err)
	}
	defer a.OnStored(nil) //nolint:errcheck // nil is always taken
	lasts, err := a.AppendBatch(ctx, []fleetdb.Upload{up("x", 0, 4), up("y", 0, 3), up("x", 4, 6), up("x", 0, 4), up("y", 5, 8)})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"x:1", "x:2", "x:3", "x:4", "y:1", "y:2", "y:3", "x:5", "x:6", "y:6", "y:7", "y:8"}
	if !slices.Equal(stored, want) {
		t.Fatalf("told stored %v, want %v", stored, want)
	}
	if !slices.Equal(lasts, []uint64{4, 3, 6, 6, 8}) {
		t.Fatalf("last ids %v", lasts)
	}
	x, _ := a.Host(ctx, "x")
	y, _ := a.Host(ctx, "y")
	if x.LastEventID != 6 || x.EventsLost != 0 || y.LastEventID != 8 || y.EventsLost != 2 {
		t.Fatalf("x %d/%d, y %d/%d; want 6/0, 8/2", x.LastEventID, x.EventsLost, y.LastEventID, y.EventsLost)
	}
	q, _ := a.Queue(ctx)
	if len(q) != 1 || q[0].Count != 6+3+3 || len(q[0].Hosts) != 2 {
		t.Fatalf("queue %+v, want 12 events from 2 hosts", q)
	}
	if _, err := a.AppendBatch(ctx, []fleetdb.Upload{up("x", 6, 9), up("ghost", 0, 1)}); !errors.Is(err, fleetdb.ErrNotFound) {
		t.Fatalf("batch with an unknown host: %v", err)
	}
	if x, _ = a.Host(ctx, "x"); x.LastEventID != 6 {
		t.Fatalf("a refused batch moved x to %d", x.LastEventID)
	}
	if q, _ = a.Queue(ctx); q[0].Count != 12 {
		t.Fatalf("a refused batch stored events: count %d", q[0].Count)
	}
	if len(stored) != len(want) {
		t.Fatalf("a refused batch was told stored: %v", stored[len(want):])
	}
}

// TestPostgresRolloutAndQueryEvents: the same checks as SQLite's, on
// PostgreSQL (the rollout columns come with schema version 2).
func TestPostgresRolloutAndQueryEvents(t *testing.T) {
	a, b := openPG(t)
	checkRollout(t, a)
	rs, err := b.Rules(context.Background())
	if err != nil || len(rs) != 1 || rs[0].Rollout.Stage != fleet.StageStaged || rs[0].Rollout.Percent != 50 || rs[0].Rollout.Tag != "canary" {
		t.Fatalf("the rollout from the other replica: %+v %v", rs, err)
	}
	checkQueryEvents(t, b)
}

// TestPostgresQueueSigners: the same checks as SQLite's, through two
// replicas.
func TestPostgresQueueSigners(t *testing.T) {
	a, b := openPG(t)
	checkQueueSigners(t, a, b)
}
