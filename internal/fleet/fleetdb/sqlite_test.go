package fleetdb_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/fleet"
	"github.com/vigil-hips/vigil/internal/fleet/fleetdb"
)

func open(t *testing.T) (*fleetdb.SQLite, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), fleetdb.FileName)
	db, err := fleetdb.OpenSQLite(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db, path
}

func TestSecrets(t *testing.T) {
	ctx := context.Background()
	db, _ := open(t)
	now := time.Now()
	db.AddSecret(ctx, "forever", []byte("h1"), time.Time{})
	db.AddSecret(ctx, "short", []byte("h2"), now.Add(time.Minute))
	if n, err := db.CheckSecret(ctx, []byte("h1"), now.Add(1000*time.Hour)); err != nil || n != "forever" {
		t.Fatalf("secret without expiry: %q %v", n, err)
	}
	if _, err := db.CheckSecret(ctx, []byte("h2"), now); err != nil {
		t.Fatalf("secret before expiry: %v", err)
	}
	if _, err := db.CheckSecret(ctx, []byte("h2"), now.Add(2*time.Minute)); !errors.Is(err, fleetdb.ErrBadSecret) {
		t.Fatalf("expired secret: %v", err)
	}
	if _, err := db.CheckSecret(ctx, []byte("h3"), now); !errors.Is(err, fleetdb.ErrBadSecret) {
		t.Fatalf("unknown secret: %v", err)
	}
}

func TestHostsAndBundlesPersist(t *testing.T) {
	ctx := context.Background()
	db, path := open(t)
	now := time.Now()
	if _, err := db.Enroll(ctx, fleetdb.Host{ID: "h", Hostname: "one", Tags: []string{"b", "a"}, CertSerial: "1", Enrolled: now}); err != nil {
		t.Fatal(err)
	}
	if last, err := db.Append(ctx, fleetdb.Upload{Host: "h", AfterID: 0, ThroughID: 50}); err != nil || last != 50 {
		t.Fatalf("upload: %d %v", last, err)
	}
	h, err := db.Enroll(ctx, fleetdb.Host{ID: "h", Hostname: "one", Tags: []string{"c", "a"}, CertSerial: "2", Enrolled: now})
	if err != nil || h.CertSerial != "2" || !slices.Equal(h.Tags, []string{"a", "b", "c"}) || h.LastEventID != 0 {
		t.Fatalf("enroll again: %+v %v", h, err)
	}
	if h, _ = db.TagHost(ctx, "h", []string{"d"}, []string{"a"}); !slices.Equal(h.Tags, []string{"b", "c", "d"}) {
		t.Fatalf("tags: %v", h.Tags)
	}
	if err := db.NewBundle(ctx, "h", 2, "d", []byte("p"), nil); !errors.Is(err, fleetdb.ErrConflict) {
		t.Fatalf("version 2 as the first bundle: %v", err)
	}
	if err := db.NewBundle(ctx, "h", 1, "d1", []byte("p1"), []byte("e1")); err != nil {
		t.Fatal(err)
	}
	if err := db.NewBundle(ctx, "h", 2, "d2", []byte("p2"), nil); err != nil {
		t.Fatal(err)
	}
	if err := db.SignBundle(ctx, "h", 1, []byte("again")); !errors.Is(err, fleetdb.ErrOldVersion) {
		t.Fatalf("signing version 1 again: %v", err)
	}
	if err := db.SignBundle(ctx, "h", 3, []byte("e3")); !errors.Is(err, fleetdb.ErrConflict) {
		t.Fatalf("signing a version never made: %v", err)
	}
	if u, _ := db.Unsigned(ctx); len(u) != 1 || u[0].Version != 2 || string(u[0].Payload) != "p2" {
		t.Fatalf("unsigned: %+v", u)
	}
	// Agents get the newest signed bundle while v2 waits.
	if b, _ := db.Bundle(ctx, "h"); b.Version != 2 || b.SignedVersion != 1 || string(b.Envelope) != "e1" {
		t.Fatalf("bundle: %+v", b)
	}
	if _, err := db.RevokeHost(ctx, "h"); err != nil {
		t.Fatal(err)
	}
	db.Close()

	// Everything is still there after a reopen.
	db2, err := fleetdb.OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	if h, err := db2.Host(ctx, "h"); err != nil || !h.Revoked || h.CertSerial != "2" {
		t.Fatalf("host after reopen: %+v %v", h, err)
	}
	if _, err := db2.Enroll(ctx, fleetdb.Host{ID: "h", CertSerial: "3", Enrolled: now}); !errors.Is(err, fleetdb.ErrRevoked) {
		t.Fatalf("a revoked host enrolled again: %v", err)
	}
	if b, _ := db2.Bundle(ctx, "h"); b.Version != 2 || b.SignedVersion != 1 {
		t.Fatalf("bundle after reopen: %+v", b)
	}
	if _, err := db2.Host(ctx, "nobody"); !errors.Is(err, fleetdb.ErrNotFound) {
		t.Fatalf("unknown host: %v", err)
	}
}

func TestRules(t *testing.T) {
	ctx := context.Background()
	db, _ := open(t)
	r1, _ := db.AddRule(ctx, fleetdb.Rule{Kind: "sha256", Value: "aa", Verdict: "deny", Scope: "global"})
	r2, _ := db.AddRule(ctx, fleetdb.Rule{Kind: "sha256", Value: "aa", Verdict: "allow", Scope: "global"})
	r3, _ := db.AddRule(ctx, fleetdb.Rule{Kind: "sha256", Value: "aa", Verdict: "allow", Scope: "tag:x"})
	if r1.ID != r2.ID || r3.ID == r1.ID {
		t.Fatalf("ids %d %d %d: the same kind, value and scope is one rule", r1.ID, r2.ID, r3.ID)
	}
	rs, _ := db.Rules(ctx)
	if len(rs) != 2 || rs[0].Verdict != "allow" {
		t.Fatalf("rules: %+v", rs)
	}
	if err := db.DeleteRule(ctx, r3.ID); err != nil {
		t.Fatal(err)
	}
	if err := db.DeleteRule(ctx, r3.ID); !errors.Is(err, fleetdb.ErrNotFound) {
		t.Fatalf("deleting twice: %v", err)
	}
}

// TestRollout: a rule's rollout is stored with it, changed by SetRollout
// (a bad one refused, nothing changed), and survives a reopen; a database
// made before rollouts existed gains the columns when opened.
func TestRollout(t *testing.T) {
	ctx := context.Background()
	db, path := open(t)
	checkRollout(t, db)
	db.Close()
	db2, err := fleetdb.OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	rs, _ := db2.Rules(ctx)
	if len(rs) != 1 || rs[0].Rollout.Stage != fleet.StageStaged || rs[0].Rollout.Percent != 50 {
		t.Fatalf("after reopen: %+v", rs)
	}
	checkRolloutMigration(t)
}

// checkRollout: a rollout is stored, validated and changed; it leaves one
// rule, staged at 50% and tag canary.
func checkRollout(t *testing.T, db fleetdb.Store) {
	t.Helper()
	ctx := context.Background()
	r, err := db.AddRule(ctx, fleetdb.Rule{Kind: "sha256", Value: "aa", Verdict: "deny", Scope: "global",
		Rollout: fleet.Rollout{Stage: fleet.StagePreview, Percent: 10, Tag: "canary"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.AddRule(ctx, fleetdb.Rule{Kind: "sha256", Value: "bb", Verdict: "deny", Scope: "global",
		Rollout: fleet.Rollout{Stage: "soon"}}); err == nil {
		t.Fatal("a bad rollout was stored")
	}
	if _, err := db.SetRollout(ctx, r.ID, fleet.Rollout{Stage: fleet.StageStaged, Percent: 200}); err == nil {
		t.Fatal("SetRollout took 200%")
	}
	if _, err := db.SetRollout(ctx, 999, fleet.Rollout{}); !errors.Is(err, fleetdb.ErrNotFound) {
		t.Fatalf("SetRollout of no rule: %v", err)
	}
	got, err := db.SetRollout(ctx, r.ID, fleet.Rollout{Stage: fleet.StageStaged, Percent: 50, Tag: "canary"})
	if err != nil || got.Rollout != (fleet.Rollout{Stage: fleet.StageStaged, Percent: 50, Tag: "canary"}) {
		t.Fatalf("SetRollout: %+v %v", got, err)
	}
	rs, err := db.Rules(ctx)
	if err != nil || len(rs) != 1 || rs[0].Rollout != got.Rollout {
		t.Fatalf("rules after SetRollout: %+v %v", rs, err)
	}
}

func checkRolloutMigration(t *testing.T) {
	ctx := context.Background()
	// An old database: the rules table without the rollout columns.
	old := filepath.Join(t.TempDir(), "old.db")
	raw, err := sql.Open("sqlite", old)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Exec(`CREATE TABLE rules (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, value TEXT NOT NULL,
		verdict TEXT NOT NULL, scope TEXT NOT NULL, comment TEXT NOT NULL, created_ns INTEGER NOT NULL, UNIQUE (kind, value, scope));
		INSERT INTO rules (kind, value, verdict, scope, comment, created_ns) VALUES ('sha256', 'cc', 'allow', 'global', 'kept', 1)`); err != nil {
		t.Fatal(err)
	}
	raw.Close()
	db3, err := fleetdb.OpenSQLite(ctx, old)
	if err != nil {
		t.Fatalf("open an old database: %v", err)
	}
	defer db3.Close()
	rs, err := db3.Rules(ctx)
	if err != nil || len(rs) != 1 || rs[0].Comment != "kept" || rs[0].Rollout != (fleet.Rollout{}) {
		t.Fatalf("old database's rules: %+v %v", rs, err)
	}
}

// TestQueryEvents: events filtered by host, kind, verdict and time, the
// newest first, paged by offset, with the number that match in all — over
// every stored event, not a window of the newest.
func TestQueryEvents(t *testing.T) {
	db, _ := open(t)
	checkQueryEvents(t, db)
}

// storeSink is a database that is both (SQLite, PostgreSQL).
type storeSink interface {
	fleetdb.Store
	fleetdb.EventSink
}

func checkQueryEvents(t *testing.T, db storeSink) {
	t.Helper()
	ctx := context.Background()
	base := time.Date(2026, 11, 24, 0, 0, 0, 0, time.UTC)
	var a, b []*vigilv1.Event
	for i := 1; i <= 300; i++ {
		ev := &vigilv1.Event{Id: uint64(i), Kind: "exec", Time: timestamppb.New(base.Add(time.Duration(i) * time.Minute))}
		switch i % 3 {
		case 0:
			ev.Verdict = &vigilv1.Verdict{Action: "deny", Mode: "enforce", Refused: true}
		case 1:
			ev.Verdict = &vigilv1.Verdict{Action: "deny", Mode: "monitor"}
		default:
			ev.Kind = "file_modify"
			ev.Trust = &vigilv1.Trust{Verdict: "unknown"}
		}
		a = append(a, ev)
		if i <= 10 {
			b = append(b, &vigilv1.Event{Id: uint64(i), Kind: "exec", Time: ev.Time, Verdict: &vigilv1.Verdict{Action: "deny", Refused: true}})
		}
	}
	for _, h := range []string{"a", "b"} {
		if _, err := db.Enroll(ctx, fleetdb.Host{ID: h, Hostname: h, CertSerial: h, Enrolled: base}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := db.Append(ctx, fleetdb.Upload{Host: "a", ThroughID: 300, Events: a}); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Append(ctx, fleetdb.Upload{Host: "b", ThroughID: 10, Events: b}); err != nil {
		t.Fatal(err)
	}
	q := func(f fleetdb.EventFilter) ([]fleetdb.HostEvent, int) {
		t.Helper()
		evs, n, err := db.QueryEvents(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		return evs, n
	}
	if _, n := q(fleetdb.EventFilter{}); n != 310 {
		t.Fatalf("all: %d", n)
	}
	evs, n := q(fleetdb.EventFilter{Host: "a", Verdict: "refused", Limit: 7})
	if n != 100 || len(evs) != 7 || evs[0].Event.GetId() != 300 || evs[6].Event.GetId() != 282 {
		t.Fatalf("refused on a: %d in all, page %d from %d", n, len(evs), evs[0].Event.GetId())
	}
	evs, n = q(fleetdb.EventFilter{Host: "a", Verdict: "refused", Limit: 7, Offset: 98})
	if n != 100 || len(evs) != 2 || evs[1].Event.GetId() != 3 {
		t.Fatalf("last page: %d, %v", n, evs)
	}
	if _, n = q(fleetdb.EventFilter{Host: "a", Verdict: "would-block"}); n != 100 {
		t.Fatalf("would-block: %d", n)
	}
	if _, n = q(fleetdb.EventFilter{Kind: "file_modify", Verdict: "unknown"}); n != 100 {
		t.Fatalf("file_modify unknown: %d", n)
	}
	// Minutes 10..19 of host a: 10 events; with b's minute 10.
	if _, n = q(fleetdb.EventFilter{Since: base.Add(10 * time.Minute), Until: base.Add(20 * time.Minute)}); n != 11 {
		t.Fatalf("time window: %d, want 11", n)
	}
	if _, _, err := db.QueryEvents(ctx, fleetdb.EventFilter{Verdict: "maybe"}); err == nil {
		t.Fatal("an unknown verdict was accepted")
	}
}

// TestQueueSigners: the catalog signers hosts report for unknown code are
// aggregated per queued digest, and dequeuing a signer takes exactly the
// digests it covers off the queue.
func TestQueueSigners(t *testing.T) {
	db, _ := open(t)
	checkQueueSigners(t, db, db)
}

func checkQueueSigners(t *testing.T, db, other storeSink) {
	t.Helper()
	ctx := context.Background()
	for _, h := range []string{"qs-a", "qs-b"} {
		if _, err := db.Enroll(ctx, fleetdb.Host{ID: h, CertSerial: "1"}); err != nil {
			t.Fatal(err)
		}
	}
	k1, k2, k3 := randHex(32), randHex(32), randHex(32)
	covered, both, alone := randHex(32), randHex(32), randHex(32)
	ev := func(id uint64, sha string, signers ...string) *vigilv1.Event {
		e := upEvent(id, sha, uint32(id), true)
		e.Trust.CatalogSigners = signers
		return e
	}
	// Host a reports covered signed by k1; host b reports it again with
	// k1 and k2; both is listed by k1 and k3; alone by none.
	if _, err := db.Append(ctx, fleetdb.Upload{Host: "qs-a", ThroughID: 2, Events: []*vigilv1.Event{
		ev(1, covered, k1), ev(2, alone)}}); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Append(ctx, fleetdb.Upload{Host: "qs-b", ThroughID: 2, Events: []*vigilv1.Event{
		ev(1, covered, k1, k2), ev(2, both, k3, k1)}}); err != nil {
		t.Fatal(err)
	}
	q, err := other.Queue(ctx)
	if err != nil {
		t.Fatal(err)
	}
	signers := map[string][]string{}
	for _, e := range q {
		s := slices.Clone(e.Signers)
		slices.Sort(s)
		signers[e.SHA256] = s
	}
	want := map[string][]string{covered: sorted(k1, k2), both: sorted(k1, k3), alone: nil}
	for sha, w := range want {
		if got, ok := signers[sha]; !ok || !slices.Equal(got, w) {
			t.Errorf("signers of %s: %v (queued %v), want %v", sha[:8], got, ok, w)
		}
	}
	if len(q) != 3 {
		t.Fatalf("queue has %d entries, want 3", len(q))
	}

	// Key ids are case-sensitive (SHA256:base64): another case is another key.
	if got, err := db.DequeueSigner(ctx, strings.ToUpper(k1)); err != nil || len(got) != 0 {
		t.Fatalf("dequeue signer K1: %v %v, want nothing", got, err)
	}
	got, err := db.DequeueSigner(ctx, k1)
	if err != nil || !slices.Equal(got, sorted(covered, both)) {
		t.Fatalf("dequeue signer k1: %v %v, want %v", got, err, sorted(covered, both))
	}
	q, err = other.Queue(ctx)
	if err != nil || len(q) != 1 || q[0].SHA256 != alone || len(q[0].Signers) != 0 {
		t.Fatalf("queue after approving k1: %+v %v, want only %s", q, err, alone[:8])
	}
	// k2 covered only what k1 took: nothing is left for it.
	if got, err := other.DequeueSigner(ctx, k2); err != nil || len(got) != 0 {
		t.Fatalf("dequeue signer k2: %v %v, want nothing", got, err)
	}
	// A new sighting queues the digest afresh, with no stale signers.
	if _, err := db.Append(ctx, fleetdb.Upload{Host: "qs-a", AfterID: 2, ThroughID: 3, Events: []*vigilv1.Event{ev(3, both)}}); err != nil {
		t.Fatal(err)
	}
	if q, _ = db.Queue(ctx); len(q) != 2 || !slices.ContainsFunc(q, func(e fleetdb.QueueEntry) bool { return e.SHA256 == both && len(e.Signers) == 0 && e.Count == 1 }) {
		t.Fatalf("queue after a new sighting: %+v", q)
	}
}

func sorted(s ...string) []string {
	slices.Sort(s)
	return s
}

// TestSQLiteConcurrentUploads: checkConcurrentUploads on the embedded
// store, whose Append commits concurrent uploads together.
func TestSQLiteConcurrentUploads(t *testing.T) {
	db, _ := open(t)
	checkConcurrentUploads(t, db, db)
}

// TestSQLiteAppendBatch: the same checks as PostgreSQL's.
func TestSQLiteAppendBatch(t *testing.T) {
	db, _ := open(t)
	checkAppendBatch(t, db)
}

// TestSQLiteCloseWithUploadsInFlight: Close waits for the group being
// stored; an upload after Close is refused, not lost silently.
func TestSQLiteCloseWithUploadsInFlight(t *testing.T) {
	db, path := open(t)
	ctx := context.Background()
	for i := range 50 {
		if _, err := db.Enroll(ctx, fleetdb.Host{ID: fmt.Sprint("h", i), CertSerial: "1"}); err != nil {
			t.Fatal(err)
		}
	}
	sha := strings.Repeat("ab", 32)
	var wg sync.WaitGroup
	var stored, refused atomic.Int64
	for i := range 50 {
		wg.Go(func() {
			u := fleetdb.Upload{Host: fmt.Sprint("h", i), ThroughID: 1, Events: []*vigilv1.Event{upEvent(1, sha, 1, true)}}
			if _, err := db.Append(ctx, u); err != nil {
				refused.Add(1)
				if !strings.Contains(err.Error(), "closed") {
					t.Errorf("upload %d: %v", i, err)
				}
				return
			}
			stored.Add(1)
		})
	}
	time.Sleep(5 * time.Millisecond)
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if stored.Load()+refused.Load() != 50 {
		t.Fatalf("%d stored + %d refused != 50", stored.Load(), refused.Load())
	}
	t.Logf("%d uploads stored before Close, %d refused after", stored.Load(), refused.Load())
	again, err := fleetdb.OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if evs, _ := again.Events(ctx, "", 1000); int64(len(evs)) != stored.Load() {
		t.Fatalf("%d events in the database, %d uploads were answered as stored", len(evs), stored.Load())
	}
}
