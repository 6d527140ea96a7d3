package policy

import (
	"fmt"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
)

// FromEvent converts a recorded event (vigil.v1.Event) into the Input the
// kernel decided, for the kinds policy decides: exec, image_load,
// mem_exec, inject, kernel and file_modify. What the event does not carry
// stays unknown:
//
//   - exec: the caller's executable is the event's caller_exe (empty when
//     the agent did not know it); uid, cgroup and ancestry are the event's
//     (exec changes none of them).
//   - every kind: the executable's dev and inode are 0.
func FromEvent(ev *vigilv1.Event) (Input, error) {
	p := ev.GetProcess()
	in := Input{
		Kind: Kind(ev.GetKind()),
		Process: Process{
			Pid:         p.GetPid(),
			StartTimeNs: p.GetStartTimeNs(),
			UID:         p.GetUid(),
			Exe:         File{Path: p.GetExe()},
			CgroupID:    p.GetCgroupId(),
		},
	}
	for _, a := range p.GetAncestry() {
		in.Process.Ancestry = append(in.Process.Ancestry, Ancestor{Pid: a.GetPid(), StartTimeNs: a.GetStartTimeNs(), Exe: a.GetExe()})
	}
	file := func(f *vigilv1.File) File { return File{Path: f.GetPath(), Dev: f.GetDev(), Inode: f.GetInode()} }
	var detail Kind
	switch d := ev.GetDetail().(type) {
	case *vigilv1.Event_Exec:
		detail = KindExec
		in.Process.Exe = File{Path: d.Exec.GetCallerExe()}
		in.File = file(d.Exec.GetFile())
	case *vigilv1.Event_ImageLoad:
		detail = KindImageLoad
		in.File = file(d.ImageLoad.GetFile())
	case *vigilv1.Event_MemExec:
		detail = KindMemExec
		in.File = file(d.MemExec.GetFile())
		in.Prot = Prot(d.MemExec.GetProt())
		in.PrevProt = Prot(d.MemExec.GetPrevProt())
		in.Anonymous = d.MemExec.GetAnonymous()
	case *vigilv1.Event_Inject:
		detail = KindInject
		in.Op = d.Inject.GetMethod()
		in.Target = Target{Pid: d.Inject.GetTargetPid(), StartTimeNs: d.Inject.GetTargetStartTimeNs(), Exe: d.Inject.GetTargetExe()}
	case *vigilv1.Event_Kernel:
		detail = KindKernel
		in.Op = d.Kernel.GetOp()
		in.File = file(d.Kernel.GetFile())
	case *vigilv1.Event_FileModify:
		detail = KindFileModify
		in.Op = d.FileModify.GetOp()
		in.File = file(d.FileModify.GetFile())
		in.NewPath = d.FileModify.GetNewPath()
	default:
		return Input{}, fmt.Errorf("%s events are not decided by policy", kindName(ev.GetKind()))
	}
	if in.Kind != detail {
		return Input{}, fmt.Errorf("event kind %q does not match its %s detail", ev.GetKind(), detail)
	}
	return in, nil
}

func kindName(k string) string {
	if k == "" {
		return "untyped"
	}
	return k
}
