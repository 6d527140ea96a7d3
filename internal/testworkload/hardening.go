package testworkload

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// Attempt is one action the hardening policy forbids, and what became of
// it: "ok", or the error (e.g. "operation not permitted").
type Attempt struct {
	Action string `json:"action"`
	Result string `json:"result"`
	Errno  int    `json:"errno"` // 0 when ok
}

// HardeningReport is what the hardening workload tried.
type HardeningReport struct {
	PID      int       `json:"pid"`
	Attempts []Attempt `json:"attempts"`
}

// HardeningTargets are the outside things the hardening workload acts on.
type HardeningTargets struct {
	ForeignPID int    // a process that is not the workload's descendant
	Module     string // a kernel module file; "" to skip
	Preload    string // the persistence file to create (/etc/ld.so.preload)
	Server     string // a copy of the workload binary at a server's path; "" to skip
	Shell      string // the shell the server tries to run
}

// RunHardening tries each forbidden action in a new process.
func RunHardening(t HardeningTargets) (*HardeningReport, error) {
	return runJSON[HardeningReport]("hardening",
		"VIGIL_TW_FOREIGN="+strconv.Itoa(t.ForeignPID), "VIGIL_TW_MODULE="+t.Module,
		"VIGIL_TW_PRELOAD="+t.Preload, "VIGIL_TW_SERVER="+t.Server, "VIGIL_TW_SHELL="+t.Shell)
}

func attempt(r *HardeningReport, action string, err error) {
	a := Attempt{Action: action, Result: "ok"}
	if err != nil {
		a.Result = err.Error()
		var errno unix.Errno
		if errors.As(err, &errno) {
			a.Errno = int(errno)
		} else {
			a.Errno = -1
		}
	}
	r.Attempts = append(r.Attempts, a)
}

func hardening() *HardeningReport {
	r := &HardeningReport{PID: os.Getpid()}

	page, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err == nil {
		attempt(r, "wx_mprotect", unix.Mprotect(page, unix.PROT_READ|unix.PROT_EXEC))
		unix.Munmap(page)
	} else {
		attempt(r, "wx_mprotect", err)
	}

	foreign, _ := strconv.Atoi(os.Getenv("VIGIL_TW_FOREIGN"))
	attempt(r, "ptrace_attach_foreign", func() error {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := unix.PtraceAttach(foreign); err != nil {
			return err
		}
		var ws unix.WaitStatus
		unix.Wait4(foreign, &ws, 0, nil)
		return unix.PtraceDetach(foreign)
	}())
	buf := []byte{0}
	_, err = unix.ProcessVMWritev(foreign, []unix.Iovec{{Base: &buf[0], Len: 1}},
		[]unix.RemoteIovec{{Base: uintptr(addrOfByte(&scratch[0])), Len: 1}}, 0)
	attempt(r, "process_vm_writev_foreign", err)
	attempt(r, "proc_mem_write_foreign", openClose(fmt.Sprintf("/proc/%d/mem", foreign), unix.O_RDWR))

	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "vigil_tw_hard", Type: ebpf.SocketFilter, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err == nil {
		prog.Close()
	}
	attempt(r, "bpf_prog_load", unwrapErrno(err))
	if m := os.Getenv("VIGIL_TW_MODULE"); m != "" {
		f, err := os.Open(m)
		if err == nil {
			err = unix.FinitModule(int(f.Fd()), "", 0)
			f.Close()
			if errors.Is(err, unix.EEXIST) {
				err = nil
			}
		}
		attempt(r, "module_load", unwrapErrno(err))
	}
	attempt(r, "kcore_open", openClose("/proc/kcore", unix.O_RDONLY))
	attempt(r, "kprobe_register", kprobe())
	attempt(r, "dev_mem_open", openClose("/dev/mem", unix.O_RDONLY))

	if p := os.Getenv("VIGIL_TW_PRELOAD"); p != "" {
		err := openClose(p, unix.O_WRONLY|unix.O_CREAT)
		if err == nil {
			os.Remove(p)
		}
		attempt(r, "persistence_create", err)
	}
	if srv := os.Getenv("VIGIL_TW_SERVER"); srv != "" {
		cmd := exec.Command(srv)
		cmd.Env = append(os.Environ(), envMode+"=exec", "VIGIL_TW_EXEC="+os.Getenv("VIGIL_TW_SHELL"))
		out, err := cmd.CombinedOutput()
		if err != nil {
			err = fmt.Errorf("server: %w: %s", err, out)
		} else if n, perr := strconv.Atoi(string(out)); perr == nil && n != 0 {
			err = unix.Errno(n)
		}
		attempt(r, "shell_from_server", err)
	}
	return r
}

// execShell is the server's side: exec the shell and report its errno (0:
// it ran).
func execShell(shell string) {
	err := exec.Command(shell, "-c", "true").Run()
	var pe *os.PathError
	if errors.As(err, &pe) {
		var errno unix.Errno
		if errors.As(pe.Err, &errno) {
			fmt.Print(int(errno))
			return
		}
	}
	if err != nil {
		fmt.Print(-1)
		return
	}
	fmt.Print(0)
}

// kprobe registers a kprobe through tracefs and removes it again.
func kprobe() error {
	const events = "/sys/kernel/tracing/kprobe_events"
	fd, err := unix.Open(events, unix.O_WRONLY|unix.O_APPEND|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if _, err := unix.Write(fd, []byte("p:vigil_tw_probe do_sys_openat2\n")); err != nil {
		return err
	}
	_, err = unix.Write(fd, []byte("-:vigil_tw_probe\n"))
	return err
}

func openClose(path string, flags int) error {
	fd, err := unix.Open(path, flags|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return err
	}
	return unix.Close(fd)
}

func unwrapErrno(err error) error {
	var errno unix.Errno
	if errors.As(err, &errno) {
		return errno
	}
	return err
}
