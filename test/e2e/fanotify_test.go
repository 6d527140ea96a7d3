package e2e

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vigil-hips/vigil/internal/testutil"
	"github.com/vigil-hips/vigil/internal/testworkload"
)

// testTmpfs mounts a tmpfs for this test only: fanotify marks the whole
// filesystem of a path, and this is the only one it may mark on a host.
// Tests copy this test binary onto it (about 25 MB a copy, growing with
// the packages it links); tmpfs takes memory only for what is written.
func testTmpfs(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=512m"); err != nil {
		t.Fatalf("mount tmpfs on %s: %v", dir, err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

// TestFanotifyDeniesExec: without BPF LSM (the tracepoint backend, also
// forced in the VM), an exec the policy denies on a fanotify-marked
// filesystem fails with EPERM before the program runs, and the event
// says fanotify decided. Execs elsewhere on it, and the same exec under a
// policy that allows it, run.
func TestFanotifyDeniesExec(t *testing.T) {
	testutil.RequireRoot(t)
	mnt := testTmpfs(t)
	denied := filepath.Join(mnt, "denied")
	allowed := filepath.Join(mnt, "allowed")
	for _, d := range []string{denied, allowed} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	pol := filepath.Join(t.TempDir(), "deny-exec.yaml")
	src := fmt.Sprintf(`version: 1
name: deny-exec-on-test-tmpfs
mode: enforce
rules:
  - id: no-exec-from-denied
    on: exec
    action: deny
    match:
      target:
        path_prefix: [%s]
`, denied)
	if err := os.WriteFile(pol, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, "--backend", "tracepoint", "--fanotify-mark", mnt, "--policy", pol)

	_, progDenied, err := testworkload.Prepare(denied)
	if err != nil {
		t.Fatal(err)
	}
	_, progAllowed, err := testworkload.Prepare(allowed)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{progDenied, progAllowed} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	since := time.Now()
	if err := testworkload.Noop(progDenied); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("exec of %s: %v, want EPERM", progDenied, err)
	}
	if err := testworkload.Noop(progAllowed); err != nil {
		t.Fatalf("exec of %s (not denied): %v", progAllowed, err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		found := false
		for _, ev := range a.verdicts(t, since) {
			v := ev.Verdict
			if ev.GetExec().GetFile().GetPath() == progDenied && v.Rule == "no-exec-from-denied" &&
				v.DecidedBy == "fanotify" && v.Refused && ev.Hook == "fanotify/FAN_OPEN_EXEC_PERM" {
				found = true
			}
		}
		if found {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no exec event refused by fanotify naming the rule")
		}
		time.Sleep(200 * time.Millisecond)
	}

	// The same exec under a policy that does not deny it runs.
	applyPolicy(t, a, baselinePolicy)
	if err := testworkload.Noop(progDenied); err != nil {
		t.Fatalf("exec of %s under baseline: %v", progDenied, err)
	}
}
