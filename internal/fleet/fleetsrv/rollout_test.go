package fleetsrv_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	fleetv1 "github.com/vigil-hips/vigil/api/vigil/fleet/v1"
	"github.com/vigil-hips/vigil/internal/fleet"
	"github.com/vigil-hips/vigil/internal/policy"
)

// bundleOf is host h's newest bundle, by Sync, verified.
func (e *env) bundleOf(ctx context.Context, h *host) *fleet.Bundle {
	e.t.Helper()
	r, err := h.c.Sync(ctx, &fleetv1.SyncRequest{})
	if err != nil || r.GetBundle() == nil {
		e.t.Fatalf("%s: sync: %v %v", h.id, r, err)
	}
	b, err := fleet.Verifier{Key: e.pub, Host: h.id}.Verify(ctx, r.GetBundle().GetEnvelope(), 0)
	if err != nil {
		e.t.Fatalf("%s: bundle: %v", h.id, err)
	}
	return b
}

// TestStagedRollout: a policy and a hash deny previewed on 30% of the
// hosts plus the canary-tagged ones reach exactly those hosts, in monitor
// mode (the policy's rules all monitor, the deny a would-be deny); an
// allow in preview reaches no host; promoted to staged, the same hosts get
// them as written; widened to 70%, more hosts (a superset); promoted to
// full, every host in scope; the chosen hosts are the same for every rule.
func TestStagedRollout(t *testing.T) {
	e := start(t, true)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var hosts []*host
	for i := range 16 {
		var tags []string
		if i == 0 || i == 1 {
			tags = []string{"canary"}
		}
		hosts = append(hosts, e.mustEnroll(fmt.Sprintf("host-%02d", i), tags...))
	}
	chosen := func(h *host, pct uint32) bool {
		return h.id == "host-00" || h.id == "host-01" || fleet.HostPercentile(h.id) < pct
	}
	var in30, out30 int
	for _, h := range hosts {
		if chosen(h, 30) {
			in30++
		} else {
			out30++
		}
	}
	if in30 == 0 || out30 == 0 {
		t.Fatalf("the test's hosts do not split at 30%%: %d in, %d out", in30, out30)
	}

	pol := "version: 1\nname: no-tmp-exec\nmode: enforce\nrules:\n- id: no-tmp-exec\n  on: [exec]\n  action: deny\n  match: {target: {path_prefix: /tmp}}\n"
	preview := &fleetv1.Rollout{Stage: "preview", Percent: 30, Tag: "canary"}
	pr, err := e.admin.AddRule(ctx, &fleetv1.Rule{Kind: "policy", Value: pol, Scope: "global", Comment: "no-tmp-exec", Rollout: preview})
	if err != nil {
		t.Fatal(err)
	}
	dr, err := e.admin.AddRule(ctx, &fleetv1.Rule{Kind: "sha256", Value: digest("evil"), Verdict: "deny", Scope: "global", Rollout: preview})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.AddRule(ctx, &fleetv1.Rule{Kind: "sha256", Value: digest("tool"), Verdict: "allow", Scope: "global", Rollout: preview}); err != nil {
		t.Fatal(err)
	}

	check := func(stage string, in func(*host) bool, mode string) {
		t.Helper()
		for _, h := range hosts {
			b := e.bundleOf(ctx, h)
			if !in(h) {
				if len(b.Policies) != 0 || len(b.Hashes) != 0 {
					t.Errorf("%s: %s (percentile %d) is not chosen but got %d policies, %d hashes", stage, h.id, fleet.HostPercentile(h.id), len(b.Policies), len(b.Hashes))
				}
				continue
			}
			if len(b.Policies) != 1 || b.Policies[0].Mode != mode {
				t.Errorf("%s: %s: policies %+v, want one in mode %q", stage, h.id, b.Policies, mode)
				continue
			}
			p, err := b.Policies[0].Parse()
			if err != nil {
				t.Fatal(err)
			}
			wantMode := policy.Enforce
			if mode == fleet.Monitor {
				wantMode = policy.Monitor
			}
			if p.Rules[0].Mode != wantMode {
				t.Errorf("%s: %s: the policy's rule arrives in mode %s, want %s", stage, h.id, p.Rules[0].Mode, wantMode)
			}
			var deny, allow int
			for _, hr := range b.Hashes {
				switch {
				case hr.SHA256 == digest("evil") && hr.Verdict == fleet.Deny && hr.Mode == mode:
					deny++
				case hr.SHA256 == digest("tool") && hr.Verdict == fleet.Allow && mode == "":
					allow++
				default:
					t.Errorf("%s: %s: unexpected hash rule %+v", stage, h.id, hr)
				}
			}
			if deny != 1 || (mode == "" && allow != 1) {
				t.Errorf("%s: %s: hashes %+v", stage, h.id, b.Hashes)
			}
		}
	}
	check("preview", func(h *host) bool { return chosen(h, 30) }, fleet.Monitor)

	rules, err := e.admin.ListRules(ctx, &fleetv1.ListRulesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rules.GetRules() {
		if r.GetRollout().GetStage() != "preview" || r.GetScopeHosts() != 16 || r.GetRolloutHosts() != uint32(in30) {
			t.Errorf("rules: %d: rollout %v, hosts %d of %d, want preview to %d of 16", r.GetId(), r.GetRollout(), r.GetRolloutHosts(), r.GetScopeHosts(), in30)
		}
	}

	// Promote: staged, the same hosts, as written.
	for _, r := range rules.GetRules() {
		got, err := e.admin.UpdateRollout(ctx, &fleetv1.UpdateRolloutRequest{Id: r.GetId(), Promote: true})
		if err != nil || got.GetRollout().GetStage() != "staged" {
			t.Fatalf("promote %d: %v %v", r.GetId(), got, err)
		}
	}
	check("staged", func(h *host) bool { return chosen(h, 30) }, "")

	// Widen to 70%: a superset.
	for _, id := range []uint64{pr.GetId(), dr.GetId()} {
		if _, err := e.admin.UpdateRollout(ctx, &fleetv1.UpdateRolloutRequest{Id: id, Rollout: &fleetv1.Rollout{Stage: "staged", Percent: 70, Tag: "canary"}}); err != nil {
			t.Fatal(err)
		}
	}
	for _, h := range hosts {
		b := e.bundleOf(ctx, h)
		if chosen(h, 70) != (len(b.Policies) == 1) {
			t.Errorf("staged 70%%: %s (percentile %d): %d policies", h.id, fleet.HostPercentile(h.id), len(b.Policies))
		}
		if chosen(h, 30) && len(b.Policies) != 1 {
			t.Errorf("staged 70%%: %s was in the 30%% and lost the rule", h.id)
		}
	}

	// Promote to full: every host.
	for _, r := range rules.GetRules() {
		got, err := e.admin.UpdateRollout(ctx, &fleetv1.UpdateRolloutRequest{Id: r.GetId(), Promote: true})
		if err != nil || got.GetRollout() != nil {
			t.Fatalf("promote %d to full: %v %v", r.GetId(), got, err)
		}
	}
	check("full", func(*host) bool { return true }, "")
	if _, err := e.admin.UpdateRollout(ctx, &fleetv1.UpdateRolloutRequest{Id: pr.GetId(), Promote: true}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("promote past full: %v, want FailedPrecondition", err)
	}

	// Bad rollouts are refused and change nothing.
	for _, ro := range []*fleetv1.Rollout{
		{Stage: "preview"},
		{Stage: "preview", Percent: 101},
		{Stage: "later", Percent: 10},
		{Percent: 10},
	} {
		if _, err := e.admin.UpdateRollout(ctx, &fleetv1.UpdateRolloutRequest{Id: pr.GetId(), Rollout: ro}); status.Code(err) != codes.InvalidArgument {
			t.Errorf("rollout %v: %v, want InvalidArgument", ro, err)
		}
		if _, err := e.admin.AddRule(ctx, &fleetv1.Rule{Kind: "sha256", Value: digest("new"), Verdict: "deny", Scope: "global", Rollout: ro}); status.Code(err) != codes.InvalidArgument {
			t.Errorf("add with rollout %v: %v, want InvalidArgument", ro, err)
		}
	}
	if _, err := e.admin.UpdateRollout(ctx, &fleetv1.UpdateRolloutRequest{Id: 999, Promote: true}); status.Code(err) != codes.NotFound {
		t.Errorf("promote of no rule: %v", err)
	}
	check("full, after the refusals", func(*host) bool { return true }, "")
}
