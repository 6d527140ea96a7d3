package policy

import (
	"fmt"
	"strings"
)

// Merge combines policies given together (`vigil agent --policy A --policy
// B`) into one: the rules of A, then those of B, in order (first match
// still decides); at most one of them may have a trust block. Rule ids
// must be unique across them. The merged policy enforces by default when
// any part does. names name the parts, for errors.
func Merge(names []string, parts []*Policy) (*Policy, error) {
	if len(parts) == 1 {
		return parts[0], nil
	}
	if len(parts) == 0 || len(names) != len(parts) {
		return nil, fmt.Errorf("merge: %d policies, %d names", len(parts), len(names))
	}
	m := &Policy{Version: 1, Mode: Monitor}
	var pnames, descs []string
	ruleFrom := map[string]string{}
	trustFrom := ""
	for i, p := range parts {
		pnames = append(pnames, p.Name)
		if p.Description != "" {
			descs = append(descs, p.Description)
		}
		if p.Mode == Enforce {
			m.Mode = Enforce
		}
		for _, r := range p.Rules {
			if prev, ok := ruleFrom[r.ID]; ok {
				return nil, fmt.Errorf("%s: rule %s: also in %s (rule ids must be unique across the policies given together)", names[i], r.ID, prev)
			}
			ruleFrom[r.ID] = names[i]
			m.Rules = append(m.Rules, r)
		}
		if p.Trust != nil {
			if trustFrom != "" {
				return nil, fmt.Errorf("%s: a trust block, and %s has one too (one policy given together may have one)", names[i], trustFrom)
			}
			trustFrom, m.Trust = names[i], p.Trust
		}
	}
	if len(m.Rules) > MaxRules {
		return nil, fmt.Errorf("%s: %d rules together, at most %d", strings.Join(names, " + "), len(m.Rules), MaxRules)
	}
	m.Name = strings.Join(pnames, "+")
	m.Description = strings.Join(descs, " / ")
	m.digest = digest(m)
	return m, nil
}

// AsMonitor returns a copy of p with every rule, and the default, in
// monitor mode: what p would decide, recorded and not enforced (a fleet
// rollout's preview).
func AsMonitor(p *Policy) *Policy {
	m := *p
	m.Mode = Monitor
	m.Rules = make([]*Rule, len(p.Rules))
	for i, r := range p.Rules {
		c := *r
		c.Mode = Monitor
		m.Rules[i] = &c
	}
	m.digest = digest(&m)
	return &m
}
