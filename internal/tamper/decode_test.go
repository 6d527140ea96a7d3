package tamper

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
	"time"
)

func record(t *testing.T, r tamperobjTamperEvent) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := binary.Write(&b, binary.LittleEndian, r); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func name(s string) (out [64]int8) {
	for i := range len(s) {
		out[i] = int8(s[i])
	}
	return out
}

func TestDecode(t *testing.T) {
	comm := [16]int8{'k', 'i', 'l', 'l'}
	for _, tc := range []struct {
		in                   tamperobjTamperEvent
		method, hook, target string
		detail               string
	}{
		{tamperobjTamperEvent{Method: uint32(tamperobjTamperMethodTM_SIGNAL), Hook: uint32(tamperobjTamperHookTH_TASK_KILL), Detail: 9, TargetPid: 42},
			"signal", "lsm/task_kill", "pid 42", "signal 9 (SIGKILL)"},
		{tamperobjTamperEvent{Method: uint32(tamperobjTamperMethodTM_PROC_WRITE), Hook: uint32(tamperobjTamperHookTH_FILE_OPEN), TargetPid: 42, Name: name("oom_score_adj")},
			"oom_score_adj", "lsm/file_open", "/proc/42/oom_score_adj", ""},
		{tamperobjTamperEvent{Method: uint32(tamperobjTamperMethodTM_FILE_UNLINK), Hook: uint32(tamperobjTamperHookTH_PATH_UNLINK), TargetDev: 8<<20 | 1, TargetId: 1234, Name: name("vigil")},
			"file_unlink", "lsm/path_unlink", "vigil (dev 8:1 inode 1234)", ""},
		{tamperobjTamperEvent{Method: uint32(tamperobjTamperMethodTM_BPF_GET_FD), Hook: uint32(tamperobjTamperHookTH_BPF), TargetId: 77, Detail: 13},
			"bpf_get_fd_by_id", "lsm/bpf", "id 77", "bpf command 13"},
		{tamperobjTamperEvent{Method: uint32(tamperobjTamperMethodTM_CGROUP_MOVE), Hook: uint32(tamperobjTamperHookTH_FILE_PERMISSION), TargetId: 1, Detail: 42, Name: name("cgroup.procs")},
			"cgroup_move", "lsm/file_permission", "cgroup 1 cgroup.procs", "pid 42 written"},
	} {
		tc.in.Pid, tc.in.Tid, tc.in.Ppid, tc.in.Comm, tc.in.Refused, tc.in.Ktime = 7, 8, 1, comm, 1, uint64(time.Second)
		ev, err := decode(record(t, tc.in), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		tm := ev.GetTamper()
		if ev.Kind != "tamper" || ev.Hook != tc.hook || tm.Method != tc.method || tm.Target != tc.target ||
			!strings.HasPrefix(tm.Detail, tc.detail) || !tm.Refused {
			t.Errorf("%s: got %v", tc.method, ev)
		}
		if p := ev.Process; p.Pid != 7 || p.Tid != 8 || p.Ppid != 1 || p.Comm != "kill" {
			t.Errorf("%s: process %v", tc.method, p)
		}
		if got := ev.Time.AsTime(); !got.Equal(time.Unix(0, 0).Add(time.Hour + time.Second)) {
			t.Errorf("%s: time %v", tc.method, got)
		}
	}
	if _, err := decode(make([]byte, 10), 0); err == nil {
		t.Error("short record decoded")
	}
	if _, err := decode(record(t, tamperobjTamperEvent{Method: 999}), 0); err == nil {
		t.Error("unknown method decoded")
	}
}

// Every method and hook the C side can emit has a name.
func TestNamesComplete(t *testing.T) {
	for m := tamperobjTamperMethodTM_SIGNAL; m <= tamperobjTamperMethodTM_BPF_LINK; m++ {
		if Methods[m] == "" {
			t.Errorf("method %d has no name", m)
		}
	}
	for h := tamperobjTamperHookTH_TASK_KILL; h <= tamperobjTamperHookTH_PATH_RMDIR; h++ {
		if hooks[h] == "" {
			t.Errorf("hook %d has no name", h)
		}
	}
}

func TestKernelDev(t *testing.T) {
	// stat(2) encodes dev_t as glibc's makedev does (new_encode_dev).
	for _, d := range []struct{ maj, min uint32 }{{8, 1}, {259, 3}, {0, 27}, {253, 300}} {
		st := uint64(d.maj)<<8 | uint64(d.min&0xff) | uint64(d.min&^0xff)<<12
		if got, want := KernelDev(st), uint64(d.maj)<<20|uint64(d.min); got != want {
			t.Errorf("%d:%d: KernelDev(%#x) = %#x, want %#x", d.maj, d.min, st, got, want)
		}
	}
}

func TestUnifiedPath(t *testing.T) {
	p, ok := unifiedPath("12:pids:/x\n0::/system.slice/vigil.service\n")
	if !ok || p != "/system.slice/vigil.service" {
		t.Fatalf("got %q %v", p, ok)
	}
	if _, ok := unifiedPath("1:name=systemd:/\n"); ok {
		t.Fatal("v1-only file gave a path")
	}
}
