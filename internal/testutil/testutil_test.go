package testutil

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// fakeTB records what a helper decided instead of stopping the test.
type fakeTB struct {
	testing.TB
	skipped, failed bool
	msg             string
}

func (f *fakeTB) Helper()      {}
func (f *fakeTB) Name() string { return "TestFake" }
func (f *fakeTB) Skip(args ...any) {
	f.skipped, f.msg = true, fmt.Sprint(args...)
}
func (f *fakeTB) Skipf(format string, args ...any) {
	f.skipped, f.msg = true, fmt.Sprintf(format, args...)
}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failed, f.msg = true, fmt.Sprintf(format, args...)
}

func TestRequireBPFLSMDecision(t *testing.T) {
	for _, tc := range []struct {
		name       string
		usable     error
		inVM       bool
		skip, fail bool
	}{
		{name: "usable"},
		{name: "usable in VM", inVM: true},
		{name: "unusable on host skips", usable: errors.New("loading failed: operation not permitted"), skip: true},
		{name: "unusable in VM fails", usable: errors.New("bpf is not among the active LSMs"), inVM: true, fail: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeTB{}
			requireBPFLSM(f, tc.usable, tc.inVM)
			if f.skipped != tc.skip || f.failed != tc.fail {
				t.Errorf("skipped=%v failed=%v (%q), want skipped=%v failed=%v", f.skipped, f.failed, f.msg, tc.skip, tc.fail)
			}
			if (f.skipped || f.failed) && !strings.Contains(f.msg, tc.usable.Error()) {
				t.Errorf("reason %q does not say why (%v)", f.msg, tc.usable)
			}
		})
	}
}

func TestInVM(t *testing.T) {
	t.Setenv("VIGIL_IN_VM", "1")
	if !InVM() {
		t.Error("InVM() = false with VIGIL_IN_VM=1")
	}
	t.Setenv("VIGIL_IN_VM", "")
	if InVM() {
		t.Error("InVM() = true without VIGIL_IN_VM")
	}
}

// TestRequireBPFLSMHere runs the real helper on this machine: it must pass
// or skip (on the host) with a reason, never fail, outside the VM.
func TestRequireBPFLSMHere(t *testing.T) {
	if InVM() {
		t.Skip("the VM suite checks this (tools/vmtest/vmcheck)")
	}
	var ran bool
	t.Run("inner", func(t *testing.T) {
		RequireBPFLSM(t)
		ran = true
	})
	lsms, err := ActiveLSMs()
	t.Logf("active LSMs: %q (err %v); BPF LSM usable: %v; helper let the test run: %v", lsms, err, BPFLSMUsable(), ran)
	if ran != (BPFLSMUsable() == nil) {
		t.Errorf("helper let the test run: %v, but BPFLSMUsable() = %v", ran, BPFLSMUsable())
	}
}
