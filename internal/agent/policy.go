package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/policy"
	"github.com/vigil-hips/vigil/internal/sensor"
)

// The policy in force is kept in the state directory, so a restarted
// agent enforces the last policy applied without being told again.
const (
	policyFile     = "policy.yaml"
	policyNameFile = "policy.name"
)

// ErrBadPolicy is wrapped by errors about the policy itself (it does not
// parse, validate or compile); the policy in force stays in force.
var ErrBadPolicy = errors.New("policy refused")

// policyState is the policy in force.
type policyState struct {
	mu sync.Mutex
	p  *policy.Policy // in force: clients' kernel rules, then base
	// base is the policy files applied (names, parsed); clients the
	// filter API clients' kernel rules (rule YAML by id, by client).
	baseNames []string
	base      []*policy.Policy
	clients   map[string]map[string][]byte
	// fleet is the behavior policies of the applied fleet bundle, merged
	// after base (fleetpolicy.go).
	fleet     fleetPolicies
	source    string
	appliedAt time.Time
	warnings  []string
	// signers is what p's process.signer expansion was made from.
	signers signerBinding
}

// policyPart is one policy file: its name (for error positions) and
// content.
type policyPart struct {
	name    string
	content []byte
}

// applyPolicy makes one policy file the policy in force (ApplyPolicy RPC).
func (a *agent) applyPolicy(name string, content []byte) (*vigilv1.PolicyStatus, error) {
	return a.applyPolicyParts([]policyPart{{name, content}})
}

// applyPolicyParts parses the parts, merges them, has the sensor enforce
// the result and, once it is in force, keeps the parts in the state
// directory. Any failure leaves the policy in force unchanged.
func (a *agent) applyPolicyParts(parts []policyPart) (*vigilv1.PolicyStatus, error) {
	var (
		names []string
		ps    []*policy.Policy
	)
	for _, pt := range parts {
		p, err := policy.Parse(pt.name, pt.content)
		if err != nil {
			return nil, fmt.Errorf("%w:\n%w", ErrBadPolicy, err)
		}
		names, ps = append(names, pt.name), append(ps, p)
	}
	if _, err := policy.Merge(names, ps); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadPolicy, err)
	}
	name := strings.Join(names, " + ")
	ptr := a.sensor.Load()
	if ptr == nil {
		return nil, errors.New("the sensors are not attached yet")
	}
	enf, ok := (*ptr).(sensor.Enforcer)
	if !ok {
		return nil, errors.New("this sensor cannot enforce a policy")
	}
	a.policy.mu.Lock()
	defer a.policy.mu.Unlock()
	// Filter API clients' kernel rules stay in force across policies.
	p, err := a.effectiveLocked(names, ps, a.policy.clients, a.policy.fleet)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadPolicy, err)
	}
	if p.Trust != nil && p.Trust.CatalogDir != "" && a.xc != nil {
		// Catalogs the policy brings count for its signer conditions at
		// once; refusals are reported by execution control below.
		a.addCatalogs(context.Background(), p.Trust.CatalogDir)
	}
	p, signerWarnings, binding, err := a.bindSignersLocked(context.Background(), p)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	warnings, err := enf.Enforce(p)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrBadPolicy, name, err)
	}
	warnings = append(warnings, signerWarnings...)
	xw, err := a.setExecControlLocked(context.Background(), p.Trust)
	if err != nil {
		// Put the previous policy's rules back: nothing of this one applies.
		if _, rerr := enf.Enforce(a.policy.p); rerr != nil {
			a.log.Error("previous policy not restored after execution control failed", "err", rerr)
		}
		return nil, fmt.Errorf("%s: execution control: %w", name, err)
	}
	warnings = append(warnings, xw...)
	a.policy.p, a.policy.source, a.policy.appliedAt, a.policy.warnings = p, name, time.Now(), warnings
	a.policy.signers = binding
	a.policy.baseNames, a.policy.base = names, ps
	for _, w := range warnings {
		a.log.Warn("policy applied in part", "policy", name, "warning", w)
	}
	a.log.Info("policy applied", "policy", name, "digest", p.Digest(), "rules", len(p.Rules), "mode", p.Mode)
	if err := a.keepPolicy(parts); err != nil {
		a.log.Error("policy in force but not kept for restarts", "err", err)
	}
	return a.policyStatusLocked(enf), nil
}

// keptPart is the state directory file of part i: policy.yaml, then
// policy.1.yaml, policy.2.yaml, ...
func keptPart(i int) string {
	if i == 0 {
		return policyFile
	}
	return fmt.Sprintf("policy.%d.yaml", i)
}

// keepPolicy writes the parts of the policy in force to the state
// directory, each atomically (write, sync, rename); policy.name lists
// their names, one a line.
func (a *agent) keepPolicy(parts []policyPart) error {
	var names []string
	files := map[string][]byte{}
	for i, pt := range parts {
		names = append(names, pt.name)
		files[keptPart(i)] = pt.content
	}
	files[policyNameFile] = []byte(strings.Join(names, "\n"))
	for file, data := range files {
		tmp, err := os.CreateTemp(a.cfg.StateDir, file+".*")
		if err != nil {
			return err
		}
		_, werr := tmp.Write(data)
		serr := tmp.Sync()
		cerr := tmp.Close()
		if err := errors.Join(werr, serr, cerr); err != nil {
			os.Remove(tmp.Name())
			return err
		}
		if err := os.Rename(tmp.Name(), filepath.Join(a.cfg.StateDir, file)); err != nil {
			os.Remove(tmp.Name())
			return err
		}
	}
	for i := len(parts); ; i++ {
		if err := os.Remove(filepath.Join(a.cfg.StateDir, keptPart(i))); err != nil {
			break
		}
	}
	return nil
}

// startPolicy applies the policy the agent starts with: the --policy
// files, else the one kept in the state directory, else none.
func (a *agent) startPolicy() error {
	var parts []policyPart
	if len(a.cfg.PolicyPaths) > 0 {
		for _, path := range a.cfg.PolicyPaths {
			content, err := os.ReadFile(path)
			if err != nil {
				return fmt.Errorf("policy: %w", err)
			}
			parts = append(parts, policyPart{path, content})
		}
	} else {
		first := filepath.Join(a.cfg.StateDir, policyFile)
		if _, err := os.Stat(first); errors.Is(err, os.ErrNotExist) {
			return a.startWithoutPolicy()
		}
		var names []string
		if b, err := os.ReadFile(filepath.Join(a.cfg.StateDir, policyNameFile)); err == nil {
			names = strings.Split(string(b), "\n")
		}
		for i := 0; ; i++ {
			path := filepath.Join(a.cfg.StateDir, keptPart(i))
			content, err := os.ReadFile(path)
			if errors.Is(err, os.ErrNotExist) && i > 0 {
				break
			}
			if err != nil {
				return fmt.Errorf("policy: %w", err)
			}
			name := path
			if i < len(names) && names[i] != "" {
				name = names[i]
			}
			parts = append(parts, policyPart{name, content})
		}
	}
	if _, err := a.applyPolicyParts(parts); err != nil {
		if len(a.policy.fleet.ps) == 0 {
			return err
		}
		// The local policy is what the host must enforce: start with it,
		// without the kept bundle's policies, and say why.
		a.log.Error("fleet: the kept bundle's policies cannot be merged with the local policy; not applied", "err", err)
		a.policy.fleet = fleetPolicies{}
		if _, err := a.applyPolicyParts(parts); err != nil {
			return err
		}
	}
	return nil
}

// startWithoutPolicy makes sure nothing is enforced: a sensor that took
// over a previous agent's pinned maps would otherwise go on with its
// policy and trust set.
func (a *agent) startWithoutPolicy() error {
	ptr := a.sensor.Load()
	if ptr == nil {
		return nil
	}
	a.policy.mu.Lock()
	defer a.policy.mu.Unlock()
	if enf, ok := (*ptr).(sensor.Enforcer); ok {
		// The fleet's behavior policies, if the kept bundle has any.
		p, signerWarnings, binding, err := a.boundLocked(a.policy.clients, a.policy.fleet)
		if err != nil {
			return fmt.Errorf("fleet policies: %w", err)
		}
		if _, err := enf.Enforce(p); err != nil {
			return fmt.Errorf("clear the policy: %w", err)
		}
		for _, w := range signerWarnings {
			a.log.Warn("fleet policy applied in part", "warning", w)
		}
		a.policy.p, a.policy.signers = p, binding
		if p != nil {
			a.policy.appliedAt = time.Now()
		}
	}
	if _, err := a.setExecControlLocked(context.Background(), nil); err != nil {
		return fmt.Errorf("clear execution control: %w", err)
	}
	return nil
}

// policyStatus reports the policy in force, nil if none.
func (a *agent) policyStatus() *vigilv1.PolicyStatus {
	ptr := a.sensor.Load()
	if ptr == nil {
		return nil
	}
	enf, _ := (*ptr).(sensor.Enforcer)
	a.policy.mu.Lock()
	defer a.policy.mu.Unlock()
	return a.policyStatusLocked(enf)
}

func (a *agent) policyStatusLocked(enf sensor.Enforcer) *vigilv1.PolicyStatus {
	p := a.policy.p
	if p == nil {
		return nil
	}
	st := &vigilv1.PolicyStatus{
		Name:      p.Name,
		Digest:    p.Digest(),
		Mode:      string(p.Mode),
		Source:    a.policy.source,
		AppliedAt: timestamppb.New(a.policy.appliedAt),
		Warnings:  a.policy.warnings,
	}
	var hits map[string]uint64
	if enf != nil {
		var err error
		if hits, err = enf.RuleHits(); err != nil {
			a.log.Warn("rule hits unavailable", "err", err)
		}
	}
	for _, r := range p.Rules {
		st.Rules = append(st.Rules, &vigilv1.RuleHits{Rule: r.ID, Action: string(r.Action), Mode: string(r.Mode), Hits: hits[r.ID]})
	}
	return st
}

// ruleHits is the metrics' source of per-rule hit counters.
func (a *agent) ruleHits() map[string]uint64 {
	st := a.policyStatus()
	hits := map[string]uint64{}
	for _, r := range st.GetRules() {
		hits[r.Rule] = r.Hits
	}
	return hits
}
