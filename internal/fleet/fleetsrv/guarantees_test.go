package fleetsrv_test

import (
	"testing"

	"google.golang.org/protobuf/proto"

	fleetv1 "github.com/vigil-hips/vigil/api/vigil/fleet/v1"
	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
)

// TestSyncStoresGuarantees: the guarantees an agent reports in Sync are
// stored with its host and returned by ListHosts; the next Sync replaces
// them.
func TestSyncStoresGuarantees(t *testing.T) {
	e := start(t, true)
	ctx := ctx5(t)
	h := e.mustEnroll("g1")
	other := e.mustEnroll("g2")
	gs := []*vigilv1.Guarantee{
		{Control: "exec", Level: "synchronous block", Why: "BPF LSM bprm_check_security"},
		{Control: "file_write", Level: "observe only", Why: "no BPF LSM"},
	}
	if _, err := h.c.Sync(ctx, &fleetv1.SyncRequest{Backend: "lsm", Guarantees: gs}); err != nil {
		t.Fatal(err)
	}
	if _, err := other.c.Sync(ctx, &fleetv1.SyncRequest{Backend: "tracepoint"}); err != nil {
		t.Fatal(err)
	}
	byID := func() map[string]*fleetv1.Host {
		resp, err := e.admin.ListHosts(ctx, &fleetv1.ListHostsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]*fleetv1.Host{}
		for _, h := range resp.GetHosts() {
			m[h.GetId()] = h
		}
		return m
	}
	hs := byID()
	got := hs["g1"].GetGuarantees()
	if len(got) != len(gs) || !proto.Equal(got[0], gs[0]) || !proto.Equal(got[1], gs[1]) {
		t.Fatalf("g1's guarantees: %v, want %v", got, gs)
	}
	if n := len(hs["g2"].GetGuarantees()); n != 0 {
		t.Fatalf("g2 reported none, has %d", n)
	}
	if _, err := h.c.Sync(ctx, &fleetv1.SyncRequest{Guarantees: gs[1:]}); err != nil {
		t.Fatal(err)
	}
	if got := byID()["g1"].GetGuarantees(); len(got) != 1 || !proto.Equal(got[0], gs[1]) {
		t.Fatalf("g1's guarantees after a second Sync: %v", got)
	}
}
