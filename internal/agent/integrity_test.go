package agent_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/agent"
	"github.com/vigil-hips/vigil/internal/agent/agenttest"
	"github.com/vigil-hips/vigil/internal/integrity"
	"github.com/vigil-hips/vigil/internal/sensor"
	"github.com/vigil-hips/vigil/internal/sign"
)

// kernelState is a fake kernel for the integrity watch.
type kernelState struct {
	mu    sync.Mutex
	progs []integrity.Program
	reads int
}

func (k *kernelState) collect() *integrity.State {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.reads++
	return &integrity.State{KernelRelease: "6.18.0-test", SecureBoot: "not visible",
		Unreadable: map[string]string{integrity.SecHooks: "tracefs not mounted"},
		BPF:        integrity.BPFState{Programs: append([]integrity.Program(nil), k.progs...)}}
}

func (k *kernelState) load(p integrity.Program) {
	k.mu.Lock()
	k.progs = append(k.progs, p)
	k.mu.Unlock()
}

// integrityEvents returns the stored integrity events.
func (r *running) integrityEvents(t *testing.T) []*vigilv1.Integrity {
	t.Helper()
	s, err := r.client.Events(context.Background(), &vigilv1.EventsRequest{Kinds: []string{"integrity"}})
	if err != nil {
		t.Fatal(err)
	}
	var out []*vigilv1.Integrity
	for {
		ev, err := s.Recv()
		if err != nil {
			return out
		}
		out = append(out, ev.GetIntegrity())
	}
}

func (r *running) integrityStatus(t *testing.T) *vigilv1.IntegrityStatus {
	t.Helper()
	st, err := r.client.Status(context.Background(), &vigilv1.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return st.GetIntegrity()
}

// waitIntegrity polls until ok holds for the stored integrity events.
func (r *running) waitIntegrity(t *testing.T, within time.Duration, ok func([]*vigilv1.Integrity) bool) []*vigilv1.Integrity {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		evs := r.integrityEvents(t)
		if ok(evs) {
			return evs
		}
		if time.Now().After(deadline) {
			t.Fatalf("integrity events after %s: %v", within, evs)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func evilProgram(id uint32) integrity.Program {
	return integrity.Program{ID: id, Type: "Kprobe", Name: "evil", Tag: "beef",
		Helpers: []string{"bpf_override_return"}, Dangerous: []string{"bpf_override_return"}}
}

// TestIntegrityWatchOnKernelEvent: with a long interval, a foreign
// program is reported through the pipeline soon after the bpf_prog_load
// event the sensor delivers, once, and Status counts it.
func TestIntegrityWatchOnKernelEvent(t *testing.T) {
	k := &kernelState{}
	cfg := testConfig(t)
	cfg.IntegrityInterval = time.Hour
	r := startDeps(t, cfg, func(d *agent.Deps) { d.Integrity = k.collect })
	deadline := time.Now().Add(10 * time.Second)
	for st := r.integrityStatus(t); st.GetChecks() < 1; st = r.integrityStatus(t) {
		if time.Now().After(deadline) {
			t.Fatalf("no check at start: %v", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st := r.integrityStatus(t); st.GetViolations() != 0 || st.GetBaseline() != "taken at agent start" ||
		st.GetLastTrigger() != "start" || st.GetUnreadable()[integrity.SecHooks] == "" {
		t.Fatalf("status after start: %v", st)
	}

	k.load(evilProgram(31))
	r.sensor.Emit(&vigilv1.Event{Seq: 1, Kind: "kernel", Process: &vigilv1.Process{Pid: 999},
		Detail: &vigilv1.Event_Kernel{Kernel: &vigilv1.KernelOp{Op: "bpf_prog_load", BpfProgName: "evil"}}})
	evs := r.waitIntegrity(t, 10*time.Second, func(evs []*vigilv1.Integrity) bool { return len(evs) > 0 })
	in := evs[0]
	if len(evs) != 1 || in.Check != "bpf_prog" || in.Trigger != "bpf_prog_load" ||
		!strings.Contains(in.Subject, "evil") || !strings.Contains(in.Detail, "bpf_override_return") {
		t.Fatalf("integrity events: %v", evs)
	}
	// Another event, nothing new: no second report.
	r.sensor.Emit(&vigilv1.Event{Seq: 2, Kind: "kernel", Process: &vigilv1.Process{Pid: 999},
		Detail: &vigilv1.Event_Kernel{Kernel: &vigilv1.KernelOp{Op: "module_load"}}})
	deadline = time.Now().Add(10 * time.Second)
	for st := r.integrityStatus(t); st.GetLastTrigger() != "module_load"; st = r.integrityStatus(t) {
		if time.Now().After(deadline) {
			t.Fatalf("no check after module_load: %v", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if evs := r.integrityEvents(t); len(evs) != 1 {
		t.Fatalf("violation reported again: %v", evs)
	}
	if st := r.integrityStatus(t); st.GetViolations() != 1 || st.GetChecks() != 3 {
		t.Fatalf("status: %v", st)
	}
}

// TestIntegrityWatchOnInterval: without any kernel event, the next
// interval check reports a foreign program.
func TestIntegrityWatchOnInterval(t *testing.T) {
	k := &kernelState{}
	cfg := testConfig(t)
	cfg.IntegrityInterval = time.Second
	r := startDeps(t, cfg, func(d *agent.Deps) { d.Integrity = k.collect })
	deadline := time.Now().Add(10 * time.Second)
	for st := r.integrityStatus(t); st.GetChecks() < 1; st = r.integrityStatus(t) {
		if time.Now().After(deadline) {
			t.Fatalf("no check at start: %v", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
	k.load(evilProgram(40))
	evs := r.waitIntegrity(t, 10*time.Second, func(evs []*vigilv1.Integrity) bool { return len(evs) > 0 })
	if evs[0].Trigger != "interval" || evs[0].Check != "bpf_prog" {
		t.Fatalf("integrity events: %v", evs)
	}
}

// TestIntegrityWatchOff: interval 0 runs no check and Status has no
// integrity part.
func TestIntegrityWatchOff(t *testing.T) {
	k := &kernelState{}
	r := startDeps(t, testConfig(t), func(d *agent.Deps) { d.Integrity = k.collect })
	r.sensor.Emit(&vigilv1.Event{Seq: 1, Kind: "kernel", Process: &vigilv1.Process{Pid: 999},
		Detail: &vigilv1.Event_Kernel{Kernel: &vigilv1.KernelOp{Op: "bpf_prog_load"}}})
	time.Sleep(1500 * time.Millisecond)
	if st := r.integrityStatus(t); st != nil {
		t.Fatalf("status with the watch off: %v", st)
	}
	if evs := r.integrityEvents(t); len(evs) != 0 {
		t.Fatalf("integrity events with the watch off: %v", evs)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.reads != 0 {
		t.Fatalf("the kernel state was read %d times with the watch off", k.reads)
	}
}

// TestIntegrityBaselineRefused: an agent given a baseline signed by
// another key does not start; one signed by the admin key does, and
// compares with it.
func TestIntegrityBaselineRefused(t *testing.T) {
	dir := t.TempDir()
	pub, priv, _ := sign.GenerateKey()
	otherPub, _, _ := sign.GenerateKey()
	k := &kernelState{}
	k.load(evilProgram(50)) // loaded before the agent starts: not in the baseline file
	base, err := integrity.SignBaseline(context.Background(), priv, (&kernelState{}).collect())
	if err != nil {
		t.Fatal(err)
	}
	bf := filepath.Join(dir, "baseline.json")
	pf, of := filepath.Join(dir, "admin.pub"), filepath.Join(dir, "other.pub")
	pubPEM, _ := sign.MarshalPublicKey(pub)
	otherPEM, _ := sign.MarshalPublicKey(otherPub)
	for f, b := range map[string][]byte{bf: base, pf: pubPEM, of: otherPEM} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	cfg := testConfig(t)
	cfg.IntegrityInterval = time.Hour
	cfg.IntegrityBaseline, cfg.IntegrityPubKey = bf, of
	err = agent.Run(context.Background(), cfg, agent.Deps{
		NewSensor: func() (sensor.Sensor, error) { return agenttest.New(testInfo), nil },
		Integrity: k.collect,
	})
	if err == nil || !strings.Contains(err.Error(), "refusing integrity baseline") {
		t.Fatalf("Run with another key's baseline: %v", err)
	}

	cfg = testConfig(t)
	cfg.IntegrityInterval = time.Hour
	cfg.IntegrityBaseline, cfg.IntegrityPubKey = bf, pf
	r := startDeps(t, cfg, func(d *agent.Deps) { d.Integrity = k.collect })
	evs := r.waitIntegrity(t, 10*time.Second, func(evs []*vigilv1.Integrity) bool { return len(evs) > 0 })
	if evs[0].Trigger != "start" || !strings.Contains(evs[0].Subject, "evil") {
		t.Fatalf("integrity events against the baseline file: %v", evs)
	}
	if st := r.integrityStatus(t); st.GetBaseline() != bf {
		t.Fatalf("status baseline %q, want %s", st.GetBaseline(), bf)
	}
}
