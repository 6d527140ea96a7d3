package agent

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/fleet"
	"github.com/vigil-hips/vigil/internal/policy"
	"github.com/vigil-hips/vigil/internal/sensor"
	"github.com/vigil-hips/vigil/internal/sign"
)

// enforcerSensor is a sensor that keeps the policy it was told to enforce,
// and refuses one when fail is set.
type enforcerSensor struct {
	inForce *policy.Policy
	calls   int
	fail    error
}

func (s *enforcerSensor) Start(context.Context) error   { return nil }
func (s *enforcerSensor) Events() <-chan *vigilv1.Event { return nil }
func (s *enforcerSensor) Info() sensor.Info             { return sensor.Info{Backend: "fake"} }
func (s *enforcerSensor) Stats() sensor.Stats           { return sensor.Stats{} }
func (s *enforcerSensor) Close() error                  { return nil }
func (s *enforcerSensor) RuleHits() (map[string]uint64, error) {
	return map[string]uint64{}, nil
}
func (s *enforcerSensor) Enforce(p *policy.Policy) ([]string, error) {
	s.calls++
	if s.fail != nil {
		return nil, s.fail
	}
	s.inForce = p
	return nil, nil
}

func fileWrite(path string) policy.Input {
	return policy.Input{Kind: policy.KindFileModify, Op: "open_write", File: policy.File{Path: path},
		Process: policy.Process{Pid: 10, Exe: policy.File{Path: "/usr/bin/tool"}}}
}

// TestFleetPolicies: behavior policies from a verified bundle are merged
// after the local policy without a restart (the local rule decides first),
// monitor-mode fleet rules only record; a fleet policy with a trust block,
// one whose rule id the local policy has too, and one the kernel refuses
// are each refused with a fleet_bundle event and nothing of the bundle is
// applied; a later bundle without policies removes them; a restarted agent
// merges the kept bundle's policies with its local policy.
func TestFleetPolicies(t *testing.T) {
	ctx := context.Background()
	pub, priv, _ := sign.GenerateKey()
	a := fleetAgent(t, pub)
	s := &enforcerSensor{}
	var sn sensor.Sensor = s
	a.sensor.Store(&sn)

	local := []byte("version: 1\nname: local\nmode: enforce\nrules:\n- id: local-allow-keep\n  on: [file_modify]\n  action: allow\n  match: {target: {path: /srv/data/keep}}\n")
	if _, err := a.applyPolicyParts([]policyPart{{"local.yaml", local}}); err != nil {
		t.Fatal(err)
	}
	bundle := func(v uint64, pols ...fleet.PolicyRule) []byte {
		env, err := fleet.SignBundle(ctx, priv, fleet.Bundle{Host: "me", Version: v, Issued: time.Now(), Policies: pols})
		if err != nil {
			t.Fatal(err)
		}
		return env
	}
	denyData := fleet.PolicyRule{Name: "no-data-writes", Scope: "tag:web", Rule: 7,
		YAML: "version: 1\nname: no-data-writes\nmode: enforce\nrules:\n- id: fleet-no-data\n  on: [file_modify]\n  action: deny\n  match: {target: {path_prefix: /srv/data}}\n"}
	watchEtc := fleet.PolicyRule{Name: "watch-etc", Scope: "global", Rule: 8,
		YAML: "version: 1\nname: watch-etc\nmode: monitor\nrules:\n- id: fleet-watch-etc\n  on: [file_modify]\n  action: deny\n  match: {target: {path_prefix: /etc/app}}\n"}

	decide := func(path string) policy.Verdict { return s.inForce.Evaluate(fileWrite(path), nil) }

	before := decide("/srv/data/x")
	if before.Rule != "" || before.Enforced {
		t.Fatalf("before the bundle /srv/data/x: %+v, want the default allow", before)
	}
	a.fleetApply(ctx, bundle(1, denyData, watchEtc), "test")
	if r := a.refusals(); len(r) != 0 || a.fleetApplied() != 1 {
		t.Fatalf("a good bundle with policies: refusals %v, version %d", r, a.fleetApplied())
	}
	for path, want := range map[string]policy.Verdict{
		"/srv/data/x":    {Action: policy.Deny, Rule: "fleet-no-data", Mode: policy.Enforce, Enforced: true},
		"/srv/data/keep": {Action: policy.Allow, Rule: "local-allow-keep", Mode: policy.Enforce},
		"/etc/app/conf":  {Action: policy.Deny, Rule: "fleet-watch-etc", Mode: policy.Monitor, Enforced: false},
		"/tmp/other":     {Action: policy.Allow, Mode: policy.Enforce},
	} {
		if got := decide(path); got != want {
			t.Errorf("with the fleet policies, %s: %+v, want %+v", path, got, want)
		}
	}
	if st := a.policyStatus(); st == nil || len(st.GetRules()) != 3 || !strings.Contains(st.GetName(), "no-data-writes") {
		t.Errorf("status after the fleet policies: %v", st)
	}
	inForce, calls := s.inForce, s.calls

	// Refused, nothing applied: a trust block; a rule id the local policy
	// has; the kernel refuses.
	withTrust := fleet.PolicyRule{Name: "trusty", Scope: "global", Rule: 9,
		YAML: "version: 1\nname: trusty\nmode: enforce\nrules: []\ntrust: {mode: monitor}\n"}
	if _, err := withTrust.Parse(); err == nil || !strings.Contains(err.Error(), "trust block") {
		t.Fatalf("a fleet policy with a trust block: %v, want refused", err)
	}
	raw, _ := json.Marshal(fleet.Bundle{Host: "me", Version: 2, Issued: time.Now(), Hashes: []fleet.HashRule{}, Policies: []fleet.PolicyRule{withTrust}})
	if _, err := fleet.SignPayload(ctx, priv, raw); err == nil {
		t.Fatal("SignPayload signed a bundle with a trust block in a policy")
	}
	trustEnv, err := sign.Sign(ctx, priv, fleet.BundlePayloadType, raw) // signed by hand
	if err != nil {
		t.Fatal(err)
	}
	envJSON, _ := json.Marshal(trustEnv)
	a.fleetApply(ctx, envJSON, "test")
	clash := fleet.PolicyRule{Name: "clash", Scope: "global", Rule: 10,
		YAML: "version: 1\nname: clash\nmode: enforce\nrules:\n- id: local-allow-keep\n  on: [exec]\n  action: deny\n"}
	a.fleetApply(ctx, bundle(3, clash), "test")
	s.fail = errors.New("the kernel says no")
	a.fleetApply(ctx, bundle(4, watchEtc), "test")
	s.fail = nil
	if got, want := strings.Join(a.refusals(), ","), "malformed,policy,policy"; got != want {
		t.Fatalf("refusals: %s, want %s", got, want)
	}
	if a.fleetApplied() != 1 || s.inForce != inForce || len(a.fleet.bundle.Load().Policies) != 2 {
		t.Fatalf("a refused bundle changed what is in force: version %d, policy %p (was %p)", a.fleetApplied(), s.inForce, inForce)
	}

	// The same policies in a newer bundle: not enforced again.
	a.fleetApply(ctx, bundle(5, denyData, watchEtc), "test")
	if a.fleetApplied() != 5 || s.calls != calls+2 { // +2: the refused attempt of v4 and the restore
		t.Fatalf("same policies again: version %d, enforce calls %d (was %d)", a.fleetApplied(), s.calls, calls)
	}

	// A restart: the kept bundle's policies are merged at start.
	b := fleetAgent(t, pub)
	b.cfg.StateDir = a.cfg.StateDir
	restartFleet(t, b, pub)
	if len(b.policy.fleet.ps) != 2 {
		t.Fatalf("restarted agent: %d fleet policies kept, want 2", len(b.policy.fleet.ps))
	}
	sb := &enforcerSensor{}
	var snb sensor.Sensor = sb
	b.sensor.Store(&snb)
	if _, err := b.applyPolicyParts([]policyPart{{"local.yaml", local}}); err != nil {
		t.Fatal(err)
	}
	if got := sb.inForce.Evaluate(fileWrite("/srv/data/x"), nil); got.Rule != "fleet-no-data" || !got.Enforced {
		t.Fatalf("restarted agent, /srv/data/x: %+v, want the fleet deny", got)
	}

	// A bundle without policies takes them out; the local policy stays.
	a.fleetApply(ctx, bundle(6), "test")
	if got := decide("/srv/data/x"); got.Rule != "" {
		t.Fatalf("after a bundle without policies, /srv/data/x: %+v", got)
	}
	if got := decide("/srv/data/keep"); got.Rule != "local-allow-keep" {
		t.Fatalf("after a bundle without policies, the local rule: %+v", got)
	}
}

// TestFleetPreview: a rollout's preview arrives in monitor mode: a
// previewed hash deny is not enforced (the code stays trusted) and its
// events are marked as would-be denied by the fleet rule; a previewed
// policy's rules record only, though the document says enforce.
func TestFleetPreview(t *testing.T) {
	ctx := context.Background()
	pub, priv, _ := sign.GenerateKey()
	a := fleetAgent(t, pub)
	s := &enforcerSensor{}
	var sn sensor.Sensor = s
	a.sensor.Store(&sn)
	a.xc.db.Approve(ctx, sum("tool"), "")
	env, err := fleet.SignBundle(ctx, priv, fleet.Bundle{Host: "me", Version: 1, Issued: time.Now(),
		Hashes: []fleet.HashRule{{SHA256: hexSum("tool"), Verdict: fleet.Deny, Scope: "tag:canary", Rule: 4, Mode: fleet.Monitor}},
		Policies: []fleet.PolicyRule{{Name: "p", Scope: "global", Rule: 5, Mode: fleet.Monitor,
			YAML: "version: 1\nname: p\nmode: enforce\nrules:\n- id: r1\n  on: [file_modify]\n  action: deny\n  mode: enforce\n  match: {target: {path_prefix: /srv}}\n"}}})
	if err != nil {
		t.Fatal(err)
	}
	a.fleetApply(ctx, env, "test")
	if r := a.refusals(); len(r) != 0 || a.fleetApplied() != 1 {
		t.Fatalf("refusals %v, version %d", r, a.fleetApplied())
	}
	xc, _, err := a.buildExecControl(ctx, &policy.Trust{Mode: "lockdown", Sources: []string{"database"}})
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := xc.Trust[sum("tool")]; !ok || !v {
		t.Fatalf("a previewed deny was enforced: trusted %v (known %v)", v, ok)
	}
	ev := &vigilv1.Event{Kind: "exec", Trust: &vigilv1.Trust{Sha256: hexSum("tool"), Verdict: "trusted", Source: "database", Mode: "lockdown"}}
	a.fleetPreview(ev)
	if tr := ev.GetTrust(); tr.GetVerdict() != "denied" || tr.GetMode() != "monitor" || !strings.Contains(tr.GetSource(), "rule 4") {
		t.Fatalf("previewed event: %v, want a would-be deny by fleet rule 4", tr)
	}
	other := &vigilv1.Event{Kind: "exec", Trust: &vigilv1.Trust{Sha256: hexSum("other"), Verdict: "trusted"}}
	a.fleetPreview(other)
	if other.GetTrust().GetVerdict() != "trusted" {
		t.Fatalf("an event of other code was marked: %v", other.GetTrust())
	}
	if !a.fleetWanted(ev) {
		t.Fatal("a would-be denied event is not uploaded")
	}
	got := s.inForce.Evaluate(fileWrite("/srv/x"), nil)
	if got.Rule != "r1" || got.Mode != policy.Monitor || got.Enforced {
		t.Fatalf("previewed policy decides %+v, want r1 in monitor mode", got)
	}
}

// TestFleetStatus: the status reports the bundle in force and its rules,
// the last contact and the last error.
func TestFleetStatus(t *testing.T) {
	ctx := context.Background()
	pub, priv, _ := sign.GenerateKey()
	a := fleetAgent(t, pub)
	if st := a.fleetStatus(); st.GetAppliedVersion() != 0 || st.GetEnrolled() || st.GetLastContact() != nil || st.GetHostId() != "me" {
		t.Fatalf("before anything: %v", st)
	}
	env, _ := fleet.SignBundle(ctx, priv, fleet.Bundle{Host: "me", Version: 3, Issued: time.Now(),
		Hashes: []fleet.HashRule{{SHA256: hexSum("a"), Verdict: fleet.Allow, Scope: "global"}, {SHA256: hexSum("b"), Verdict: fleet.Deny, Scope: "global"}}})
	a.fleetApply(ctx, env, "test")
	msg := "sync: unavailable"
	a.fleet.lastErr.Store(&msg)
	a.fleet.lastContact.Store(time.Now().UnixNano())
	st := a.fleetStatus()
	if st.GetAppliedVersion() != 3 || st.GetHashes() != 2 || st.GetPolicies() != 0 || st.GetLastContact() == nil ||
		st.GetLastError() != msg || st.GetBundleIssued() == nil || st.GetServer() != "127.0.0.1:1" {
		t.Fatalf("after a bundle: %v", st)
	}
	var none agent
	if none.fleetStatus() != nil {
		t.Fatal("a host outside a fleet has a fleet status")
	}
}
