package agent

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigil-hips/vigil/internal/agent/agenttest"
	"github.com/vigil-hips/vigil/internal/fleet"
	"github.com/vigil-hips/vigil/internal/policy"
	"github.com/vigil-hips/vigil/internal/sensor"
	"github.com/vigil-hips/vigil/internal/sensor/bpfsensor"
	"github.com/vigil-hips/vigil/internal/sign"
	"github.com/vigil-hips/vigil/internal/trust"
)

// compilingSensor enforces by compiling with the real compiler (no
// kernel): it keeps the kernel policy of every Enforce that succeeded.
type compilingSensor struct {
	*agenttest.Sensor
	mu       sync.Mutex
	compiled []*bpfsensor.KernelPolicy
}

type anyDir struct{}

func (anyDir) PathKeys(p string) ([]bpfsensor.PathKey, error) {
	return []bpfsensor.PathKey{{ParentDev: 1, ParentIno: 2, Name: filepath.Base(p)}}, nil
}
func (anyDir) CgroupID(string) (uint64, error) { return 0, os.ErrNotExist }

func (s *compilingSensor) Enforce(p *policy.Policy) ([]string, error) {
	if p == nil {
		return nil, nil
	}
	kp, ws, err := bpfsensor.Compile(p, anyDir{})
	var out []string
	for _, w := range ws {
		out = append(out, w.String())
	}
	if err != nil {
		return out, err
	}
	s.mu.Lock()
	s.compiled = append(s.compiled, kp)
	s.mu.Unlock()
	return out, nil
}

func (s *compilingSensor) RuleHits() (map[string]uint64, error) { return nil, nil }

// last is the kernel policy in force and how many were applied.
func (s *compilingSensor) last() (*bpfsensor.KernelPolicy, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.compiled) == 0 {
		return nil, 0
	}
	return s.compiled[len(s.compiled)-1], len(s.compiled)
}

func has(kp *bpfsensor.KernelPolicy, d [32]byte) bool { _, ok := kp.Digests[d]; return ok }

// signerAgent is an agent on a compilingSensor with a trust database in
// which one signer, k (keys kPub, kPriv), is approved.
func signerAgent(t *testing.T) (a *agent, fake *compilingSensor, db *trust.DB, k string, kPub ed25519.PublicKey, kPriv ed25519.PrivateKey) {
	t.Helper()
	dir := t.TempDir()
	db, err := trust.Open(context.Background(), filepath.Join(dir, trust.FileName))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	kPub, kPriv, _ = sign.GenerateKey()
	if k, err = db.ApproveSigner(context.Background(), kPub, ""); err != nil {
		t.Fatal(err)
	}
	fake = &compilingSensor{Sensor: agenttest.New(sensor.Info{Backend: sensor.BackendLSM})}
	var s sensor.Sensor = fake
	a = &agent{cfg: Config{StateDir: dir}, log: slog.New(slog.DiscardHandler), xc: &execState{db: db, catDone: map[string]string{}}}
	a.sensor.Store(&s)
	return a, fake, db, k, kPub, kPriv
}

// TestSignerCatalogChangeRecompiles: a policy's process.signer is compiled
// with the digests of its signer's catalogs in the trust database; adding
// a catalog, replacing it and revoking the signer each recompile and swap
// the policy in force (its digest unchanged); a change that does not touch
// the signer's catalogs recompiles nothing; a change that would exceed the
// kernel's digest limit leaves the previous expansion in force and says so.
func TestSignerCatalogChangeRecompiles(t *testing.T) {
	ctx := context.Background()
	a, fake, db, k, kPub, kPriv := signerAgent(t)

	src := fmt.Sprintf("version: 1\nmode: enforce\nrules:\n  - {id: by-k, on: [exec], action: deny, match: {process: {signer: [%s]}}}\n", k)
	if _, err := a.applyPolicy("signer.yaml", []byte(src)); err != nil {
		t.Fatal(err)
	}
	kp, n := fake.last()
	if n != 1 || len(kp.Digests) != 0 {
		t.Fatalf("no catalog yet: %d applied, %d digests", n, len(kp.Digests))
	}
	if ws := strings.Join(a.policyStatus().GetWarnings(), "\n"); !strings.Contains(ws, k) {
		t.Errorf("status warnings do not say %s has no catalog:\n%s", k, ws)
	}
	digestBefore := a.policyStatus().GetDigest()

	addCat := func(priv []byte, name string, issued time.Time, ds ...[32]byte) error {
		b, err := trust.SignCatalog(ctx, priv, trust.NewCatalog(name, ds, issued))
		if err != nil {
			t.Fatal(err)
		}
		_, err = db.AddCatalog(ctx, b)
		return err
	}
	recompile := func() { a.policy.mu.Lock(); a.rebindSignersLocked(ctx); a.policy.mu.Unlock() }

	// A catalog of K: recompiled with its digests.
	t0 := time.Now().Add(-time.Hour)
	x, y, z := sum("x"), sum("y"), sum("z")
	if err := addCat(kPriv, "tools", t0, x, y); err != nil {
		t.Fatal(err)
	}
	recompile()
	kp, n = fake.last()
	if n != 2 || !has(kp, x) || !has(kp, y) || len(kp.Digests) != 2 {
		t.Fatalf("after K's catalog: %d applied, digests %v", n, kp.Digests)
	}
	if a.policyStatus().GetDigest() != digestBefore {
		t.Error("the policy's digest changed with its catalogs")
	}
	// Nothing changed: nothing recompiled.
	recompile()
	if _, m := fake.last(); m != 2 {
		t.Errorf("recompiled without a change: %d applied", m)
	}
	// A change elsewhere in the database (an approval by digest): the
	// expansion is the same, nothing recompiled.
	if err := db.Approve(ctx, z, ""); err != nil {
		t.Fatal(err)
	}
	recompile()
	if _, m := fake.last(); m != 2 {
		t.Errorf("recompiled after a change that is not about K's catalogs: %d applied", m)
	}
	// A newer version of the catalog: y is gone, z is in.
	if err := addCat(kPriv, "tools", t0.Add(time.Minute), x, z); err != nil {
		t.Fatal(err)
	}
	recompile()
	kp, n = fake.last()
	if n != 3 || !has(kp, x) || has(kp, y) || !has(kp, z) {
		t.Fatalf("after the new catalog: %d applied, digests %v", n, kp.Digests)
	}
	// Over the limit: refused, the previous expansion stays, and status
	// says why.
	many := make([][32]byte, bpfsensor.MaxDigests)
	for i := range many {
		many[i] = sum(fmt.Sprint("many", i))
	}
	if err := addCat(kPriv, "many", t0, many...); err != nil {
		t.Fatal(err)
	}
	recompile()
	if _, m := fake.last(); m != 3 {
		t.Errorf("a policy over the digest limit was applied (%d)", m)
	}
	// Tried again at the next change, and reported once.
	if err := db.Approve(ctx, sum("another change"), ""); err != nil {
		t.Fatal(err)
	}
	recompile()
	if n := strings.Count(strings.Join(a.policyStatus().GetWarnings(), "\n"), "previous expansion stays in force"); n != 1 {
		t.Errorf("the refused recompilation is reported %d times, want once", n)
	}
	if ws := strings.Join(a.policyStatus().GetWarnings(), "\n"); !strings.Contains(ws, "previous expansion stays in force") ||
		!strings.Contains(ws, fmt.Sprint(bpfsensor.MaxDigests)) {
		t.Errorf("status warnings do not report the refused recompilation:\n%s", ws)
	}
	if !strings.Contains(strings.Join(a.policy.p.Catalogs()[k], " "), hex.EncodeToString(x[:])) {
		t.Error("the policy in force lost its previous expansion")
	}
	// Revoking K: its catalogs trust nothing, the rule matches nothing.
	if err := db.RevokeSigner(ctx, k); err != nil {
		t.Fatal(err)
	}
	recompile()
	kp, n = fake.last()
	if n != 4 || len(kp.Digests) != 0 {
		t.Errorf("after revoking K: %d applied, %d digests", n, len(kp.Digests))
	}
	// Approving K again does not bring its catalogs back.
	if _, err := db.ApproveSigner(ctx, kPub, ""); err != nil {
		t.Fatal(err)
	}
	if err := db.Approve(ctx, sum("bump"), ""); err != nil {
		t.Fatal(err)
	}
	recompile()
	if kp, _ := fake.last(); len(kp.Digests) != 0 {
		t.Errorf("K approved again without catalogs: %d digests", len(kp.Digests))
	}
}

// TestFleetPolicySigner: a fleet policy's process.signer is compiled with
// the digests of its signer's catalogs, as a local policy's is, and is
// recompiled when they change.
func TestFleetPolicySigner(t *testing.T) {
	ctx := context.Background()
	a, fake, db, k, _, kPriv := signerAgent(t)
	x, y, z := sum("x"), sum("y"), sum("z")
	addCat := func(issued time.Time, ds ...[32]byte) {
		b, err := trust.SignCatalog(ctx, kPriv, trust.NewCatalog("tools", ds, issued))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := db.AddCatalog(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	addCat(time.Now().Add(-time.Hour), x, y)

	fp, err := parseFleetPolicies(&fleet.Bundle{Policies: []fleet.PolicyRule{{Name: "vendor", Scope: "global", Rule: 3,
		YAML: fmt.Sprintf("version: 1\nname: vendor\nmode: enforce\nrules:\n  - {id: no-vendor, on: [exec], action: deny, match: {process: {signer: [%s]}}}\n", k)}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := a.setFleetPolicies(fp); err != nil {
		t.Fatal(err)
	}
	kp, n := fake.last()
	if n != 1 || !has(kp, x) || !has(kp, y) || len(kp.Digests) != 2 {
		t.Fatalf("fleet policy with process.signer [%s]: %d applied, digests %v; want x and y", k, n, kp.Digests)
	}
	// K's catalog replaced: the fleet policy is recompiled with it.
	addCat(time.Now(), z)
	a.policy.mu.Lock()
	a.rebindSignersLocked(ctx)
	a.policy.mu.Unlock()
	kp, n = fake.last()
	if n != 2 || !has(kp, z) || len(kp.Digests) != 1 {
		t.Fatalf("after K's new catalog: %d applied, digests %v; want z only", n, kp.Digests)
	}
}
