package bpfsensor

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vigil-hips/vigil/internal/policy"
	"github.com/vigil-hips/vigil/internal/sensor"
	"github.com/vigil-hips/vigil/internal/testutil"
)

// Helper process modes of TestExeDigestLSM (init runs before TestMain).
//
// Exec-failure mode: an exec that fails after the kernel hashed the file
// (no binary format takes it); print its error and live until killed.
//
// Forker mode: fork(2) without exec, print the child's pid, and live
// until killed; the child pauses until killed. It shows what a forked
// worker (a server's, a shell's subshell) inherits. The child runs no Go
// runtime code: only raw system calls.
func init() {
	if p := os.Getenv("VIGIL_TEST_EXECFAIL"); p != "" {
		fmt.Println(syscall.Exec(p, []string{p}, nil))
		time.Sleep(15 * time.Minute)
		os.Exit(0)
	}
	if os.Getenv("VIGIL_TEST_FORKER") == "" {
		return
	}
	pid, _, errno := syscall.RawSyscall(syscall.SYS_FORK, 0, 0, 0)
	if errno != 0 {
		fmt.Println("fork:", errno)
		os.Exit(1)
	}
	if pid == 0 {
		for {
			syscall.RawSyscall(syscall.SYS_PAUSE, 0, 0, 0)
		}
	}
	fmt.Println(pid)
	time.Sleep(15 * time.Minute)
	os.Exit(0)
}

// runLine runs bin with env added until the test ends, and returns it
// and the first line it prints.
func runLine(t *testing.T, bin string, env ...string) (*exec.Cmd, string) {
	t.Helper()
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("%s: %q: %v", bin, line, err)
	}
	return cmd, strings.TrimSpace(line)
}

// forkOf runs bin in forker mode and returns the forked child's pid.
func forkOf(t *testing.T, bin string) int {
	t.Helper()
	_, line := runLine(t, bin, "VIGIL_TEST_FORKER=1")
	pid, err := strconv.Atoi(line)
	if err != nil {
		t.Fatalf("forker: %q", line)
	}
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	return pid
}

// sha256Policy is a policy with one process.sha256 rule naming digest.
func sha256Policy(t *testing.T, digest [32]byte) *policy.Policy {
	t.Helper()
	return mustParse(t, fmt.Sprintf(`version: 1
mode: enforce
rules:
  - id: by-digest
    on: [file_modify]
    action: deny
    match:
      process: {sha256: [%x]}
      target: {path_prefix: [/nonexistent-%x]}
`, digest, digest[:4]))
}

// sleeperOf runs bin (a copy of this test binary) in the workload's sleep
// mode until the test ends.
func sleeperOf(t *testing.T, bin string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "VIGIL_TESTWORKLOAD=sleep")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

// TestExeDigestLSM: with a process.sha256 policy in force, the kernel
// knows each process's executable digest: hashed at exec, and for a
// process that was running before the policy, filled in by the agent.
// Without such a policy nothing is hashed.
func TestExeDigestLSM(t *testing.T) {
	testutil.RequireBPFLSM(t)
	s := startSensor(t, Config{Backend: sensor.BackendLSM})
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	variant := func(name string) (string, [32]byte) {
		tag := make([]byte, 16)
		rand.Read(tag)
		p := copyFile(t, self, filepath.Join(dir, name), tag...)
		return p, fileSHA(t, p)
	}
	digestOf := func(pid int) ([32]byte, bool) {
		t.Helper()
		d, ok, err := s.ExeDigest(pid)
		if err != nil {
			t.Fatalf("ExeDigest(%d): %v", pid, err)
		}
		return d, ok
	}

	binEarly, shaEarly := variant("early")
	early := sleeperOf(t, binEarly)
	binOff, _ := variant("no-policy")
	off := sleeperOf(t, binOff)
	time.Sleep(200 * time.Millisecond) // both past their exec
	if _, ok := digestOf(off.Process.Pid); ok {
		t.Errorf("a process exec'd with no digest policy has a digest in the kernel")
	}

	binNew, shaNew := variant("new")
	if _, err := s.Enforce(sha256Policy(t, shaNew)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Enforce(nil) })
	for _, p := range []struct {
		name string
		pid  int
		want [32]byte
	}{
		{"running before the policy", early.Process.Pid, shaEarly},
		{"exec'd before the policy", off.Process.Pid, fileSHA(t, binOff)},
	} {
		if d, ok := digestOf(p.pid); !ok || d != p.want {
			t.Errorf("%s: kernel digest %x (known %v), want %x", p.name, d, ok, p.want)
		}
	}
	// The digest a process keeps stays its executable's content: the
	// kernel refuses to open a running executable for writing.
	if f, err := os.OpenFile(binEarly, os.O_WRONLY, 0); !errors.Is(err, syscall.ETXTBSY) {
		if err == nil {
			f.Close()
		}
		t.Errorf("open of a running executable for writing: %v, want ETXTBSY", err)
	}
	fresh := sleeperOf(t, binNew)
	if err := testutil.Within(5*time.Second, 100*time.Millisecond, func() error {
		if d, ok := digestOf(fresh.Process.Pid); !ok || d != shaNew {
			return fmt.Errorf("exec'd under the policy: kernel digest %x (known %v), want %x", d, ok, shaNew)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}

	// An exec that fails after the hook hashed the new file leaves the
	// process its own digest (a process cannot shed it that way).
	garbage := filepath.Join(dir, "garbage")
	junk := make([]byte, 4096)
	rand.Read(junk)
	if err := os.WriteFile(garbage, junk, 0o755); err != nil {
		t.Fatal(err)
	}
	binFail, shaFail := variant("exec-fails")
	failer, msg := runLine(t, binFail, "VIGIL_TEST_EXECFAIL="+garbage)
	if !strings.Contains(msg, "exec format error") {
		t.Errorf("exec of random bytes: %q, want exec format error", msg)
	}
	if d, ok := digestOf(failer.Process.Pid); !ok || d != shaFail {
		t.Errorf("after a failed exec: kernel digest %x (known %v), want its own %x", d, ok, shaFail)
	}

	// A process forked without exec has its parent's executable.
	binFork, shaFork := variant("forker")
	child := forkOf(t, binFork)
	if d, ok := digestOf(child); !ok || d != shaFork {
		t.Errorf("forked without exec: kernel digest %x (known %v), want the parent's %x", d, ok, shaFork)
	}
}

// TestSHA256NeedsLSM: without BPF LSM a policy with process.sha256 is
// refused (no path there knows a process's digest), and the policy in
// force stays.
func TestSHA256NeedsLSM(t *testing.T) {
	s := startSensor(t, Config{Backend: sensor.BackendTracepoint})
	var d [32]byte
	rand.Read(d[:])
	_, err := s.Enforce(sha256Policy(t, d))
	if !errors.Is(err, ErrNotInKernel) || !strings.Contains(err.Error(), "process.sha256") {
		t.Fatalf("Enforce of a process.sha256 policy on the tracepoint backend: %v, want ErrNotInKernel", err)
	}
	var cfg sensorPolicyCfg
	if err := s.objs.Maps[sensorMapPolicy].Lookup(uint32(0), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Slots[cfg.ActiveSlot%2].Version != 0 || cfg.HashExec != 0 {
		t.Errorf("a refused policy reached the kernel: %+v", cfg)
	}
}

// TestSignerNeedsLSM: without BPF LSM a policy with process.signer is
// refused like one with process.sha256, whether or not its signers have
// catalogs yet (one added later could not be enforced), and the policy in
// force stays.
func TestSignerNeedsLSM(t *testing.T) {
	s := startSensor(t, Config{Backend: sensor.BackendTracepoint})
	var d [32]byte
	rand.Read(d[:])
	src := "version: 1\nmode: enforce\nrules:\n  - {id: by-k, on: [file_modify], action: deny, match: {process: {signer: [" + keyK + "]}}}\n"
	for name, p := range map[string]*policy.Policy{
		"no catalogs":  mustParse(t, src),
		"with catalog": mustParse(t, src).WithCatalogs(policy.Catalogs{keyK: {hex.EncodeToString(d[:])}}),
	} {
		_, err := s.Enforce(p)
		if !errors.Is(err, ErrNotInKernel) || !strings.Contains(err.Error(), "process.signer") {
			t.Errorf("%s: Enforce of a process.signer policy on the tracepoint backend: %v, want ErrNotInKernel", name, err)
		}
	}
	var cfg sensorPolicyCfg
	if err := s.objs.Maps[sensorMapPolicy].Lookup(uint32(0), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Slots[cfg.ActiveSlot%2].Version != 0 || cfg.HashExec != 0 {
		t.Errorf("a refused policy reached the kernel: %+v", cfg)
	}
}
