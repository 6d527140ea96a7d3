package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	fleetv1 "github.com/vigil-hips/vigil/api/vigil/fleet/v1"
	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/fleet"
	"github.com/vigil-hips/vigil/internal/sign"
	"github.com/vigil-hips/vigil/internal/testutil"
	"github.com/vigil-hips/vigil/internal/testutil/pgtest"
	"github.com/vigil-hips/vigil/internal/testworkload"
)

// startNATS runs a NATS server with JetStream in the test process, on a
// free loopback port: what the replicas share as their stream.
func startNATS(t *testing.T) string {
	t.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoSigs: true, NoLog: true})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		t.Fatal("NATS not ready within 30 s")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns.ClientURL()
}

// simAgent is a simulated agent: enrolled through one replica, watching
// it, verifying every bundle with the admin key as the agent does.
type simAgent struct {
	id      string
	c       fleetv1.FleetClient
	bundles chan *fleet.Bundle
	refused chan error
}

func newSimAgent(ctx context.Context, t *testing.T, srv *fleetServer, secretFile string, pub []byte) *simAgent {
	t.Helper()
	a := &simAgent{id: randomID(t), bundles: make(chan *fleet.Bundle, 16), refused: make(chan error, 16)}
	cred, err := fleet.Enroll(ctx, fleet.Enrollment{Server: srv.addr, CAFile: srv.ca, SecretFile: secretFile, HostID: a.id, Hostname: "sim"})
	if err != nil {
		t.Fatalf("simulated agent: enroll through %s: %v", srv.addr, err)
	}
	conn, err := fleet.Dial(srv.addr, srv.ca, cred)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	a.c = fleetv1.NewFleetClient(conn)
	w, err := a.c.Watch(ctx, &fleetv1.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		v, applied := fleet.Verifier{Key: pub, Host: a.id}, uint64(0)
		for {
			b, err := w.Recv()
			if err != nil {
				close(a.bundles)
				return
			}
			fb, err := v.Verify(ctx, b.GetEnvelope(), applied)
			if err != nil {
				a.refused <- err
				continue
			}
			applied = fb.Version
			a.bundles <- fb
		}
	}()
	return a
}

// TestFleetScaleOut: two `vigil server` replicas on one PostgreSQL (a
// private cluster started by the test) and one NATS JetStream. A simulated
// agent enrolls through replica A, another through replica B. A binary
// blocked on the first, uploaded through A, is in the queue read from B
// (through the stream into PostgreSQL); approving it through B makes
// signed bundles reach both agents within 10 s (A's agent through the
// replicas' change notice), verified with the admin key. A replayed and
// an unsigned bundle are refused by the agents' check.
func TestFleetScaleOut(t *testing.T) {
	if testutil.InVM() {
		t.Skip("host only: the VM image has no PostgreSQL (this test runs in make test-host)")
	}
	pg := pgtest.Start(t)
	dbURL := pg.CreateDB(t, "vigil_fleet")
	natsURL := startNATS(t)
	dir := t.TempDir()
	bin := vigilBin(t)
	if out, err := exec.Command(bin, "keys", "generate", "--out", filepath.Join(dir, "admin")).CombinedOutput(); err != nil {
		t.Fatalf("vigil keys generate: %v\n%s", err, out)
	}
	pub, err := sign.LoadPublicKey(filepath.Join(dir, "admin.pub"))
	if err != nil {
		t.Fatal(err)
	}
	flags := []string{"--signing-key", filepath.Join(dir, "admin.key"), "--database", dbURL, "--stream", natsURL}
	a := startFleetServer(t, filepath.Join(dir, "a"), flags...)
	// Replicas share the CA: B gets A's.
	stateB := filepath.Join(dir, "b", "state")
	if err := os.MkdirAll(stateB, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"ca.pem", "ca.key"} {
		b, err := os.ReadFile(filepath.Join(a.dir, "state", f))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(stateB, f), b, 0o600)
	}
	b := startFleetServer(t, filepath.Join(dir, "b"), flags...)
	if !strings.Contains(a.log.String(), "database=postgres") || !strings.Contains(b.log.String(), "stream=nats://") {
		t.Fatalf("replicas not on PostgreSQL and NATS:\n%s\n%s", a.log, b.log)
	}

	secret, err := a.fleet("secret", "create", "--name", "scale")
	if err != nil {
		t.Fatal(err)
	}
	secretFile := filepath.Join(dir, "secret")
	os.WriteFile(secretFile, bytes.TrimSpace(secret), 0o600)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	agentA := newSimAgent(ctx, t, a, secretFile, pub) // the secret made on A works on B too
	agentB := newSimAgent(ctx, t, b, secretFile, pub)
	for _, ag := range []*simAgent{agentA, agentB} {
		select {
		case fb := <-ag.bundles:
			if fb.Version != 1 || len(fb.Hashes) != 0 {
				t.Fatalf("%s: first bundle %+v", ag.id, fb)
			}
		case err := <-ag.refused:
			t.Fatalf("%s: first bundle refused: %v", ag.id, err)
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: no first bundle within 10 s", ag.id)
		}
	}

	// A blocked exec on agent A's host, uploaded through A.
	blocked := hexDigest(randomID(t))
	ev := &vigilv1.Event{Id: 3, Kind: "exec", Time: timestamppb.Now(), Process: &vigilv1.Process{Pid: 4242, Exe: "/usr/bin/bash"},
		Detail:  &vigilv1.Event_Exec{Exec: &vigilv1.Exec{File: &vigilv1.File{Path: "/srv/new-" + blocked[:8]}}},
		Trust:   &vigilv1.Trust{Sha256: blocked, Verdict: "unknown", Mode: "lockdown"},
		Verdict: &vigilv1.Verdict{Action: "deny", Refused: true}}
	if r, err := agentA.c.UploadEvents(ctx, &fleetv1.UploadEventsRequest{AfterId: 0, ThroughId: 5, Events: []*vigilv1.Event{ev}}); err != nil || r.GetLastEventId() != 5 {
		t.Fatalf("upload through A: %v %v", r, err)
	}
	var entry *fleetv1.QueueEntry
	if err := within(15*time.Second, func() error {
		out, err := b.fleet("queue", "-o", "json")
		if err != nil {
			return err
		}
		var q fleetv1.ListQueueResponse
		if err := protojson.Unmarshal(out, &q); err != nil {
			return err
		}
		for _, e := range q.GetEntries() {
			if e.GetSha256() == blocked {
				entry = e
				return nil
			}
		}
		return errors.New("not in B's queue")
	}); err != nil {
		t.Fatalf("uploaded through A, queue read from B: %v\nA log:\n%s\nB log:\n%s", err, a.log, b.log)
	}
	if entry.GetCount() != 1 || entry.GetRefused() != 1 || len(entry.GetHosts()) != 1 || entry.GetHosts()[0] != agentA.id ||
		entry.GetPaths()[0] != "/srv/new-"+blocked[:8] || entry.GetProcesses()[0] != agentA.id+" 4242 /usr/bin/bash" {
		t.Fatalf("queue entry on B: %v", entry)
	}

	// Approve through B's admin API.
	adminConn, err := grpc.NewClient("unix://"+b.adminSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer adminConn.Close()
	approved := time.Now()
	if _, err := fleetv1.NewFleetAdminClient(adminConn).Approve(ctx, &fleetv1.ApproveRequest{Sha256: blocked, Scope: "global"}); err != nil {
		t.Fatal(err)
	}
	deadline := time.After(10 * time.Second)
	for _, ag := range []*simAgent{agentA, agentB} {
	wait:
		for {
			select {
			case fb := <-ag.bundles:
				if fb.Version == 2 && len(fb.Hashes) == 1 && fb.Hashes[0].SHA256 == blocked && fb.Hashes[0].Verdict == fleet.Allow {
					t.Logf("agent %s (watching %s) got the signed rule %s after the approval on B", ag.id[:8],
						map[*simAgent]string{agentA: "A", agentB: "B"}[ag], time.Since(approved).Round(time.Millisecond))
					break wait
				}
				t.Fatalf("%s: unexpected bundle %+v", ag.id, fb)
			case err := <-ag.refused:
				t.Fatalf("%s: bundle refused: %v", ag.id, err)
			case <-deadline:
				t.Fatalf("agent %s: no signed rule within 10 s of the approval on B\nA log:\n%s\nB log:\n%s", ag.id, a.log, b.log)
			}
		}
	}
	if out, _ := a.fleet("queue", "-o", "json"); bytes.Contains(out, []byte(blocked)) {
		t.Fatalf("approved digest still queued on A: %s", out)
	}

	// The replicas made one bundle version 2 each, no more: read through A.
	out, err := a.fleet("hosts", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var hosts fleetv1.ListHostsResponse
	if err := protojson.Unmarshal(out, &hosts); err != nil {
		t.Fatal(err)
	}
	if len(hosts.GetHosts()) != 2 {
		t.Fatalf("hosts: %v", &hosts)
	}
	for _, h := range hosts.GetHosts() {
		if h.GetBundleVersion() != 2 {
			t.Errorf("host %s: bundle version %d, want 2", h.GetId(), h.GetBundleVersion())
		}
		if h.GetId() == agentA.id && (h.GetLastEventId() != 5 || h.GetEventsLost() != 0) {
			t.Errorf("host A: last event id %d, lost %d; want 5 and 0 (ids 1-2, 4-5 were filtered, not lost)", h.GetLastEventId(), h.GetEventsLost())
		}
	}

	// A replayed bundle and an unsigned one are refused by the agent's check.
	v := fleet.Verifier{Key: pub, Host: agentB.id}
	r, err := agentB.c.Sync(ctx, &fleetv1.SyncRequest{HaveVersion: 1})
	if err != nil || r.GetBundle().GetVersion() != 2 {
		t.Fatalf("sync through B: %v %v", r, err)
	}
	r1, err := agentB.c.Sync(ctx, &fleetv1.SyncRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(ctx, r.GetBundle().GetEnvelope(), 2); !errors.Is(err, fleet.ErrOldVersion) {
		t.Fatalf("replayed bundle v2 after applying v2: %v, want ErrOldVersion", err)
	}
	payload, _ := (&fleet.Bundle{Host: agentB.id, Version: 99, Issued: time.Now(),
		Hashes: []fleet.HashRule{{SHA256: blocked, Verdict: fleet.Deny, Scope: "global"}}}).Marshal()
	unsigned, _ := json.Marshal(sign.Envelope{PayloadType: fleet.BundlePayloadType, Payload: b64(payload)})
	if _, err := v.Verify(ctx, unsigned, 2); !errors.Is(err, fleet.ErrUnsigned) {
		t.Fatalf("unsigned bundle: %v, want ErrUnsigned", err)
	}
	if _, err := v.Verify(ctx, r1.GetBundle().GetEnvelope(), 2); err == nil {
		t.Fatal("a bundle for the current version was accepted again")
	}

	// A real agent, enrolled through A (lockdown on a tmpfs of this test
	// only): code refused on its host reaches the queue read from B, and
	// approved through B it runs there within 10 s.
	ra, mnt := realFleetAgent(t, a, dir, secretFile, filepath.Join(dir, "admin.pub"))
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	fresh, freshSHA := variant(t, exe, filepath.Join(mnt, "fresh"), 9)
	if err := testworkload.Noop(fresh); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("exec of new code on the real agent: %v, want EPERM", err)
	}
	if err := within(20*time.Second, func() error {
		out, err := b.fleet("queue", "-o", "json")
		if err != nil {
			return err
		}
		if !bytes.Contains(out, []byte(freshSHA)) {
			return errors.New("not in B's queue")
		}
		return nil
	}); err != nil {
		t.Fatalf("the real agent's refused code: %v\nagent log:\n%s", err, ra.log)
	}
	approved = time.Now()
	if _, err := fleetv1.NewFleetAdminClient(adminConn).Approve(ctx, &fleetv1.ApproveRequest{Sha256: freshSHA, Scope: "global"}); err != nil {
		t.Fatal(err)
	}
	if err := within(10*time.Second, func() error { return testworkload.Noop(fresh) }); err != nil {
		t.Fatalf("approved through B, still refused on the real agent (watching A) %v later: %v\nagent log:\n%s",
			time.Since(approved), err, ra.log)
	}
	t.Logf("approved through B; it ran on the real agent watching A %v later", time.Since(approved).Round(time.Millisecond))
}

// realFleetAgent starts a real agent that enrolls with s: lockdown on a
// tmpfs of the test's own (nothing host-wide), this test binary trusted.
func realFleetAgent(t *testing.T, s *fleetServer, dir, secretFile, adminPub string) (*agent, string) {
	t.Helper()
	mnt := testTmpfs(t)
	state := filepath.Join(dir, "real-agent-state")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if out, stderr, code := vigilRun(t, "trust", "scan", "--db", filepath.Join(state, "trust.db"), exe); code != 0 {
		t.Fatalf("vigil trust scan: exit %d\n%s%s", code, out, stderr)
	}
	src, err := os.ReadFile(lockdownPolicy)
	if err != nil {
		t.Fatal(err)
	}
	pol := filepath.Join(dir, "real-lockdown.yaml")
	os.WriteFile(pol, []byte(strings.Replace(string(src), "/etc/vigil/catalogs", filepath.Join(dir, "no-catalogs"), 1)), 0o644)
	idFile := filepath.Join(dir, "real-machine-id")
	os.WriteFile(idFile, []byte(randomID(t)+"\n"), 0o644)
	a := startAgent(t, "--backend", "tracepoint", "--fanotify-mark", mnt, "--policy", pol, "--state-dir", state,
		"--admin-key", adminPub, "--protect=false", "--host-id-file", idFile,
		"--fleet-server", s.addr, "--fleet-ca", s.ca, "--fleet-enroll-secret-file", secretFile, "--fleet-poll", "2s")
	if err := within(20*time.Second, func() error {
		_, err := os.Stat(filepath.Join(state, "fleet", fleet.BundleFile))
		return err
	}); err != nil {
		t.Fatalf("the real agent applied no bundle: %v\nagent log:\n%s", err, a.log)
	}
	return a, mnt
}
