package policy

import (
	"reflect"
	"strings"
	"testing"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
)

func TestFromEvent(t *testing.T) {
	proc := &vigilv1.Process{Pid: 10, Tid: 11, Ppid: 2, Uid: 1000, Euid: 0, StartTimeNs: 100, Exe: "/usr/bin/x", CgroupId: 77,
		Ancestry: []*vigilv1.Ancestor{{Pid: 2, Exe: "/usr/bin/bash", StartTimeNs: 50}, {Pid: 1}}}
	wantProc := Process{Pid: 10, StartTimeNs: 100, UID: 1000, Exe: File{Path: "/usr/bin/x"}, CgroupID: 77,
		Ancestry: []Ancestor{{Pid: 2, Exe: "/usr/bin/bash", StartTimeNs: 50}, {Pid: 1}}}
	f := &vigilv1.File{Path: "/f", Dev: 3, Inode: 4}
	tests := []struct {
		ev   *vigilv1.Event
		want Input
	}{
		{&vigilv1.Event{Kind: "exec", Process: proc, Detail: &vigilv1.Event_Exec{Exec: &vigilv1.Exec{File: f, Filename: "f"}}},
			Input{Kind: KindExec, Process: func() Process { p := wantProc; p.Exe = File{}; return p }(), File: File{"/f", 3, 4}}},
		{&vigilv1.Event{Kind: "image_load", Process: proc, Detail: &vigilv1.Event_ImageLoad{ImageLoad: &vigilv1.ImageLoad{File: f, Prot: 5}}},
			Input{Kind: KindImageLoad, Process: wantProc, File: File{"/f", 3, 4}}},
		{&vigilv1.Event{Kind: "mem_exec", Process: proc, Detail: &vigilv1.Event_MemExec{MemExec: &vigilv1.MemExec{Syscall: "mprotect", Prot: 7, Anonymous: true}}},
			Input{Kind: KindMemExec, Process: wantProc, Prot: ProtRead | ProtWrite | ProtExec, Anonymous: true}},
		{&vigilv1.Event{Kind: "inject", Process: proc, Detail: &vigilv1.Event_Inject{Inject: &vigilv1.Inject{Method: "ptrace_attach", TargetPid: 20, TargetExe: "/usr/sbin/sshd", Request: 16}}},
			Input{Kind: KindInject, Process: wantProc, Op: "ptrace_attach", Target: Target{Pid: 20, Exe: "/usr/sbin/sshd"}}},
		{&vigilv1.Event{Kind: "kernel", Process: proc, Detail: &vigilv1.Event_Kernel{Kernel: &vigilv1.KernelOp{Op: "module_load", File: f}}},
			Input{Kind: KindKernel, Process: wantProc, Op: "module_load", File: File{"/f", 3, 4}}},
	}
	for _, tt := range tests {
		got, err := FromEvent(tt.ev)
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s:\n got %+v, %v\nwant %+v", tt.ev.GetKind(), got, err, tt.want)
		}
	}
	for _, tt := range []struct {
		ev  *vigilv1.Event
		err string
	}{
		{&vigilv1.Event{Kind: "fork", Detail: &vigilv1.Event_Fork{Fork: &vigilv1.Fork{ChildPid: 3}}}, "fork events are not decided by policy"},
		{&vigilv1.Event{Kind: "gap", Detail: &vigilv1.Event_Gap{Gap: &vigilv1.Gap{Lost: 3}}}, "gap events are not decided by policy"},
		{&vigilv1.Event{}, "untyped events are not decided by policy"},
		{&vigilv1.Event{Kind: "exec", Detail: &vigilv1.Event_Kernel{Kernel: &vigilv1.KernelOp{Op: "module_load"}}}, `event kind "exec" does not match its kernel detail`},
	} {
		if _, err := FromEvent(tt.ev); err == nil || !strings.Contains(err.Error(), tt.err) {
			t.Errorf("%v: error %v, want %q", tt.ev, err, tt.err)
		}
	}
}
