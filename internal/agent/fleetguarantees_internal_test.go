package agent

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	fleetv1 "github.com/vigil-hips/vigil/api/vigil/fleet/v1"
	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/agent/agenttest"
	"github.com/vigil-hips/vigil/internal/probe"
	"github.com/vigil-hips/vigil/internal/sensor"
)

// syncRecorder is a Fleet client that records Sync requests.
type syncRecorder struct {
	fleetv1.FleetClient
	reqs []*fleetv1.SyncRequest
}

func (s *syncRecorder) Sync(_ context.Context, req *fleetv1.SyncRequest, _ ...grpc.CallOption) (*fleetv1.SyncResponse, error) {
	s.reqs = append(s.reqs, proto.Clone(req).(*fleetv1.SyncRequest))
	return &fleetv1.SyncResponse{}, nil
}

// TestFleetSyncReportsGuarantees: Sync carries the guarantees the kernel
// probe found (Deps.Kernel), each with its control, level and reason.
func TestFleetSyncReportsGuarantees(t *testing.T) {
	a := fleetAgent(t, nil)
	gs := []*vigilv1.Guarantee{
		{Control: "exec", Level: "synchronous block", Why: "BPF LSM bprm_check_security"},
		{Control: "file_write", Level: "not provided", Why: "no BPF LSM"},
	}
	a.kernel = Kernel{Release: "6.1.0-test", Guarantees: gs}
	c := &syncRecorder{}
	if err := a.fleetSync(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	if len(c.reqs) != 1 {
		t.Fatalf("%d Sync calls, want 1", len(c.reqs))
	}
	got := c.reqs[0].GetGuarantees()
	if len(got) != len(gs) {
		t.Fatalf("reported %v, want %v", got, gs)
	}
	for i := range gs {
		if !proto.Equal(got[i], gs[i]) {
			t.Errorf("guarantee %d: %v, want %v", i, got[i], gs[i])
		}
	}
	if m := c.reqs[0].GetExecMode(); m != "off" {
		t.Errorf("exec mode %q, want off", m)
	}
}

// TestFleetSyncGuaranteesAsRun: on a kernel with BPF LSM and fanotify,
// the guarantees reported are those of how the agent runs: its sensor's
// backend, whether it was given --fanotify-mark, and whether tamper
// protection is on.
func TestFleetSyncGuaranteesAsRun(t *testing.T) {
	r := probe.Report{BPFLSM: true}
	for _, f := range []string{probe.FeatureFanotifyPerm, probe.FeatureSendSignal, probe.FeatureTPBTF, probe.FeatureSyscallTP} {
		r.Features = append(r.Features, &vigilv1.Feature{Name: f, Available: true})
	}
	level := func(gs []*vigilv1.Guarantee, control string) *vigilv1.Guarantee {
		for _, g := range gs {
			if strings.HasPrefix(g.GetControl(), control) {
				return g
			}
		}
		t.Fatalf("no %q in %v", control, gs)
		return nil
	}
	for _, tc := range []struct {
		name      string
		backend   string
		marks     []string
		prot      *protection
		exec      string // exec control's level
		tamper    string
		tamperWhy string
	}{
		{"lsm, protected", sensor.BackendLSM, nil, &protection{guard: nopGuard{}}, probe.SyncBlock, probe.SyncBlock, "lsm/task_kill"},
		{"lsm, no admin key", sensor.BackendLSM, nil, &protection{detail: "off: no admin key"}, probe.SyncBlock, probe.ObserveOnly, "off: no admin key"},
		{"tracepoint, marks", sensor.BackendTracepoint, []string{"/srv"}, &protection{detail: "degraded"}, probe.SyncBlock, probe.ObserveOnly, "BPF LSM is not in use"},
		{"tracepoint, no marks", sensor.BackendTracepoint, nil, &protection{detail: "degraded"}, probe.KillAfterExec, probe.ObserveOnly, "BPF LSM is not in use"},
	} {
		a := fleetAgent(t, nil)
		a.kernel = Kernel{Guarantees: r.GuaranteesFor(probe.Running{LSM: true, Fanotify: true}), GuaranteesFor: r.GuaranteesFor}
		a.cfg.FanotifyMarks = tc.marks
		var s sensor.Sensor = agenttest.New(sensor.Info{Backend: tc.backend})
		a.sensor.Store(&s)
		a.prot.Store(tc.prot)
		c := &syncRecorder{}
		if err := a.fleetSync(context.Background(), c); err != nil {
			t.Fatal(err)
		}
		gs := c.reqs[0].GetGuarantees()
		if g := level(gs, "exec control"); g.GetLevel() != tc.exec {
			t.Errorf("%s: exec control %q (%s), want %q", tc.name, g.GetLevel(), g.GetWhy(), tc.exec)
		}
		if g := level(gs, probe.ControlTamper); g.GetLevel() != tc.tamper || !strings.Contains(g.GetWhy(), tc.tamperWhy) {
			t.Errorf("%s: tamper %q (%s), want %q mentioning %q", tc.name, g.GetLevel(), g.GetWhy(), tc.tamper, tc.tamperWhy)
		}
	}
}

// nopGuard stands for a guard in force; none of its methods is called.
type nopGuard struct{ Guard }
