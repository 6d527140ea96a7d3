package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/testutil"
	"github.com/vigil-hips/vigil/internal/testworkload"
)

const lockdownPolicy = "../../examples/policies/lockdown.yaml"

// Files the VM provides (Makefile VMTEST_INCLUDE).
const (
	vmLoader    = "/lib64/ld-linux-x86-64.so.2"
	vmTrue      = "/opt/vigil-test/true"
	vmXCLoader  = "/opt/vigil-test/xcloader"
	vmXCLibrary = "/opt/vigil-test/libxctest.so"
)

// variant copies src to dst with extra bytes appended: new content.
func variant(t *testing.T, src, dst string, extra ...byte) (string, string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	b = append(b, extra...)
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return dst, hex.EncodeToString(sum[:])
}

func output(env []string, name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func mapRefused(out string) bool {
	return strings.Contains(out, "Operation not permitted") || strings.Contains(out, "failed to map segment")
}

// within retries f every 200 ms until it returns nil or d passes.
func within(d time.Duration, f func() error) error {
	return testutil.Within(d, 200*time.Millisecond, f)
}

// TestLockdownPolicy: `vigil agent --policy examples/policies/lockdown.yaml`
// after `vigil trust scan` of the system directories refuses unknown code
// on every loading path, lists it in `vigil pending`, runs it once
// approved, and trusts catalogs only from approved signers; in monitor
// mode everything runs and is recorded.
func TestLockdownPolicy(t *testing.T) {
	testutil.RequireBPFLSM(t)
	testutil.RequireRoot(t)
	dir, err := os.MkdirTemp("/tmp", "vigil-xc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	state := filepath.Join(dir, "state")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	exe, _ = filepath.EvalSymlinks(exe)

	// Trust what this machine runs, this test included.
	db := filepath.Join(state, "trust.db")
	if out, stderr, code := vigilRun(t, "trust", "scan", "--db", db, "/usr", "/bin", "/sbin", "/lib", "/lib64", "/opt", exe); code != 0 {
		t.Fatalf("vigil trust scan: exit %d\n%s%s", code, out, stderr)
	}

	// Catalogs: one signed by a key the admin will approve, one with a
	// bad signature, one signed by a key nobody approved.
	cats := filepath.Join(dir, "catalogs")
	os.Mkdir(cats, 0o755)
	signer, stranger := filepath.Join(dir, "signer"), filepath.Join(dir, "stranger")
	for _, k := range []string{signer, stranger} {
		if _, stderr, code := vigilRun(t, "keys", "generate", "--out", k); code != 0 {
			t.Fatalf("keys generate: %s", stderr)
		}
	}
	byCatalog, _ := variant(t, exe, filepath.Join(dir, "by-catalog"), 'c')
	byBadSig, _ := variant(t, exe, filepath.Join(dir, "by-bad-signature"), 'b')
	byStranger, _ := variant(t, exe, filepath.Join(dir, "by-stranger"), 's')
	sign := func(key, out string, file string) {
		if _, stderr, code := vigilRun(t, "catalog", "sign", "--key", key+".key", "--name", filepath.Base(out), "--out", out, file); code != 0 {
			t.Fatalf("catalog sign: %s", stderr)
		}
	}
	sign(signer, filepath.Join(cats, "good.json"), byCatalog)
	sign(stranger, filepath.Join(cats, "stranger.json"), byStranger)
	badPath := filepath.Join(dir, "bad.json")
	sign(signer, badPath, byBadSig)
	// Flip one bit of the signature: same payload, signature bad.
	var env struct {
		PayloadType string `json:"payloadType"`
		Payload     string `json:"payload"`
		Signatures  []struct {
			KeyID string `json:"keyid"`
			Sig   []byte `json:"sig"`
		} `json:"signatures"`
	}
	raw, _ := os.ReadFile(badPath)
	if err := json.Unmarshal(raw, &env); err != nil || len(env.Signatures) != 1 {
		t.Fatalf("catalog envelope %s: %v", raw, err)
	}
	env.Signatures[0].Sig[0] ^= 1
	bad, _ := json.Marshal(env)
	os.WriteFile(filepath.Join(cats, "bad.json"), bad, 0o644)

	src, err := os.ReadFile(lockdownPolicy)
	if err != nil {
		t.Fatal(err)
	}
	pol := filepath.Join(dir, "lockdown.yaml")
	os.WriteFile(pol, []byte(strings.Replace(string(src), "/etc/vigil/catalogs", cats, 1)), 0o644)

	a := startAgent(t, "--policy", pol, "--state-dir", state)

	// A new binary in /tmp is refused and listed by `vigil pending`.
	fresh, freshSHA := variant(t, exe, filepath.Join(dir, "fresh"), 1)
	if err := testworkload.Noop(fresh); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("exec of a new binary: %v, want EPERM\nagent log:\n%s", err, a.log)
	}
	var pend string
	if err := within(10*time.Second, func() error {
		out, err := a.vigil("pending", "-o", "json")
		pend = string(out)
		if err != nil || !strings.Contains(pend, freshSHA) {
			return errors.New("not listed")
		}
		return nil
	}); err != nil {
		t.Fatalf("vigil pending does not list %s (%s):\n%s", fresh, freshSHA, pend)
	}
	// After `vigil approve --sha256` it runs, without restart.
	if out, err := a.vigil("approve", "--sha256", freshSHA); err != nil {
		t.Fatalf("vigil approve: %v\n%s", err, out)
	}
	if err := testworkload.Noop(fresh); err != nil {
		t.Fatalf("exec after approval: %v", err)
	}
	// Appending one byte to an approved binary makes its next exec fail.
	f, _ := os.OpenFile(fresh, os.O_WRONLY|os.O_APPEND, 0)
	f.Write([]byte{1})
	f.Close()
	if err := testworkload.Noop(fresh); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("exec after appending a byte: %v, want EPERM", err)
	}

	// Each loading path: unknown code refused, approved code runs.
	unknownTrue, _ := variant(t, vmTrue, filepath.Join(dir, "true-unknown"), 0)
	unknownLib, _ := variant(t, vmXCLibrary, filepath.Join(dir, "libunknown.so"), 0)
	memfdSrc, _ := variant(t, exe, filepath.Join(dir, "memfd-src"), 2)
	checkPaths := func(lockdown bool) {
		t.Helper()
		if out, err := output(nil, vmLoader, vmTrue); err != nil {
			t.Errorf("ld.so of approved code: %v: %s", err, out)
		}
		out, err := output(nil, vmLoader, unknownTrue)
		if lockdown != (err != nil && mapRefused(out)) {
			t.Errorf("ld.so of unknown code (lockdown %v): %v: %q", lockdown, err, out)
		}
		if err := testworkload.MemfdExec(exe); err != nil {
			t.Errorf("memfd exec of approved code: %v", err)
		}
		if err := testworkload.MemfdExec(memfdSrc); lockdown != errors.Is(err, syscall.EPERM) {
			t.Errorf("memfd exec of unknown code (lockdown %v): %v", lockdown, err)
		}
		if out, err := output(nil, vmXCLoader, vmXCLibrary); err != nil || !strings.Contains(out, "loaded: 42") {
			t.Errorf("dlopen of approved code: %v: %s", err, out)
		}
		out, err = output(nil, vmXCLoader, unknownLib)
		if lockdown != (err != nil && mapRefused(out)) {
			t.Errorf("dlopen of unknown code (lockdown %v): %v: %q", lockdown, err, out)
		}
		if out, err := output([]string{"LD_PRELOAD=" + vmXCLibrary}, vmTrue); err != nil || out != "" {
			t.Errorf("LD_PRELOAD of approved code: %v: %q", err, out)
		}
		out, _ = output([]string{"LD_PRELOAD=" + unknownLib}, vmTrue)
		if lockdown != strings.Contains(out, "cannot be preloaded") {
			t.Errorf("LD_PRELOAD of unknown code (lockdown %v): %q", lockdown, out)
		}
	}
	checkPaths(true)

	// Catalogs: nothing from the signer runs until it is approved; then
	// its catalog does, and the bad and the stranger's still trust nothing.
	if err := testworkload.Noop(byCatalog); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("exec of a catalog's binary, signer not approved: %v, want EPERM", err)
	}
	if out, err := a.vigil("approve", "--signer", signer+".pub"); err != nil {
		t.Fatalf("vigil approve --signer: %v\n%s", err, out)
	}
	if err := testworkload.Noop(byCatalog); err != nil {
		t.Fatalf("exec of a binary in an approved signer's catalog: %v\nagent log:\n%s", err, a.log)
	}
	for _, p := range []string{byBadSig, byStranger} {
		if err := testworkload.Noop(p); !errors.Is(err, syscall.EPERM) {
			t.Errorf("exec of %s: %v, want EPERM", filepath.Base(p), err)
		}
	}
	st := a.status()
	ws := strings.Join(st.GetPolicy().GetWarnings(), "\n")
	if !strings.Contains(ws, "bad.json") || !strings.Contains(ws, "stranger.json") {
		t.Errorf("status warnings do not name the refused catalogs:\n%s", ws)
	}

	// Monitor mode: everything runs, and unknown code is recorded.
	mon := filepath.Join(dir, "monitor.yaml")
	os.WriteFile(mon, []byte(strings.Replace(strings.Replace(string(src), "/etc/vigil/catalogs", cats, 1),
		"  mode: lockdown", "  mode: monitor", 1)), 0o644)
	applyPolicy(t, a, mon)
	if err := testworkload.Noop(fresh); err != nil {
		t.Fatalf("monitor: exec of unknown code: %v", err)
	}
	checkPaths(false)
	var seen *vigilv1.Event
	within(10*time.Second, func() error {
		for _, ev := range a.events("--kind", "image_load") {
			if ev.GetTrust().GetMode() == "monitor" && ev.GetImageLoad().GetFile().GetPath() == unknownLib {
				seen = ev
				return nil
			}
		}
		return errors.New("not yet")
	})
	if seen == nil || seen.GetVerdict().GetRefused() || seen.GetTrust().GetVerdict() != "unknown" {
		t.Fatalf("monitor: dlopen of unknown code not recorded as unknown and allowed: %v", seen)
	}
}

// TestExecControlFanotify: without BPF LSM (the tracepoint backend; the
// host), lockdown decides execs on a fanotify-marked test tmpfs by content
// with the same verdicts as the kernel path: approved code runs, a copy
// runs, new code is refused until approved, a modified or renamed-over
// file is refused. Nothing outside the test tmpfs is marked.
func TestExecControlFanotify(t *testing.T) {
	testutil.RequireRoot(t)
	mnt := testTmpfs(t)
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
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
	pol := filepath.Join(dir, "lockdown.yaml")
	os.WriteFile(pol, []byte(strings.Replace(string(src), "/etc/vigil/catalogs", filepath.Join(dir, "no-catalogs"), 1)), 0o644)
	a := startAgent(t, "--backend", "tracepoint", "--fanotify-mark", mnt, "--policy", pol, "--state-dir", state)

	approved, _ := variant(t, exe, filepath.Join(mnt, "approved"))
	if err := testworkload.Noop(approved); err != nil {
		t.Fatalf("exec of a copy of approved code: %v\nagent log:\n%s", err, a.log)
	}
	fresh, freshSHA := variant(t, exe, filepath.Join(mnt, "fresh"), 1)
	if err := testworkload.Noop(fresh); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("exec of new code: %v, want EPERM", err)
	}
	if err := within(10*time.Second, func() error {
		if out, err := a.vigil("pending", "-o", "json"); err != nil || !strings.Contains(string(out), freshSHA) {
			return errors.New("not listed")
		}
		return nil
	}); err != nil {
		t.Fatalf("vigil pending does not list %s", freshSHA)
	}
	if out, err := a.vigil("approve", "--sha256", freshSHA); err != nil {
		t.Fatalf("vigil approve: %v\n%s", err, out)
	}
	if err := testworkload.Noop(fresh); err != nil {
		t.Fatalf("exec after approval: %v", err)
	}
	f, _ := os.OpenFile(approved, os.O_WRONLY|os.O_APPEND, 0)
	f.Write([]byte{9}) // not 1: exe+1 is fresh, approved above
	f.Close()
	if err := testworkload.Noop(approved); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("exec after appending a byte: %v, want EPERM", err)
	}
	impostor, _ := variant(t, exe, filepath.Join(mnt, "impostor"), 2)
	if err := os.Rename(impostor, fresh); err != nil {
		t.Fatal(err)
	}
	if err := testworkload.Noop(fresh); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("exec of new code renamed over approved code: %v, want EPERM", err)
	}
	// Outside the marked filesystem nothing is decided (the host is not armed).
	outside, _ := variant(t, exe, filepath.Join(dir, "outside"), 3)
	if err := testworkload.Noop(outside); err != nil {
		t.Fatalf("exec outside the marked tmpfs: %v", err)
	}
	var ev *vigilv1.Event
	within(10*time.Second, func() error {
		for _, e := range a.events("--kind", "exec") {
			if e.GetTrust() != nil && e.GetExec().GetFile().GetPath() == fresh && e.GetVerdict().GetRefused() {
				ev = e
				return nil
			}
		}
		return errors.New("not yet")
	})
	if ev == nil || ev.GetVerdict().GetDecidedBy() != "fanotify" || ev.GetTrust().GetMode() != "lockdown" {
		t.Fatalf("no refused exec event decided by fanotify with its digest: %v", ev)
	}
}

// TestAgentMergesPolicies: `--policy A --policy B` enforces A's rules then
// B's, with B's trust block; a restarted agent without --policy enforces
// the same merged policy (same digest) from its state directory.
func TestAgentMergesPolicies(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	src, err := os.ReadFile(lockdownPolicy)
	if err != nil {
		t.Fatal(err)
	}
	// Monitor and no fanotify marks: nothing is refused on this machine.
	mon := filepath.Join(dir, "lockdown-monitor.yaml")
	os.WriteFile(mon, []byte(strings.Replace(strings.Replace(string(src), "/etc/vigil/catalogs", filepath.Join(dir, "none"), 1),
		"  mode: lockdown", "  mode: monitor", 1)), 0o644)
	state := filepath.Join(dir, "state")
	a := startAgent(t, "--backend", "tracepoint", "--policy", baselinePolicy, "--policy", mon, "--state-dir", state)
	st := a.status().GetPolicy()
	base, err := os.ReadFile(baselinePolicy)
	if err != nil {
		t.Fatal(err)
	}
	nrules := strings.Count(string(base), "\n  - id: ")
	if st.GetName() != "baseline+lockdown" || len(st.GetRules()) != nrules || nrules == 0 {
		t.Fatalf("merged policy: name %q, %d rules (want baseline+lockdown, %d)", st.GetName(), len(st.GetRules()), nrules)
	}
	digest := st.GetDigest()
	a.stop(t)

	b := startAgent(t, "--backend", "tracepoint", "--state-dir", state)
	if got := b.status().GetPolicy(); got.GetDigest() != digest || got.GetName() != "baseline+lockdown" {
		t.Fatalf("restarted agent: policy %q %s, want the merged one %s", got.GetName(), got.GetDigest(), digest)
	}
	// Two trust blocks cannot be merged: refused with both names.
	out, err := exec.Command(vigilBin(t), "agent", "--backend", "tracepoint", "--state-dir", filepath.Join(dir, "s2"),
		"--socket", filepath.Join(dir, "s2.sock"), "--policy", mon, "--policy", mon).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "trust block") {
		t.Fatalf("two trust blocks: %v\n%s", err, out)
	}
}

// TestEnforcementOutlivesAgent: with BPF LSM the sensor's programs and
// maps are pinned. Killing the agent's userspace (SIGKILL) leaves
// enforcement in place; a restarted agent takes over with no moment where
// unapproved code runs; a clean stop ends enforcement and removes the pins.
func TestEnforcementOutlivesAgent(t *testing.T) {
	testutil.RequireBPFLSM(t)
	dir, err := os.MkdirTemp("/tmp", "vigil-pin")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	state := filepath.Join(dir, "state")
	exe, _ := os.Executable()
	exe, _ = filepath.EvalSymlinks(exe)
	if out, stderr, code := vigilRun(t, "trust", "scan", "--db", filepath.Join(state, "trust.db"), "/usr", "/bin", "/sbin", "/lib", "/lib64", "/opt", exe); code != 0 {
		t.Fatalf("vigil trust scan: %s%s", out, stderr)
	}
	src, _ := os.ReadFile(lockdownPolicy)
	pol := filepath.Join(dir, "lockdown.yaml")
	os.WriteFile(pol, []byte(strings.Replace(string(src), "/etc/vigil/catalogs", filepath.Join(dir, "none"), 1)), 0o644)
	pins := fmt.Sprintf("/sys/fs/bpf/vigil-e2e-%d", os.Getpid()) // pins live in bpffs
	t.Cleanup(func() { os.RemoveAll(pins) })
	args := []string{"--policy", pol, "--state-dir", state, "--sensor-pin-dir", pins}
	unknown, _ := variant(t, exe, filepath.Join(dir, "unknown"), 7)
	approved, _ := variant(t, exe, filepath.Join(dir, "approved"))

	a := startAgent(t, args...)
	if err := testworkload.Noop(unknown); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("unknown code under lockdown: %v, want EPERM", err)
	}
	a.cmd.Process.Kill()
	a.stop(t)
	if _, err := os.Stat(filepath.Join(pins, "links")); err != nil {
		t.Fatalf("no pinned links after the agent was killed: %v", err)
	}
	// No agent: the pinned programs still decide.
	if err := testworkload.Noop(unknown); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("unknown code with the agent killed: %v, want EPERM", err)
	}
	if err := testworkload.Noop(approved); err != nil {
		t.Fatalf("approved code with the agent killed: %v", err)
	}

	// A restarted agent takes over; unknown code never runs meanwhile.
	stop := make(chan struct{})
	var ran, tried int
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			tried++
			if testworkload.Noop(unknown) == nil {
				ran++
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	b := startAgent(t, args...)
	time.Sleep(time.Second)
	close(stop)
	<-done
	if ran > 0 || tried < 5 {
		t.Fatalf("during the restart unknown code ran %d of %d times, want 0 of at least 5", ran, tried)
	}
	if err := testworkload.Noop(unknown); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("unknown code under the restarted agent: %v, want EPERM", err)
	}
	if b.status().GetPolicy().GetName() != "lockdown" {
		t.Fatalf("restarted agent's policy: %v", b.status().GetPolicy())
	}

	// A clean stop ends enforcement and removes the pins.
	b.stop(t)
	if _, err := os.Stat(pins); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pins after a clean stop: %v, want none", err)
	}
	if err := testworkload.Noop(unknown); err != nil {
		t.Fatalf("unknown code after a clean stop: %v, want it to run", err)
	}
}
