package agent

import (
	"context"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	fleetv1 "github.com/vigil-hips/vigil/api/vigil/fleet/v1"
	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
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
