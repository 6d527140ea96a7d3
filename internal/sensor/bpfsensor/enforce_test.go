package bpfsensor

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/sensor"
	"github.com/vigil-hips/vigil/internal/testutil"
	"github.com/vigil-hips/vigil/internal/testworkload"
)

// denyExecUnder is a one-rule kernel policy: exec of anything under dir
// gets action.
func denyExecUnder(t *testing.T, dir string, action sensorVerdictAction, enforce bool) *KernelPolicy {
	t.Helper()
	key, err := PathKeyFor(dir)
	if err != nil {
		t.Fatal(err)
	}
	var e uint8
	if enforce {
		e = 1
	}
	return &KernelPolicy{
		Digest:  "test",
		RuleIDs: []string{"no-exec-here"},
		Entries: []sensorRule{{
			Kinds:       kindBit(sensorEventKindKIND_EXEC),
			Conds:       sensorCondBitC_TPREFIX,
			Action:      action,
			Enforce:     e,
			TprefixMask: 1,
		}},
		Paths: map[PathKey]sensorPathBits{key: {Prefix: 1}},
		Kinds: kindBit(sensorEventKindKIND_EXEC),
	}
}

// execIn copies the test binary into dir and runs it there (a no-op).
func execIn(t *testing.T, dir string) (string, error) {
	t.Helper()
	_, prog, err := testworkload.Prepare(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(prog, 0o755); err != nil {
		t.Fatal(err)
	}
	return prog, testworkload.Noop(prog)
}

// execVerdict waits for the exec event of prog and returns its verdict.
func execVerdict(t *testing.T, s *Sensor, prog string) *vigilv1.Verdict {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case ev := <-s.Events():
			if ev.Kind == "exec" && ev.GetExec().GetFile().GetPath() == prog {
				return ev.Verdict
			}
		case <-deadline:
			t.Fatalf("no exec event for %s", prog)
		}
	}
}

func TestLSMEnforcesExecPolicy(t *testing.T) {
	testutil.RequireBPFLSM(t)
	s := startSensor(t, Config{Backend: sensor.BackendLSM})
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}

	// Enforce: the exec fails with EPERM at the syscall.
	if err := s.ApplyPolicy(denyExecUnder(t, dir, sensorVerdictActionACT_DENY, true)); err != nil {
		t.Fatal(err)
	}
	prog, err := execIn(t, filepath.Join(dir))
	if !errors.Is(err, syscall.EPERM) {
		t.Fatalf("exec under a denied directory: %v, want EPERM", err)
	}
	v := execVerdict(t, s, prog)
	if v.GetAction() != "deny" || v.Mode != "enforce" || !v.Refused || v.Rule != "no-exec-here" || v.DecidedBy != "lsm" {
		t.Fatalf("verdict %v", v)
	}
	if hits, err := s.RuleHits(); err != nil || hits["no-exec-here"] != 1 {
		t.Fatalf("rule hits %v (%v), want no-exec-here: 1", hits, err)
	}

	// Monitor: it runs, and the would-be verdict is recorded.
	if err := s.ApplyPolicy(denyExecUnder(t, dir, sensorVerdictActionACT_DENY, false)); err != nil {
		t.Fatal(err)
	}
	if err := testworkload.Noop(prog); err != nil {
		t.Fatalf("exec in monitor mode: %v", err)
	}
	v = execVerdict(t, s, prog)
	if v.GetAction() != "deny" || v.Mode != "monitor" || v.Refused {
		t.Fatalf("monitor verdict %v", v)
	}

	// No policy: it runs, no verdict.
	if err := s.ApplyPolicy(nil); err != nil {
		t.Fatal(err)
	}
	if err := testworkload.Noop(prog); err != nil {
		t.Fatalf("exec without a policy: %v", err)
	}
	if v := execVerdict(t, s, prog); v != nil {
		t.Fatalf("verdict %v without a policy", v)
	}
}

// TestTracepointKillsAfterExec: without BPF LSM the last resort is to kill
// the new image before it runs user code. Scoped to a directory of this
// test: nothing else on the machine matches the rule.
func TestTracepointKillsAfterExec(t *testing.T) {
	s := startSensor(t, Config{Backend: sensor.BackendTracepoint})
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ApplyPolicy(denyExecUnder(t, dir, sensorVerdictActionACT_DENY, true)); err != nil {
		t.Fatal(err)
	}
	prog, err := execIn(t, dir)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("exec under a denied directory: %v, want killed by SIGKILL", err)
	}
	v := execVerdict(t, s, prog)
	if v.GetAction() != "deny" || !v.Refused || v.DecidedBy != "kill_after_exec" {
		t.Fatalf("verdict %v", v)
	}
	// Elsewhere, execs run.
	other, err := execIn(t, t.TempDir())
	if err != nil {
		t.Fatalf("exec of %s outside the denied directory: %v", other, err)
	}
}
