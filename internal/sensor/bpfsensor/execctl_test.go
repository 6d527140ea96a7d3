package bpfsensor

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/sensor"
	"github.com/vigil-hips/vigil/internal/testutil"
	"github.com/vigil-hips/vigil/internal/testworkload"
)

// Files the VM provides (Makefile VMTEST_INCLUDE).
const (
	vmLoader    = "/lib64/ld-linux-x86-64.so.2"
	vmLibc      = "/lib/x86_64-linux-gnu/libc.so.6"
	vmTrue      = "/opt/vigil-test/true"
	vmXCLoader  = "/opt/vigil-test/xcloader"
	vmXCLibrary = "/opt/vigil-test/libxctest.so"
)

func fileSHA(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// copyFile copies src to dst (0755), appending extra bytes.
func copyFile(t *testing.T, src, dst string, extra ...byte) string {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, append(b, extra...), 0o755); err != nil {
		t.Fatal(err)
	}
	return dst
}

// xcEvent waits for execution control's event about path and returns it.
func xcEvent(t *testing.T, s *Sensor, path string) *vigilv1.Event {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case ev := <-s.Events():
			if ev.Trust == nil {
				continue
			}
			var p string
			switch d := ev.Detail.(type) {
			case *vigilv1.Event_Exec:
				p = d.Exec.GetFile().GetPath()
			case *vigilv1.Event_ImageLoad:
				p = d.ImageLoad.GetFile().GetPath()
			case *vigilv1.Event_MemExec:
				p = d.MemExec.GetFile().GetPath()
			}
			if p == path {
				return ev
			}
		case <-deadline:
			t.Fatalf("no execution control event for %s", path)
		}
	}
}

// runCmd runs a command and returns its combined output and error.
func runCmd(env []string, name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestExecControlLSM: with BPF LSM, code is decided by its content on
// every loading path, synchronously, in the kernel.
func TestExecControlLSM(t *testing.T) {
	testutil.RequireBPFLSM(t)
	lsms, _ := os.ReadFile("/sys/kernel/security/lsm")
	t.Logf("active LSMs: %s", lsms)
	s := startSensor(t, Config{Backend: sensor.BackendLSM})
	t.Log("sensor started")
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	exe, _, err := testworkload.Prepare(dir)
	if err != nil {
		t.Fatal(err)
	}
	trust := map[[32]byte]bool{}
	for _, f := range []string{exe, vmLoader, vmLibc, vmTrue, vmXCLoader, vmXCLibrary} {
		trust[fileSHA(t, f)] = true
	}
	xc := &sensor.ExecControl{Mode: sensor.ExecLockdown, Trust: trust}
	set := func() {
		t.Helper()
		if err := s.SetExecControl(xc); err != nil {
			t.Fatal(err)
		}
	}
	set()
	t.Cleanup(func() { s.SetExecControl(&sensor.ExecControl{Mode: sensor.ExecOff}) })

	t.Log("step: A copy of an approved file elsewhere runs: same content.")
	// A copy of an approved file elsewhere runs: same content.
	approved := copyFile(t, exe, filepath.Join(dir, "approved"))
	if err := testworkload.Noop(approved); err != nil {
		t.Fatalf("exec of a copy of approved code: %v", err)
	}

	t.Log("step: A new binary is refused, and reported with its digest.")
	// A new binary is refused, and reported with its digest.
	unknown := copyFile(t, exe, filepath.Join(dir, "unknown"), 0)
	if err := testworkload.Noop(unknown); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("exec of unknown code: %v, want EPERM", err)
	}
	ev := xcEvent(t, s, unknown)
	unknownSHA := fileSHA(t, unknown)
	if ev.Kind != "exec" || ev.Trust.Sha256 != hex.EncodeToString(unknownSHA[:]) || ev.Trust.Verdict != "unknown" ||
		ev.Trust.Mode != "lockdown" || !ev.Verdict.GetRefused() || ev.Verdict.GetRule() != XCRule {
		t.Fatalf("event for refused unknown code: %v", ev)
	}

	t.Log("step: Approved, it runs at its next exec (decided before: the cached")
	// Approved, it runs at its next exec (decided before: the cached

	// verdict is re-read in the new epoch).
	trust[unknownSHA] = true
	set()
	if err := testworkload.Noop(unknown); err != nil {
		t.Fatalf("first exec after approval: %v", err)
	}

	t.Log("step: One byte appended to an approved binary: its next exec fails.")
	// One byte appended to an approved binary: its next exec fails.
	f, err := os.OpenFile(approved, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte{1})
	f.Close()
	if err := testworkload.Noop(approved); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("exec after appending a byte to approved code: %v, want EPERM", err)
	}

	t.Log("step: A file renamed to an approved file's name is not approved.")
	// A file renamed to an approved file's name is not approved.
	named := copyFile(t, exe, filepath.Join(dir, "named"))
	if err := testworkload.Noop(named); err != nil {
		t.Fatalf("exec of approved code: %v", err)
	}
	impostor := copyFile(t, exe, filepath.Join(dir, "impostor"), 2)
	if err := os.Rename(impostor, named); err != nil {
		t.Fatal(err)
	}
	if err := testworkload.Noop(named); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("exec of unknown code renamed over approved code: %v, want EPERM", err)
	}

	t.Log("step: An explicit deny by hash wins over nothing else trusting it.")
	// An explicit deny by hash wins over nothing else trusting it.
	trust[fileSHA(t, unknown)] = false
	set()
	if err := testworkload.Noop(unknown); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("exec of denied code: %v, want EPERM", err)
	}
	if ev := xcEvent(t, s, unknown); ev.Trust.Verdict != "denied" || !ev.Trust.Cached {
		t.Fatalf("event for denied code: %v", ev.Trust)
	}
	trust[fileSHA(t, unknown)] = true
	set()

	t.Log("step: memfd + fexecve: content decides; unlinked files can be refused.")
	// memfd + fexecve: content decides; unlinked files can be refused.
	if err := testworkload.MemfdExec(exe); err != nil {
		t.Fatalf("memfd exec of approved code: %v", err)
	}
	if err := testworkload.MemfdExec(impostor2(t, exe, dir)); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("memfd exec of unknown code: %v, want EPERM", err)
	}
	xc.UnlinkedDeny = true
	set()
	if err := testworkload.MemfdExec(exe); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("memfd exec with unlinked files refused: %v, want EPERM", err)
	}
	xc.UnlinkedDeny = false
	set()

	t.Log("step: The direct loader call: ld.so maps the program itself (mmap_file).")
	// The direct loader call: ld.so maps the program itself (mmap_file).
	if out, err := runCmd(nil, vmLoader, vmTrue); err != nil {
		t.Fatalf("ld.so of approved code: %v: %s", err, out)
	}
	unknownTrue := copyFile(t, vmTrue, filepath.Join(dir, "true-unknown"), 0)
	out, err := runCmd(nil, vmLoader, unknownTrue)
	if err == nil || !mapRefused(out) {
		t.Fatalf("ld.so of unknown code: %v: %q, want the mapping refused", err, out)
	}
	if ev := xcEvent(t, s, unknownTrue); ev.Kind != "image_load" || !ev.Verdict.GetRefused() {
		t.Fatalf("event for ld.so of unknown code: %v", ev)
	}

	t.Log("step: dlopen.")
	// dlopen.
	if out, err := runCmd(nil, vmXCLoader, vmXCLibrary); err != nil || !strings.Contains(out, "loaded: 42") {
		t.Fatalf("dlopen of approved code: %v: %s", err, out)
	}
	unknownLib := copyFile(t, vmXCLibrary, filepath.Join(dir, "libunknown.so"), 0)
	if out, err := runCmd(nil, vmXCLoader, unknownLib); err == nil || !mapRefused(out) {
		t.Fatalf("dlopen of unknown code: %v: %q, want the mapping refused", err, out)
	}
	xcEvent(t, s, unknownLib)

	t.Log("step: LD_PRELOAD: ld.so reports the library it could not map and goes on.")
	// LD_PRELOAD: ld.so reports the library it could not map and goes on.
	if out, err := runCmd([]string{"LD_PRELOAD=" + vmXCLibrary}, vmTrue); err != nil || out != "" {
		t.Fatalf("LD_PRELOAD of approved code: %v: %q", err, out)
	}
	if out, _ := runCmd([]string{"LD_PRELOAD=" + unknownLib}, vmTrue); !strings.Contains(out, "cannot be preloaded") {
		t.Fatalf("LD_PRELOAD of unknown code: %q, want it not preloaded", out)
	}

	t.Log("step: Monitor: everything runs, unknown code is recorded.")
	// Monitor: everything runs, unknown code is recorded.
	xc.Mode = sensor.ExecMonitor
	trust[fileSHA(t, unknown)] = false
	set()
	for _, run := range []func() error{
		func() error { return testworkload.Noop(unknown) },
		func() error { _, err := runCmd(nil, vmLoader, unknownTrue); return err },
		func() error { _, err := runCmd(nil, vmXCLoader, unknownLib); return err },
	} {
		if err := run(); err != nil {
			t.Fatalf("monitor mode: %v", err)
		}
	}
	if ev := xcEvent(t, s, unknown); ev.Trust.Mode != "monitor" || ev.Verdict.GetRefused() || ev.Trust.Verdict != "denied" {
		t.Fatalf("monitor event: %v", ev)
	}
	if ev := xcEvent(t, s, unknownLib); ev.Verdict.GetRefused() || ev.Trust.Verdict != "unknown" {
		t.Fatalf("monitor event for dlopen: %v", ev)
	}
}

// mapRefused: the dynamic loader's message for a mapping the kernel refused.
func mapRefused(out string) bool {
	return strings.Contains(out, "Operation not permitted") || strings.Contains(out, "failed to map segment")
}

// impostor2 is another unknown copy of exe in dir.
func impostor2(t *testing.T, exe, dir string) string {
	return copyFile(t, exe, filepath.Join(dir, "memfd-src"), 3)
}

// TestExecControlOffChangesNothing: with execution control off, unknown
// code runs and nothing is reported as execution control.
func TestExecControlOffChangesNothing(t *testing.T) {
	testutil.RequireBPFLSM(t)
	s := startSensor(t, Config{Backend: sensor.BackendLSM})
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	exe, _, err := testworkload.Prepare(dir)
	if err != nil {
		t.Fatal(err)
	}
	unknown := copyFile(t, exe, filepath.Join(dir, "unknown"), 0)
	if err := testworkload.Noop(unknown); err != nil {
		t.Fatalf("exec with execution control off: %v", err)
	}
	if err := s.SetExecControl(&sensor.ExecControl{Mode: sensor.ExecOff}); err != nil {
		t.Fatal(err)
	}
	if err := testworkload.Noop(unknown); err != nil {
		t.Fatalf("exec with execution control set off: %v", err)
	}
	// Execution control's event would come before the exec's own.
	deadline := time.After(20 * time.Second)
	for seen := 0; seen < 2; {
		select {
		case ev := <-s.Events():
			if ev.Trust != nil {
				t.Fatalf("execution control event while off: %v", ev)
			}
			if ev.Kind == "exec" && ev.GetExec().GetFile().GetPath() == unknown {
				seen++
			}
		case <-deadline:
			t.Fatalf("exec events for %s: %d of 2", unknown, seen)
		}
	}
}
