package bpfsensor

import (
	"context"
	"debug/elf"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/kernel"
	"github.com/vigil-hips/vigil/internal/probe"
	"github.com/vigil-hips/vigil/internal/sensor"
	"github.com/vigil-hips/vigil/internal/testutil"
	"github.com/vigil-hips/vigil/internal/testworkload"
)

func TestMain(m *testing.M) {
	testworkload.Main()
	os.Exit(m.Run())
}

func startSensor(t *testing.T, cfg Config) *Sensor {
	t.Helper()
	testutil.RequireRoot(t)
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := s.Start(ctx); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); s.Close() })
	return s.(*Sensor)
}

// TestSensorAutoBackend: auto picks lsm exactly where LSM programs load.
func TestSensorAutoBackend(t *testing.T) {
	s := startSensor(t, Config{})
	want := sensor.BackendTracepoint
	if probe.BPFLSM() == nil {
		want = sensor.BackendLSM
	}
	if s.Info().Backend != want {
		t.Fatalf("backend %s, want %s", s.Info().Backend, want)
	}
}

// TestTracepointBackend runs everywhere, the VM included.
func TestTracepointBackend(t *testing.T) {
	s := startSensor(t, Config{Backend: sensor.BackendTracepoint})
	seesWorkload(t, s, map[string]string{
		"image_load":     "tracepoint/syscalls/sys_enter_mmap",
		"mem_exec":       "tracepoint/syscalls/sys_enter_mprotect",
		"proc_mem_write": "tracepoint/syscalls/sys_exit_openat",
	})
}

// TestLSMBackend needs BPF LSM: it skips on the host and must run in the VM.
func TestLSMBackend(t *testing.T) {
	testutil.RequireBPFLSM(t)
	s := startSensor(t, Config{Backend: sensor.BackendLSM})
	seesWorkload(t, s, map[string]string{
		"image_load":     "lsm/mmap_file",
		"mem_exec":       "lsm/file_mprotect",
		"proc_mem_write": "lsm/file_open",
	})
}

// seesWorkload runs the workload and checks every event it must cause,
// and that the named events came from the named hooks.
func seesWorkload(t *testing.T, s *Sensor, hooks map[string]string) {
	t.Helper()
	_, exps, err := testworkload.RunAndExpect(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.After(20 * time.Second)
	for !testworkload.AllSeen(exps) {
		select {
		case ev, ok := <-s.Events():
			if !ok {
				t.Fatal("event stream closed")
			}
			testworkload.Match(exps, ev)
		case <-deadline:
			t.Fatalf("missing events: %v", testworkload.Missing(exps))
		}
	}
	for _, err := range testworkload.Check(exps) {
		t.Error(err)
	}
	for _, e := range exps {
		if want, ok := hooks[e.Name]; ok && e.Seen.Hook != want {
			t.Errorf("%s came from %s, want %s", e.Name, e.Seen.Hook, want)
		}
		if e.Seen.Backend != s.Info().Backend {
			t.Errorf("%s: backend %q, want %q", e.Name, e.Seen.Backend, s.Info().Backend)
		}
	}
}

// TestSensorReportsLoss overflows a one-page ring buffer and expects the
// loss to be counted and a gap record in the stream.
func TestSensorReportsLoss(t *testing.T) {
	s := startSensor(t, Config{RingBufBytes: os.Getpagesize()})
	if err := testworkload.Burst(20000); err != nil {
		t.Fatal(err)
	}
	// A hole shows only between two records that arrived: the burst can
	// end before the reader runs again (one CPU, records that do not wake
	// it), so a few more records follow once it has drained.
	time.Sleep(200 * time.Millisecond)
	if err := testworkload.Burst(50); err != nil {
		t.Fatal(err)
	}
	var gap *vigilv1.Event
	var lastSeq uint64
	holes := 0
	// Read until the stream is quiet: the hole can show before or after the
	// gap record, which is emitted as soon as the loss counter moves.
	deadline := time.After(15 * time.Second)
	quiet := time.NewTimer(time.Second)
	for done := false; !done; {
		select {
		case ev := <-s.Events():
			quiet.Reset(time.Second)
			if ev.Kind == "gap" {
				if gap == nil {
					gap = ev
				}
				continue
			}
			if lastSeq != 0 && ev.Seq > lastSeq+1 {
				holes++
			}
			lastSeq = ev.Seq
		case <-quiet.C:
			done = true
		case <-deadline:
			done = true
		}
	}
	if gap == nil {
		t.Fatalf("no gap record; stats %+v", s.Stats())
	}
	g := gap.GetGap()
	if g.Lost == 0 || g.LostTotal < g.Lost {
		t.Fatalf("gap %v: want lost > 0", g)
	}
	if st := s.Stats(); st.Lost < g.Lost {
		t.Fatalf("stats lost %d < gap's %d", st.Lost, g.Lost)
	}
	if holes == 0 {
		t.Fatalf("no hole in the sequence numbers")
	}
	t.Logf("gap %v, %d sequence holes", g, holes)
}

// awaitEvents reads s's events until every matcher matched once, or fails
// the test naming those that did not.
func awaitEvents(t *testing.T, s *Sensor, want map[string]func(*vigilv1.Event) bool) map[string]*vigilv1.Event {
	t.Helper()
	seen := make(map[string]*vigilv1.Event)
	deadline := time.After(20 * time.Second)
	for len(seen) < len(want) {
		select {
		case ev, ok := <-s.Events():
			if !ok {
				t.Fatal("event stream closed")
			}
			for name, match := range want {
				if seen[name] == nil && match(ev) {
					seen[name] = ev
				}
			}
		case <-deadline:
			for name := range want {
				if seen[name] == nil {
					t.Errorf("no %s event", name)
				}
			}
			t.FailNow()
		}
	}
	return seen
}

// findModule returns a kernel module file of the running kernel, or "".
func findModule(name string) string {
	var found string
	root := "/lib/modules/" + kernel.Release()
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && d.Name() == name {
			found = p
			return filepath.SkipAll
		}
		return nil
	})
	return found
}

// TestKernelTamperingEvents: a BPF program load, an open of /proc/kcore
// and a kernel module load are each reported.
func TestKernelTamperingEvents(t *testing.T) {
	s := startSensor(t, Config{})
	module := findModule("dummy.ko")
	if module == "" && testutil.InVM() {
		t.Fatal("no dummy.ko in the VM: the runner should have put it in /lib/modules")
	}
	r, err := testworkload.RunKernel(module)
	if err != nil {
		t.Fatal(err)
	}
	pid := uint32(r.PID)
	want := map[string]func(*vigilv1.Event) bool{
		"bpf_prog_load": func(e *vigilv1.Event) bool {
			k := e.GetKernel()
			return e.Process.Pid == pid && k.GetOp() == "bpf_prog_load" && k.BpfProgName == r.BPFProgName &&
				k.BpfProgType == uint32(ebpf.SocketFilter)
		},
	}
	if r.KcoreOpened {
		want["kcore_open"] = func(e *vigilv1.Event) bool {
			return e.Process.Pid == pid && e.GetKernel().GetOp() == "kcore_open" &&
				e.GetKernel().GetFile().GetPath() == "/proc/kcore"
		}
	} else if testutil.InVM() {
		t.Fatal("/proc/kcore could not be opened in the VM")
	} else {
		t.Log("/proc/kcore could not be opened here; not checked")
	}
	if r.ModuleLoaded {
		want["module_load"] = func(e *vigilv1.Event) bool {
			return e.Process.Pid == pid && e.GetKernel().GetOp() == "module_load" &&
				e.GetKernel().GetFile().GetPath() == r.ModuleFile
		}
	} else {
		t.Log("this kernel has no modules; module load not checked")
	}
	awaitEvents(t, s, want)
}

// dynamicProgram returns a dynamically linked program, or "".
func dynamicProgram() string {
	for _, p := range []string{"/opt/vigil-test/true", "/usr/bin/true"} {
		f, err := elf.Open(p)
		if err != nil {
			continue
		}
		dynamic := false
		for _, prog := range f.Progs {
			dynamic = dynamic || prog.Type == elf.PT_INTERP
		}
		f.Close()
		if dynamic {
			return p
		}
	}
	return ""
}

// TestDirectLoaderCall: `ld.so ./prog` execs the loader, which maps the
// program itself: that mapping is an image_load of the program.
func TestDirectLoaderCall(t *testing.T) {
	const loader = "/lib64/ld-linux-x86-64.so.2"
	prog := dynamicProgram()
	if prog == "" {
		if testutil.InVM() {
			t.Fatal("no dynamically linked program in the VM image")
		}
		t.Skip("no dynamically linked program here")
	}
	s := startSensor(t, Config{})
	ldso, err := filepath.EvalSymlinks(loader)
	if err != nil {
		t.Fatal(err)
	}
	prog, _ = filepath.EvalSymlinks(prog)
	cmd := exec.Command(loader, prog)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", loader, prog, err, out)
	}
	pid := uint32(cmd.ProcessState.Pid())
	got := awaitEvents(t, s, map[string]func(*vigilv1.Event) bool{
		"exec of the loader": func(e *vigilv1.Event) bool {
			return e.Kind == "exec" && e.Process.Pid == pid
		},
		"image_load of the program": func(e *vigilv1.Event) bool {
			return e.Kind == "image_load" && e.Process.Pid == pid && e.GetImageLoad().GetFile().GetPath() == prog
		},
	})
	if p := got["exec of the loader"].GetExec().GetFile().GetPath(); p != ldso {
		t.Errorf("exec file %q, want the loader %q", p, ldso)
	}
}

// TestExecImageReportedOnce: with BPF LSM the kernel's own mapping of the
// program it execs passes mmap_file too; the exec event names that file,
// so it is not reported again as an image_load. The interpreter the kernel
// maps in the same exec is another image and is reported.
func TestExecImageReportedOnce(t *testing.T) {
	testutil.RequireBPFLSM(t)
	prog := dynamicProgram()
	if prog == "" {
		if testutil.InVM() {
			t.Fatal("no dynamically linked program in the VM image")
		}
		t.Skip("no dynamically linked program here")
	}
	s := startSensor(t, Config{Backend: sensor.BackendLSM})
	prog, _ = filepath.EvalSymlinks(prog)
	ldso, err := filepath.EvalSymlinks("/lib64/ld-linux-x86-64.so.2")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(prog, "--version")
	cmd.Run() // its exit status does not matter: the exec does
	pid := uint32(cmd.ProcessState.Pid())
	var loads []string
	awaitEvents(t, s, map[string]func(*vigilv1.Event) bool{
		"exec": func(e *vigilv1.Event) bool { return e.Kind == "exec" && e.Process.Pid == pid },
		// Events come in order: once the exit is here, every load is.
		"exit": func(e *vigilv1.Event) bool {
			if e.Kind == "image_load" && e.Process.Pid == pid {
				loads = append(loads, e.GetImageLoad().GetFile().GetPath())
			}
			return e.Kind == "exit" && e.Process.Pid == pid
		},
	})
	if slices.Contains(loads, prog) {
		t.Errorf("the exec'd program %s reported as an image_load too: %q", prog, loads)
	}
	if !slices.Contains(loads, ldso) {
		t.Errorf("the interpreter %s mapped at exec not reported: %q", ldso, loads)
	}
}
