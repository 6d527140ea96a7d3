package e2e

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vigil-hips/vigil/internal/testutil"
)

// envSHAWriter puts this binary in writer mode (see init): it is how the
// test runs "a binary with a given digest" that modifies a file.
const envSHAWriter = "VIGIL_E2E_SHA_WRITER"

// Writer mode: for each path read from stdin, open it for writing once
// on the main thread (the thread group leader) and once on another
// thread, and print "MAIN THREAD" with each result ("ok" or the errno
// name). init runs before TestMain and, while it runs, the runtime keeps
// the main goroutine on the main thread.
func init() {
	if os.Getenv(envSHAWriter) == "" {
		return
	}
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		path := sc.Text()
		main := tryWrite(path)
		other := make(chan string)
		go func() {
			runtime.LockOSThread()
			if unix.Gettid() == unix.Getpid() {
				other <- "on-main-thread"
				return
			}
			other <- tryWrite(path)
		}()
		fmt.Printf("%s %s\n", main, <-other)
	}
	os.Exit(0)
}

func tryWrite(path string) string {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		var errno syscall.Errno
		if errors.As(err, &errno) {
			return unix.ErrnoName(errno)
		}
		return strings.ReplaceAll(err.Error(), " ", "_")
	}
	f.Close()
	return "ok"
}

// shaWriter is a running writer-mode process.
type shaWriter struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

func startSHAWriter(t *testing.T, bin string) *shaWriter {
	t.Helper()
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), envSHAWriter+"=1")
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	w := &shaWriter{cmd: cmd, in: in, out: bufio.NewScanner(out)}
	t.Cleanup(func() { w.in.Close(); w.cmd.Wait() })
	return w
}

// write asks the writer to open path for writing; it returns the results
// on the main thread and on another thread.
func (w *shaWriter) write(t *testing.T, path string) (main, other string) {
	t.Helper()
	if _, err := fmt.Fprintln(w.in, path); err != nil {
		t.Fatalf("writer %d: %v", w.cmd.Process.Pid, err)
	}
	if !w.out.Scan() {
		t.Fatalf("writer %d: no answer: %v", w.cmd.Process.Pid, w.out.Err())
	}
	f := strings.Fields(w.out.Text())
	if len(f) != 2 {
		t.Fatalf("writer %d: answer %q", w.cmd.Process.Pid, w.out.Text())
	}
	return f[0], f[1]
}

// writeOnce runs bin in writer mode for one write of path.
func writeOnce(t *testing.T, bin, path string) (main, other string, pid int) {
	t.Helper()
	w := startSHAWriter(t, bin)
	main, other = w.write(t, path)
	w.in.Close()
	w.cmd.Wait()
	return main, other, w.cmd.Process.Pid
}

// TestProcessSHA256Rule: a rule on process.sha256 is decided in the LSM
// hook: the binary with the digest is refused (EPERM, on every thread),
// a binary with another digest is not, a process of that binary started
// before the agent is refused too (the agent hashes running processes),
// and in monitor mode the write goes through and the would-be verdict is
// recorded. Without the agent the same write succeeds.
func TestProcessSHA256Rule(t *testing.T) {
	testutil.RequireBPFLSM(t)
	testutil.RequireRoot(t)
	dir, err := os.MkdirTemp("/tmp", "vigil-sha")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// Two copies of this binary with random bytes appended: two digests
	// made now, known to nothing else.
	tag := func() []byte {
		b := make([]byte, 16)
		rand.Read(b)
		return b
	}
	binA, shaA := variant(t, exe, filepath.Join(dir, "writer-a"), tag()...)
	binB, shaB := variant(t, exe, filepath.Join(dir, "writer-b"), tag()...)
	protected := filepath.Join(dir, "protected")
	if err := os.Mkdir(protected, 0o755); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(protected, "file")
	if err := os.WriteFile(target, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	id := "deny-by-digest-" + hex.EncodeToString(tag()[:4])
	policyFor := func(mode string) string {
		p := filepath.Join(dir, mode+".yaml")
		src := fmt.Sprintf(`version: 1
name: sha256-%s
mode: %s
rules:
  - id: %s
    on: [file_modify]
    action: deny
    match:
      process: {sha256: [%s]}
      target: {path_prefix: [%s]}
`, mode, mode, id, strings.ToUpper(shaA), protected)
		if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	enforce, monitor := policyFor("enforce"), policyFor("monitor")
	t.Logf("A %s sha256 %s; B %s sha256 %s", binA, shaA, binB, shaB)

	// Without the agent, A may write.
	if m, o, _ := writeOnce(t, binA, target); m != "ok" || o != "ok" {
		t.Fatalf("without the agent, A's write: main thread %s, other thread %s; want ok", m, o)
	}
	// A process of A that runs before the agent starts.
	early := startSHAWriter(t, binA)
	if m, o := early.write(t, target); m != "ok" || o != "ok" {
		t.Fatalf("without the agent, the early A's write: %s %s; want ok", m, o)
	}

	start := time.Now()
	a := startAgent(t, "--policy", enforce)
	if m, o, _ := writeOnce(t, binB, target); m != "ok" || o != "ok" {
		t.Errorf("enforce: B's write (another digest): main thread %s, other thread %s; want ok", m, o)
	}
	m, o, pidA := writeOnce(t, binA, target)
	if m != "EPERM" || o != "EPERM" {
		t.Errorf("enforce: A's write: main thread %s, other thread %s; want EPERM on both", m, o)
	}
	if m, o := early.write(t, target); m != "EPERM" || o != "EPERM" {
		t.Errorf("enforce: the A started before the agent: main thread %s, other thread %s; want EPERM on both", m, o)
	}
	if err := within(20*time.Second, func() error {
		refused := map[uint32]bool{}
		for _, ev := range a.verdicts(t, start) {
			v := ev.GetVerdict()
			if v.GetRule() != id || ev.GetFileModify().GetFile().GetPath() != target {
				continue
			}
			if !v.GetRefused() || v.GetMode() != "enforce" || v.GetDecidedBy() != "lsm" {
				return fmt.Errorf("enforce: event %v", ev)
			}
			refused[ev.GetProcess().GetPid()] = true
		}
		for _, pid := range []int{pidA, early.cmd.Process.Pid} {
			if !refused[uint32(pid)] {
				return fmt.Errorf("enforce: no refused write by pid %d (refused: %v)", pid, refused)
			}
		}
		return nil
	}); err != nil {
		t.Error(err)
	}

	// Monitor: the same rule lets the write through and records it; B's
	// write matches nothing.
	applyPolicy(t, a, monitor)
	since := time.Now()
	m, o, pidA = writeOnce(t, binA, target)
	if m != "ok" || o != "ok" {
		t.Errorf("monitor: A's write: main thread %s, other thread %s; want ok", m, o)
	}
	if m, o := early.write(t, target); m != "ok" || o != "ok" {
		t.Errorf("monitor: the early A's write: %s %s; want ok", m, o)
	}
	_, _, pidB := writeOnce(t, binB, target)
	if err := within(20*time.Second, func() error {
		seen := map[uint32]bool{}
		for _, ev := range a.verdicts(t, since) {
			v := ev.GetVerdict()
			if v.GetRule() != id {
				continue
			}
			if v.GetRefused() || v.GetMode() != "monitor" || v.GetAction() != "deny" {
				return fmt.Errorf("monitor: event %v", ev)
			}
			seen[ev.GetProcess().GetPid()] = true
		}
		if seen[uint32(pidB)] {
			return fmt.Errorf("monitor: B (pid %d) matched the rule", pidB)
		}
		for _, pid := range []int{pidA, early.cmd.Process.Pid} {
			if !seen[uint32(pid)] {
				return fmt.Errorf("monitor: no would-be verdict for pid %d (seen %v)", pid, seen)
			}
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
}
