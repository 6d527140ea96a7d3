package fleetsrv_test

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	fleetv1 "github.com/vigil-hips/vigil/api/vigil/fleet/v1"
	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/fleet"
	"github.com/vigil-hips/vigil/internal/fleet/fleetdb"
	"github.com/vigil-hips/vigil/internal/fleet/fleetsrv"
	"github.com/vigil-hips/vigil/internal/sign"
)

type env struct {
	t      *testing.T
	dir    string
	addr   string
	caFile string
	admin  fleetv1.FleetAdminClient
	pub    ed25519.PublicKey
	priv   ed25519.PrivateKey
	secret string
	store  *fleetdb.SQLite
}

// start runs a server on loopback; online: it holds the signing key.
func start(t *testing.T, online bool, opts ...func(*fleetsrv.Config)) *env {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	dir := t.TempDir()
	e := &env{t: t, dir: dir, caFile: filepath.Join(dir, "ca.pem")}
	e.pub, e.priv, _ = sign.GenerateKey()
	ca, _, err := fleet.LoadOrCreateCA(dir, "test CA")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.ServerCert([]string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	db, err := fleetdb.OpenSQLite(ctx, filepath.Join(dir, fleetdb.FileName))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	e.store = db
	cfg := fleetsrv.Config{Store: db, Sink: db, CA: ca, Cert: cert, AdminKey: e.pub}
	if online {
		cfg.SigningKey = e.priv
	}
	for _, o := range opts {
		o(&cfg)
	}
	srv, err := fleetsrv.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.secret = "a-test-enrollment-secret-" + hex.EncodeToString(e.pub[:4])
	if err := srv.AddSecret(ctx, "test", e.secret); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	aln, err := net.Listen("unix", filepath.Join(dir, "admin.sock"))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln, aln) }()
	t.Cleanup(func() { cancel(); <-done })
	e.addr = ln.Addr().String()
	conn, err := grpc.NewClient("unix://"+filepath.Join(dir, "admin.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	e.admin = fleetv1.NewFleetAdminClient(conn)
	return e
}

// host is a simulated agent.
type host struct {
	id   string
	cred *fleet.Credential
	c    fleetv1.FleetClient
}

func (e *env) enroll(id string, tags ...string) (*host, error) {
	sf := filepath.Join(e.dir, "secret-"+id)
	os.WriteFile(sf, []byte(e.secret), 0o600)
	cred, err := fleet.Enroll(context.Background(), fleet.Enrollment{Server: e.addr, CAFile: e.caFile, SecretFile: sf,
		HostID: id, Hostname: "sim-" + id, Tags: tags})
	if err != nil {
		return nil, err
	}
	return e.connect(id, cred), nil
}

func (e *env) connect(id string, cred *fleet.Credential) *host {
	conn, err := fleet.Dial(e.addr, e.caFile, cred)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { conn.Close() })
	return &host{id: id, cred: cred, c: fleetv1.NewFleetClient(conn)}
}

func (e *env) mustEnroll(id string, tags ...string) *host {
	h, err := e.enroll(id, tags...)
	if err != nil {
		e.t.Fatalf("enroll %s: %v", id, err)
	}
	return h
}

func ctx5(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestEnrollAndRevoke(t *testing.T) {
	e := start(t, true)
	ctx := ctx5(t)

	// A wrong secret is refused.
	sf := filepath.Join(e.dir, "wrong")
	os.WriteFile(sf, []byte("not-the-secret-at-all-0123456789"), 0o600)
	_, err := fleet.Enroll(ctx, fleet.Enrollment{Server: e.addr, CAFile: e.caFile, SecretFile: sf, HostID: "h1"})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("enroll with a wrong secret: %v, want PermissionDenied", err)
	}
	if hs, _ := e.admin.ListHosts(ctx, &fleetv1.ListHostsRequest{}); len(hs.GetHosts()) != 0 {
		t.Fatalf("a host was recorded after a refused enrollment: %v", hs)
	}

	h := e.mustEnroll("h1", "web")
	if _, err := h.c.Sync(ctx, &fleetv1.SyncRequest{AgentVersion: "test"}); err != nil {
		t.Fatalf("sync with the host certificate: %v", err)
	}
	// Without a certificate only Enroll answers.
	anon := e.connect("anon", nil)
	if _, err := anon.c.Sync(ctx, &fleetv1.SyncRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("sync without a certificate: %v, want Unauthenticated", err)
	}
	hs, err := e.admin.ListHosts(ctx, &fleetv1.ListHostsRequest{})
	if err != nil || len(hs.GetHosts()) != 1 || hs.GetHosts()[0].GetId() != "h1" || hs.GetHosts()[0].GetAgentVersion() != "test" ||
		hs.GetHosts()[0].GetTags()[0] != "web" {
		t.Fatalf("hosts: %v %v", hs, err)
	}

	// Enrolling again replaces the certificate: the old one is refused.
	h2 := e.mustEnroll("h1")
	if _, err := h.c.Sync(ctx, &fleetv1.SyncRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("sync with a replaced certificate: %v, want Unauthenticated", err)
	}
	if _, err := h2.c.Sync(ctx, &fleetv1.SyncRequest{}); err != nil {
		t.Fatalf("sync with the new certificate: %v", err)
	}

	// A Watch stream open at revocation ends; the certificate and a new
	// enrollment are refused.
	w, err := h2.c.Watch(ctx, &fleetv1.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Recv(); err != nil { // the enrollment's bundle (no rules)
		t.Fatalf("first bundle: %v", err)
	}
	if _, err := e.admin.RevokeHost(ctx, &fleetv1.RevokeHostRequest{HostId: "h1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Recv(); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("watch after revocation: %v, want PermissionDenied", err)
	}
	if _, err := h2.c.Sync(ctx, &fleetv1.SyncRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("sync after revocation: %v, want PermissionDenied", err)
	}
	if _, err := e.enroll("h1"); err == nil {
		t.Fatal("a revoked host enrolled again")
	}
	// A certificate from another CA is refused by TLS.
	other := t.TempDir()
	oca, _, _ := fleet.LoadOrCreateCA(other, "other")
	key, pub, _ := fleet.NewHostKey()
	oc, _ := oca.ClientCert("h9", pub)
	forged := e.connect("h9", &fleet.Credential{HostID: "h9", Cert: tlsCert(oc.Raw, key)})
	if _, err := forged.c.Sync(ctx, &fleetv1.SyncRequest{}); err == nil {
		t.Fatal("a certificate from another CA was accepted")
	}
}

func digest(s string) string {
	d := sha256.Sum256([]byte(s))
	return hex.EncodeToString(d[:])
}

// next receives the next bundle within 5 s and verifies it.
func next(t *testing.T, w fleetv1.Fleet_WatchClient, v fleet.Verifier, applied uint64) *fleet.Bundle {
	t.Helper()
	type res struct {
		b   *fleetv1.Bundle
		err error
	}
	ch := make(chan res, 1)
	go func() { b, err := w.Recv(); ch <- res{b, err} }()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("watch: %v", r.err)
		}
		b, err := v.Verify(context.Background(), r.b.GetEnvelope(), applied)
		if err != nil {
			t.Fatalf("bundle does not verify: %v", err)
		}
		return b
	case <-time.After(5 * time.Second):
		t.Fatal("no bundle within 5 s")
	}
	return nil
}

func TestScopedRulesReachWatch(t *testing.T) {
	e := start(t, true)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	web, db := e.mustEnroll("web1", "web"), e.mustEnroll("db1", "db")
	ww, _ := web.c.Watch(ctx, &fleetv1.WatchRequest{})
	dw, _ := db.c.Watch(ctx, &fleetv1.WatchRequest{})
	wv, dv := fleet.Verifier{Key: e.pub, Host: "web1"}, fleet.Verifier{Key: e.pub, Host: "db1"}
	if b := next(t, ww, wv, 0); b.Version != 1 || len(b.Hashes) != 0 {
		t.Fatalf("first bundle: %+v", b)
	}
	next(t, dw, dv, 0)

	if _, err := e.admin.Approve(ctx, &fleetv1.ApproveRequest{Sha256: digest("tool"), Scope: "tag:web"}); err != nil {
		t.Fatal(err)
	}
	b := next(t, ww, wv, 1)
	if b.Version != 2 || len(b.Hashes) != 1 || b.Hashes[0].SHA256 != digest("tool") || b.Hashes[0].Verdict != fleet.Allow {
		t.Fatalf("web1 after a tag:web approval: %+v", b)
	}
	if _, err := e.admin.Approve(ctx, &fleetv1.ApproveRequest{Sha256: digest("evil"), Scope: "global", Deny: true}); err != nil {
		t.Fatal(err)
	}
	// db1 never got the tag:web rule: its next bundle has the deny only.
	b = next(t, dw, dv, 1)
	if b.Version != 2 || len(b.Hashes) != 1 || b.Hashes[0].Verdict != fleet.Deny {
		t.Fatalf("db1 after a global deny: %+v", b)
	}
	if b = next(t, ww, wv, 2); b.Version != 3 || len(b.Hashes) != 2 {
		t.Fatalf("web1 after a global deny: %+v", b)
	}
	// Tagging db1 web brings it the web rule; a Sync returns the newest.
	if _, err := e.admin.TagHost(ctx, &fleetv1.TagHostRequest{HostId: "db1", Add: []string{"web"}}); err != nil {
		t.Fatal(err)
	}
	r, err := db.c.Sync(ctx, &fleetv1.SyncRequest{HaveVersion: 2})
	if err != nil || r.GetBundle() == nil {
		t.Fatalf("sync: %v %v", r, err)
	}
	if b, err := dv.Verify(ctx, r.GetBundle().GetEnvelope(), 2); err != nil || len(b.Hashes) != 2 {
		t.Fatalf("db1 after tagging: %+v %v", b, err)
	}
	// Nothing newer: no bundle.
	if r, _ := db.c.Sync(ctx, &fleetv1.SyncRequest{HaveVersion: 3}); r.GetBundle() != nil {
		t.Fatalf("sync at the newest version returned a bundle: v%d", r.GetBundle().GetVersion())
	}
	// A bad rule is refused with a clear error and stores nothing.
	if _, err := e.admin.Approve(ctx, &fleetv1.ApproveRequest{Sha256: "xyz", Scope: "global"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("approve of a bad digest: %v", err)
	}
	if _, err := e.admin.Approve(ctx, &fleetv1.ApproveRequest{Sha256: digest("x"), Scope: "everywhere"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("approve with a bad scope: %v", err)
	}
	if rs, _ := e.admin.ListRules(ctx, &fleetv1.ListRulesRequest{}); len(rs.GetRules()) != 2 {
		t.Fatalf("rules: %v", rs)
	}
}

func TestOfflineSigning(t *testing.T) {
	e := start(t, false)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	h := e.mustEnroll("h1")
	if r, err := h.c.Sync(ctx, &fleetv1.SyncRequest{}); err != nil || r.GetBundle() != nil {
		t.Fatalf("an offline server served a bundle nobody signed: %v %v", r, err)
	}
	e.admin.Approve(ctx, &fleetv1.ApproveRequest{Sha256: digest("tool"), Scope: "global"})
	ub, err := e.admin.UnsignedBundles(ctx, &fleetv1.UnsignedBundlesRequest{})
	if err != nil || len(ub.GetBundles()) != 1 || ub.GetBundles()[0].GetVersion() != 2 {
		t.Fatalf("unsigned bundles: %v %v", ub, err)
	}
	payload := ub.GetBundles()[0].GetPayload()
	_, other, _ := sign.GenerateKey()
	bad, _ := fleet.SignPayload(ctx, other, payload)
	if _, err := e.admin.PutBundle(ctx, &fleetv1.PutBundleRequest{Envelope: bad}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("a bundle signed by another key was stored: %v", err)
	}
	// A signed payload other than the one waiting is refused.
	b, _ := fleet.ParsePayload(payload)
	b.Hashes[0].Verdict = fleet.Deny
	altered, _ := fleet.SignBundle(ctx, e.priv, *b)
	if _, err := e.admin.PutBundle(ctx, &fleetv1.PutBundleRequest{Envelope: altered}); err == nil {
		t.Fatal("a payload other than the waiting one was stored")
	}
	w, _ := h.c.Watch(ctx, &fleetv1.WatchRequest{})
	good, _ := fleet.SignPayload(ctx, e.priv, payload)
	if _, err := e.admin.PutBundle(ctx, &fleetv1.PutBundleRequest{Envelope: good}); err != nil {
		t.Fatal(err)
	}
	if got := next(t, w, fleet.Verifier{Key: e.pub, Host: "h1"}, 0); got.Version != 2 || got.Hashes[0].Verdict != fleet.Allow {
		t.Fatalf("offline-signed bundle: %+v", got)
	}
	// Storing it again is refused (not newer).
	if _, err := e.admin.PutBundle(ctx, &fleetv1.PutBundleRequest{Envelope: good}); err == nil {
		t.Fatal("the same bundle was stored twice")
	}
}

func execEvent(id uint64, sha, verdict string, refused bool) *vigilv1.Event {
	return &vigilv1.Event{Id: id, Kind: "exec", Time: timestamppb.Now(),
		Process: &vigilv1.Process{Pid: 42, Exe: "/bin/sh"},
		Detail:  &vigilv1.Event_Exec{Exec: &vigilv1.Exec{File: &vigilv1.File{Path: "/tmp/x/" + sha[:8]}}},
		Trust:   &vigilv1.Trust{Sha256: sha, Verdict: verdict, Mode: "lockdown"},
		Verdict: &vigilv1.Verdict{Action: "deny", Refused: refused}}
}

func TestUploadCountsLossAndFeedsQueue(t *testing.T) {
	e := start(t, true)
	ctx := ctx5(t)
	a, b := e.mustEnroll("a"), e.mustEnroll("b")
	unknown := digest("new tool")
	up := func(h *host, after, through uint64, evs ...*vigilv1.Event) uint64 {
		t.Helper()
		r, err := h.c.UploadEvents(ctx, &fleetv1.UploadEventsRequest{AfterId: after, ThroughId: through, Events: evs})
		if err != nil {
			t.Fatal(err)
		}
		return r.GetLastEventId()
	}
	if last := up(a, 0, 10, execEvent(3, unknown, "unknown", true), execEvent(7, digest("ok"), "trusted", false)); last != 10 {
		t.Fatalf("last id %d, want 10", last)
	}
	up(a, 5, 10, execEvent(7, digest("ok"), "trusted", false)) // a retry: nothing new
	up(a, 25, 30, execEvent(28, unknown, "unknown", true))     // 11..25 never sent
	up(b, 0, 1, execEvent(1, unknown, "unknown", false))
	hs, _ := e.admin.ListHosts(ctx, &fleetv1.ListHostsRequest{})
	for _, h := range hs.GetHosts() {
		want := map[string][2]uint64{"a": {30, 15}, "b": {1, 0}}[h.GetId()]
		if h.GetLastEventId() != want[0] || h.GetEventsLost() != want[1] {
			t.Errorf("host %s: last id %d, lost %d; want %d, %d", h.GetId(), h.GetLastEventId(), h.GetEventsLost(), want[0], want[1])
		}
	}
	evs, _ := e.admin.ListEvents(ctx, &fleetv1.ListEventsRequest{HostId: "a"})
	if len(evs.GetEvents()) != 3 {
		t.Fatalf("host a has %d events stored, want 3 (the retry is not stored twice)", len(evs.GetEvents()))
	}
	q, _ := e.admin.ListQueue(ctx, &fleetv1.ListQueueRequest{})
	if len(q.GetEntries()) != 1 {
		t.Fatalf("queue: %v", q)
	}
	qe := q.GetEntries()[0]
	if qe.GetSha256() != unknown || qe.GetCount() != 3 || qe.GetRefused() != 2 || len(qe.GetHosts()) != 2 ||
		len(qe.GetProcesses()) != 2 || qe.GetProcesses()[0] == "" || len(qe.GetPaths()) != 1 {
		t.Fatalf("queue entry: %v", qe)
	}
	if _, err := e.admin.Approve(ctx, &fleetv1.ApproveRequest{Sha256: unknown, Scope: "global"}); err != nil {
		t.Fatal(err)
	}
	if q, _ := e.admin.ListQueue(ctx, &fleetv1.ListQueueRequest{}); len(q.GetEntries()) != 0 {
		t.Fatalf("queue after approval: %v", q)
	}
	// An upload whose range runs backwards is refused.
	if _, err := a.c.UploadEvents(ctx, &fleetv1.UploadEventsRequest{AfterId: 40, ThroughId: 35}); err == nil {
		t.Fatal("an upload with through < after was accepted")
	}
}

// TestApproveBySigner: hosts report which catalog signers list their
// unknown code; the queue shows them; approving a signer for a tag puts
// the signer rule in the tagged hosts' verified bundles only and takes
// every digest it covers off the queue.
func TestApproveBySigner(t *testing.T) {
	e := start(t, true)
	ctx := ctx5(t)
	web, db := e.mustEnroll("web1", "web"), e.mustEnroll("db1", "db")
	pub, _, err := sign.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	pem, _ := sign.MarshalPublicKey(pub)
	keyID, _ := sign.KeyID(pub)
	other := digest(keyID) // another signer's key id
	tool, lib, stray := digest("tool"+keyID), digest("lib"+keyID), digest("stray"+keyID)
	signed := func(id uint64, sha string, signers ...string) *vigilv1.Event {
		ev := execEvent(id, sha, "unknown", true)
		ev.Trust.CatalogSigners = signers
		return ev
	}
	if _, err := web.c.UploadEvents(ctx, &fleetv1.UploadEventsRequest{ThroughId: 2,
		Events: []*vigilv1.Event{signed(1, tool, keyID), signed(2, stray, other)}}); err != nil {
		t.Fatal(err)
	}
	if _, err := db.c.UploadEvents(ctx, &fleetv1.UploadEventsRequest{ThroughId: 1,
		Events: []*vigilv1.Event{signed(1, lib, other, keyID)}}); err != nil {
		t.Fatal(err)
	}
	q, _ := e.admin.ListQueue(ctx, &fleetv1.ListQueueRequest{})
	got := map[string][]string{}
	for _, en := range q.GetEntries() {
		s := slices.Clone(en.GetSigners())
		slices.Sort(s)
		got[en.GetSha256()] = s
	}
	want := map[string][]string{tool: {keyID}, stray: {other}, lib: {keyID, other}}
	slices.Sort(want[lib])
	for sha, w := range want {
		if !slices.Equal(got[sha], w) {
			t.Errorf("queue signers of %s: %v, want %v", sha[:8], got[sha], w)
		}
	}

	// Bad requests store nothing.
	for _, bad := range []*fleetv1.ApproveRequest{
		{SignerKey: "not a key", Scope: "tag:web"},
		{SignerKey: string(pem), Sha256: tool, Scope: "tag:web"},
		{SignerKey: string(pem), Deny: true, Scope: "tag:web"},
		{SignerKey: string(pem), Scope: "nowhere"},
	} {
		if _, err := e.admin.Approve(ctx, bad); status.Code(err) != codes.InvalidArgument {
			t.Errorf("approve %+v: %v, want InvalidArgument", bad, err)
		}
	}
	if q, _ := e.admin.ListQueue(ctx, &fleetv1.ListQueueRequest{}); len(q.GetEntries()) != 3 {
		t.Fatalf("queue after refused approvals: %d entries, want 3", len(q.GetEntries()))
	}

	r, err := e.admin.Approve(ctx, &fleetv1.ApproveRequest{SignerKey: string(pem), Scope: "tag:web", Comment: "vendor"})
	if err != nil || r.GetKind() != fleet.KindSigner || r.GetVerdict() != fleet.Allow {
		t.Fatalf("approve by signer: %+v %v", r, err)
	}
	q, _ = e.admin.ListQueue(ctx, &fleetv1.ListQueueRequest{})
	if len(q.GetEntries()) != 1 || q.GetEntries()[0].GetSha256() != stray {
		t.Fatalf("queue after approving the signer: %v, want only the stray digest", q.GetEntries())
	}
	wv, dv := fleet.Verifier{Key: e.pub, Host: "web1"}, fleet.Verifier{Key: e.pub, Host: "db1"}
	wr, err := web.c.Sync(ctx, &fleetv1.SyncRequest{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := wv.Verify(ctx, wr.GetBundle().GetEnvelope(), 0)
	if err != nil || len(b.Signers) != 1 || b.Signers[0].PublicKey != string(pem) || b.Signers[0].Scope != "tag:web" {
		t.Fatalf("web1's bundle: %+v %v, want the signer rule", b, err)
	}
	dr, err := db.c.Sync(ctx, &fleetv1.SyncRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if b, err := dv.Verify(ctx, dr.GetBundle().GetEnvelope(), 0); err != nil || len(b.Signers) != 0 {
		t.Fatalf("db1 (not tagged web) got %+v %v, want no signer", b, err)
	}
}
