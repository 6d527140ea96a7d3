package bpfsensor

import (
	"bytes"
	"fmt"
	"path"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"google.golang.org/protobuf/types/known/timestamppb"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
)

// String slots and flags, as in sensor.h (enum str_slot, enum event_flag).
const (
	strPath  = 0
	strPath2 = 1
	strName  = 2
	strArgv  = 3

	flagAnon       = 1 << 0
	flagArgvTrunc  = 1 << 1
	flagPath0Trunc = 1 << 2
)

var hdrSize = int(unsafe.Sizeof(sensorEventHdr{}))

var kindNames = map[sensorEventKind]string{
	sensorEventKindKIND_EXEC:    "exec",
	sensorEventKindKIND_FORK:    "fork",
	sensorEventKindKIND_EXIT:    "exit",
	sensorEventKindKIND_IMAGE:   "image_load",
	sensorEventKindKIND_MEMEXEC: "mem_exec",
	sensorEventKindKIND_INJECT:  "inject",
	sensorEventKindKIND_KERNEL:  "kernel",
	sensorEventKindKIND_FILE:    "file_modify",
}

var opNames = map[sensorEventOp]string{
	sensorEventOpOP_MMAP:            "mmap",
	sensorEventOpOP_MPROTECT:        "mprotect",
	sensorEventOpOP_PTRACE_ATTACH:   "ptrace_attach",
	sensorEventOpOP_PTRACE_SEIZE:    "ptrace_seize",
	sensorEventOpOP_PTRACE_POKE:     "ptrace_poke",
	sensorEventOpOP_PTRACE_SETREGS:  "ptrace_setregs",
	sensorEventOpOP_VM_WRITEV:       "process_vm_writev",
	sensorEventOpOP_PROC_MEM:        "proc_mem_write",
	sensorEventOpOP_BPF_PROG_LOAD:   "bpf_prog_load",
	sensorEventOpOP_MODULE_LOAD:     "module_load",
	sensorEventOpOP_KEXEC_LOAD:      "kexec_load",
	sensorEventOpOP_DEV_MEM:         "dev_mem_open",
	sensorEventOpOP_KCORE:           "kcore_open",
	sensorEventOpOP_TRACEFS_WRITE:   "tracefs_write",
	sensorEventOpOP_FILE_OPEN_WRITE: "open_write",
	sensorEventOpOP_FILE_TRUNCATE:   "truncate",
	sensorEventOpOP_FILE_RENAME:     "rename",
	sensorEventOpOP_FILE_UNLINK:     "unlink",
	sensorEventOpOP_FILE_CHMOD:      "chmod",
	sensorEventOpOP_FILE_CHOWN:      "chown",
	sensorEventOpOP_FILE_LINK:       "link",
	sensorEventOpOP_FILE_CREATE:     "create",
	sensorEventOpOP_EXEC:            "exec",
	sensorEventOpOP_PTRACE_TRACEME:  "ptrace_traceme",
}

// hookNames are the hooks as users see them (status, doctor, events).
var hookNames = map[sensorEventHook]string{
	sensorEventHookHOOK_SCHED_EXEC:           "tp_btf/sched_process_exec",
	sensorEventHookHOOK_SCHED_FORK:           "tp_btf/sched_process_fork",
	sensorEventHookHOOK_SCHED_EXIT:           "tp_btf/sched_process_exit",
	sensorEventHookHOOK_LSM_MMAP_FILE:        "lsm/mmap_file",
	sensorEventHookHOOK_LSM_FILE_MPROTECT:    "lsm/file_mprotect",
	sensorEventHookHOOK_LSM_FILE_OPEN:        "lsm/file_open",
	sensorEventHookHOOK_TP_MMAP:              "tracepoint/syscalls/sys_enter_mmap",
	sensorEventHookHOOK_TP_MPROTECT:          "tracepoint/syscalls/sys_enter_mprotect",
	sensorEventHookHOOK_TP_OPENAT:            "tracepoint/syscalls/sys_exit_openat",
	sensorEventHookHOOK_TP_OPENAT2:           "tracepoint/syscalls/sys_exit_openat2",
	sensorEventHookHOOK_TP_OPEN:              "tracepoint/syscalls/sys_exit_open",
	sensorEventHookHOOK_TP_PTRACE:            "tracepoint/syscalls/sys_enter_ptrace",
	sensorEventHookHOOK_TP_VM_WRITEV:         "tracepoint/syscalls/sys_enter_process_vm_writev",
	sensorEventHookHOOK_TP_BPF:               "tracepoint/syscalls/sys_enter_bpf",
	sensorEventHookHOOK_TP_INIT_MODULE:       "tracepoint/syscalls/sys_enter_init_module",
	sensorEventHookHOOK_TP_FINIT_MODULE:      "tracepoint/syscalls/sys_enter_finit_module",
	sensorEventHookHOOK_TP_KEXEC_LOAD:        "tracepoint/syscalls/sys_enter_kexec_load",
	sensorEventHookHOOK_TP_KEXEC_FILE_LOAD:   "tracepoint/syscalls/sys_enter_kexec_file_load",
	sensorEventHookHOOK_LSM_BPRM_CHECK:       "lsm/bprm_check_security",
	sensorEventHookHOOK_LSM_PTRACE_ACCESS:    "lsm/ptrace_access_check",
	sensorEventHookHOOK_LSM_PTRACE_TRACEME:   "lsm/ptrace_traceme",
	sensorEventHookHOOK_LSM_BPF:              "lsm/bpf",
	sensorEventHookHOOK_LSM_KERNEL_READ_FILE: "lsm/kernel_read_file",
	sensorEventHookHOOK_LSM_KERNEL_LOAD_DATA: "lsm/kernel_load_data",
	sensorEventHookHOOK_LSM_PATH_UNLINK:      "lsm/path_unlink",
	sensorEventHookHOOK_LSM_PATH_RMDIR:       "lsm/path_rmdir",
	sensorEventHookHOOK_LSM_PATH_MKDIR:       "lsm/path_mkdir",
	sensorEventHookHOOK_LSM_PATH_MKNOD:       "lsm/path_mknod",
	sensorEventHookHOOK_LSM_PATH_SYMLINK:     "lsm/path_symlink",
	sensorEventHookHOOK_LSM_PATH_LINK:        "lsm/path_link",
	sensorEventHookHOOK_LSM_PATH_RENAME:      "lsm/path_rename",
	sensorEventHookHOOK_LSM_PATH_CHMOD:       "lsm/path_chmod",
	sensorEventHookHOOK_LSM_PATH_CHOWN:       "lsm/path_chown",
	sensorEventHookHOOK_LSM_PATH_TRUNCATE:    "lsm/path_truncate",
	sensorEventHookHOOK_XC_BPRM_CHECK:        "lsm.s/bprm_check_security",
	sensorEventHookHOOK_XC_MMAP_FILE:         "lsm.s/mmap_file",
	sensorEventHookHOOK_XC_FILE_MPROTECT:     "lsm/file_mprotect",
}

var actionNames = map[uint8]string{
	uint8(sensorVerdictActionACT_ALLOW): "allow",
	uint8(sensorVerdictActionACT_DENY):  "deny",
	uint8(sensorVerdictActionACT_KILL):  "kill",
	uint8(sensorVerdictActionACT_ALERT): "alert",
}

// decidedBy names enum decided_by (sensor.h).
var decidedBy = map[uint8]string{1: "lsm", 2: "kill_after_exec", 3: "observe"}

// decoder turns ring buffer records into events. It is pure apart from
// the clock offset fixed at construction.
type decoder struct {
	backend string
	// bootToWall converts CLOCK_BOOTTIME ns to wall-clock time.
	bootToWall time.Duration
	// ruleOf names the rule and policy of a verdict; nil: unnamed.
	ruleOf func(version uint32, index uint16) (rule, digest string)
}

// decode parses one record. The returned event has no ancestry yet.
func (d *decoder) decode(rec []byte) (*vigilv1.Event, error) {
	if len(rec) < hdrSize {
		return nil, fmt.Errorf("record of %d bytes, header needs %d", len(rec), hdrSize)
	}
	// The generated struct has the C layout on this (little-endian) host
	// (sensor_bpfel.go): a copy is binary.Decode without its reflection.
	// TestHeaderCopyIsBinaryDecode holds the two equal.
	var h sensorEventHdr
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&h)), hdrSize), rec)
	data := rec[hdrSize:]
	if int(h.DataLen) > len(data) {
		return nil, fmt.Errorf("record says %d data bytes, has %d", h.DataLen, len(data))
	}
	data = data[:h.DataLen]
	str := func(slot int) []byte {
		off, n := int(h.StrOff[slot]), int(h.StrLen[slot])
		if n == 0 || off+n > len(data) {
			return nil
		}
		return data[off : off+n]
	}

	kind, ok := kindNames[h.Kind]
	if !ok {
		return nil, fmt.Errorf("unknown event kind %d", h.Kind)
	}
	// The parts every event has, in one allocation.
	parts := new(struct {
		ev vigilv1.Event
		p  vigilv1.Process
		t  timestamppb.Timestamp
	})
	t := time.Unix(0, int64(h.Ktime)).Add(d.bootToWall)
	parts.t.Seconds, parts.t.Nanos = t.Unix(), int32(t.Nanosecond()) // timestamppb.New
	parts.p.Pid, parts.p.Tid, parts.p.Ppid = h.Pid, h.Tid, h.Ppid
	parts.p.Uid, parts.p.Euid, parts.p.Gid = h.Uid, h.Euid, h.Gid
	parts.p.StartTimeNs, parts.p.CgroupId = h.StartTime, h.CgroupId
	parts.p.Comm = cString(h.Comm[:])
	ev := &parts.ev
	ev.Seq, ev.Time, ev.Kind, ev.Backend = h.Seq, &parts.t, kind, d.backend
	ev.Hook, ev.Process = hookNames[h.Hook], &parts.p
	file := func() *vigilv1.File {
		if h.StrLen[strPath] == 0 && h.Ino == 0 {
			return nil
		}
		return &vigilv1.File{
			Path:  joinPath(str(strPath), h.Flags&flagPath0Trunc != 0),
			Dev:   userDev(h.Dev),
			Inode: h.Ino,
		}
	}

	switch h.Kind {
	case sensorEventKindKIND_EXEC:
		argv, trunc := splitArgv(str(strArgv))
		ex := &vigilv1.Exec{
			File:          file(),
			Filename:      string(bytes.TrimRight(str(strName), "\x00")),
			Argv:          argv,
			ArgvTruncated: trunc || h.Flags&flagArgvTrunc != 0,
			Cwd:           joinPath(str(strPath2), h.Flags&(flagPath0Trunc<<strPath2) != 0),
		}
		ev.Detail = &vigilv1.Event_Exec{Exec: ex}
		if ex.File != nil {
			ev.Process.Exe = ex.File.Path
		}
	case sensorEventKindKIND_FORK:
		ev.Detail = &vigilv1.Event_Fork{Fork: &vigilv1.Fork{ChildPid: uint32(h.Arg0)}}
	case sensorEventKindKIND_EXIT:
		status := uint32(h.Arg0)
		ev.Detail = &vigilv1.Event_Exit{Exit: &vigilv1.Exit{
			Code:       int32(status>>8) & 0xff,
			Signal:     int32(status & 0x7f),
			CoreDumped: status&0x80 != 0,
		}}
	case sensorEventKindKIND_IMAGE:
		ev.Detail = &vigilv1.Event_ImageLoad{ImageLoad: &vigilv1.ImageLoad{
			File: file(), Prot: uint32(h.Arg2), Flags: uint32(h.Arg3),
		}}
	case sensorEventKindKIND_MEMEXEC:
		ev.Detail = &vigilv1.Event_MemExec{MemExec: &vigilv1.MemExec{
			Syscall:   opNames[h.Op],
			Addr:      h.Arg0,
			Len:       h.Arg1,
			Prot:      uint32(h.Arg2),
			Anonymous: h.Flags&flagAnon != 0,
			File:      file(),
			PrevProt:  uint32(h.Arg3), // mprotect: vm_flags' VM_READ|VM_WRITE|VM_EXEC are PROT_* bits
		}}
	case sensorEventKindKIND_INJECT:
		in := &vigilv1.Inject{Method: opNames[h.Op]}
		switch h.Op {
		case sensorEventOpOP_PROC_MEM:
			f := file()
			if f != nil {
				in.TargetPid = procPID(f.Path)
			}
		default:
			in.TargetPid = uint32(h.Arg0)
			in.Request = h.Arg1
		}
		ev.Detail = &vigilv1.Event_Inject{Inject: in}
	case sensorEventKindKIND_KERNEL:
		k := &vigilv1.KernelOp{Op: opNames[h.Op], File: file()}
		if h.Op == sensorEventOpOP_BPF_PROG_LOAD {
			k.BpfProgType = uint32(h.Arg0)
			k.BpfProgName = cString(str(strName))
		}
		ev.Detail = &vigilv1.Event_Kernel{Kernel: k}
	case sensorEventKindKIND_FILE:
		ev.Detail = &vigilv1.Event_FileModify{FileModify: &vigilv1.FileModify{
			Op:      opNames[h.Op],
			File:    file(),
			NewPath: joinPath(str(strPath2), h.Flags&(flagPath0Trunc<<strPath2) != 0),
		}}
	}
	if isXC(h.Hook) {
		// Execution control: the verdict is the trust decision, not a
		// policy rule's; the digest is in arg0..arg3.
		xcDecode(&h, ev)
		return ev, nil
	}
	if name, ok := actionNames[h.Action]; ok {
		v := &vigilv1.Verdict{
			Action:    name,
			Mode:      "monitor",
			DecidedBy: decidedBy[h.DecidedBy],
			Refused:   h.Denied != 0,
		}
		if h.Enforce != 0 {
			v.Mode = "enforce"
		}
		if d.ruleOf != nil {
			v.Rule, v.Policy = d.ruleOf(h.PolicyVersion, h.RuleIndex)
		}
		ev.Verdict = v
	}
	return ev, nil
}

// joinPath turns leaf-first NUL-terminated components into a path.
func joinPath(b []byte, truncated bool) string {
	if b == nil {
		return ""
	}
	b = bytes.TrimRight(b, "\x00")
	// "/" before each component, last first: NULs become slashes, so
	// the path is one byte longer than b (plus "..." when cut).
	n := len(b) + 1
	if truncated {
		n += 3
	}
	p := make([]byte, 0, n)
	if truncated {
		p = append(p, "..."...)
	}
	for end := len(b); ; {
		i := bytes.LastIndexByte(b[:end], 0)
		p = append(p, '/')
		p = append(p, b[i+1:end]...)
		if i < 0 {
			break
		}
		end = i
	}
	// p is never written again: the string may share it. Clean returns
	// its argument when it is clean already, the usual case.
	return path.Clean(unsafe.String(&p[0], len(p)))
}

// splitArgv splits the NUL-separated argument area. The last argument is
// incomplete when the area was cut (no trailing NUL).
func splitArgv(b []byte) ([]string, bool) {
	if len(b) == 0 {
		return nil, false
	}
	trunc := b[len(b)-1] != 0
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00"), trunc
}

func cString[T int8 | byte](b []T) string {
	if len(b) == 0 {
		return ""
	}
	s := unsafe.Slice((*byte)(unsafe.Pointer(&b[0])), len(b))
	if i := bytes.IndexByte(s, 0); i >= 0 {
		s = s[:i]
	}
	return string(s)
}

// userDev converts a kernel dev_t (major<<20 | minor) to the encoding
// stat(2) reports.
func userDev(k uint64) uint64 {
	major, minor := k>>20, k&0xfffff
	return (minor & 0xff) | (major&0xfff)<<8 | (minor&^0xff)<<12 | (major&^0xfff)<<32
}

// procPID extracts PID from /proc/PID/mem or /proc/PID/task/TID/mem.
func procPID(p string) uint32 {
	rest, ok := strings.CutPrefix(p, "/proc/")
	if !ok {
		return 0
	}
	id, _, _ := strings.Cut(rest, "/")
	n, err := strconv.ParseUint(id, 10, 32)
	if err != nil {
		return 0
	}
	return uint32(n)
}
