// Package testutil holds helpers that make privileged and kernel-dependent
// tests say why they did not run instead of passing silently.
//
// Tests run in two places: on the development machines (root, but no usable
// BPF LSM) and in the VM suite (`make test-vm`, tools/vmtest), whose kernels
// are booted with lsm=...,bpf. A test that needs something the current
// machine lacks skips with the reason; in the VM, where BPF LSM is the whole
// point, a missing BPF LSM is a failure, not a skip.
package testutil

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vigil-hips/vigil/internal/probe"
)

// BPFLSMMarker starts the line RequireBPFLSM prints before deciding. The VM
// runner (tools/vmtest) counts these lines to check that the tests that
// exist to exercise BPF LSM really ran on each kernel, rather than all
// skipping. tools/vmtest has its own copy; a test there checks they match.
const BPFLSMMarker = "vmtest: requires bpf-lsm: "

// securityfsDir is where the kernel's list of active LSMs lives.
const securityfsDir = "/sys/kernel/security"

// InVM reports whether the test runs inside the vmtest VM (VIGIL_IN_VM=1,
// set by the VM's init).
func InVM() bool { return os.Getenv("VIGIL_IN_VM") == "1" }

// RequireRoot skips the test unless it runs as root: loading BPF programs,
// mounting and fanotify permission events all need it, and failing for a
// missing privilege would hide real failures.
func RequireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skipf("needs root (euid is %d)", os.Geteuid())
	}
}

// RequireVM skips the test unless it runs in the vmtest VM. Use it for tests
// that change the whole machine (system-wide LSM denies, module loads) and
// must never run on a shared host: CI runs on the development machine.
func RequireVM(tb testing.TB) {
	tb.Helper()
	if !InVM() {
		tb.Skip("needs the vmtest VM (make test-vm); VIGIL_IN_VM is not 1")
	}
}

// RequireBPFLSM skips the test unless BPF LSM programs can be loaded and
// attached here. It first prints a marker line naming the test to stdout, so
// the VM runner can check that such tests ran. Inside the VM the kernel is
// booted with BPF LSM on, so its absence is a broken test setup and the test
// fails instead of skipping.
//
// "bpf" in /sys/kernel/security/lsm is not enough: the development machines
// list it, yet refuse to load LSM programs (EPERM). So the check loads and
// attaches an allow-all lsm/file_open program once per test binary.
func RequireBPFLSM(tb testing.TB) {
	tb.Helper()
	// fmt.Printf, not tb.Log: the line must reach the console as is, even
	// when the test later skips or fails.
	fmt.Printf("%s%s\n", BPFLSMMarker, tb.Name())
	requireBPFLSM(tb, BPFLSMUsable(), InVM())
}

func requireBPFLSM(tb testing.TB, usable error, inVM bool) {
	tb.Helper()
	if usable == nil {
		return
	}
	if inVM {
		tb.Fatalf("needs BPF LSM: %v; the VM boots with lsm=...,bpf, so this is a broken setup, not a reason to skip", usable)
		return
	}
	tb.Skipf("needs BPF LSM: %v", usable)
}

var (
	bpfLSMOnce sync.Once
	bpfLSMErr  error
)

// BPFLSMUsable returns nil if BPF LSM is active and an LSM program can be
// loaded and attached, else why not. It probes once per process.
func BPFLSMUsable() error {
	bpfLSMOnce.Do(func() { bpfLSMErr = probe.BPFLSM() })
	return bpfLSMErr
}

// ActiveLSMs returns the kernel's active LSMs in order, from
// /sys/kernel/security/lsm. If securityfs is not mounted there it mounts it,
// which needs root.
func ActiveLSMs() ([]string, error) {
	path := securityfsDir + "/lsm"
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		if merr := syscall.Mount("securityfs", securityfsDir, "securityfs", 0, ""); merr != nil {
			return nil, fmt.Errorf("%w; mounting securityfs on %s: %w", err, securityfsDir, merr)
		}
		b, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), ",") {
		if l != "" {
			out = append(out, l)
		}
	}
	return out, nil
}

// Within calls f every interval until it returns nil or d has passed,
// and returns its last error.
func Within(d, every time.Duration, f func() error) error {
	deadline := time.Now().Add(d)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(every)
	}
}
