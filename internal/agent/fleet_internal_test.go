package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/fleet"
	"github.com/vigil-hips/vigil/internal/policy"
	"github.com/vigil-hips/vigil/internal/sign"
	"github.com/vigil-hips/vigil/internal/trust"
)

func sum(s string) [32]byte { return sha256.Sum256([]byte(s)) }

func hexSum(s string) string { d := sum(s); return hex.EncodeToString(d[:]) }

// fleetAgent is an agent with a trust database and a fleet client, no
// sensor and no server.
func fleetAgent(t *testing.T, pub []byte) *agent {
	t.Helper()
	dir := t.TempDir()
	db, err := trust.Open(context.Background(), filepath.Join(dir, trust.FileName))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	a := &agent{cfg: Config{StateDir: dir, FleetServer: "127.0.0.1:1"}, log: slog.New(slog.DiscardHandler),
		local: make(chan *vigilv1.Event, 16), xc: &execState{db: db}}
	a.fleet = &fleetState{dir: filepath.Join(dir, "fleet"), verifier: fleet.Verifier{Key: pub, Host: "me"}}
	os.MkdirAll(a.fleet.dir, 0o700)
	return a
}

func (a *agent) refusals() []string {
	var out []string
	for {
		select {
		case ev := <-a.local:
			if tm := ev.GetTamper(); tm.GetMethod() == "fleet_bundle" && tm.GetRefused() {
				out = append(out, strings.SplitN(tm.GetDetail(), ":", 2)[0])
			}
		default:
			return out
		}
	}
}

func TestFleetApply(t *testing.T) {
	ctx := context.Background()
	pub, priv, _ := sign.GenerateKey()
	_, other, _ := sign.GenerateKey()
	a := fleetAgent(t, pub)
	sigPub, _, _ := sign.GenerateKey()
	sigPEM, _ := sign.MarshalPublicKey(sigPub)
	mk := func(key []byte, host string, v uint64, hashes ...fleet.HashRule) []byte {
		env, err := fleet.SignBundle(ctx, key, fleet.Bundle{Host: host, Version: v, Issued: time.Now(), Hashes: hashes,
			Signers: []fleet.SignerRule{{PublicKey: string(sigPEM), Scope: "global", Rule: 9}}})
		if err != nil {
			t.Fatal(err)
		}
		return env
	}
	allowTool := fleet.HashRule{SHA256: hexSum("tool"), Verdict: fleet.Allow, Scope: "global"}
	denyTool := fleet.HashRule{SHA256: hexSum("tool"), Verdict: fleet.Deny, Scope: "global"}

	v2 := mk(priv, "me", 2, allowTool)
	a.fleetApply(ctx, v2, "test")
	if a.fleetApplied() != 2 || a.fleet.bundle.Load() == nil {
		t.Fatalf("a good bundle was not applied: version %d", a.fleetApplied())
	}
	if b, _ := os.ReadFile(filepath.Join(a.fleet.dir, fleet.VersionFile)); strings.TrimSpace(string(b)) != "2" {
		t.Fatalf("version file: %q", b)
	}
	if s, _ := a.xc.db.Signers(ctx); len(s) != 1 || !strings.HasPrefix(s[0].Comment, fleetSignerComment) {
		t.Fatalf("the bundle's signer is not approved: %+v", s)
	}
	if r := a.refusals(); len(r) != 0 {
		t.Fatalf("refusals after a good bundle: %v", r)
	}

	a.fleetApply(ctx, mk(priv, "me", 1, denyTool), "test")      // older
	a.fleetApply(ctx, v2, "test")                               // replayed
	a.fleetApply(ctx, v2, "test")                               // the same again: reported once
	a.fleetApply(ctx, mk(other, "me", 3, denyTool), "test")     // another key
	a.fleetApply(ctx, mk(priv, "someone", 3, denyTool), "test") // another host
	a.fleetApply(ctx, []byte(`{"payloadType":"x"}`), "test")    // not a bundle
	if got, want := strings.Join(a.refusals(), ","), "old-version,old-version,bad-signature,wrong-host,unsigned"; got != want {
		t.Fatalf("refusals: %s, want %s", got, want)
	}
	if a.fleetApplied() != 2 || a.fleet.bundle.Load().Hashes[0].Verdict != fleet.Allow {
		t.Fatal("a refused bundle changed what is applied")
	}

	// A newer bundle without the signer revokes it; deny replaces allow.
	env, _ := fleet.SignBundle(ctx, priv, fleet.Bundle{Host: "me", Version: 5, Issued: time.Now(), Hashes: []fleet.HashRule{denyTool}})
	a.fleetApply(ctx, env, "test")
	if s, _ := a.xc.db.Signers(ctx); len(s) != 0 || a.fleetApplied() != 5 {
		t.Fatalf("after v5: signers %+v, version %d", s, a.fleetApplied())
	}

	// A restarted agent takes the kept bundle, verified again, and the
	// version floor.
	b := fleetAgent(t, pub)
	b.cfg.StateDir = a.cfg.StateDir
	restartFleet(t, b, pub)
	if b.fleet.applied != 5 || b.fleet.bundle.Load() == nil || b.fleet.bundle.Load().Hashes[0].Verdict != fleet.Deny {
		t.Fatalf("restarted: version %d, bundle %+v", b.fleet.applied, b.fleet.bundle.Load())
	}
}

// restartFleet loads b's fleet state as a restarted agent does (b's
// StateDir is the one of the agent before).
func restartFleet(t *testing.T, b *agent, pub []byte) {
	t.Helper()
	ctx := context.Background()
	b.cfg.AdminKeyPath = filepath.Join(t.TempDir(), "admin.pub")
	pemPub, _ := sign.MarshalPublicKey(pub)
	os.WriteFile(b.cfg.AdminKeyPath, pemPub, 0o644)
	b.cfg.HostIDFile = filepath.Join(t.TempDir(), "machine-id")
	os.WriteFile(b.cfg.HostIDFile, []byte("me\n"), 0o644)
	b.cfg.FleetCA = filepath.Join(t.TempDir(), "ca")
	if _, _, err := fleet.LoadOrCreateCA(filepath.Dir(b.cfg.FleetCA), "t"); err != nil {
		t.Fatal(err)
	}
	b.cfg.FleetCA = filepath.Join(filepath.Dir(b.cfg.FleetCA), "ca.pem")
	os.WriteFile(filepath.Join(b.cfg.StateDir, "fleet", fleet.CertFile), []byte("enrolled"), 0o600)
	b.fleet = nil
	if err := b.loadFleet(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestFleetPrecedence: a fleet deny denies; a fleet allow trusts what
// nothing denied; it never loosens a local deny.
func TestFleetPrecedence(t *testing.T) {
	ctx := context.Background()
	pub, priv, _ := sign.GenerateKey()
	a := fleetAgent(t, pub)
	a.xc.db.Deny(ctx, sum("locally denied"), "")
	a.xc.db.Approve(ctx, sum("locally approved"), "")
	env, _ := fleet.SignBundle(ctx, priv, fleet.Bundle{Host: "me", Version: 1, Issued: time.Now(), Hashes: []fleet.HashRule{
		{SHA256: hexSum("locally denied"), Verdict: fleet.Allow, Scope: "global"},
		{SHA256: hexSum("locally approved"), Verdict: fleet.Deny, Scope: "global"},
		{SHA256: hexSum("policy allowed"), Verdict: fleet.Deny, Scope: "global"},
		{SHA256: hexSum("policy denied"), Verdict: fleet.Allow, Scope: "global"},
		{SHA256: hexSum("fleet only"), Verdict: fleet.Allow, Scope: "global"},
	}})
	a.fleetApply(ctx, env, "test")
	xc, _, err := a.buildExecControl(ctx, &policy.Trust{Mode: "lockdown",
		Allow: []string{hexSum("policy allowed")}, Deny: []string{hexSum("policy denied")}})
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]bool{"locally denied": false, "locally approved": false, "policy allowed": false,
		"policy denied": false, "fleet only": true} {
		if got, ok := xc.Trust[sum(name)]; !ok || got != want {
			t.Errorf("%s: trusted %v (known %v), want %v", name, got, ok, want)
		}
	}
	if _, ok := xc.Trust[sum("nobody")]; ok {
		t.Error("a digest nobody named is in the verdicts")
	}
}

func TestFleetConfig(t *testing.T) {
	c := DefaultConfig()
	c.FleetCA = "/ca.pem"
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "without a fleet server") {
		t.Fatalf("a fleet CA without a server: %v", err)
	}
	c.FleetServer = "no-port"
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "host:port") {
		t.Fatalf("a fleet server without a port: %v", err)
	}
	c.FleetServer, c.FleetCA = "fleet:8443", ""
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "--fleet-ca") {
		t.Fatalf("a fleet server without a CA: %v", err)
	}
	c.FleetCA = "/ca.pem"
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestFleetPending(t *testing.T) {
	ctx := context.Background()
	pub, priv, _ := sign.GenerateKey()
	a := fleetAgent(t, pub)
	for _, n := range []string{"approved by the fleet", "still unknown"} {
		if err := a.xc.db.RecordPending(ctx, trust.Attempt{SHA: sum(n), Path: "/x/" + n, Refused: true}); err != nil {
			t.Fatal(err)
		}
	}
	h := a.fleetPending(trust.PendingHandler(a.xc.db, func() trust.Sources { return trust.AllSources }))
	list := func() []string {
		resp, err := h(ctx, &vigilv1.PendingRequest{})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, p := range resp.GetItems() {
			out = append(out, p.GetSha256())
		}
		return out
	}
	if got := list(); len(got) != 2 {
		t.Fatalf("pending before any bundle: %v", got)
	}
	env, _ := fleet.SignBundle(ctx, priv, fleet.Bundle{Host: "me", Version: 1, Issued: time.Now(),
		Hashes: []fleet.HashRule{{SHA256: hexSum("approved by the fleet"), Verdict: fleet.Allow, Scope: "global"}}})
	a.fleetApply(ctx, env, "test")
	if got := list(); len(got) != 1 || got[0] != hexSum("still unknown") {
		t.Fatalf("pending after the fleet approved one: %v", got)
	}
}
