package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/testutil"
)

// protectedAgent is a `vigil agent` started in a cgroup of its own, with
// an admin key: protected unless --protect=false.
type protectedAgent struct {
	*agent
	pid    int
	dir    string
	cgroup string
}

// tamperEnv is what the agents of one test share: keys, host id, state.
type tamperEnv struct {
	t        *testing.T
	dir      string
	key, pub string
	stateDir string
	hostID   string
}

func newTamperEnv(t *testing.T) *tamperEnv {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "vigil-tamper")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	e := &tamperEnv{t: t, dir: dir, stateDir: filepath.Join(dir, "state")}
	// The VM has no machine-id: give it one for the test.
	if b, err := os.ReadFile("/etc/machine-id"); err == nil && len(bytes.TrimSpace(b)) > 0 {
		e.hostID = string(bytes.TrimSpace(b))
	} else {
		e.hostID = "5f1c0a4e2b7d4c9e8a6b3d2f1e0c9b8a"
		if err := os.WriteFile("/etc/machine-id", []byte(e.hostID+"\n"), 0o444); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove("/etc/machine-id") })
	}
	if out, err := exec.Command(vigilBin(t), "keys", "generate", "--out", filepath.Join(dir, "admin")).CombinedOutput(); err != nil {
		t.Fatalf("vigil keys generate: %v\n%s", err, out)
	}
	e.key, e.pub = filepath.Join(dir, "admin.key"), filepath.Join(dir, "admin.pub")
	return e
}

// token signs an admin token; extra are more `vigil admin sign` flags.
func (e *tamperEnv) token(action string, extra ...string) string {
	e.t.Helper()
	f, err := os.CreateTemp(e.dir, "token-"+action+"-*")
	if err != nil {
		e.t.Fatal(err)
	}
	f.Close()
	args := append([]string{"admin", "sign", "--key", e.key, "--action", action, "--out", f.Name()}, extra...)
	if out, err := exec.Command(vigilBin(e.t), args...).CombinedOutput(); err != nil {
		e.t.Fatalf("vigil %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return f.Name()
}

// start runs an agent in a new cgroup. Its cleanup stops it with a
// signed token (signals do not reach a protected agent).
func (e *tamperEnv) start(name string, extra ...string) *protectedAgent {
	t := e.t
	t.Helper()
	testutil.RequireRoot(t)
	bin := vigilBin(t)
	cg := filepath.Join("/sys/fs/cgroup", "vigil-"+name)
	if err := os.Mkdir(cg, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		t.Fatal(err)
	}
	cgfd, err := unix.Open(cg, unix.O_DIRECTORY|unix.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(cgfd)
	a := &protectedAgent{
		agent:  &agent{t: t, bin: bin, socket: filepath.Join(e.dir, "run-"+name, "vigil.sock")},
		dir:    e.dir,
		cgroup: cg,
	}
	args := append([]string{"agent", "--socket", a.socket, "--state-dir", e.stateDir,
		"--jsonl", filepath.Join(e.dir, name+".jsonl"), "--admin-key", e.pub}, extra...)
	a.cmd = exec.Command(bin, args...)
	a.cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: cgfd}
	t.Cleanup(func() { os.Remove(cg) }) // after the agent stopped
	// Signals do not reach a protected agent: it stops on a signed token.
	a.daemon = testutil.StartDaemon(t, "agent "+name, a.cmd, 30*time.Second, func() {
		a.vigil("stop", "--token", e.token("stop"))
	})
	a.log = a.daemon.Log
	a.pid = a.cmd.Process.Pid
	if out, err := a.vigil("status", "--wait", "240s"); err != nil {
		t.Fatalf("agent did not come up: %v\n%s\nagent log:\n%s", err, out, a.log)
	}
	return a
}

func (a *protectedAgent) running() bool { return a.daemon.Running() }

func (a *protectedAgent) waitExit(d time.Duration) bool { return a.daemon.WaitExit(d) }

func protection(st *vigilv1.StatusResponse) *vigilv1.Feature {
	for _, f := range st.GetFeatures() {
		if f.Name == "tamper_protection" {
			return f
		}
	}
	return nil
}

// tamperAttempt is one way to stop, blind or change the agent, and the
// method its tamper event must name.
type tamperAttempt struct {
	name   string
	method string
	try    func() error
}

func writeFile(path, s string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.WriteString(s)
	return err
}

func tamperAttempts(t *testing.T, a *protectedAgent, stateDir, policyFile, adminPub string) []tamperAttempt {
	pid := a.pid
	bin, err := filepath.EvalSymlinks(a.bin)
	if err != nil {
		t.Fatal(err)
	}
	sig := func(s syscall.Signal) func() error { return func() error { return unix.Kill(pid, s) } }
	pidfd := func() (int, error) { return unix.PidfdOpen(pid, 0) }
	mnt := filepath.Join(a.dir, "mnt-src")
	os.MkdirAll(mnt, 0o755)
	os.WriteFile(mnt+".file", []byte("x"), 0o644)

	var out []tamperAttempt
	add := func(name, method string, f func() error) { out = append(out, tamperAttempt{name, method, f}) }
	add("kill SIGKILL", "signal", sig(unix.SIGKILL))
	add("kill SIGTERM", "signal", sig(unix.SIGTERM))
	add("kill SIGSTOP", "signal", sig(unix.SIGSTOP))
	add("tgkill SIGKILL", "signal", func() error { return unix.Tgkill(pid, pid, unix.SIGKILL) })
	add("pidfd_send_signal SIGKILL", "signal", func() error {
		fd, err := pidfd()
		if err != nil {
			return fmt.Errorf("pidfd_open: %w (not the attempt)", err)
		}
		defer unix.Close(fd)
		return unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0)
	})
	add("cgroup.kill", "cgroup", func() error { return writeFile(filepath.Join(a.cgroup, "cgroup.kill"), "1") })
	add("cgroup.freeze", "cgroup", func() error { return writeFile(filepath.Join(a.cgroup, "cgroup.freeze"), "1") })
	add("move out of its cgroup", "cgroup_move", func() error {
		return writeFile("/sys/fs/cgroup/cgroup.procs", strconv.Itoa(pid))
	})
	add("oom_score_adj 1000", "oom_score_adj", func() error {
		return writeFile(fmt.Sprintf("/proc/%d/oom_score_adj", pid), "1000")
	})
	add("prlimit RLIMIT_NOFILE", "setrlimit", func() error {
		return unix.Prlimit(pid, unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: 3, Max: 3}, nil)
	})
	add("setpriority 19", "setnice", func() error { return unix.Setpriority(unix.PRIO_PROCESS, pid, 19) })
	add("sched_setscheduler SCHED_IDLE", "setscheduler", func() error {
		param := [1]int32{0}
		_, _, e := unix.Syscall(unix.SYS_SCHED_SETSCHEDULER, uintptr(pid), 5, uintptr(unsafe.Pointer(&param[0])))
		if e != 0 {
			return e
		}
		return nil
	})
	add("sched_setaffinity", "setscheduler", func() error {
		var set unix.CPUSet
		set.Set(0)
		return unix.SchedSetaffinity(pid, &set)
	})
	add("ioprio_set idle", "setioprio", func() error {
		_, _, e := unix.Syscall(unix.SYS_IOPRIO_SET, 1, uintptr(pid), 3<<13)
		if e != 0 {
			return e
		}
		return nil
	})
	add("ptrace attach", "ptrace", func() error {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		err := unix.PtraceAttach(pid)
		if err == nil {
			var ws unix.WaitStatus
			unix.Wait4(pid, &ws, unix.WALL, nil)
			unix.PtraceDetach(pid)
		}
		return err
	})
	add("ptrace seize", "ptrace", func() error {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		err := unix.PtraceSeize(pid)
		if err == nil {
			unix.PtraceDetach(pid)
		}
		return err
	})
	add("open /proc/PID/mem", "proc_mem", func() error {
		f, err := os.OpenFile(fmt.Sprintf("/proc/%d/mem", pid), os.O_RDWR, 0)
		if err == nil {
			f.Close()
		}
		return err
	})
	add("process_vm_writev", "process_vm", func() error {
		b := []byte{0}
		local := []unix.Iovec{{Base: &b[0], Len: 1}}
		remote := []unix.RemoteIovec{{Base: 0x10000, Len: 1}}
		_, err := unix.ProcessVMWritev(pid, local, remote, 0)
		return err
	})
	add("pidfd_getfd", "pidfd_getfd", func() error {
		fd, err := pidfd()
		if err != nil {
			return fmt.Errorf("pidfd_open: %w (not the attempt)", err)
		}
		defer unix.Close(fd)
		got, err := unix.PidfdGetfd(fd, 3, 0)
		if err == nil {
			unix.Close(got)
		}
		return err
	})
	add("write the event store", "file_write", func() error {
		return writeFile(filepath.Join(stateDir, "events.db"), "garbage")
	})
	add("truncate the policy in force", "file_truncate", func() error {
		return os.Truncate(filepath.Join(stateDir, "policy.yaml"), 0)
	})
	add("write the --policy file", "file_write", func() error { return writeFile(policyFile, "version: 1\n") })
	add("unlink the binary", "file_unlink", func() error { return os.Remove(bin) })
	add("unlink the event store", "file_unlink", func() error { return os.Remove(filepath.Join(stateDir, "events.db")) })
	add("rename the binary", "file_rename", func() error { return os.Rename(bin, bin+".old") })
	add("replace the admin key by rename", "file_rename", func() error {
		return os.Rename(mnt+".file", adminPub)
	})
	add("chmod the admin key", "file_chmod", func() error { return os.Chmod(adminPub, 0o666) })
	add("chown the state dir", "file_chown", func() error { return os.Chown(stateDir, 1000, 1000) })
	add("mount tmpfs over the state dir", "mount", func() error {
		err := unix.Mount("tmpfs", stateDir, "tmpfs", 0, "")
		if err == nil {
			unix.Unmount(stateDir, unix.MNT_DETACH)
		}
		return err
	})
	add("bind mount over the binary", "mount", func() error {
		err := unix.Mount(mnt+".file", bin, "", unix.MS_BIND, "")
		if err == nil {
			unix.Unmount(bin, unix.MNT_DETACH)
		}
		return err
	})
	const pin = "/sys/fs/bpf/vigil/tamper/map_tamper_config"
	add("bpf OBJ_GET of its pinned config map", "bpf_obj_get", func() error {
		m, err := ebpf.LoadPinnedMap(pin, nil)
		if err == nil {
			m.Close()
		}
		return err
	})
	add("unpin its config map", "file_unlink", func() error { return unix.Unlink(pin) })
	add("unpin a sensor link", "file_unlink", func() error {
		links, err := filepath.Glob("/sys/fs/bpf/vigil/sensor/links/*")
		if err != nil || len(links) == 0 {
			return fmt.Errorf("no sensor link pins (%v): not the attempt", err)
		}
		return unix.Unlink(links[0])
	})
	add("bpf PROG_GET_FD_BY_ID of its programs", "bpf_get_fd_by_id", func() error {
		return everyID(func(id uint32) error {
			p, err := ebpf.NewProgramFromID(ebpf.ProgramID(id))
			if err == nil {
				p.Close()
			}
			return err
		}, func(id uint32) (uint32, error) {
			n, err := ebpf.ProgramGetNextID(ebpf.ProgramID(id))
			return uint32(n), err
		})
	})
	add("bpf MAP_GET_FD_BY_ID of its maps", "bpf_get_fd_by_id", func() error {
		return everyID(func(id uint32) error {
			m, err := ebpf.NewMapFromID(ebpf.MapID(id))
			if err == nil {
				m.Close()
			}
			return err
		}, func(id uint32) (uint32, error) {
			n, err := ebpf.MapGetNextID(ebpf.MapID(id))
			return uint32(n), err
		})
	})
	add("bpf LINK_GET_FD_BY_ID of its links (to detach them)", "bpf_get_fd_by_id", func() error {
		return everyID(func(id uint32) error {
			l, err := link.NewFromID(link.ID(id))
			if err == nil {
				l.Close()
			}
			return err
		}, func(id uint32) (uint32, error) {
			var attr struct {
				start, next, flags uint32
			}
			attr.start = id
			_, _, e := unix.Syscall(unix.SYS_BPF, 31, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr)) // BPF_LINK_GET_NEXT_ID
			if e != 0 {
				return 0, e
			}
			return attr.next, nil
		})
	})
	return out
}

// everyID tries open on every object id; it fails unless each attempt
// failed (the VM runs no BPF objects but the agent's), and reports the
// first error.
func everyID(open func(uint32) error, next func(uint32) (uint32, error)) error {
	var first error
	n := 0
	for id := uint32(0); ; {
		nid, err := next(id)
		if err != nil {
			break
		}
		id = nid
		n++
		if err := open(id); err == nil {
			return fmt.Errorf("id %d opened", id)
		} else if first == nil {
			first = err
		}
	}
	if n == 0 {
		return errors.New("no ids listed")
	}
	return first
}

// TestTamperProtection: a protected agent under hardening.yaml survives
// every listed way of stopping, blinding or changing it, each refused
// with EPERM and reported as a tamper event naming this process; it still
// enforces the policy; only a valid signed token stops it (expired,
// foreign-host, replayed and unsigned requests are refused). Then, with
// --protect=false, the same kinds of attempts succeed: the test fails if
// protection is off.
func TestTamperProtection(t *testing.T) {
	testutil.RequireBPFLSM(t)
	testutil.RequireVM(t)
	e := newTamperEnv(t)
	policyFile, err := filepath.Abs(hardeningPolicy)
	if err != nil {
		t.Fatal(err)
	}
	a := e.start("protected", "--policy", policyFile)
	st := a.status()
	if p := protection(st); !p.GetAvailable() {
		t.Fatalf("tamper protection not on: %v\nagent log:\n%s", p, a.log)
	}
	since := time.Now()

	attempts := tamperAttempts(t, a, e.stateDir, policyFile, e.pub)
	if len(attempts) < 15 {
		t.Fatalf("only %d attempts", len(attempts))
	}
	want := map[string]int{}
	for _, at := range attempts {
		err := at.try()
		switch {
		case err == nil:
			t.Errorf("%s: succeeded against a protected agent", at.name)
		case !errors.Is(err, unix.EPERM):
			t.Errorf("%s: %v, want EPERM", at.name, err)
		default:
			t.Logf("%s: refused: %v", at.name, err)
		}
		want[at.method]++
		if !a.running() {
			t.Fatalf("the agent died after %q\nagent log:\n%s", at.name, a.log)
		}
	}

	// Alive, answering, and still enforcing hardening.yaml.
	if err := unix.Kill(a.pid, 0); err != nil {
		t.Fatalf("agent pid %d: %v", a.pid, err)
	}
	if st := a.status(); !st.SensorsAttached {
		t.Fatalf("sensors detached after the attempts: %v", st)
	}
	if f, err := os.Open("/proc/kcore"); err == nil {
		f.Close()
		t.Error("/proc/kcore opened: hardening.yaml no longer enforced")
	} else if !errors.Is(err, unix.EPERM) {
		t.Errorf("/proc/kcore: %v, want EPERM", err)
	}

	// One tamper event per attempt, naming this process.
	me := uint32(os.Getpid())
	deadline := time.Now().Add(30 * time.Second)
	var got map[string]int
	for {
		got = map[string]int{}
		for _, ev := range a.events("--kind", "tamper", "--since", since.Format(time.RFC3339Nano)) {
			if ev.GetProcess().GetPid() == me && ev.GetTamper().GetRefused() {
				got[ev.GetTamper().GetMethod()]++
			}
		}
		ok := true
		for m, n := range want {
			if got[m] < n {
				ok = false
			}
		}
		if ok || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	for m, n := range want {
		if got[m] < n {
			t.Errorf("method %s: %d tamper events from pid %d, want %d", m, got[m], me, n)
		}
	}
	t.Logf("tamper events by method: %v", got)

	// Administration: unsigned, expired, foreign-host and wrong-policy
	// requests fail; a valid apply-policy token works once.
	if out, err := a.vigil("policy", "apply", policyFile); err == nil || !strings.Contains(string(out), "no admin token") {
		t.Errorf("policy apply without a token: err=%v\n%s", err, out)
	}
	applyTok := e.token("apply-policy", "--policy", policyFile)
	if out, err := a.vigil("policy", "apply", policyFile, "--token", applyTok); err != nil {
		t.Errorf("policy apply with a valid token: %v\n%s", err, out)
	}
	if out, err := a.vigil("policy", "apply", policyFile, "--token", applyTok); err == nil || !strings.Contains(string(out), "already used") {
		t.Errorf("policy apply with a replayed token: err=%v\n%s", err, out)
	}
	// Approving code is reconfiguring the agent: a token for exactly
	// that change, nothing else.
	digest := strings.Repeat("5a", 32)
	if out, err := a.vigil("approve", "--sha256", digest); err == nil || !strings.Contains(string(out), "no admin token") {
		t.Errorf("approve without a token: err=%v\n%s", err, out)
	}
	otherTok := e.token("approve", "--subject", "sha256:"+strings.Repeat("6b", 32))
	if out, err := a.vigil("approve", "--sha256", digest, "--token", otherTok); err == nil || !strings.Contains(string(out), "another approval") {
		t.Errorf("approve with a token for another digest: err=%v\n%s", err, out)
	}
	if out, err := a.vigil("approve", "--sha256", digest, "--token", e.token("approve", "--subject", "sha256:"+digest)); err != nil {
		t.Errorf("approve with a valid token: %v\n%s", err, out)
	}
	if out, err := a.vigil("stop"); err == nil || !strings.Contains(string(out), "no admin token") {
		t.Errorf("stop without a token: err=%v\n%s", err, out)
	}
	expired := e.token("stop", "--ttl", "1s")
	foreign := e.token("stop", "--host", "0000000000000000000000000000beef")
	wrongAction := e.token("unprotect")
	time.Sleep(1500 * time.Millisecond)
	for _, c := range []struct{ name, token, want string }{
		{"expired", expired, "expired"},
		{"foreign host", foreign, "another host"},
		{"wrong action", wrongAction, "another action"},
	} {
		if out, err := a.vigil("stop", "--token", c.token); err == nil || !strings.Contains(string(out), c.want) {
			t.Errorf("stop with a %s token: err=%v, want %q\n%s", c.name, err, c.want, out)
		}
	}
	if !a.running() {
		t.Fatal("agent stopped on a refused token")
	}
	stopTok := e.token("stop")
	if out, err := a.vigil("stop", "--token", stopTok); err != nil {
		t.Fatalf("stop with a valid token: %v\n%s", err, out)
	}
	if !a.waitExit(30 * time.Second) {
		t.Fatal("agent still running 30s after a valid stop")
	}

	// Protection off (same state and admin key): the stop token used above
	// is refused as replayed, and the same kinds of attempts now succeed.
	b := e.start("unprotected", "--protect=false")
	if p := protection(b.status()); p.GetAvailable() {
		t.Fatalf("--protect=false: protection reported on: %v", p)
	}
	if out, err := b.vigil("stop", "--token", stopTok); err == nil || !strings.Contains(string(out), "already used") {
		t.Errorf("stop with a replayed token: err=%v\n%s", err, out)
	}
	for _, at := range []tamperAttempt{
		{"prlimit", "", func() error {
			return unix.Prlimit(b.pid, unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: 4096, Max: 4096}, nil)
		}},
		{"setpriority", "", func() error { return unix.Setpriority(unix.PRIO_PROCESS, b.pid, 0) }},
		{"write oom_score_adj", "", func() error { return writeFile(fmt.Sprintf("/proc/%d/oom_score_adj", b.pid), "0") }},
		{"open the event store for write", "", func() error {
			f, err := os.OpenFile(filepath.Join(e.stateDir, "events.db"), os.O_WRONLY, 0)
			if err == nil {
				f.Close()
			}
			return err
		}},
		{"SIGKILL", "", func() error { return unix.Kill(b.pid, unix.SIGKILL) }},
	} {
		if err := at.try(); err != nil {
			t.Errorf("unprotected: %s: %v, want success", at.name, err)
		}
	}
	if !b.waitExit(10 * time.Second) {
		t.Error("unprotected agent survived SIGKILL")
	}
}
