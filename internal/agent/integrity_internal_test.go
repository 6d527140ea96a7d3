package agent

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/integrity"
)

// fakeKernel is the state the watch reads, changed by the test.
type fakeKernel struct {
	mu    sync.Mutex
	state integrity.State
	reads int
}

func newFakeKernel() *fakeKernel {
	return &fakeKernel{state: integrity.State{
		KernelRelease: "6.12.0-test", Lockdown: "none", SecureBoot: "not visible",
		Sysctls:    map[string]string{"kernel.kptr_restrict": "1"},
		Unreadable: map[string]string{integrity.SecSecureBoot: "not visible: no /sys/firmware/efi"},
	}}
}

func (k *fakeKernel) collect(context.Context) *integrity.State {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.reads++
	s := k.state
	s.Sysctls = map[string]string{}
	for n, v := range k.state.Sysctls {
		s.Sysctls[n] = v
	}
	s.BPF.Programs = append([]integrity.Program(nil), k.state.BPF.Programs...)
	return &s
}

func (k *fakeKernel) set(f func(s *integrity.State)) {
	k.mu.Lock()
	defer k.mu.Unlock()
	f(&k.state)
}

// events collects what the watch emits.
type events struct {
	mu  sync.Mutex
	evs []*vigilv1.Event
}

func (e *events) emit(ev *vigilv1.Event) { e.mu.Lock(); e.evs = append(e.evs, ev); e.mu.Unlock() }

func (e *events) take() []*vigilv1.Integrity {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []*vigilv1.Integrity
	for _, ev := range e.evs {
		if ev.GetKind() != "integrity" || ev.GetIntegrity() == nil {
			panic("not an integrity event: " + ev.String())
		}
		out = append(out, ev.GetIntegrity())
	}
	e.evs = nil
	return out
}

func testWatch(k *fakeKernel, e *events, gauge *float64) *integrityWatch {
	return &integrityWatch{
		collect: k.collect, interval: time.Hour, debounce: 10 * time.Millisecond, recheck: 100 * time.Millisecond,
		emit: e.emit, log: slog.New(slog.DiscardHandler), gauge: func(v float64) { *gauge = v },
		ownPID: 4242, triggers: make(chan string, 16), baseFrom: baselineAtStart, reported: map[string]string{},
	}
}

var foreignProg = integrity.Program{ID: 77, Type: "TracePoint", Name: "evil", Tag: "abcd",
	Helpers: []string{"bpf_get_current_pid_tgid", "bpf_send_signal"}, Dangerous: []string{"bpf_send_signal"}}

// TestIntegrityWatchReportsOnce: a violation is reported when it appears,
// not again while it stays the same, again when it changes, and again
// after it has gone and come back; the gauge follows the current count.
func TestIntegrityWatchReportsOnce(t *testing.T) {
	k, e := newFakeKernel(), &events{}
	var gauge float64
	w := testWatch(k, e, &gauge)

	w.check(context.Background(), triggerStart) // the in-memory baseline
	if got := e.take(); len(got) != 0 || gauge != 0 {
		t.Fatalf("start against its own baseline: %v, gauge %v", got, gauge)
	}
	k.set(func(s *integrity.State) {
		s.Sysctls["kernel.kptr_restrict"] = "0"
		s.BPF.Programs = []integrity.Program{foreignProg}
	})
	w.check(context.Background(), triggerInterval)
	got := e.take()
	if len(got) != 2 || gauge != 2 {
		t.Fatalf("after a sysctl change and a foreign program: %v, gauge %v", got, gauge)
	}
	var prog, sysctl *vigilv1.Integrity
	for _, in := range got {
		switch in.Check {
		case "bpf_prog":
			prog = in
		case integrity.SecSysctl:
			sysctl = in
		}
		if in.Trigger != triggerInterval {
			t.Errorf("trigger %q, want interval", in.Trigger)
		}
	}
	if prog == nil || !strings.Contains(prog.Subject, "evil") || !strings.Contains(prog.Detail, "bpf_send_signal") ||
		!strings.Contains(prog.Detail, "bpf_get_current_pid_tgid") || !strings.Contains(prog.Actual, "id 77") {
		t.Errorf("program violation: %v", prog)
	}
	if sysctl == nil || sysctl.Subject != "kernel.kptr_restrict" || sysctl.Expected != "1" || sysctl.Actual != "0" {
		t.Errorf("sysctl violation: %v", sysctl)
	}

	w.check(context.Background(), triggerInterval)
	if got := e.take(); len(got) != 0 || gauge != 2 {
		t.Fatalf("unchanged violations reported again: %v, gauge %v", got, gauge)
	}

	k.set(func(s *integrity.State) { s.Sysctls["kernel.kptr_restrict"] = "2" })
	w.check(context.Background(), triggerInterval)
	if got := e.take(); len(got) != 1 || got[0].Actual != "2" {
		t.Fatalf("changed sysctl: %v", got)
	}

	k.set(func(s *integrity.State) { s.BPF.Programs = nil })
	w.check(context.Background(), triggerInterval)
	if got := e.take(); len(got) != 0 || gauge != 1 {
		t.Fatalf("program gone: %v, gauge %v", got, gauge)
	}
	k.set(func(s *integrity.State) { s.BPF.Programs = []integrity.Program{foreignProg} })
	w.check(context.Background(), "bpf_prog_load")
	if got := e.take(); len(got) != 1 || got[0].Check != "bpf_prog" || got[0].Trigger != "bpf_prog_load" {
		t.Fatalf("program back: %v", got)
	}
	// Reloaded under a new id: a new violation.
	k.set(func(s *integrity.State) { p := foreignProg; p.ID = 78; s.BPF.Programs = []integrity.Program{p} })
	w.check(context.Background(), triggerInterval)
	if got := e.take(); len(got) != 1 || !strings.Contains(got[0].Actual, "id 78") {
		t.Fatalf("program reloaded: %v", got)
	}
	st := w.status()
	if st.Violations != 2 || st.Checks != 7 || st.LastCheck == nil || st.LastTrigger != triggerInterval ||
		st.Baseline != baselineAtStart || st.Unreadable[integrity.SecSecureBoot] == "" {
		t.Fatalf("status %v", st)
	}
}

func kernelEvent(pid uint32, op string) *vigilv1.Event {
	return &vigilv1.Event{Kind: "kernel", Process: &vigilv1.Process{Pid: pid},
		Detail: &vigilv1.Event_Kernel{Kernel: &vigilv1.KernelOp{Op: op}}}
}

// TestIntegrityWatchObserve: only kernel events that change kernel state,
// from another process than the agent, ask for a check; observe never
// blocks, however many arrive.
func TestIntegrityWatchObserve(t *testing.T) {
	w := testWatch(newFakeKernel(), &events{}, new(float64))
	for _, ev := range []*vigilv1.Event{
		kernelEvent(10, "kcore_open"), kernelEvent(10, "dev_mem_open"),
		kernelEvent(w.ownPID, "bpf_prog_load"), // the agent's own feature probes
		{Kind: "exec", Process: &vigilv1.Process{Pid: 10}},
	} {
		w.observe(ev)
	}
	if n := len(w.triggers); n != 0 {
		t.Fatalf("%d triggers from events that do not change kernel state", n)
	}
	for _, op := range []string{"bpf_prog_load", "module_load", "tracefs_write"} {
		w.observe(kernelEvent(10, op))
	}
	if n := len(w.triggers); n != 3 {
		t.Fatalf("%d triggers, want 3", n)
	}
	done := make(chan struct{})
	go func() {
		for range 10000 {
			w.observe(kernelEvent(10, "bpf_prog_load"))
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("observe blocked with nobody reading the triggers")
	}
}

// TestIntegrityWatchRun: a module_load event makes the next check read
// kallsyms afresh and names its trigger; a check still collecting when the
// agent stops is abandoned, so run returns at once.
func TestIntegrityWatchRun(t *testing.T) {
	k, e := newFakeKernel(), &events{}
	w := testWatch(k, e, new(float64))
	forgot := make(chan struct{}, 1)
	w.forget = func() { forgot <- struct{}{} }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.run(ctx); close(done) }()

	waitChecks := func(n uint64) *vigilv1.IntegrityStatus {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			if st := w.status(); st.Checks >= n {
				return st
			}
			if time.Now().After(deadline) {
				t.Fatalf("fewer than %d checks: %v", n, w.status())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitChecks(1)
	w.observe(kernelEvent(10, "module_load"))
	w.observe(kernelEvent(10, "tracefs_write"))
	if st := waitChecks(2); st.LastTrigger != "module_load,tracefs_write" {
		t.Fatalf("trigger %q, want module_load,tracefs_write", st.LastTrigger)
	}
	select {
	case <-forgot:
	default:
		t.Fatal("a module_load did not make the watch read kallsyms afresh")
	}
	// The same check again a little later, for a load still in progress.
	if st := waitChecks(3); st.LastTrigger != "module_load,tracefs_write" {
		t.Fatalf("recheck trigger %q, want module_load,tracefs_write", st.LastTrigger)
	}

	// A collection that never ends does not hold up the stop.
	block := make(chan struct{})
	defer close(block)
	w.collect = func(context.Context) *integrity.State { <-block; return nil }
	w.observe(kernelEvent(10, "bpf_prog_load"))
	time.Sleep(50 * time.Millisecond) // the debounce has passed: collecting
	cancel()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("run did not return while a collection was running")
	}
}
