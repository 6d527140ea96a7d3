package fanotify

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vigil-hips/vigil/internal/testutil"
)

const childEnv = "VIGIL_FANOTIFY_TEST_OPEN"

// TestMain: with childEnv set, the test binary is a child that opens that
// file and exits 0 (opened), 13 (refused) or 1.
func TestMain(m *testing.M) {
	if path := os.Getenv(childEnv); path != "" {
		f, err := os.Open(path)
		switch {
		case err == nil:
			f.Close()
			os.Exit(0)
		case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
			os.Exit(13)
		}
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// childOpen opens path from another process: this process's own opens
// are answered without asking.
func childOpen(path string) (pid int, err error) {
	self, _ := os.Executable()
	cmd := exec.Command(self, "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+path)
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 13 {
		return cmd.Process.Pid, unix.EPERM
	}
	if err != nil {
		return cmd.Process.Pid, fmt.Errorf("child open of %s: %w", path, err)
	}
	return cmd.Process.Pid, nil
}

type asked struct {
	pid  int32
	op   Op
	path string
}

// recorder decides: deny names containing "deny", wait on release for
// names containing "slow", keep allows of names containing "keep" in the
// kernel.
type recorder struct {
	g       *Guard
	release chan struct{}
	raced   atomic.Bool
	mu      sync.Mutex
	asked   []asked
	kept    []bool
}

func (r *recorder) decide(pid int32, op Op, f File) bool {
	r.mu.Lock()
	r.asked = append(r.asked, asked{pid, op, filepath.Base(f.Path)})
	r.mu.Unlock()
	name := filepath.Base(f.Path)
	if strings.Contains(name, "slow") {
		<-r.release
	}
	if strings.Contains(name, "race") && r.raced.CompareAndSwap(false, true) {
		// Changed while the decision is taken (this process's own open
		// is answered at once).
		if err := os.WriteFile(f.Path, []byte("changed during the decision"), 0o644); err != nil {
			panic(err)
		}
	}
	if strings.Contains(name, "keep") || strings.Contains(name, "race") {
		kept, err := r.g.IgnoreUntilModified(f, op)
		if err != nil {
			panic(err)
		}
		r.mu.Lock()
		r.kept = append(r.kept, kept)
		r.mu.Unlock()
	}
	return !strings.Contains(name, "deny")
}

func (r *recorder) count(name string) (n int, last asked) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, a := range r.asked {
		if a.path == name {
			n, last = n+1, a
		}
	}
	return n, last
}

// sbMask is the events of the guard's filesystem mark (fdinfo).
func sbMask(t *testing.T, g *Guard) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/fdinfo/%d", g.fd))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "fanotify sdev:") {
			for _, f := range strings.Fields(line) {
				if m, ok := strings.CutPrefix(f, "mask:"); ok {
					return m
				}
			}
		}
	}
	t.Fatalf("no filesystem mark in %s", b)
	return ""
}

func TestGuardOpen(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=8m"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	for _, n := range []string{"deny.txt", "fast.txt", "slow.txt", "keep.txt", "race.txt"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(n), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	r := &recorder{release: make(chan struct{})}
	g, err := New(r.decide)
	if err != nil {
		t.Fatal(err)
	}
	r.g = g
	t.Cleanup(func() { g.Close() })
	if err := g.Mark(dir); err != nil {
		t.Fatal(err)
	}
	g.Start()
	path := func(n string) string { return filepath.Join(dir, n) }

	// Exec permission only: opens are not asked about.
	if m := sbMask(t, g); m != fmt.Sprintf("%x", unix.FAN_OPEN_EXEC_PERM) {
		t.Fatalf("mark events %s, want exec permission only", m)
	}
	if _, err := childOpen(path("deny.txt")); err != nil {
		t.Fatalf("open without open permission events: %v", err)
	}
	if n, _ := r.count("deny.txt"); n != 0 {
		t.Fatalf("asked about %d opens while not asking for them", n)
	}

	if err := g.SetOpen(true); err != nil {
		t.Fatal(err)
	}
	if m := sbMask(t, g); m != fmt.Sprintf("%x", unix.FAN_OPEN_EXEC_PERM|unix.FAN_OPEN_PERM) {
		t.Fatalf("mark events %s, want exec and open permission", m)
	}
	pid, err := childOpen(path("deny.txt"))
	if !errors.Is(err, unix.EPERM) {
		t.Fatalf("open the decider denies: %v, want EPERM", err)
	}
	if n, a := r.count("deny.txt"); n != 1 || a.op != Open || a.pid != int32(pid) {
		t.Fatalf("asked %d times, last %+v; want once, open by pid %d", n, a, pid)
	}
	// This process's own open: answered at once, not asked.
	if b, err := os.ReadFile(path("deny.txt")); err != nil || string(b) != "deny.txt" {
		t.Fatalf("own open: %q, %v", b, err)
	}
	if n, _ := r.count("deny.txt"); n != 1 {
		t.Fatalf("own open asked about (%d)", n)
	}

	// A decision that waits holds no other one up.
	slow := make(chan error, 1)
	go func() { _, err := childOpen(path("slow.txt")); slow <- err }()
	if err := waitFor(func() bool { n, _ := r.count("slow.txt"); return n == 1 }); err != nil {
		t.Fatal("the slow open was not asked about")
	}
	release := sync.OnceFunc(func() { close(r.release) })
	t.Cleanup(release)
	start := time.Now()
	fast := make(chan error, 1)
	go func() { _, err := childOpen(path("fast.txt")); fast <- err }()
	select {
	case err := <-fast:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("an open waits for the decision about another one")
	}
	select {
	case err := <-slow:
		t.Fatalf("the slow open returned before its decision: %v", err)
	default:
	}
	t.Logf("an open decided while another waited: %v", time.Since(start))
	release()
	if err := <-slow; err != nil {
		t.Fatal(err)
	}

	// An allow kept in the kernel until the file changes.
	for range 3 {
		if _, err := childOpen(path("keep.txt")); err != nil {
			t.Fatal(err)
		}
	}
	if n, _ := r.count("keep.txt"); n != 1 {
		t.Fatalf("a kept allow: asked %d times, want once", n)
	}
	if err := os.WriteFile(path("keep.txt"), []byte("changed"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := childOpen(path("keep.txt")); err != nil {
		t.Fatal(err)
	}
	if n, _ := r.count("keep.txt"); n != 2 {
		t.Fatalf("after the change: asked %d times, want twice", n)
	}
	// Changed during the decision: not kept (the mark would outlive the
	// change), asked again.
	for range 2 {
		if _, err := childOpen(path("race.txt")); err != nil {
			t.Fatal(err)
		}
	}
	if n, _ := r.count("race.txt"); n != 2 {
		t.Fatalf("a file changed during its decision: asked %d times, want twice", n)
	}
	r.mu.Lock()
	kept := slices.Clone(r.kept)
	r.mu.Unlock()
	if want := []bool{true, true, false, true}; !slices.Equal(kept, want) {
		t.Fatalf("kept %v, want %v (keep, keep after its change, race during the decision, race after)", kept, want)
	}

	// Back to exec permission only.
	if err := g.SetOpen(false); err != nil {
		t.Fatal(err)
	}
	if m := sbMask(t, g); m != fmt.Sprintf("%x", unix.FAN_OPEN_EXEC_PERM) {
		t.Fatalf("mark events %s after SetOpen(false)", m)
	}
	if _, err := childOpen(path("deny.txt")); err != nil {
		t.Fatalf("open after SetOpen(false): %v", err)
	}
	if n, _ := r.count("deny.txt"); n != 1 {
		t.Fatalf("asked about an open after SetOpen(false)")
	}
}

func waitFor(f func() bool) error {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if f() {
			return nil
		}
	}
	return errors.New("timed out")
}
