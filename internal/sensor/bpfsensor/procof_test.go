package bpfsensor

import (
	"os"
	"os/exec"
	"testing"

	"github.com/vigil-hips/vigil/internal/proc"
)

// TestProcOfUncached: a process the cache has not heard of (its fork event
// not read yet) gets its parent from /proc, and with it the ancestry the
// cache knows.
func TestProcOfUncached(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep here (the VM image)")
	}
	cmd := exec.Command(sleep, "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	s := &Sensor{cache: proc.NewCache()}
	self, parent := uint32(os.Getpid()), uint32(os.Getppid())
	s.cache.Exec(self, parent, 1, "/test/self")

	p := s.procOf(int32(cmd.Process.Pid))
	if p.Ppid != self {
		t.Errorf("ppid %d, want %d (this test)", p.Ppid, self)
	}
	if p.Uid != uint32(os.Getuid()) {
		t.Errorf("uid %d, want %d", p.Uid, os.Getuid())
	}
	if len(p.Ancestry) == 0 || p.Ancestry[0].Pid != self || p.Ancestry[0].Exe != "/test/self" {
		t.Errorf("ancestry %v, want this test (/test/self) first", p.Ancestry)
	}

	// A gone process: nobody's uid, no parent.
	if uid, ppid := procStatus(-1); uid != 65534 || ppid != 0 {
		t.Errorf("procStatus(-1) = %d, %d", uid, ppid)
	}
}
