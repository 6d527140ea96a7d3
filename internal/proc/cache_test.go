package proc

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
)

func writeProc(t *testing.T, root string, pid, ppid, start int, comm, exe string) {
	t.Helper()
	dir := filepath.Join(root, itoa(pid))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	stat := itoa(pid) + " (" + comm + ") S " + itoa(ppid) + " 0 0 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 " + itoa(start) + " 0 0\n"
	if err := os.WriteFile(filepath.Join(dir, "stat"), []byte(stat), 0o644); err != nil {
		t.Fatal(err)
	}
	if exe != "" {
		if err := os.Symlink(exe, filepath.Join(dir, "exe")); err != nil {
			t.Fatal(err)
		}
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestSeedAndEnrich(t *testing.T) {
	root := t.TempDir()
	writeProc(t, root, 1, 0, 5, "init", "/sbin/init")
	writeProc(t, root, 20, 1, 7, "sshd) S 9 (", "/usr/sbin/sshd") // comm with ") "
	writeProc(t, root, 30, 20, 9, "bash", "/bin/bash")
	c := NewCache()
	if err := c.Seed(root); err != nil {
		t.Fatal(err)
	}
	if p, ok := c.Lookup(20); !ok || p.PPID != 1 || p.Exe != "/usr/sbin/sshd" || p.StartTime != 7*1e9/clockTicks {
		t.Fatalf("pid 20: %+v %v", p, ok)
	}

	c.Fork(30, 31, 100)
	ev := &vigilv1.Process{Pid: 31, Ppid: 30}
	c.Enrich(ev)
	if ev.Exe != "/bin/bash" {
		t.Errorf("forked child exe %q, want its parent's", ev.Exe)
	}
	want := []uint32{30, 20, 1}
	if len(ev.Ancestry) != len(want) {
		t.Fatalf("ancestry %v, want pids %v", ev.Ancestry, want)
	}
	for i, a := range ev.Ancestry {
		if a.Pid != want[i] {
			t.Errorf("ancestry[%d] = %d, want %d", i, a.Pid, want[i])
		}
	}
	if ev.Ancestry[1].Exe != "/usr/sbin/sshd" {
		t.Errorf("ancestry[1] exe %q", ev.Ancestry[1].Exe)
	}

	c.Exec(31, 30, 100, "/usr/bin/id")
	ev = &vigilv1.Process{Pid: 31, Ppid: 30}
	c.Enrich(ev)
	if ev.Exe != "/usr/bin/id" {
		t.Errorf("after exec: exe %q", ev.Exe)
	}
}

func TestEnrichStopsAtLoopsAndUnknown(t *testing.T) {
	c := NewCache()
	c.Exec(5, 6, 0, "/a")
	c.Exec(6, 5, 0, "/b") // a cycle can only come from pid reuse; must not hang
	ev := &vigilv1.Process{Pid: 5, Ppid: 6}
	c.Enrich(ev)
	if len(ev.Ancestry) != 1 || ev.Ancestry[0].Pid != 6 {
		t.Errorf("cycle: ancestry %v", ev.Ancestry)
	}
	ev = &vigilv1.Process{Pid: 7, Ppid: 8}
	c.Enrich(ev)
	if len(ev.Ancestry) != 1 || ev.Ancestry[0].Pid != 8 || ev.Ancestry[0].Exe != "" {
		t.Errorf("unknown parent: ancestry %v", ev.Ancestry)
	}
}

func TestExitForgetsAfterLinger(t *testing.T) {
	c := NewCache()
	now := time.Unix(1000, 0)
	c.now = func() time.Time { return now }
	c.Exec(5, 1, 0, "/a")
	c.Exit(5)
	if _, ok := c.Lookup(5); !ok {
		t.Fatal("exited process forgotten at once; late events could not resolve it")
	}
	now = now.Add(exitLinger + time.Second)
	c.Exit(6) // any exit sweeps
	if _, ok := c.Lookup(5); ok {
		t.Fatal("exited process still cached after the linger time")
	}
}
