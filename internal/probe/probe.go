// Package probe finds out what the running kernel offers Vigil and which
// guarantee each kind of control can give here. Every capability is
// tested by doing it (loading and attaching a trivial program, opening a
// fanotify group), not inferred from the version, because kernels that
// list an LSM may still refuse its programs.
package probe

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/kernel"
)

// Feature names.
const (
	FeatureBPFLSM        = "bpf_lsm"
	FeatureBTF           = "btf"
	FeatureTPBTF         = "tp_btf"
	FeatureRingBuf       = "ringbuf"
	FeatureBPFLoop       = "bpf_loop"
	FeatureSyscallTP     = "syscall_tracepoints"
	FeatureSendSignal    = "bpf_send_signal"
	FeatureFanotifyPerm  = "fanotify_permission_events"
	FeatureLockdown      = "lockdown"
	FeatureKernelModules = "kernel_modules"
)

// Guarantee levels.
const (
	SyncBlock     = "synchronous block"
	KillAfterExec = "kill after the fact"
	ObserveOnly   = "observe only"
	NotProvided   = "not provided"
)

// ControlTamper is the control of the tamper protection guarantee.
const ControlTamper = "tamper protection of the agent"

// Report is what the kernel offers.
type Report struct {
	KernelRelease string
	BPFLSM        bool
	Features      []*vigilv1.Feature
	Guarantees    []*vigilv1.Guarantee
}

// Has reports whether the named feature is available.
func (r Report) Has(name string) bool {
	for _, f := range r.Features {
		if f.Name == name {
			return f.Available
		}
	}
	return false
}

// Run probes the running kernel. It needs the privileges the agent has.
func Run() Report {
	_ = rlimit.RemoveMemlock()
	kernel.MountFilesystems()
	r := Report{KernelRelease: kernel.Release()}
	add := func(name string, err error, ok string) {
		f := &vigilv1.Feature{Name: name, Available: err == nil, Detail: ok}
		if err != nil {
			f.Detail = err.Error()
		}
		r.Features = append(r.Features, f)
	}

	lsmErr := BPFLSM()
	r.BPFLSM = lsmErr == nil
	add(FeatureBPFLSM, lsmErr, "active: "+kernel.LSMList())
	_, err := os.Stat("/sys/kernel/btf/vmlinux")
	add(FeatureBTF, err, "/sys/kernel/btf/vmlinux")
	add(FeatureTPBTF, tpBTF(), "tp_btf/sched_process_exec attaches")
	add(FeatureRingBuf, features.HaveMapType(ebpf.RingBuf), "BPF_MAP_TYPE_RINGBUF")
	add(FeatureBPFLoop, features.HaveProgramHelper(ebpf.TracePoint, asm.FnLoop), "bpf_loop helper")
	_, err = os.Stat(kernel.TraceFS + "/events/syscalls/sys_enter_mprotect")
	add(FeatureSyscallTP, err, kernel.TraceFS+"/events/syscalls")
	add(FeatureSendSignal, features.HaveProgramHelper(ebpf.TracePoint, asm.FnSendSignal), "bpf_send_signal helper")
	add(FeatureFanotifyPerm, fanotifyPerm(), "FAN_CLASS_CONTENT group")
	mode, err := lockdown()
	add(FeatureLockdown, err, mode)
	_, err = os.Stat("/proc/modules")
	if err != nil {
		err = errors.New("no /proc/modules: kernel built without module support")
	}
	add(FeatureKernelModules, err, "/proc/modules")

	r.Guarantees = guarantees(r, Running{LSM: true, Fanotify: true})
	return r
}

// Running is how an agent runs, for GuaranteesFor.
type Running struct {
	LSM      bool // its sensor is on the LSM backend
	Fanotify bool // it was given --fanotify-mark
	// TamperOff, when set, says why tamper protection is off although
	// the backend could refuse (no admin key, --protect=false).
	TamperOff string
}

// GuaranteesFor is what an agent on this kernel guarantees as it runs.
// Report's Guarantees are the kernel's best: Running{LSM: true, Fanotify:
// true}.
func (r Report) GuaranteesFor(run Running) []*vigilv1.Guarantee {
	return guarantees(r, run)
}

// BPFLSM returns nil if BPF LSM programs can be loaded and attached here.
// It attaches a program that allows everything and detaches it at once.
func BPFLSM() error {
	if !kernel.BPFLSMActive() {
		return fmt.Errorf("bpf is not among the active LSMs (%s); boot with lsm=...,bpf", kernel.LSMList())
	}
	_ = rlimit.RemoveMemlock()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:       ebpf.LSM,
		AttachType: ebpf.AttachLSMMac,
		AttachTo:   "file_open",
		License:    "GPL",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, 0),
			asm.Return(),
		},
	})
	if errors.Is(err, unix.EPERM) {
		return fmt.Errorf("bpf is listed as an active LSM (%s) but the kernel refuses LSM programs (EPERM)", kernel.LSMList())
	}
	if err != nil {
		return fmt.Errorf("bpf is an active LSM but loading an LSM program fails: %w", err)
	}
	defer prog.Close()
	l, err := link.AttachLSM(link.LSMOptions{Program: prog})
	if err != nil {
		return fmt.Errorf("bpf is an active LSM but attaching an LSM program fails: %w", err)
	}
	return l.Close()
}

func tpBTF() error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:       ebpf.Tracing,
		AttachType: ebpf.AttachTraceRawTp,
		AttachTo:   "sched_process_exec",
		License:    "GPL",
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, 0),
			asm.Return(),
		},
	})
	if err != nil {
		return fmt.Errorf("load: %w", err)
	}
	defer prog.Close()
	l, err := link.AttachTracing(link.TracingOptions{Program: prog})
	if err != nil {
		return fmt.Errorf("attach: %w", err)
	}
	return l.Close()
}

func fanotifyPerm() error {
	fd, err := unix.FanotifyInit(unix.FAN_CLASS_CONTENT|unix.FAN_CLOEXEC, unix.O_RDONLY)
	if err != nil {
		return fmt.Errorf("fanotify_init(FAN_CLASS_CONTENT): %w", err)
	}
	return unix.Close(fd)
}

// lockdown returns the active lockdown mode ("none", "integrity",
// "confidentiality").
func lockdown() (string, error) {
	b, err := os.ReadFile(kernel.SecurityFS + "/lockdown")
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", errors.New("lockdown LSM not active")
		}
		return "", err
	}
	for _, w := range strings.Fields(string(b)) {
		if strings.HasPrefix(w, "[") {
			return strings.Trim(w, "[]"), nil
		}
	}
	return "", fmt.Errorf("lockdown: unexpected %q", b)
}

// guarantees derives, from the features, what each control can do. This
// is the one place that states it; doctor prints it and the agent reports
// it.
func guarantees(r Report, run Running) []*vigilv1.Guarantee {
	lsm := r.BPFLSM && run.LSM
	fan := r.Has(FeatureFanotifyPerm) && run.Fanotify
	kill := r.Has(FeatureSendSignal) && r.Has(FeatureTPBTF)
	sysTP := r.Has(FeatureSyscallTP) && r.Has(FeatureTPBTF)
	noLSM := "BPF LSM is not available"
	if r.BPFLSM && !run.LSM {
		noLSM = "BPF LSM is not in use (the agent runs the tracepoint backend)"
	}
	var g []*vigilv1.Guarantee
	pick := func(control string, lsmWhy string, fallbacks ...*vigilv1.Guarantee) {
		if lsm {
			g = append(g, &vigilv1.Guarantee{Control: control, Level: SyncBlock, Why: lsmWhy})
			return
		}
		for _, f := range fallbacks {
			if f != nil {
				g = append(g, &vigilv1.Guarantee{Control: control, Level: f.Level, Why: f.Why})
				return
			}
		}
		g = append(g, &vigilv1.Guarantee{Control: control, Level: ObserveOnly, Why: noLSM + " and no fallback can stop it here"})
	}
	when := func(ok bool, level, why string) *vigilv1.Guarantee {
		if !ok {
			return nil
		}
		return &vigilv1.Guarantee{Level: level, Why: why}
	}
	pick("exec control", "lsm/bprm_check_security denies before the new program runs",
		when(fan, SyncBlock, noLSM+"; fanotify FAN_OPEN_EXEC_PERM denies execve on the filesystems given with --fanotify-mark (not mmap, not memfd); elsewhere the new image is killed before it runs user code"),
		when(kill, KillAfterExec, noLSM+" and no fanotify; bpf_send_signal from sched_process_exec kills the new image before it runs user code"))
	pick("execution control by content (trust: lockdown)", "lsm.s/bprm_check_security and lsm.s/mmap_file decide every exec and executable mapping by SHA-256 (hashed in the kernel by IMA on first sight, then an inode verdict cache dropped on write); lsm/file_mprotect decides from the cache",
		when(fan, SyncBlock, noLSM+"; fanotify FAN_OPEN_EXEC_PERM decides execve by content on the filesystems given with --fanotify-mark only (hashed by the agent); shared libraries, ld.so ./prog, memfd and mmap are not decided"),
		&vigilv1.Guarantee{Level: NotProvided, Why: noLSM + " and no --fanotify-mark: unknown code is neither refused nor recorded"})
	pick("policy rules on the executable's SHA-256 and signer (process.sha256, process.signer)", "every LSM hook decides on the acting process's executable digest: lsm.s/bprm_check_security hashes each new image (IMA) while such a policy is in force, a new process inherits its parent's, and the agent hashes the processes already running when the policy is applied; a signer is decided as the digests of its catalogs",
		&vigilv1.Guarantee{Level: NotProvided, Why: noLSM + ": no path here knows a process's executable digest, so a policy with process.sha256 or process.signer conditions is refused"})
	// Without LSM these are seen at syscall entry and recorded; Vigil does
	// not kill for them (the syscall would have run by then anyway).
	seen := when(sysTP, ObserveOnly, noLSM+"; seen at syscall entry and recorded, not stopped")
	pick("executable mappings (shared libraries, mprotect)", "lsm/mmap_file and lsm/file_mprotect deny the mapping", seen)
	pick("code injection (ptrace, process_vm_writev, /proc/PID/mem)", "lsm/ptrace_access_check and lsm/file_open deny", seen)
	pick("kernel tampering (bpf, modules, kexec, /dev/mem)", "lsm/bpf, lsm/kernel_read_file, lsm/kernel_load_data, lsm/file_open deny", seen)
	pick("protected files (persistence paths)", "lsm/file_open and lsm/path_* deny writes, creates, renames, unlinks, chmod, chown",
		&vigilv1.Guarantee{Level: NotProvided, Why: noLSM + "; fanotify permission events do not tell an open for write from a read, so file changes are neither blocked nor reported here"})
	// Tamper protection: refused in the kernel with BPF LSM (and an admin
	// key, without which nothing could stop the agent); otherwise
	// degraded to detection of what the sensors see aimed at the agent.
	if lsm && run.TamperOff != "" {
		g = append(g, &vigilv1.Guarantee{Control: ControlTamper, Level: ObserveOnly, Why: "tamper protection " + run.TamperOff})
	} else {
		pick(ControlTamper, "lsm/task_kill, ptrace_access_check, file_open, file_permission, path_*, sb_mount, move_mount, task_set*, bpf, bpf_map and bpf_prog refuse, to all but the agent, signals, tracing, writes to its files and cgroup and access to its BPF objects (with an admin key set: --admin-key)",
			when(sysTP, ObserveOnly, noLSM+": protection is degraded to detection; ptrace, process_vm_writev and /proc/PID/mem aimed at the agent are reported as tamper events; signals, file changes and BPF object access are neither refused nor seen"))
	}
	return g
}
