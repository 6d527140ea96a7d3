package bpfsensor

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/probe"
	"github.com/vigil-hips/vigil/internal/sensor"
	"github.com/vigil-hips/vigil/internal/testworkload"
)

func TestMain(m *testing.M) {
	testworkload.Main()
	os.Exit(m.Run())
}

func startSensor(t *testing.T, cfg Config) *Sensor {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("loading BPF needs root")
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := s.Start(ctx); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); s.Close() })
	return s.(*Sensor)
}

// copyFile copies src to dst; the copy is a file of its own inode.
func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

func statID(t *testing.T, path string) (dev, ino uint64) {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Dev, st.Ino
}

// expectation is one event a test waits for.
type expectation struct {
	name  string
	match func(*vigilv1.Event) bool
	check func(*vigilv1.Event) error
	seen  *vigilv1.Event
}

// await reads events until every expectation matched or the deadline.
func await(t *testing.T, events <-chan *vigilv1.Event, exps []*expectation) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	left := len(exps)
	for left > 0 {
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatal("event stream closed")
			}
			for _, e := range exps {
				if e.seen == nil && e.match(ev) {
					e.seen = ev
					left--
				}
			}
		case <-deadline:
			for _, e := range exps {
				if e.seen == nil {
					t.Errorf("no %s event", e.name)
				}
			}
			t.FailNow()
		}
	}
	for _, e := range exps {
		if e.check == nil {
			continue
		}
		if err := e.check(e.seen); err != nil {
			t.Errorf("%s: %v\nevent: %v", e.name, err, e.seen)
		}
	}
}

func TestSensorSeesWorkload(t *testing.T) {
	s := startSensor(t, Config{})
	want := sensor.BackendTracepoint
	if probe.BPFLSM() == nil {
		want = sensor.BackendLSM
	}
	if s.Info().Backend != want {
		t.Fatalf("backend %s, want %s", s.Info().Backend, want)
	}

	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	exe, _ = filepath.EvalSymlinks(exe)
	lib := filepath.Join(t.TempDir(), "libvigiltest.so")
	copyFile(t, exe, lib)
	lib, _ = filepath.EvalSymlinks(lib)
	exeDev, exeIno := statID(t, exe)
	libDev, libIno := statID(t, lib)

	r, err := testworkload.Run(lib)
	if err != nil {
		t.Fatal(err)
	}
	me := uint32(os.Getpid())
	pid := uint32(r.PID)
	target := uint32(r.TargetPID)

	exps := []*expectation{
		{
			name:  "exec",
			match: func(e *vigilv1.Event) bool { return e.Kind == "exec" && e.Process.Pid == uint32(r.ExecPID) },
			check: func(e *vigilv1.Event) error {
				f := e.GetExec().GetFile()
				if f.GetPath() != exe || f.GetInode() != exeIno || f.GetDev() != exeDev {
					return fmt.Errorf("file %v, want %s dev %d inode %d", f, exe, exeDev, exeIno)
				}
				if e.Process.Ppid != pid || e.Process.Exe != exe {
					return fmt.Errorf("process %v: want ppid %d exe %s", e.Process, pid, exe)
				}
				a := e.Process.Ancestry
				if len(a) < 2 || a[0].Pid != pid || a[0].Exe != exe || a[1].Pid != me {
					return fmt.Errorf("ancestry %v: want %d (%s), then %d", a, pid, exe, me)
				}
				if len(e.GetExec().Argv) == 0 || e.GetExec().Cwd == "" {
					return fmt.Errorf("argv %q cwd %q", e.GetExec().Argv, e.GetExec().Cwd)
				}
				return nil
			},
		},
		{
			name: "fork",
			match: func(e *vigilv1.Event) bool {
				return e.Kind == "fork" && e.GetFork().ChildPid == uint32(r.ExecPID)
			},
			check: func(e *vigilv1.Event) error {
				if e.Process.Pid != pid {
					return fmt.Errorf("forked by %d, want %d", e.Process.Pid, pid)
				}
				return nil
			},
		},
		{
			name:  "exit",
			match: func(e *vigilv1.Event) bool { return e.Kind == "exit" && e.Process.Pid == uint32(r.ExecPID) },
			check: func(e *vigilv1.Event) error {
				if x := e.GetExit(); x.Code != 0 || x.Signal != 0 {
					return fmt.Errorf("exit %v, want code 0", x)
				}
				return nil
			},
		},
		{
			name: "image_load",
			match: func(e *vigilv1.Event) bool {
				return e.Kind == "image_load" && e.Process.Pid == pid && e.GetImageLoad().GetFile().GetPath() == lib
			},
			check: func(e *vigilv1.Event) error {
				f := e.GetImageLoad().File
				if f.Inode != libIno || f.Dev != libDev {
					return fmt.Errorf("file %v, want dev %d inode %d", f, libDev, libIno)
				}
				if len(e.Process.Ancestry) == 0 || e.Process.Ancestry[0].Pid != me {
					return fmt.Errorf("ancestry %v, want parent %d", e.Process.Ancestry, me)
				}
				return nil
			},
		},
		{
			name: "mem_exec",
			match: func(e *vigilv1.Event) bool {
				m := e.GetMemExec()
				return m != nil && e.Process.Pid == pid && m.Syscall == "mprotect" &&
					r.MprotectAddr >= m.Addr && r.MprotectAddr < m.Addr+m.Len
			},
			check: func(e *vigilv1.Event) error {
				if m := e.GetMemExec(); !m.Anonymous || m.Prot&0x4 == 0 {
					return fmt.Errorf("mem_exec %v: want anonymous, PROT_EXEC", m)
				}
				return nil
			},
		},
		{
			name: "ptrace_attach",
			match: func(e *vigilv1.Event) bool {
				return e.GetInject().GetMethod() == "ptrace_attach" && e.Process.Pid == pid
			},
			check: func(e *vigilv1.Event) error {
				if e.GetInject().TargetPid != target {
					return fmt.Errorf("target %d, want %d", e.GetInject().TargetPid, target)
				}
				return nil
			},
		},
		{
			name: "proc_mem_write",
			match: func(e *vigilv1.Event) bool {
				return e.GetInject().GetMethod() == "proc_mem_write" && e.Process.Pid == pid
			},
			check: func(e *vigilv1.Event) error {
				in := e.GetInject()
				if in.TargetPid != target || e.GetInject().TargetPid == 0 {
					return fmt.Errorf("target %d, want %d", in.TargetPid, target)
				}
				return nil
			},
		},
		{
			name: "process_vm_writev",
			match: func(e *vigilv1.Event) bool {
				return e.GetInject().GetMethod() == "process_vm_writev" && e.Process.Pid == pid
			},
			check: func(e *vigilv1.Event) error {
				if e.GetInject().TargetPid != target {
					return fmt.Errorf("target %d, want %d", e.GetInject().TargetPid, target)
				}
				return nil
			},
		},
	}
	await(t, s.Events(), exps)
}

// TestSensorReportsLoss overflows a one-page ring buffer and expects the
// loss to be counted and a gap record in the stream.
func TestSensorReportsLoss(t *testing.T) {
	s := startSensor(t, Config{RingBufBytes: os.Getpagesize()})
	if err := testworkload.Burst(20000); err != nil {
		t.Fatal(err)
	}
	var gap *vigilv1.Event
	var lastSeq uint64
	holes := 0
	// Read until the stream is quiet: the hole can show before or after the
	// gap record, which is emitted as soon as the loss counter moves.
	deadline := time.After(15 * time.Second)
	quiet := time.NewTimer(time.Second)
	for done := false; !done; {
		select {
		case ev := <-s.Events():
			quiet.Reset(time.Second)
			if ev.Kind == "gap" {
				if gap == nil {
					gap = ev
				}
				continue
			}
			if lastSeq != 0 && ev.Seq > lastSeq+1 {
				holes++
			}
			lastSeq = ev.Seq
		case <-quiet.C:
			done = true
		case <-deadline:
			done = true
		}
	}
	if gap == nil {
		t.Fatalf("no gap record; stats %+v", s.Stats())
	}
	g := gap.GetGap()
	if g.Lost == 0 || g.LostTotal < g.Lost {
		t.Fatalf("gap %v: want lost > 0", g)
	}
	if st := s.Stats(); st.Lost < g.Lost {
		t.Fatalf("stats lost %d < gap's %d", st.Lost, g.Lost)
	}
	if holes == 0 {
		t.Fatalf("no hole in the sequence numbers")
	}
	t.Logf("gap %v, %d sequence holes", g, holes)
}
