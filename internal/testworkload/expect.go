package testworkload

import (
	"fmt"
	"os"
	"syscall"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
)

// Expectation is one event the workload must have produced: match picks
// it out of the stream, check then verifies its fields.
type Expectation struct {
	Name  string
	match func(*vigilv1.Event) bool
	check func(*vigilv1.Event) error
	Seen  *vigilv1.Event
}

// Match offers ev to every expectation not yet seen.
func Match(exps []*Expectation, ev *vigilv1.Event) {
	for _, e := range exps {
		if e.Seen == nil && e.match(ev) {
			e.Seen = ev
		}
	}
}

// AllSeen reports whether every expectation matched an event.
func AllSeen(exps []*Expectation) bool { return len(Missing(exps)) == 0 }

// Missing names the expectations no event matched.
func Missing(exps []*Expectation) []string {
	var out []string
	for _, e := range exps {
		if e.Seen == nil {
			out = append(out, e.Name)
		}
	}
	return out
}

// Check verifies the fields of every matched event.
func Check(exps []*Expectation) []error {
	var errs []error
	for _, e := range exps {
		if e.Seen == nil {
			errs = append(errs, fmt.Errorf("no %s event", e.Name))
			continue
		}
		if err := e.check(e.Seen); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w\nevent: %v", e.Name, err, e.Seen))
		}
	}
	return errs
}

func fileID(path string) (dev, ino uint64) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, 0
	}
	return st.Dev, st.Ino
}

// Expect returns what the workload must have produced. exe is the
// resolved path of the workload binary, lib the resolved path of the file
// it mapped executable; the caller (the test process) is the workload's
// parent.
func (r *Report) Expect(exe, lib string) []*Expectation {
	me := uint32(os.Getpid())
	pid := uint32(r.PID)
	target := uint32(r.TargetPID)
	exeDev, exeIno := fileID(exe)
	libDev, libIno := fileID(lib)
	fromWorkload := func(e *vigilv1.Event) bool { return e.GetProcess().GetPid() == pid }
	targetIs := func(e *vigilv1.Event) error {
		in := e.GetInject()
		if in.GetTargetPid() != target || in.GetTargetExe() != exe {
			return fmt.Errorf("target %d (%s), want %d (%s)", in.GetTargetPid(), in.GetTargetExe(), target, exe)
		}
		return nil
	}
	return []*Expectation{
		{
			Name: "exec",
			match: func(e *vigilv1.Event) bool {
				return e.Kind == "exec" && e.GetProcess().GetPid() == uint32(r.ExecPID)
			},
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
			Name: "fork",
			match: func(e *vigilv1.Event) bool {
				return e.Kind == "fork" && e.GetFork().GetChildPid() == uint32(r.ExecPID)
			},
			check: func(e *vigilv1.Event) error {
				if e.Process.Pid != pid {
					return fmt.Errorf("forked by %d, want %d", e.Process.Pid, pid)
				}
				return nil
			},
		},
		{
			Name: "exit",
			match: func(e *vigilv1.Event) bool {
				return e.Kind == "exit" && e.GetProcess().GetPid() == uint32(r.ExecPID)
			},
			check: func(e *vigilv1.Event) error {
				if x := e.GetExit(); x.Code != 0 || x.Signal != 0 {
					return fmt.Errorf("exit %v, want code 0", x)
				}
				return nil
			},
		},
		{
			Name: "image_load",
			match: func(e *vigilv1.Event) bool {
				return e.Kind == "image_load" && fromWorkload(e) && e.GetImageLoad().GetFile().GetPath() == lib
			},
			check: func(e *vigilv1.Event) error {
				f := e.GetImageLoad().File
				if f.Inode != libIno || f.Dev != libDev {
					return fmt.Errorf("file %v, want dev %d inode %d", f, libDev, libIno)
				}
				if e.Process.Exe != exe || len(e.Process.Ancestry) == 0 || e.Process.Ancestry[0].Pid != me {
					return fmt.Errorf("process %v, want exe %s, parent %d", e.Process, exe, me)
				}
				return nil
			},
		},
		{
			Name: "mem_exec",
			match: func(e *vigilv1.Event) bool {
				m := e.GetMemExec()
				return m != nil && fromWorkload(e) && m.Syscall == "mprotect" &&
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
			Name: "ptrace_attach",
			match: func(e *vigilv1.Event) bool {
				return e.GetInject().GetMethod() == "ptrace_attach" && fromWorkload(e)
			},
			check: targetIs,
		},
		{
			Name: "proc_mem_write",
			match: func(e *vigilv1.Event) bool {
				return e.GetInject().GetMethod() == "proc_mem_write" && fromWorkload(e)
			},
			check: targetIs,
		},
		{
			Name: "process_vm_writev",
			match: func(e *vigilv1.Event) bool {
				return e.GetInject().GetMethod() == "process_vm_writev" && fromWorkload(e)
			},
			check: targetIs,
		},
	}
}
