package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"

	fleetv1 "github.com/vigil-hips/vigil/api/vigil/fleet/v1"
	"github.com/vigil-hips/vigil/internal/fleet"
	"github.com/vigil-hips/vigil/internal/sign"
	"github.com/vigil-hips/vigil/internal/testutil"
	"github.com/vigil-hips/vigil/internal/testworkload"

	_ "modernc.org/sqlite" // to play a compromised server
)

// fleetServer is a `vigil server` process.
type fleetServer struct {
	bin, dir, addr, adminSock, ca string
	log                           *testutil.SyncBuffer
	stop                          func()
}

func startFleetServer(t *testing.T, dir string, extra ...string) *fleetServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	s := &fleetServer{bin: vigilBin(t), dir: dir, addr: addr, adminSock: filepath.Join(dir, "admin.sock"),
		ca: filepath.Join(dir, "state", "ca.pem")}
	cmd := exec.Command(s.bin, append([]string{"server", "--listen", addr, "--state-dir", filepath.Join(dir, "state"),
		"--admin-socket", s.adminSock}, extra...)...)
	d := testutil.StartDaemon(t, "vigil server", cmd, 20*time.Second, nil)
	s.log, s.stop = d.Log, d.Stop
	if err := within(20*time.Second, func() error {
		_, err := s.fleet("hosts")
		return err
	}); err != nil {
		t.Fatalf("vigil server did not come up: %v\n%s", err, s.log)
	}
	return s
}

func (s *fleetServer) fleet(args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, s.bin, append(append([]string{"fleet"}, args...), "--admin-socket", s.adminSock)...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("vigil fleet %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return out, nil
}

func randomID(t *testing.T) string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// queueEntry is the server's approval queue entry of sha, nil if none.
func (s *fleetServer) queueEntry(sha string) (*fleetv1.QueueEntry, error) {
	out, err := s.fleet("queue", "-o", "json")
	if err != nil {
		return nil, err
	}
	var q fleetv1.ListQueueResponse
	if err := protojson.Unmarshal(out, &q); err != nil {
		return nil, err
	}
	for _, e := range q.GetEntries() {
		if e.GetSha256() == sha {
			return e, nil
		}
	}
	return nil, nil
}

// waitQueued waits up to 20 s for sha in the server's queue.
func (s *fleetServer) waitQueued(t *testing.T, sha string, a *agent) *fleetv1.QueueEntry {
	t.Helper()
	var entry *fleetv1.QueueEntry
	if err := within(20*time.Second, func() error {
		var err error
		entry, err = s.queueEntry(sha)
		if err == nil && entry == nil {
			err = errors.New("not queued")
		}
		return err
	}); err != nil {
		t.Fatalf("the refused code is not in the server's queue: %v\nagent log:\n%s", err, a.log)
	}
	return entry
}

// fleetAgent is a real agent in lockdown on a fanotify-marked tmpfs,
// enrolled with a fleet server.
type fleetAgent struct {
	*agent
	hostID, state, exe, secretFile string
	args                           []string // to start it again
}

// startFleetAgent starts a real agent in lockdown on mnt only, enrolled
// with srv (a new enrollment secret, a random host id, tag e2e) and
// trusting adminPub's bundles; lockdown.yaml's catalog_dir is catDir.
// This test binary is trusted (scanned into the agent's database), its
// variants are not. It returns once the agent applied its first bundle.
func startFleetAgent(t *testing.T, srv *fleetServer, dir, mnt, adminPub, catDir string) *fleetAgent {
	t.Helper()
	secret, err := srv.fleet("secret", "create", "--name", "e2e")
	if err != nil {
		t.Fatal(err)
	}
	fa := &fleetAgent{hostID: randomID(t), state: filepath.Join(dir, "agent-state"), secretFile: filepath.Join(dir, "secret")}
	os.WriteFile(fa.secretFile, bytes.TrimSpace(secret), 0o600)
	hostIDFile := filepath.Join(dir, "machine-id")
	os.WriteFile(hostIDFile, []byte(fa.hostID+"\n"), 0o644)
	if fa.exe, err = os.Executable(); err != nil {
		t.Fatal(err)
	}
	if out, stderr, code := vigilRun(t, "trust", "scan", "--db", filepath.Join(fa.state, "trust.db"), fa.exe); code != 0 {
		t.Fatalf("vigil trust scan: exit %d\n%s%s", code, out, stderr)
	}
	src, err := os.ReadFile(lockdownPolicy)
	if err != nil {
		t.Fatal(err)
	}
	pol := filepath.Join(dir, "lockdown.yaml")
	os.WriteFile(pol, []byte(strings.Replace(string(src), "/etc/vigil/catalogs", catDir, 1)), 0o644)
	fa.args = []string{"--backend", "tracepoint", "--fanotify-mark", mnt, "--policy", pol, "--state-dir", fa.state,
		"--admin-key", adminPub, "--protect=false", "--host-id-file", hostIDFile,
		"--fleet-server", srv.addr, "--fleet-ca", srv.ca, "--fleet-enroll-secret-file", fa.secretFile,
		"--fleet-tag", "e2e", "--fleet-poll", "2s"}
	fa.agent = startAgent(t, fa.args...)
	if err := within(20*time.Second, func() error {
		_, err := os.Stat(filepath.Join(fa.state, "fleet", fleet.BundleFile))
		return err
	}); err != nil {
		t.Fatalf("the agent applied no bundle: %v\nagent log:\n%s", err, fa.log)
	}
	return fa
}

// TestFleetEndToEnd: `vigil server` (online signing), a real agent in
// lockdown on a fanotify-marked tmpfs and a simulated second agent enroll.
// New code on the tmpfs is refused and shows up in the server's queue;
// approving it makes it run on the real agent within 10 s, and the
// simulated agent receives the signed rule. Bundles a compromised server
// serves (an older one replayed, an unsigned one, one signed by another
// key) are refused and reported, and change nothing. A restarted agent
// applies its kept bundle with the server down and does not enroll again.
func TestFleetEndToEnd(t *testing.T) {
	testutil.RequireRoot(t)
	mnt := testTmpfs(t)
	dir := t.TempDir()
	bin := vigilBin(t)
	if out, err := exec.Command(bin, "keys", "generate", "--out", filepath.Join(dir, "admin")).CombinedOutput(); err != nil {
		t.Fatalf("vigil keys generate: %v\n%s", err, out)
	}
	adminPub := filepath.Join(dir, "admin.pub")
	srv := startFleetServer(t, filepath.Join(dir, "server"), "--signing-key", filepath.Join(dir, "admin.key"))

	fa := startFleetAgent(t, srv, dir, mnt, adminPub, filepath.Join(dir, "no-catalogs"))
	a, hostID, state, exe, secretFile, agentArgs := fa.agent, fa.hostID, fa.state, fa.exe, fa.secretFile, fa.args

	// The simulated agent.
	simID := randomID(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	simCred, err := fleet.Enroll(ctx, fleet.Enrollment{Server: srv.addr, CAFile: srv.ca, SecretFile: secretFile, HostID: simID, Hostname: "sim"})
	if err != nil {
		t.Fatalf("simulated agent: enroll: %v", err)
	}
	conn, err := fleet.Dial(srv.addr, srv.ca, simCred)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	watch, err := fleetv1.NewFleetClient(conn).Watch(ctx, &fleetv1.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := sign.LoadPublicKey(adminPub)
	if err != nil {
		t.Fatal(err)
	}
	simBundles := make(chan *fleet.Bundle, 8)
	go func() {
		v, applied := fleet.Verifier{Key: pub, Host: simID}, uint64(0)
		for {
			b, err := watch.Recv()
			if err != nil {
				close(simBundles)
				return
			}
			fb, err := v.Verify(ctx, b.GetEnvelope(), applied)
			if err != nil {
				t.Errorf("simulated agent: bundle refused: %v", err)
				continue
			}
			applied = fb.Version
			simBundles <- fb
		}
	}()

	// The real agent enrolled and applied its first bundle (no rules).
	firstBundle, err := os.ReadFile(filepath.Join(state, "fleet", fleet.BundleFile))
	if err != nil {
		t.Fatal(err)
	}
	cert, err := os.ReadFile(filepath.Join(state, "fleet", fleet.CertFile))
	if err != nil {
		t.Fatal(err)
	}

	fresh, freshSHA := variant(t, exe, filepath.Join(mnt, "fresh"), 7)
	if err := testworkload.Noop(fresh); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("exec of new code: %v, want EPERM", err)
	}
	entry := srv.waitQueued(t, freshSHA, a)
	if entry.GetRefused() == 0 || len(entry.GetHosts()) != 1 || entry.GetHosts()[0] != hostID || len(entry.GetProcesses()) == 0 ||
		entry.GetPaths()[0] != fresh {
		t.Fatalf("queue entry: %v", entry)
	}

	// Approved through the admin API (the same call `vigil fleet approve`
	// makes; TestFleetOfflineSigning runs the command), so the 10 s are the
	// server's and the agent's, not a CLI's start under emulation.
	adminConn, err := grpc.NewClient("unix://"+srv.adminSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer adminConn.Close()
	approved := time.Now()
	if _, err := fleetv1.NewFleetAdminClient(adminConn).Approve(ctx, &fleetv1.ApproveRequest{Sha256: freshSHA, Scope: "global"}); err != nil {
		t.Fatal(err)
	}
	t.Logf("approve call returned after %s", time.Since(approved).Round(time.Millisecond))
	if err := within(10*time.Second, func() error { return testworkload.Noop(fresh) }); err != nil {
		t.Fatalf("approved code still refused %s after the approval: %v\nagent log:\n%s", time.Since(approved), err, a.log)
	}
	t.Logf("approved code ran on the real agent %s after the approval", time.Since(approved).Round(time.Millisecond))
	simGot := false
	for deadline := time.After(10 * time.Second); !simGot; {
		select {
		case b := <-simBundles:
			for _, h := range b.Hashes {
				if h.SHA256 == freshSHA && h.Verdict == fleet.Allow && h.Scope == "global" {
					simGot = true
				}
			}
		case <-deadline:
			t.Fatal("the simulated agent did not receive the signed rule within 10 s")
		}
	}
	// The host's own pending list no longer shows it.
	if out, err := a.vigil("pending", "-o", "json"); err != nil || strings.Contains(string(out), freshSHA) {
		t.Fatalf("vigil pending after the fleet approval: %v\n%s", err, out)
	}
	// Another new file is still refused: the approval is by content.
	other, _ := variant(t, exe, filepath.Join(mnt, "other"), 8)
	if err := testworkload.Noop(other); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("exec of other new code after the approval: %v, want EPERM", err)
	}

	// The server saw the agent: applied version, no upload loss.
	var hosts fleetv1.ListHostsResponse
	if err := within(10*time.Second, func() error {
		out, err := srv.fleet("hosts", "-o", "json")
		if err != nil {
			return err
		}
		if err := protojson.Unmarshal(out, &hosts); err != nil {
			return err
		}
		for _, h := range hosts.GetHosts() {
			if h.GetId() == hostID && h.GetAppliedVersion() >= 2 && h.GetExecMode() == "lockdown" && h.GetBackend() != "" {
				if h.GetEventsLost() != 0 {
					return fmt.Errorf("events lost: %d", h.GetEventsLost())
				}
				return nil
			}
		}
		return errors.New("agent not reported at version 2")
	}); err != nil {
		t.Fatalf("server's view of the agent: %v: %v", err, &hosts)
	}

	// Play a compromised server: serve bundles straight from its database.
	db, err := sql.Open("sqlite", filepath.Join(srv.dir, "state", "fleet.db")+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	serve := func(version uint64, env []byte) {
		t.Helper()
		if _, err := db.Exec(`UPDATE bundles SET signed_version = ?, version = max(version, ?), envelope = ? WHERE host = ?`,
			version, version, env, hostID); err != nil {
			t.Fatal(err)
		}
	}
	denyFresh := fleet.Bundle{Host: hostID, Version: 1000, Issued: time.Now(),
		Hashes: []fleet.HashRule{{SHA256: freshSHA, Verdict: fleet.Deny, Scope: "global"}}}
	payload, err := denyFresh.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	unsigned, _ := json.Marshal(sign.Envelope{PayloadType: fleet.BundlePayloadType, Payload: b64(payload), Signatures: nil})
	_, otherKey, _ := sign.GenerateKey()
	wrongKey, _ := fleet.SignPayload(ctx, otherKey, payload)
	for i, tc := range []struct {
		reason string
		env    []byte
	}{{"old-version", firstBundle}, {"unsigned", unsigned}, {"bad-signature", wrongKey}} {
		serve(uint64(100+i), tc.env)
		if err := within(15*time.Second, func() error {
			for _, e := range a.events("--kind", "tamper") {
				if tm := e.GetTamper(); tm.GetMethod() == "fleet_bundle" && strings.HasPrefix(tm.GetDetail(), tc.reason+":") && tm.GetRefused() {
					return nil
				}
			}
			return errors.New("no event")
		}); err != nil {
			t.Fatalf("%s bundle: no refusal event: %v\nagent log:\n%s", tc.reason, err, a.log)
		}
		if err := testworkload.Noop(fresh); err != nil {
			t.Fatalf("after a refused %s bundle, approved code no longer runs: %v", tc.reason, err)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(state, "fleet", fleet.VersionFile)); strings.TrimSpace(string(b)) != "2" {
		t.Fatalf("applied version after the refused bundles: %q, want 2", b)
	}

	// With the server gone, a restarted agent applies its kept bundle and
	// keeps its credential.
	srv.stop()
	a.stop(t)
	if err := testworkload.Noop(other); err != nil {
		t.Fatalf("with the agent stopped the tmpfs is not under control: %v", err)
	}
	b := startAgent(t, agentArgs...)
	if err := testworkload.Noop(fresh); err != nil {
		t.Fatalf("restarted agent, server down: approved code refused: %v\nagent log:\n%s", err, b.log)
	}
	if err := testworkload.Noop(other); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("restarted agent: unapproved code: %v, want EPERM", err)
	}
	if c2, _ := os.ReadFile(filepath.Join(state, "fleet", fleet.CertFile)); !bytes.Equal(c2, cert) {
		t.Fatal("the restarted agent enrolled again")
	}
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// TestFleetOfflineSigning: a server without the signing key serves no
// bundle until `vigil fleet sign-bundle` signs the waiting payload with the
// admin key; the server refuses one signed with another key. A revoked
// host is refused. Runs without root: no agent, a simulated one.
func TestFleetOfflineSigning(t *testing.T) {
	dir := t.TempDir()
	bin := vigilBin(t)
	for _, k := range []string{"admin", "other"} {
		if out, err := exec.Command(bin, "keys", "generate", "--out", filepath.Join(dir, k)).CombinedOutput(); err != nil {
			t.Fatalf("vigil keys generate: %v\n%s", err, out)
		}
	}
	secretFile := filepath.Join(dir, "secret")
	os.WriteFile(secretFile, []byte(randomID(t)), 0o600)
	srv := startFleetServer(t, filepath.Join(dir, "server"), "--admin-key", filepath.Join(dir, "admin.pub"),
		"--enroll-secret-file", secretFile)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	id := randomID(t)
	cred, err := fleet.Enroll(ctx, fleet.Enrollment{Server: srv.addr, CAFile: srv.ca, SecretFile: secretFile, HostID: id, Hostname: "sim"})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := fleet.Dial(srv.addr, srv.ca, cred)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := fleetv1.NewFleetClient(conn)
	sha := hexDigest(randomID(t))
	if _, err := srv.fleet("approve", "--sha256", sha, "--scope", "host:"+id); err != nil {
		t.Fatal(err)
	}
	if r, err := c.Sync(ctx, &fleetv1.SyncRequest{}); err != nil || r.GetBundle() != nil {
		t.Fatalf("before signing: %v %v (want no bundle)", r, err)
	}
	if out, err := srv.fleet("sign-bundle", "--key", filepath.Join(dir, "other.key")); err == nil {
		t.Fatalf("sign-bundle with another key was accepted:\n%s", out)
	}
	out, err := srv.fleet("sign-bundle", "--key", filepath.Join(dir, "admin.key"))
	if err != nil || !strings.Contains(string(out), sha) || !strings.Contains(string(out), "signed") {
		t.Fatalf("sign-bundle: %v\n%s", err, out)
	}
	pub, _ := sign.LoadPublicKey(filepath.Join(dir, "admin.pub"))
	r, err := c.Sync(ctx, &fleetv1.SyncRequest{})
	if err != nil || r.GetBundle() == nil {
		t.Fatalf("after signing: %v %v", r, err)
	}
	b, err := (fleet.Verifier{Key: pub, Host: id}).Verify(ctx, r.GetBundle().GetEnvelope(), 0)
	if err != nil || len(b.Hashes) != 1 || b.Hashes[0].SHA256 != sha {
		t.Fatalf("signed bundle: %+v %v", b, err)
	}
	if out, _ := srv.fleet("sign-bundle", "--key", filepath.Join(dir, "admin.key")); !strings.Contains(string(out), "no bundle waits") {
		t.Fatalf("second sign-bundle: %s", out)
	}
	if _, err := srv.fleet("revoke", id); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Sync(ctx, &fleetv1.SyncRequest{}); err == nil {
		t.Fatal("a revoked host's certificate was accepted")
	}
}

func hexDigest(s string) string {
	d := sha256.Sum256([]byte(s))
	return hex.EncodeToString(d[:])
}

// TestFleetStateProtected (BPF LSM): in protected mode the agent's fleet
// state — the version floor that refuses replayed bundles, the kept bundle,
// the host key — and the fleet CA cannot be changed or removed by root.
func TestFleetStateProtected(t *testing.T) {
	testutil.RequireBPFLSM(t)
	e := newTamperEnv(t)
	caDir := filepath.Join(e.dir, "ca")
	if _, _, err := fleet.LoadOrCreateCA(caDir, "test"); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(e.dir, "secret")
	os.WriteFile(secret, []byte(randomID(t)), 0o600)
	fleetDir := filepath.Join(e.stateDir, "fleet")
	os.MkdirAll(fleetDir, 0o700)
	version := filepath.Join(fleetDir, fleet.VersionFile)
	os.WriteFile(version, []byte("7\n"), 0o600)
	// Nothing listens on the server address: the agent keeps trying to
	// enroll; what is protected does not depend on it.
	e.start("fleet", "--fleet-server", "127.0.0.1:1", "--fleet-ca", filepath.Join(caDir, "ca.pem"),
		"--fleet-enroll-secret-file", secret)
	for name, try := range map[string]func() error{
		"write the version":  func() error { return os.WriteFile(version, []byte("0\n"), 0o600) },
		"remove the version": func() error { return os.Remove(version) },
		"rename over it": func() error {
			os.WriteFile(filepath.Join(e.dir, "v0"), []byte("0\n"), 0o600)
			return os.Rename(filepath.Join(e.dir, "v0"), version)
		},
		"plant a bundle": func() error { return os.WriteFile(filepath.Join(fleetDir, fleet.BundleFile), []byte("{}"), 0o600) },
		"write the CA":   func() error { return os.WriteFile(filepath.Join(caDir, "ca.pem"), []byte("x"), 0o644) },
	} {
		if err := try(); !errors.Is(err, syscall.EPERM) {
			t.Errorf("%s: %v, want EPERM", name, err)
		}
	}
	if b, _ := os.ReadFile(version); string(b) != "7\n" {
		t.Fatalf("version floor after the attempts: %q", b)
	}
}
