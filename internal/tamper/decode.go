package tamper

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/timestamppb"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
)

// Methods names each tamper_method as vigilv1.Tamper.method reports it.
var Methods = map[tamperobjTamperMethod]string{
	tamperobjTamperMethodTM_SIGNAL:        "signal",
	tamperobjTamperMethodTM_PTRACE:        "ptrace",
	tamperobjTamperMethodTM_PROC_MEM:      "proc_mem",
	tamperobjTamperMethodTM_PIDFD_GETFD:   "pidfd_getfd",
	tamperobjTamperMethodTM_PROCESS_VM:    "process_vm",
	tamperobjTamperMethodTM_PROC_WRITE:    "proc_write",
	tamperobjTamperMethodTM_FILE_WRITE:    "file_write",
	tamperobjTamperMethodTM_FILE_TRUNCATE: "file_truncate",
	tamperobjTamperMethodTM_FILE_UNLINK:   "file_unlink",
	tamperobjTamperMethodTM_FILE_RENAME:   "file_rename",
	tamperobjTamperMethodTM_FILE_CHMOD:    "file_chmod",
	tamperobjTamperMethodTM_FILE_CHOWN:    "file_chown",
	tamperobjTamperMethodTM_MOUNT:         "mount",
	tamperobjTamperMethodTM_CGROUP:        "cgroup",
	tamperobjTamperMethodTM_CGROUP_MOVE:   "cgroup_move",
	tamperobjTamperMethodTM_SETSCHEDULER:  "setscheduler",
	tamperobjTamperMethodTM_SETNICE:       "setnice",
	tamperobjTamperMethodTM_SETIOPRIO:     "setioprio",
	tamperobjTamperMethodTM_SETRLIMIT:     "setrlimit",
	tamperobjTamperMethodTM_BPF_GET_FD:    "bpf_get_fd_by_id",
	tamperobjTamperMethodTM_BPF_OBJ_GET:   "bpf_obj_get",
	tamperobjTamperMethodTM_BPF_MAP:       "bpf_map_fd",
	tamperobjTamperMethodTM_BPF_PROG:      "bpf_prog_fd",
	tamperobjTamperMethodTM_BPF_MAP_WRITE: "bpf_map_update",
	tamperobjTamperMethodTM_BPF_LINK:      "bpf_link_detach",
}

// hooks names each tamper_hook as Event.hook reports it.
var hooks = map[tamperobjTamperHook]string{
	tamperobjTamperHookTH_TASK_KILL:         "lsm/task_kill",
	tamperobjTamperHookTH_PTRACE_ACCESS:     "lsm/ptrace_access_check",
	tamperobjTamperHookTH_FILE_OPEN:         "lsm/file_open",
	tamperobjTamperHookTH_FILE_PERMISSION:   "lsm/file_permission",
	tamperobjTamperHookTH_PATH_TRUNCATE:     "lsm/path_truncate",
	tamperobjTamperHookTH_PATH_UNLINK:       "lsm/path_unlink",
	tamperobjTamperHookTH_PATH_RENAME:       "lsm/path_rename",
	tamperobjTamperHookTH_PATH_CHMOD:        "lsm/path_chmod",
	tamperobjTamperHookTH_PATH_CHOWN:        "lsm/path_chown",
	tamperobjTamperHookTH_SB_MOUNT:          "lsm/sb_mount",
	tamperobjTamperHookTH_MOVE_MOUNT:        "lsm/move_mount",
	tamperobjTamperHookTH_TASK_SETSCHEDULER: "lsm/task_setscheduler",
	tamperobjTamperHookTH_TASK_SETNICE:      "lsm/task_setnice",
	tamperobjTamperHookTH_TASK_SETIOPRIO:    "lsm/task_setioprio",
	tamperobjTamperHookTH_TASK_SETRLIMIT:    "lsm/task_setrlimit",
	tamperobjTamperHookTH_BPF:               "lsm/bpf",
	tamperobjTamperHookTH_BPF_MAP:           "lsm/bpf_map",
	tamperobjTamperHookTH_BPF_PROG:          "lsm/bpf_prog",
	tamperobjTamperHookTH_PATH_RMDIR:        "lsm/path_rmdir",
}

// recordSize is the size of struct tamper_event.
var recordSize = binary.Size(tamperobjTamperEvent{})

// decode turns one ring buffer record into a "tamper" event. bootToWall
// is the offset from CLOCK_BOOTTIME to wall-clock time.
func decode(raw []byte, bootToWall time.Duration) (*vigilv1.Event, error) {
	if len(raw) < recordSize {
		return nil, fmt.Errorf("tamper record: %d bytes, want %d", len(raw), recordSize)
	}
	var r tamperobjTamperEvent
	if _, err := binary.Decode(raw[:recordSize], binary.LittleEndian, &r); err != nil {
		return nil, fmt.Errorf("tamper record: %w", err)
	}
	method, ok := Methods[tamperobjTamperMethod(r.Method)]
	if !ok {
		return nil, fmt.Errorf("tamper record: unknown method %d", r.Method)
	}
	hook := hooks[tamperobjTamperHook(r.Hook)]
	name := cstr(r.Name[:])
	t := &vigilv1.Tamper{Method: method, Refused: r.Refused != 0}
	m := tamperobjTamperMethod(r.Method)
	switch m {
	case tamperobjTamperMethodTM_SIGNAL:
		t.Target = fmt.Sprintf("pid %d", r.TargetPid)
		t.Detail = fmt.Sprintf("signal %d (%s)", r.Detail, unix.SignalName(unix.Signal(r.Detail)))
	case tamperobjTamperMethodTM_PTRACE, tamperobjTamperMethodTM_PIDFD_GETFD, tamperobjTamperMethodTM_PROCESS_VM:
		t.Target = fmt.Sprintf("pid %d", r.TargetPid)
		t.Detail = fmt.Sprintf("syscall %d", r.Detail)
	case tamperobjTamperMethodTM_PROC_MEM, tamperobjTamperMethodTM_PROC_WRITE:
		if name == "" {
			name = "mem"
		}
		t.Target = fmt.Sprintf("/proc/%d/%s", r.TargetPid, name)
		if m == tamperobjTamperMethodTM_PROC_WRITE && (name == "oom_score_adj" || name == "oom_adj") {
			t.Method = "oom_score_adj"
		}
	case tamperobjTamperMethodTM_SETSCHEDULER, tamperobjTamperMethodTM_SETNICE, tamperobjTamperMethodTM_SETIOPRIO:
		t.Target = fmt.Sprintf("pid %d", r.TargetPid)
		if m != tamperobjTamperMethodTM_SETSCHEDULER {
			t.Detail = fmt.Sprintf("value %d", int32(r.Detail))
		}
	case tamperobjTamperMethodTM_SETRLIMIT:
		t.Target = fmt.Sprintf("pid %d", r.TargetPid)
		t.Detail = fmt.Sprintf("resource %d", r.Detail)
	case tamperobjTamperMethodTM_CGROUP, tamperobjTamperMethodTM_CGROUP_MOVE:
		t.Target = fmt.Sprintf("cgroup %d %s", r.TargetId, name)
		if m == tamperobjTamperMethodTM_CGROUP_MOVE {
			t.Detail = fmt.Sprintf("pid %d written", r.Detail)
		}
	case tamperobjTamperMethodTM_BPF_GET_FD, tamperobjTamperMethodTM_BPF_OBJ_GET,
		tamperobjTamperMethodTM_BPF_MAP_WRITE, tamperobjTamperMethodTM_BPF_LINK:
		t.Target = fmt.Sprintf("id %d", r.TargetId)
		t.Detail = fmt.Sprintf("bpf command %d", r.Detail)
	case tamperobjTamperMethodTM_BPF_MAP:
		t.Target = fmt.Sprintf("map id %d", r.TargetId)
	case tamperobjTamperMethodTM_BPF_PROG:
		t.Target = fmt.Sprintf("prog id %d", r.TargetId)
	default: // files
		t.Target = fmt.Sprintf("%s (dev %d:%d inode %d)", name, r.TargetDev>>20, r.TargetDev&(1<<20-1), r.TargetId)
	}
	return &vigilv1.Event{
		Time:    timestamppb.New(time.Unix(0, int64(r.Ktime)).Add(bootToWall)),
		Kind:    "tamper",
		Backend: "lsm",
		Hook:    hook,
		Process: &vigilv1.Process{
			Pid:         r.Pid,
			Tid:         r.Tid,
			Ppid:        r.Ppid,
			Uid:         r.Uid,
			StartTimeNs: r.StartTime,
			Comm:        cstr(r.Comm[:]),
			CgroupId:    r.CgroupId,
		},
		Detail: &vigilv1.Event_Tamper{Tamper: t},
	}, nil
}

func cstr(b []int8) string {
	u := make([]byte, len(b))
	for i, c := range b {
		u[i] = byte(c)
	}
	if i := bytes.IndexByte(u, 0); i >= 0 {
		u = u[:i]
	}
	return string(u)
}
