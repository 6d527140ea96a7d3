package e2e

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/kernel"
	"github.com/vigil-hips/vigil/internal/testutil"
)

// Names of the foreign BPF objects the watch tests load (the kernel keeps
// 15 bytes of a name).
const (
	watchProg     = "itw_signal"
	watchMap      = "itw_map"
	watchAttached = "itw_attached"
	watchKprobe   = "itw_kprobe"
)

// foreignBPF loads, from this test process (a loader no allowlist
// knows), a tracepoint program calling bpf_send_signal that uses a map
// and is never attached, and a harmless tracepoint program attached to
// sys_enter_getppid. It reports whether the attachment is a BPF link.
func foreignBPF(t *testing.T) (isLink bool) {
	t.Helper()
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: watchMap, Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		t.Fatalf("create the foreign map: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: watchProg, Type: ebpf.TracePoint, License: "GPL",
		Instructions: asm.Instructions{
			asm.StoreImm(asm.RFP, -4, 0, asm.Word),
			asm.LoadMapPtr(asm.R1, m.FD()),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, -4),
			asm.FnMapLookupElem.Call(),
			asm.FnGetCurrentPidTgid.Call(),
			asm.Mov.Imm(asm.R1, 0),
			asm.FnSendSignal.Call(),
			asm.Mov.Imm(asm.R0, 0),
			asm.Return(),
		},
	})
	if err != nil {
		t.Fatalf("load the foreign program: %v", err)
	}
	t.Cleanup(func() { prog.Close() })
	attached, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: watchAttached, Type: ebpf.TracePoint, License: "GPL",
		Instructions: asm.Instructions{
			asm.FnGetCurrentPidTgid.Call(),
			asm.Mov.Imm(asm.R0, 0),
			asm.Return(),
		},
	})
	if err != nil {
		t.Fatalf("load the attached foreign program: %v", err)
	}
	t.Cleanup(func() { attached.Close() })
	l, err := link.Tracepoint("syscalls", "sys_enter_getppid", attached, nil)
	if err != nil {
		t.Fatalf("attach %s: %v", watchAttached, err)
	}
	t.Cleanup(func() { l.Close() })
	_, err = l.Info()
	return err == nil
}

// integrityEvents returns the agent's stored integrity events.
func (a *agent) integrityEvents() []*vigilv1.Integrity {
	var out []*vigilv1.Integrity
	for _, ev := range a.events("--kind", "integrity") {
		out = append(out, ev.GetIntegrity())
	}
	return out
}

// want is an integrity event the test waits for.
type want struct {
	check, subject string   // subject: a substring
	detail         []string // substrings of the detail
}

func (w want) match(in *vigilv1.Integrity) bool {
	if in.GetCheck() != w.check || !strings.Contains(in.GetSubject(), w.subject) {
		return false
	}
	for _, d := range w.detail {
		if !strings.Contains(in.GetDetail(), d) {
			return false
		}
	}
	return true
}

// waitIntegrity waits until each of wants matches a stored integrity event
// and returns the matches.
func (a *agent) waitIntegrity(t *testing.T, within time.Duration, wants ...want) []*vigilv1.Integrity {
	t.Helper()
	found := make([]*vigilv1.Integrity, len(wants))
	deadline := time.Now().Add(within)
	for {
		evs := a.integrityEvents()
		n := 0
		for i, w := range wants {
			for _, in := range evs {
				if found[i] == nil && w.match(in) {
					found[i] = in
				}
			}
			if found[i] != nil {
				n++
			}
		}
		if n == len(wants) {
			return found
		}
		if time.Now().After(deadline) {
			var missing []string
			for i, w := range wants {
				if found[i] == nil {
					missing = append(missing, fmt.Sprintf("%+v", w))
				}
			}
			t.Fatalf("no integrity event within %s for %s; integrity events: %v", within, strings.Join(missing, ", "), evs)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// waitWatching waits for the watch's first check (the in-memory baseline).
func (a *agent) waitWatching(t *testing.T) *vigilv1.IntegrityStatus {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		in := a.status().GetIntegrity()
		if in == nil {
			t.Fatal("status has no integrity part: is the watch off?")
		}
		if in.GetChecks() >= 1 {
			return in
		}
		if time.Now().After(deadline) {
			t.Fatalf("the integrity watch made no check: %v\nagent log:\n%s", in, a.log)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestIntegrityWatchForeignBPF (host and VM): with the agent watching (a
// baseline taken at its start, in memory), a foreign BPF program, its map
// and a link attaching another foreign program are each reported as an
// integrity event, the program with its helpers. What this kernel does
// not let the agent read is reported in status and is no reason to fail:
// the checks go on.
func TestIntegrityWatchForeignBPF(t *testing.T) {
	testutil.RequireRoot(t)
	a := startAgent(t, "--integrity-interval", "5s")
	in := a.waitWatching(t)
	for sec, why := range in.GetUnreadable() {
		t.Logf("not readable here: %s: %s", sec, why)
	}
	isLink := foreignBPF(t)
	wants := []want{
		// (The verifier inlines an array map's lookup: no helper call is
		// left of it in the translated program.)
		{check: "bpf_prog", subject: "TracePoint " + watchProg, detail: []string{
			"bpf_get_current_pid_tgid", "bpf_send_signal", "DANGEROUS [bpf_send_signal]"}},
		{check: "bpf_map", subject: "Array " + watchMap, detail: []string{"used by TracePoint " + watchProg}},
		{check: "bpf_prog", subject: "TracePoint " + watchAttached},
	}
	if isLink {
		wants = append(wants, want{check: "bpf_link", subject: "to TracePoint " + watchAttached})
	} else {
		t.Log("this kernel attached the tracepoint program without a BPF link: no link to report")
	}
	found := a.waitIntegrity(t, 60*time.Second, wants...)
	for _, in := range found {
		t.Logf("%s %q: trigger %s: %s", in.GetCheck(), in.GetSubject(), in.GetTrigger(), in.GetDetail())
	}
	// Reported once: later checks do not repeat it.
	checks := a.status().GetIntegrity().GetChecks()
	deadline := time.Now().Add(90 * time.Second)
	for a.status().GetIntegrity().GetChecks() < checks+2 {
		if time.Now().After(deadline) {
			t.Fatalf("the watch stopped checking after %d checks", checks)
		}
		time.Sleep(500 * time.Millisecond)
	}
	n := 0
	for _, in := range a.integrityEvents() {
		if wants[0].match(in) {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%s reported %d times, want once", watchProg, n)
	}
	st := a.status().GetIntegrity()
	if st.GetViolations() < uint32(len(wants)) || st.GetLastCheck() == nil {
		t.Errorf("status: %v, want at least %d violations and a last check", st, len(wants))
	}
	for _, in := range a.integrityEvents() {
		for sec := range st.GetUnreadable() {
			if in.GetCheck() == sec && strings.Contains(in.GetDetail(), "unreadable") {
				t.Errorf("an unreadable section was reported as a violation: %v", in)
			}
		}
	}
}

// kernelEvent waits for a stored kind "kernel" event of this process with
// op and returns it.
func (a *agent) kernelEvent(t *testing.T, op string, ok func(*vigilv1.KernelOp) bool) *vigilv1.Event {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		for _, ev := range a.events("--kind", "kernel", "--pid", fmt.Sprint(os.Getpid())) {
			if k := ev.GetKernel(); k.GetOp() == op && ok(k) {
				return ev
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no kernel event %s from pid %d", op, os.Getpid())
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// TestIntegrityWatchKernelChanges (VM, BPF LSM): the agent runs with
// baseline.yaml (monitor) and the watch on; a foreign BPF program, a kprobe
// registered through tracefs and a loaded kernel module are each reported
// by their load event (kind "kernel") and by a check set off by kernel
// events (the interval is too long to be the one reporting them), as an
// integrity event naming the trigger, the program with its helpers. With the watch
// off the integrity events never come and the test fails.
func TestIntegrityWatchKernelChanges(t *testing.T) {
	testutil.RequireBPFLSM(t)
	const metricsAddr = "127.0.0.1:19465" // inside the VM: nothing else listens
	ko := filepath.Join("/lib/modules", kernel.Release(), "kernel/drivers/net/dummy.ko")
	if _, err := os.Stat(ko); err != nil {
		t.Fatalf("no dummy.ko in the VM (VMTEST_MODULES should include dummy): %v", err)
	}
	if _, err := os.Stat("/sys/module/dummy"); err == nil {
		if err := unix.DeleteModule("dummy", 0); err != nil {
			t.Fatalf("dummy is loaded by an earlier test and cannot be removed: %v", err)
		}
	}
	a := startAgent(t, "--policy", baselinePolicy, "--integrity-interval", "10m", "--metrics-addr", metricsAddr)
	a.waitWatching(t)

	// A foreign BPF program.
	foreignBPF(t)
	got := a.waitIntegrity(t, 90*time.Second, want{check: "bpf_prog", subject: "TracePoint " + watchProg,
		detail: []string{"bpf_get_current_pid_tgid", "bpf_send_signal", "DANGEROUS [bpf_send_signal]"}})
	for _, in := range got {
		t.Logf("bpf_prog %q: trigger %s: %s", in.GetSubject(), in.GetTrigger(), in.GetDetail())
		eventTriggered(t, in)
	}
	a.kernelEvent(t, "bpf_prog_load", func(k *vigilv1.KernelOp) bool { return k.GetBpfProgName() == watchProg })

	// A kprobe registered through tracefs.
	const events = "/sys/kernel/tracing/kprobe_events"
	probe := "p:" + watchKprobe + " do_sys_openat2\n"
	if err := appendFile(events, probe); err != nil {
		t.Fatalf("register a kprobe through %s: %v", events, err)
	}
	t.Cleanup(func() {
		if err := appendFile(events, "-:"+watchKprobe+"\n"); err != nil {
			t.Errorf("remove the kprobe: %v", err)
		}
	})
	got = a.waitIntegrity(t, 90*time.Second, want{check: "hook", subject: watchKprobe, detail: []string{"kprobe event"}})
	for _, in := range got {
		t.Logf("hook %q: trigger %s: %s", in.GetSubject(), in.GetTrigger(), in.GetDetail())
		eventTriggered(t, in)
	}
	a.kernelEvent(t, "tracefs_write", func(k *vigilv1.KernelOp) bool { return strings.Contains(k.GetFile().GetPath(), "kprobe_events") })

	// A kernel module.
	f, err := os.Open(ko)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.FinitModule(int(f.Fd()), "", 0); err != nil {
		t.Fatalf("finit_module %s: %v", ko, err)
	}
	t.Cleanup(func() {
		if err := unix.DeleteModule("dummy", 0); err != nil && !errors.Is(err, unix.ENOENT) {
			t.Errorf("delete_module dummy: %v", err)
		}
	})
	got = a.waitIntegrity(t, 90*time.Second, want{check: "module", subject: "dummy", detail: []string{"loaded since the baseline"}})
	for _, in := range got {
		t.Logf("module %q: trigger %s: %s (expected %q, actual %q)", in.GetSubject(), in.GetTrigger(), in.GetDetail(), in.GetExpected(), in.GetActual())
		eventTriggered(t, in)
	}
	a.kernelEvent(t, "module_load", func(*vigilv1.KernelOp) bool { return true })

	// The gauge counts them (and whatever else differs from the baseline).
	if n := metricValue(t, metricsAddr, "vigil_integrity_violations"); n < 3 {
		t.Errorf("vigil_integrity_violations %v, want at least 3", n)
	}
	if st := a.status().GetIntegrity(); st.GetViolations() < 3 {
		t.Errorf("status: %v, want at least 3 violations", st)
	}
}

// eventTriggered fails the test unless a check set off by kernel events
// (not the start or the interval) reported in. Usually it is the op that
// made the change; a check set off by an earlier op may see it first.
func eventTriggered(t *testing.T, in *vigilv1.Integrity) {
	t.Helper()
	if tr := in.GetTrigger(); tr == "" || tr == "start" || tr == "interval" {
		t.Errorf("%s %q reported by trigger %q, want a check set off by a kernel event", in.GetCheck(), in.GetSubject(), tr)
	}
}

func appendFile(path, s string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	_, werr := f.WriteString(s)
	return errors.Join(werr, f.Close())
}

// metricValue reads an unlabelled metric from the agent's Prometheus
// endpoint.
func metricValue(t *testing.T, addr, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metrics line %q: %v", line, err)
			}
			return n
		}
	}
	t.Fatalf("no %s in the metrics", name)
	return 0
}
