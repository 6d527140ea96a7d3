package cli

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	fleetv1 "github.com/vigil-hips/vigil/api/vigil/fleet/v1"
	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
)

// TestFleetStatusFormat: status shows the fleet server, the bundle in
// force and the last contact, and the last error; nothing for a host that
// is not a fleet member.
func TestFleetStatusFormat(t *testing.T) {
	now := time.Date(2026, 11, 24, 6, 0, 0, 0, time.UTC)
	st := &vigilv1.StatusResponse{StartedAt: timestamppb.New(now.Add(-time.Hour)), Counters: &vigilv1.Counters{},
		Fleet: &vigilv1.FleetStatus{Server: "fleet:8443", HostId: "abc", Enrolled: true, AppliedVersion: 7,
			BundleIssued: timestamppb.New(now.Add(-time.Hour)), Hashes: 3, Signers: 1, Policies: 2,
			LastContact: timestamppb.New(now.Add(-4 * time.Second)), LastError: "sync: unavailable"}}
	var b strings.Builder
	if err := printStatus(&b, st, "/run/vigil.sock", now); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"Fleet:      fleet:8443 as abc (enrolled), bundle v7 (3 hash, 1 signer, 2 policy rules), issued 2026-11-24T05:00:00Z, last contact 4s ago",
		"last error: sync: unavailable",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("status:\n%s\nwant %q", b.String(), want)
		}
	}
	st.Fleet = nil
	b.Reset()
	printStatus(&b, st, "/run/vigil.sock", now)
	if strings.Contains(b.String(), "Fleet:") {
		t.Errorf("status of a host outside a fleet:\n%s", b.String())
	}
}

// TestFleetHostsFormat: `vigil fleet hosts` summarizes each host's
// guarantees, and says when a host reported none.
func TestFleetHostsFormat(t *testing.T) {
	hosts := []*fleetv1.Host{
		{Id: "h1", Hostname: "one", Backend: "lsm", ExecMode: "lockdown", Guarantees: []*vigilv1.Guarantee{
			{Control: "exec", Level: "synchronous block"}, {Control: "file_write", Level: "observe only"}}},
		{Id: "h2", Hostname: "two", Revoked: true},
	}
	var b strings.Builder
	if err := printFleetHosts(&b, hosts); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(b.String(), "\n")
	if len(lines) < 3 || !strings.Contains(lines[0], "GUARANTEES") {
		t.Fatalf("hosts:\n%s", b.String())
	}
	if want := "1 synchronous block, 1 observe only; weakest: file_write (observe only)"; !strings.Contains(lines[1], want) {
		t.Errorf("h1: %q, want %q", lines[1], want)
	}
	if !strings.Contains(lines[2], "not reported") || !strings.Contains(lines[2], "revoked") {
		t.Errorf("h2: %q", lines[2])
	}
}
