package agent

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/vigil-hips/vigil/internal/fleet"
	"github.com/vigil-hips/vigil/internal/policy"
	"github.com/vigil-hips/vigil/internal/sensor"
)

// Behavior policies from fleet bundles (docs/fleet.md). Precedence, here
// and in effectiveLocked only: the filter clients' kernel rules, then the
// local policy files, then the fleet's policies in the bundle's order
// (by name, then scope); the first rule that matches decides, so a fleet
// rule never overrides a local one. A fleet policy has no trust block
// (fleet.PolicyRule.Parse refuses one).

// fleetPolicies is the fleet's part of the policy in force.
type fleetPolicies struct {
	names  []string // "fleet rule N (scope): NAME", for errors and status
	ps     []*policy.Policy
	digest string // the parts' digests, to skip re-enforcing the same parts
}

// parseFleetPolicies parses the bundle's behavior policies as local
// policy files are parsed.
func parseFleetPolicies(b *fleet.Bundle) (fleetPolicies, error) {
	var (
		fp      fleetPolicies
		digests []string
	)
	if b == nil {
		return fp, nil
	}
	for _, r := range b.Policies {
		p, err := r.Parse()
		if err != nil {
			return fleetPolicies{}, fmt.Errorf("fleet rule %d (%s): %w", r.Rule, r.Scope, err)
		}
		fp.names = append(fp.names, fmt.Sprintf("fleet rule %d (%s): %s", r.Rule, r.Scope, r.Name))
		fp.ps = append(fp.ps, p)
		digests = append(digests, p.Digest())
	}
	fp.digest = strings.Join(digests, ",")
	return fp, nil
}

// errFleetPolicy is wrapped by the errors of fleet policies that parse but
// cannot be put in force on this host (a rule id also in the local policy,
// too many rules together, the kernel refused them).
var errFleetPolicy = errors.New("fleet policy refused")

// setFleetPolicies puts fp in force after the local policy, without a
// restart; on error the policy in force is unchanged. It returns the
// previous fleet policies (to restore them) and whether anything changed.
func (a *agent) setFleetPolicies(fp fleetPolicies) (prev fleetPolicies, changed bool, err error) {
	a.policy.mu.Lock()
	defer a.policy.mu.Unlock()
	prev = a.policy.fleet
	if fp.digest == prev.digest && slices.Equal(fp.names, prev.names) {
		return prev, false, nil
	}
	ptr := a.sensor.Load()
	if ptr == nil {
		// Not attached yet (at start): startPolicy merges them.
		a.policy.fleet = fp
		return prev, true, nil
	}
	enf, ok := (*ptr).(sensor.Enforcer)
	if !ok {
		if len(fp.ps) == 0 {
			a.policy.fleet = fp
			return prev, true, nil
		}
		return prev, false, fmt.Errorf("%w: this sensor cannot enforce a policy", errFleetPolicy)
	}
	// A fleet rule's process.signer counts its signer's catalogs, as a
	// local rule's does.
	p, signerWarnings, binding, err := a.boundLocked(a.policy.clients, fp)
	if err != nil {
		return prev, false, fmt.Errorf("%w: %w", errFleetPolicy, err)
	}
	warnings, err := enf.Enforce(p)
	if err != nil {
		if _, rerr := enf.Enforce(a.policy.p); rerr != nil {
			a.log.Error("previous policy not restored after the fleet policies were refused", "err", rerr)
		}
		return prev, false, fmt.Errorf("%w: %w", errFleetPolicy, err)
	}
	warnings = append(warnings, signerWarnings...)
	a.policy.fleet, a.policy.p, a.policy.signers = fp, p, binding
	a.policy.appliedAt = time.Now()
	for _, w := range warnings {
		a.log.Warn("fleet policy applied in part", "warning", w)
	}
	if p != nil {
		a.log.Info("fleet policies in force", "policies", len(fp.ps), "digest", p.Digest(), "rules", len(p.Rules))
	} else {
		a.log.Info("fleet policies removed; no policy in force")
	}
	return prev, true, nil
}
