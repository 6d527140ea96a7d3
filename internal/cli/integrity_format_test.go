package cli

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
)

// TestIntegrityFormat: status shows the watch's violations, last check
// and unreadable sections, or that it is off; an integrity event shows its
// check, subject, detail and trigger.
func TestIntegrityFormat(t *testing.T) {
	now := time.Date(2026, 11, 24, 6, 0, 0, 0, time.UTC)
	st := &vigilv1.StatusResponse{StartedAt: timestamppb.New(now.Add(-time.Hour)), Counters: &vigilv1.Counters{},
		Integrity: &vigilv1.IntegrityStatus{Interval: durationpb.New(time.Minute), Baseline: "taken at agent start",
			Violations: 2, Checks: 9, LastCheck: timestamppb.New(now.Add(-12 * time.Second)), LastTrigger: "bpf_prog_load",
			Unreadable: map[string]string{"modules": "absent"}}}
	var b strings.Builder
	if err := printStatus(&b, st, "/run/vigil.sock", now); err != nil {
		t.Fatal(err)
	}
	want := "Integrity:  2 violations, last check 12s ago (bpf_prog_load), every 1m0s, baseline taken at agent start, 1 sections unreadable"
	if !strings.Contains(b.String(), want) {
		t.Errorf("status:\n%s\nwant a line %q", b.String(), want)
	}
	st.Integrity = nil
	b.Reset()
	if err := printStatus(&b, st, "/run/vigil.sock", now); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "Integrity:  watch off") {
		t.Errorf("status without the watch:\n%s", b.String())
	}

	ev := &vigilv1.Event{Kind: "integrity", Time: timestamppb.New(now), Backend: "agent",
		Detail: &vigilv1.Event_Integrity{Integrity: &vigilv1.Integrity{Check: "bpf_prog", Subject: "Kprobe evil tag ab",
			Detail: "helpers [bpf_override_return]", Trigger: "bpf_prog_load"}}}
	if got := eventDetail(ev); got != "bpf_prog Kprobe evil tag ab: helpers [bpf_override_return] [bpf_prog_load]" {
		t.Errorf("event detail %q", got)
	}
}
