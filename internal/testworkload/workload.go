// Package testworkload performs, in a process of its own, each action the
// sensors watch, and reports what it did so a test can find the events.
// A test binary calls Main from TestMain; Run re-executes the test binary
// in workload mode. It needs no other binary, so it runs the same on the
// host and in the VM.
package testworkload

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

const envMode = "VIGIL_TESTWORKLOAD"

// Report is what the workload did.
type Report struct {
	PID          int    `json:"pid"`
	Exe          string `json:"exe"`
	ExecPID      int    `json:"exec_pid"`       // child that exec'd Exe in "noop" mode
	MappedFile   string `json:"mapped_file"`    // file mapped PROT_EXEC
	MprotectAddr uint64 `json:"mprotect_addr"`  // anonymous page made executable
	TargetPID    int    `json:"target_pid"`     // child traced and written
	ProcMemPath  string `json:"proc_mem_path"`  // /proc/TARGET/mem opened for write
	VMWritevDone bool   `json:"vm_writev_done"` // process_vm_writev succeeded
}

// Main runs the workload when the process was started by Run, and exits.
// Otherwise it returns at once. Call it first in TestMain.
func Main() {
	switch os.Getenv(envMode) {
	case "":
		return
	case "noop":
		os.Exit(0)
	case "sleep":
		// Until killed: the test that started it ends it. The bound only
		// keeps a leaked sleeper from living forever.
		time.Sleep(15 * time.Minute)
		os.Exit(0)
	case "all":
		r, err := all(os.Getenv("VIGIL_TESTWORKLOAD_MAP"))
		if err != nil {
			fmt.Fprintln(os.Stderr, "workload:", err)
			os.Exit(1)
		}
		json.NewEncoder(os.Stdout).Encode(r)
		os.Exit(0)
	case "kernel":
		r, err := kernelOps(os.Getenv("VIGIL_TESTWORKLOAD_MODULE"))
		if err != nil {
			fmt.Fprintln(os.Stderr, "workload:", err)
			os.Exit(1)
		}
		json.NewEncoder(os.Stdout).Encode(r)
		os.Exit(0)
	case "hardening":
		json.NewEncoder(os.Stdout).Encode(hardening())
		os.Exit(0)
	case "exec":
		execShell(os.Getenv("VIGIL_TW_EXEC"))
		os.Exit(0)
	case "memfd-exec":
		memfdExec(os.Getenv("VIGIL_TW_SRC"))
	case "burst":
		n, _ := strconv.Atoi(os.Getenv("VIGIL_TESTWORKLOAD_N"))
		burst(n)
		os.Exit(0)
	}
	fmt.Fprintln(os.Stderr, "workload: unknown mode", os.Getenv(envMode))
	os.Exit(2)
}

// Run runs the whole workload in a new process; mapFile is the file it
// maps executable.
func Run(mapFile string) (*Report, error) {
	return runJSON[Report]("all", "VIGIL_TESTWORKLOAD_MAP="+mapFile)
}

// RunAndExpect prepares the workload's files in dir, runs it, and returns
// what it did with the events it must have caused.
func RunAndExpect(dir string) (*Report, []*Expectation, error) {
	exe, lib, err := Prepare(dir)
	if err != nil {
		return nil, nil, err
	}
	r, err := Run(lib)
	if err != nil {
		return nil, nil, err
	}
	return r, r.Expect(exe, lib), nil
}

// runJSON runs the workload binary in mode with env added and decodes the
// JSON report it prints.
func runJSON[T any](mode string, env ...string) (*T, error) {
	cmd := exec.Command(self())
	cmd.Env = append(append(os.Environ(), envMode+"="+mode), env...)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s workload: %w", mode, err)
	}
	var r T
	if err := json.Unmarshal(out, &r); err != nil {
		return nil, fmt.Errorf("%s workload output %q: %w", mode, out, err)
	}
	return &r, nil
}

// KernelReport is what the kernel workload did.
type KernelReport struct {
	PID          int    `json:"pid"`
	BPFProgName  string `json:"bpf_prog_name"` // a socket filter loaded by that name
	KcoreOpened  bool   `json:"kcore_opened"`
	ModuleFile   string `json:"module_file"` // passed to finit_module
	ModuleLoaded bool   `json:"module_loaded"`
}

// RunKernel loads a BPF program, opens /proc/kcore and, when module is
// not empty, calls finit_module on it, in a new process.
func RunKernel(module string) (*KernelReport, error) {
	return runJSON[KernelReport]("kernel", "VIGIL_TESTWORKLOAD_MODULE="+module)
}

func kernelOps(module string) (*KernelReport, error) {
	r := &KernelReport{PID: os.Getpid(), BPFProgName: "vigil_wl_prog"}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         r.BPFProgName,
		Type:         ebpf.SocketFilter,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		return nil, fmt.Errorf("load bpf program: %w", err)
	}
	prog.Close()
	if f, err := os.Open("/proc/kcore"); err == nil {
		r.KcoreOpened = true
		f.Close()
	}
	if module != "" {
		r.ModuleFile = module
		f, err := os.Open(module)
		if err != nil {
			return nil, err
		}
		err = unix.FinitModule(int(f.Fd()), "", 0)
		f.Close()
		r.ModuleLoaded = err == nil || errors.Is(err, unix.EEXIST)
		if !r.ModuleLoaded {
			return nil, fmt.Errorf("finit_module %s: %w", module, err)
		}
	}
	return r, nil
}

// Burst makes n mprotect(PROT_EXEC) calls in a new process, as fast as it
// can: each is one event.
func Burst(n int) error {
	cmd := exec.Command(self())
	cmd.Env = append(os.Environ(), envMode+"=burst", "VIGIL_TESTWORKLOAD_N="+strconv.Itoa(n))
	cmd.Stderr = os.Stderr
	return cmd.Run()
}

func self() string {
	exe, err := os.Executable()
	if err != nil {
		return os.Args[0]
	}
	return exe
}

func all(mapFile string) (*Report, error) {
	r := &Report{PID: os.Getpid(), Exe: self(), MappedFile: mapFile}

	// exec
	noop := exec.Command(r.Exe)
	noop.Env = append(os.Environ(), envMode+"=noop")
	if err := noop.Run(); err != nil {
		return nil, fmt.Errorf("exec: %w", err)
	}
	r.ExecPID = noop.ProcessState.Pid()

	// image load: a file mapped executable
	f, err := os.Open(mapFile)
	if err != nil {
		return nil, err
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, 4096, unix.PROT_READ|unix.PROT_EXEC, unix.MAP_PRIVATE)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("mmap %s: %w", mapFile, err)
	}
	unix.Munmap(mem)

	// memory made executable: anonymous RW page, then RX
	page, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("mmap anon: %w", err)
	}
	page[0] = 0xc3 // ret
	if err := unix.Mprotect(page, unix.PROT_READ|unix.PROT_EXEC); err != nil {
		return nil, fmt.Errorf("mprotect: %w", err)
	}
	r.MprotectAddr = addrOf(page)
	unix.Munmap(page)

	// code injection into a child
	child := exec.Command(r.Exe)
	child.Env = append(os.Environ(), envMode+"=sleep")
	if err := child.Start(); err != nil {
		return nil, err
	}
	defer func() { child.Process.Kill(); child.Wait() }()
	r.TargetPID = child.Process.Pid
	if err := ptraceAttachDetach(r.TargetPID); err != nil {
		return nil, err
	}
	r.ProcMemPath = fmt.Sprintf("/proc/%d/mem", r.TargetPID)
	memf, err := os.OpenFile(r.ProcMemPath, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", r.ProcMemPath, err)
	}
	memf.Close()
	// process_vm_writev of one byte into the child's copy of a page that
	// exists in both (the binary is the same, not relocated: Go binaries are
	// not PIE by default).
	buf := []byte{0}
	local := []unix.Iovec{{Base: &buf[0], Len: 1}}
	remote := []unix.RemoteIovec{{Base: uintptr(addrOfByte(&scratch[0])), Len: 1}}
	if _, err := unix.ProcessVMWritev(r.TargetPID, local, remote, 0); err == nil {
		r.VMWritevDone = true
	}
	return r, nil
}

var scratch [64]byte

func ptraceAttachDetach(pid int) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := unix.PtraceAttach(pid); err != nil {
		return fmt.Errorf("ptrace attach %d: %w", pid, err)
	}
	var ws unix.WaitStatus
	if _, err := unix.Wait4(pid, &ws, 0, nil); err != nil {
		return fmt.Errorf("wait %d: %w", pid, err)
	}
	return unix.PtraceDetach(pid)
}

func burst(n int) {
	page, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		os.Exit(1)
	}
	for i := 0; i < n; i++ {
		unix.Mprotect(page, unix.PROT_READ|unix.PROT_EXEC)
		unix.Mprotect(page, unix.PROT_READ|unix.PROT_WRITE)
	}
}

func addrOf(b []byte) uint64 { return uint64(uintptr(unsafe.Pointer(&b[0]))) }

func addrOfByte(p *byte) uintptr { return uintptr(unsafe.Pointer(p)) }

func unsafePointer[T any](p *T) unsafe.Pointer { return unsafe.Pointer(p) }

// Prepare returns the resolved path of the workload binary (this test
// binary) and of a copy of it in dir, named like a shared library, for
// the workload to map executable: a file with an inode of its own.
func Prepare(dir string) (exe, lib string, err error) {
	exe, err = filepath.EvalSymlinks(self())
	if err != nil {
		return "", "", err
	}
	lib = filepath.Join(dir, "libvigiltest.so")
	in, err := os.Open(exe)
	if err != nil {
		return "", "", err
	}
	defer in.Close()
	out, err := os.Create(lib)
	if err != nil {
		return "", "", err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return "", "", err
	}
	if err := out.Close(); err != nil {
		return "", "", err
	}
	lib, err = filepath.EvalSymlinks(lib)
	return exe, lib, err
}

// Noop executes prog, a copy of the workload binary, in "noop" mode: it
// exits 0 at once. The error is the exec's own (e.g. EPERM) when the exec
// fails.
func Noop(prog string) error {
	cmd := exec.Command(prog)
	cmd.Env = append(os.Environ(), envMode+"=noop")
	err := cmd.Run()
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// StartSleeper starts a copy of the workload that sleeps: a process laid
// out like the workload (same binary), for injection tests.
func StartSleeper() (*exec.Cmd, error) {
	cmd := exec.Command(self())
	cmd.Env = append(os.Environ(), envMode+"=sleep")
	return cmd, cmd.Start()
}
