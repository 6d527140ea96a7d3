package integrity

import "strings"

// vigilPrograms are the program names of Vigil's own BPF object
// (internal/sensor/bpfsensor/sensor.bpf.c). A test checks this list
// against the compiled object so the two cannot drift.
var vigilPrograms = []string{
	"lsm_bpf", "lsm_bprm_check", "lsm_file_mprotect", "lsm_file_open",
	"lsm_kernel_load_data", "lsm_kernel_read_file", "lsm_mmap_file",
	"lsm_path_chmod", "lsm_path_chown", "lsm_path_link", "lsm_path_mkdir",
	"lsm_path_mknod", "lsm_path_rename", "lsm_path_rmdir", "lsm_path_symlink",
	"lsm_path_truncate", "lsm_path_unlink", "lsm_ptrace_access_check",
	"lsm_ptrace_traceme", "sched_process_exec", "sched_process_exit",
	"sched_process_fork", "tp_sys_enter_bpf", "tp_sys_enter_finit_module",
	"tp_sys_enter_init_module", "tp_sys_enter_kexec_file_load",
	"tp_sys_enter_kexec_load", "tp_sys_enter_mmap", "tp_sys_enter_mprotect",
	"tp_sys_enter_process_vm_writev", "tp_sys_enter_ptrace",
	"tp_sys_exit_open", "tp_sys_exit_openat", "tp_sys_exit_openat2",
}

// kernelNameLen is BPF_OBJ_NAME_LEN-1: the kernel keeps 15 bytes of a
// program's name.
const kernelNameLen = 15

// KernelName is name as the kernel reports it.
func KernelName(name string) string {
	if len(name) > kernelNameLen {
		return name[:kernelNameLen]
	}
	return name
}

// VigilProgramType is the program type Vigil loads a program of its own
// under: the section prefix decides it (lsm/ → LSM, tp_btf/ → Tracing,
// tracepoint/ → TracePoint).
func VigilProgramType(name string) string {
	switch {
	case strings.HasPrefix(name, "lsm_"):
		return "LSM"
	case strings.HasPrefix(name, "tp_"):
		return "TracePoint"
	}
	return "Tracing"
}

// IsVigilProgram says whether a program (name as the kernel reports it,
// type as cilium/ebpf names it) is one of Vigil's own.
func IsVigilProgram(typ, name string) bool {
	for _, n := range vigilPrograms {
		if KernelName(n) == name && VigilProgramType(n) == typ {
			return true
		}
	}
	return false
}
