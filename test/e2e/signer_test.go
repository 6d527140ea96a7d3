package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigil-hips/vigil/internal/testutil"
)

// TestProcessSignerRule: an enforce rule on process.signer: [K] refuses a
// write (EPERM, on every thread) by a binary listed in a catalog signed
// by K, once that catalog is added to the running agent's trust database;
// a binary in a catalog signed by another approved key L is not refused,
// nor one in a catalog that names K but whose signature is bad (refused
// by `vigil catalog add`, it counts for nothing). Revoking K lifts the
// refusal at once. Without the agent the same writes succeed.
func TestProcessSignerRule(t *testing.T) {
	testutil.RequireBPFLSM(t)
	testutil.RequireRoot(t)
	dir, err := os.MkdirTemp("/tmp", "vigil-signer")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	tag := func() []byte {
		b := make([]byte, 16)
		rand.Read(b)
		return b
	}
	// Three copies of this binary with random bytes appended: digests
	// made now, in no catalog but this test's.
	binK, shaK := variant(t, exe, filepath.Join(dir, "writer-k"), tag()...)
	binL, shaL := variant(t, exe, filepath.Join(dir, "writer-l"), tag()...)
	binBad, shaBad := variant(t, exe, filepath.Join(dir, "writer-bad"), tag()...)
	t.Logf("K's %s %s; L's %s %s; bad signature's %s %s", binK, shaK, binL, shaL, binBad, shaBad)
	protected := filepath.Join(dir, "protected")
	if err := os.Mkdir(protected, 0o755); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(protected, "file")
	if err := os.WriteFile(target, nil, 0o644); err != nil {
		t.Fatal(err)
	}

	keyK, keyL := filepath.Join(dir, "k"), filepath.Join(dir, "l")
	for _, k := range []string{keyK, keyL} {
		if _, stderr, code := vigilRun(t, "keys", "generate", "--out", k); code != 0 {
			t.Fatalf("keys generate: %s", stderr)
		}
	}
	out, stderr, code := vigilRun(t, "keys", "id", keyK+".pub")
	idK := strings.TrimSpace(out[strings.LastIndex(out, " ")+1:])
	if code != 0 || !strings.HasPrefix(idK, "SHA256:") {
		t.Fatalf("keys id: exit %d %q %s", code, out, stderr)
	}
	catalog := func(key, name, file string) string {
		path := filepath.Join(dir, name+".catalog")
		if _, stderr, code := vigilRun(t, "catalog", "sign", "--key", key+".key", "--name", name, "--out", path, file); code != 0 {
			t.Fatalf("catalog sign: %s", stderr)
		}
		return path
	}
	catK, catL := catalog(keyK, "by-k", binK), catalog(keyL, "by-l", binL)
	// A catalog of K's with one bit of its signature flipped.
	catBad := catalog(keyK, "bad-k", binBad)
	var env map[string]any
	raw, _ := os.ReadFile(catBad)
	if err := json.Unmarshal(raw, &env); err != nil {
		t.Fatal(err)
	}
	sig := env["signatures"].([]any)[0].(map[string]any)
	s := []byte(sig["sig"].(string))
	if s[0] == 'A' {
		s[0] = 'B'
	} else {
		s[0] = 'A'
	}
	sig["sig"] = string(s)
	raw, _ = json.Marshal(env)
	os.WriteFile(catBad, raw, 0o644)

	rule := "deny-by-signer-" + hex.EncodeToString(tag()[:4])
	pol := filepath.Join(dir, "signer.yaml")
	os.WriteFile(pol, []byte(fmt.Sprintf(`version: 1
name: signer
mode: enforce
rules:
  - id: %s
    on: [file_modify]
    action: deny
    match:
      process: {signer: [%s]}
      target: {path_prefix: [%s]}
`, rule, idK, protected)), 0o644)
	if out, stderr, code := vigilRun(t, "policy", "check", pol); code != 0 {
		t.Fatalf("policy check: %s%s", out, stderr)
	}

	// Without the agent every one of them may write.
	for _, bin := range []string{binK, binL, binBad} {
		if m, o, _ := writeOnce(t, bin, target); m != "ok" || o != "ok" {
			t.Fatalf("without the agent, %s's write: %s %s; want ok", filepath.Base(bin), m, o)
		}
	}

	state := filepath.Join(dir, "state")
	db := filepath.Join(state, "trust.db")
	start := time.Now()
	a := startAgent(t, "--policy", pol, "--state-dir", state)
	// No catalog yet: K's binary writes.
	if m, o, _ := writeOnce(t, binK, target); m != "ok" || o != "ok" {
		t.Errorf("before K's catalog: K's write %s %s; want ok", m, o)
	}
	for _, k := range []string{keyK, keyL} {
		if out, err := a.vigil("approve", "--signer", k+".pub"); err != nil {
			t.Fatalf("vigil approve --signer: %v\n%s", err, out)
		}
	}
	if _, stderr, code := vigilRun(t, "catalog", "add", "--db", db, catBad); code == 0 || !strings.Contains(stderr, "signature") {
		t.Errorf("catalog add of a bad signature: exit %d, %s; want refused", code, stderr)
	}
	for _, c := range []string{catK, catL} {
		if out, stderr, code := vigilRun(t, "catalog", "add", "--db", db, c); code != 0 {
			t.Fatalf("catalog add %s: %s%s", c, out, stderr)
		}
	}
	// The agent notices the catalogs (trust loop) and recompiles.
	// Every K writer's pid: a writer started while the agent was still
	// hashing running processes may get its digest (and so the refusal)
	// between its two writes, and its one refused write is an event too.
	var pidK int
	pidsK := map[uint32]bool{}
	if err := within(30*time.Second, func() error {
		var m, o string
		m, o, pidK = writeOnce(t, binK, target)
		pidsK[uint32(pidK)] = true
		if m != "EPERM" || o != "EPERM" {
			return fmt.Errorf("K's write: main thread %s, other thread %s; want EPERM on both", m, o)
		}
		return nil
	}); err != nil {
		t.Fatalf("enforce: %v\nagent log:\n%s", err, a.log)
	}
	if m, o, _ := writeOnce(t, binL, target); m != "ok" || o != "ok" {
		t.Errorf("enforce: L's write (another signer): %s %s; want ok", m, o)
	}
	if m, o, _ := writeOnce(t, binBad, target); m != "ok" || o != "ok" {
		t.Errorf("enforce: the bad-signature catalog's binary: %s %s; want ok", m, o)
	}
	if err := within(20*time.Second, func() error {
		found := false
		for _, ev := range a.verdicts(t, start) {
			v := ev.GetVerdict()
			if v.GetRule() != rule {
				continue
			}
			if pid := ev.GetProcess().GetPid(); !pidsK[pid] {
				return fmt.Errorf("rule %s decided for pid %d (%s), not one of K's writers", rule, pid, ev.GetProcess().GetExe())
			}
			if !v.GetRefused() || v.GetMode() != "enforce" || v.GetDecidedBy() != "lsm" || ev.GetFileModify().GetFile().GetPath() != target {
				return fmt.Errorf("event %v", ev)
			}
			found = found || ev.GetProcess().GetPid() == uint32(pidK)
		}
		if !found {
			return fmt.Errorf("no refused write by K's pid %d", pidK)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}

	// Revoking K (through the agent): its catalog trusts nothing, at once.
	if out, err := a.vigil("approve", "--signer", keyK+".pub", "--deny"); err != nil {
		t.Fatalf("vigil approve --signer --deny: %v\n%s", err, out)
	}
	if m, o, _ := writeOnce(t, binK, target); m != "ok" || o != "ok" {
		t.Errorf("after revoking K: K's write %s %s; want ok", m, o)
	}
}
