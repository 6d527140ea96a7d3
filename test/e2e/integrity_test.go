package e2e

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/vigil-hips/vigil/internal/integrity"
	"github.com/vigil-hips/vigil/internal/sign"
	"github.com/vigil-hips/vigil/internal/testutil"
)

// integrityKeys writes an admin key pair for the test and returns the
// private and public key files.
func integrityKeys(t *testing.T) (string, string) {
	t.Helper()
	pub, priv, err := sign.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	privPEM, _ := sign.MarshalPrivateKey(priv)
	pubPEM, _ := sign.MarshalPublicKey(pub)
	kf, pf := filepath.Join(dir, "admin.pem"), filepath.Join(dir, "admin.pub")
	if err := os.WriteFile(kf, privPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pf, pubPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return kf, pf
}

// integrityCheck runs `vigil integrity check -o json` and returns its
// exit status and report.
func integrityCheck(t *testing.T, baseline, pubkey string) (int, *integrity.Report, string) {
	t.Helper()
	cmd := exec.Command(vigilBin(t), "integrity", "check", "--baseline", baseline, "--pubkey", pubkey, "-o", "json")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	var r integrity.Report
	if code != 1 {
		if err := json.Unmarshal(out, &r); err != nil {
			t.Fatalf("check -o json: %v\n%s", err, out)
		}
	}
	return code, &r, stderr.String()
}

func integrityBaseline(t *testing.T, key string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "baseline.json")
	if out, err := exec.Command(vigilBin(t), "integrity", "baseline", "-o", f, "--key", key).CombinedOutput(); err != nil {
		t.Fatalf("baseline: %v\n%s", err, out)
	}
	return f
}

// cleanBaseline takes baselines until a check against one exits 0: other
// test packages running at the same time load and unload BPF programs.
func cleanBaseline(t *testing.T, key, pub string) string {
	t.Helper()
	var last *integrity.Report
	for range 5 {
		b := integrityBaseline(t, key)
		code, r, stderr := integrityCheck(t, b, pub)
		if code == 0 {
			return b
		}
		if code == 1 {
			t.Fatalf("check could not run: %s", stderr)
		}
		last = r
	}
	t.Fatalf("a clean system against its own fresh baseline never exited 0: %v", last.Findings)
	return ""
}

func violations(r *integrity.Report, section string) []integrity.Finding {
	var out []integrity.Finding
	for _, f := range r.Findings {
		if f.Severity == integrity.Violation && f.Section == section {
			out = append(out, f)
		}
	}
	return out
}

// TestIntegrityForeignBPFAndSysctl: baseline, then a foreign BPF program
// (loaded, never attached) and a changed sysctl make the check exit 2 and
// name both, the program with its helpers; once both are undone the check
// is clean again. It also shows what this kernel does not let Vigil read
// is not a violation by itself.
func TestIntegrityForeignBPFAndSysctl(t *testing.T) {
	testutil.RequireRoot(t)
	key, pub := integrityKeys(t)
	base := cleanBaseline(t, key, pub)

	// A tracepoint program calling bpf_send_signal, loaded but never
	// attached: it never runs.
	const progName = "itest_foreign"
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: progName,
		Type: ebpf.TracePoint,
		Instructions: asm.Instructions{
			asm.FnGetCurrentPidTgid.Call(),
			asm.Mov.Imm(asm.R1, 0),
			asm.FnSendSignal.Call(),
			asm.Mov.Imm(asm.R0, 0),
			asm.Return(),
		},
		License: "GPL",
	})
	if err != nil {
		t.Fatalf("load the foreign program: %v", err)
	}
	defer prog.Close()

	const sysctl = "kernel.perf_event_paranoid"
	path := integrity.SysctlPath(sysctl)
	old, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	newVal := "3"
	if strings.TrimSpace(string(old)) == "3" {
		newVal = "2"
	}
	restore := func() {
		if err := os.WriteFile(path, old, 0o644); err != nil {
			t.Errorf("restore %s: %v", sysctl, err)
		}
	}
	t.Cleanup(restore)
	if err := os.WriteFile(path, []byte(newVal+"\n"), 0o644); err != nil {
		t.Fatalf("set %s: %v", sysctl, err)
	}

	code, r, stderr := integrityCheck(t, base, pub)
	if code != 2 {
		t.Fatalf("check with a foreign program and a changed sysctl: exit %d, want 2\n%s\n%v", code, stderr, r.Findings)
	}
	var found *integrity.Finding
	for _, f := range violations(r, integrity.SecBPF) {
		if f.Program != nil && f.Program.Name == progName {
			found = &f
		}
	}
	if found == nil {
		t.Fatalf("foreign program %s not named: %v", progName, r.Findings)
	}
	if found.Program.HelpersUnreadable != "" {
		t.Fatalf("helpers of %s unreadable: %s", progName, found.Program.HelpersUnreadable)
	}
	for _, h := range []string{"bpf_get_current_pid_tgid", "bpf_send_signal"} {
		if !slices.Contains(found.Program.Helpers, h) {
			t.Errorf("helpers %v lack %s", found.Program.Helpers, h)
		}
	}
	if !slices.Contains(found.Program.Dangerous, "bpf_send_signal") || !strings.Contains(found.Message, "bpf_send_signal") {
		t.Errorf("bpf_send_signal not flagged: %s %v", found.Message, found.Program.Dangerous)
	}
	if s := violations(r, integrity.SecSysctl); len(s) != 1 || s[0].Subject != sysctl {
		t.Errorf("sysctl violations %v, want %s", s, sysctl)
	}
	for sec, why := range r.Unreadable {
		t.Logf("not readable here: %s: %s", sec, why)
	}

	// Undo both: the check is clean again (but for programs other test
	// packages may have loaded meanwhile, which are not ours to judge).
	prog.Close()
	restore()
	code, r, stderr = integrityCheck(t, base, pub)
	for _, f := range r.Findings {
		if f.Severity != integrity.Violation {
			continue
		}
		if f.Section != integrity.SecBPF || (f.Program != nil && f.Program.Name == progName) {
			t.Errorf("after undoing: %s", f)
		}
	}
	if code == 1 {
		t.Fatalf("check could not run: %s", stderr)
	}
}

// TestIntegrityRefusesBadSignature: a baseline signed by another key, or
// changed after signing, is refused and the check does not run.
func TestIntegrityRefusesBadSignature(t *testing.T) {
	testutil.RequireRoot(t)
	key, _ := integrityKeys(t)
	_, otherPub := integrityKeys(t)
	base := integrityBaseline(t, key)
	out, err := exec.Command(vigilBin(t), "integrity", "check", "--baseline", base, "--pubkey", otherPub).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("check with another key's baseline: %v, want exit 1\n%s", err, out)
	}
	if !strings.Contains(string(out), "refusing baseline") || !strings.Contains(string(out), "signature does not verify") {
		t.Fatalf("refusal does not say why:\n%s", out)
	}
}

// TestIntegrityModuleLoad (VM only: it loads a kernel module): a module
// loaded after the baseline is a violation, seen by all three sources (so
// not hidden); once it is removed the module section is clean again.
func TestIntegrityModuleLoad(t *testing.T) {
	testutil.RequireVM(t)
	testutil.RequireRoot(t)
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		t.Fatal(err)
	}
	ko := filepath.Join("/lib/modules", unix.ByteSliceToString(uts.Release[:]), "kernel/drivers/net/dummy.ko")
	if _, err := os.Stat(ko); err != nil {
		t.Fatalf("no dummy.ko in the VM (VMTEST_MODULES should include dummy): %v", err)
	}
	if _, err := os.Stat("/sys/module/dummy"); err == nil {
		if err := unix.DeleteModule("dummy", 0); err != nil {
			t.Fatalf("dummy is loaded by an earlier test and cannot be removed: %v", err)
		}
	}
	key, pub := integrityKeys(t)
	base := cleanBaseline(t, key, pub)

	f, err := os.Open(ko)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.FinitModule(int(f.Fd()), "", 0); err != nil {
		t.Fatalf("finit_module %s: %v", ko, err)
	}
	loaded := true
	t.Cleanup(func() {
		if loaded {
			unix.DeleteModule("dummy", 0)
		}
	})
	code, r, stderr := integrityCheck(t, base, pub)
	if code != 2 {
		t.Fatalf("check after a module load: exit %d, want 2\n%s\n%v", code, stderr, r.Findings)
	}
	var named bool
	for _, f := range violations(r, integrity.SecModules) {
		if f.Subject != "dummy" {
			t.Errorf("unexpected module violation: %s", f)
		}
		if strings.Contains(f.Message, "loaded since the baseline") {
			named = true
		}
		if strings.Contains(f.Message, "hidden") {
			t.Errorf("a normally loaded module is reported hidden: %s", f)
		}
	}
	if !named {
		t.Fatalf("dummy not named as loaded: %v", r.Findings)
	}
	if err := unix.DeleteModule("dummy", 0); err != nil {
		t.Fatalf("delete_module dummy: %v", err)
	}
	loaded = false
	_, r, _ = integrityCheck(t, base, pub)
	if v := violations(r, integrity.SecModules); len(v) != 0 {
		t.Fatalf("module violations after removing dummy: %v", v)
	}
}
