package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
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
	mu        sync.Mutex
	p         *policy.Policy
	source    string
	appliedAt time.Time
	warnings  []string
}

// applyPolicy parses content, has the sensor enforce it and, once it is in
// force, keeps it in the state directory. Any failure leaves the policy in
// force unchanged.
func (a *agent) applyPolicy(name string, content []byte) (*vigilv1.PolicyStatus, error) {
	p, err := policy.Parse(name, content)
	if err != nil {
		return nil, fmt.Errorf("%w:\n%w", ErrBadPolicy, err)
	}
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
	warnings, err := enf.Enforce(p)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrBadPolicy, name, err)
	}
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
	for _, w := range warnings {
		a.log.Warn("policy applied in part", "policy", name, "warning", w)
	}
	a.log.Info("policy applied", "policy", name, "digest", p.Digest(), "rules", len(p.Rules), "mode", p.Mode)
	if err := a.keepPolicy(name, content); err != nil {
		a.log.Error("policy in force but not kept for restarts", "err", err)
	}
	return a.policyStatusLocked(enf), nil
}

// keepPolicy writes the policy in force to the state directory,
// atomically (write, sync, rename).
func (a *agent) keepPolicy(name string, content []byte) error {
	for file, data := range map[string][]byte{policyFile: content, policyNameFile: []byte(name)} {
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
	return nil
}

// startPolicy applies the policy the agent starts with: the --policy file,
// else the one kept in the state directory, else none.
func (a *agent) startPolicy() error {
	path := a.cfg.PolicyPath
	name := path
	if path == "" {
		path = filepath.Join(a.cfg.StateDir, policyFile)
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			return nil
		}
		name = path
		if b, err := os.ReadFile(filepath.Join(a.cfg.StateDir, policyNameFile)); err == nil {
			name = string(b)
		}
	}
	content, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("policy: %w", err)
	}
	if _, err := a.applyPolicy(name, content); err != nil {
		return err
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
