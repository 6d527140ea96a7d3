package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"time"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/filter"
	"github.com/vigil-hips/vigil/internal/policy"
	"github.com/vigil-hips/vigil/internal/sensor"
	"github.com/vigil-hips/vigil/internal/sign"
	"github.com/vigil-hips/vigil/internal/trust"
)

// The filter API (internal/filter) in the agent: its own socket, clients
// approved by a configuration signed with the admin key, notify from the
// pipeline, auth from the sensor's fanotify path, kernel rules merged into
// the policy in force ahead of the administrator's rules.

// startFilter creates the filter server; the caller serves it.
func (a *agent) startFilter(ctx context.Context) (*filter.Server, error) {
	opts := filter.Options{
		Log:         a.log.With("component", "filter"),
		Rules:       a.setClientRules,
		Report:      a.emit,
		AuthChanged: a.authChanged,
		CatalogSigner: func(ctx context.Context, sha [32]byte) string {
			d, err := a.xc.db.Lookup(ctx, sha, trust.Catalogs)
			if err != nil || d.Verdict != trust.Trusted {
				return ""
			}
			id, _ := strings.CutPrefix(d.Source, "catalog:")
			return id
		},
	}
	keyPath := a.cfg.AdminKeyPath
	if keyPath == "" {
		keyPath = DefaultAdminKey
	}
	admin, kerr := sign.LoadPublicKey(keyPath)
	if kerr != nil {
		opts.ConfigErr = fmt.Errorf("%w: admin key %s: %v", filter.ErrNoConfig, keyPath, kerr)
	} else {
		path := a.cfg.FilterClients
		if path == "" {
			path = DefaultFilterClients
		}
		opts.Config, opts.ConfigErr = filter.LoadConfig(ctx, path, admin)
	}
	if opts.ConfigErr != nil {
		a.log.Info("filter API: no client will be accepted", "why", opts.ConfigErr)
	}
	return filter.NewServer(opts), nil
}

// authorizeFile is the sensor's hook on the fanotify path: Vigil's own
// policy has allowed the exec (or the open); now the clients are asked.
func (a *agent) authorizeFile(ev *vigilv1.Event, key string) sensor.AuthDecision {
	f := a.filter.Load()
	if f == nil {
		return sensor.AuthDecision{Allow: true}
	}
	d := f.Authorize(ev, key)
	return sensor.AuthDecision{Allow: d.Allow, Clients: d.Clients, Cacheable: d.Cacheable}
}

// authChanged: the auth clients changed. Verdicts the kernel keeps are
// dropped (a new client must be asked), and the sensor asks about opens
// only while some client authorizes them.
func (a *agent) authChanged(open bool) {
	ptr := a.sensor.Load()
	if ptr == nil {
		return
	}
	if f, ok := (*ptr).(interface{ ForgetExecVerdicts() }); ok {
		f.ForgetExecVerdicts()
	}
	au, ok := (*ptr).(sensor.Authorizer)
	if !ok {
		if open {
			a.log.Warn("filter API: a client authorizes opens, but this sensor cannot ask about them")
		}
		return
	}
	if err := au.SetOpenAuth(open); err != nil {
		a.log.Warn("filter API: open authorization", "open", open, "err", err)
		return
	}
	a.log.Info("filter API: open authorization", "on", open)
}

// effectiveLocked is the policy to enforce: the clients' kernel rules
// (each id prefixed client-NAME-), then the base policy files, then the
// fleet bundle's behavior policies (docs/fleet.md: local rules decide
// first; first match wins). The caller holds a.policy.mu.
func (a *agent) effectiveLocked(names []string, ps []*policy.Policy, clients map[string]map[string][]byte, fl fleetPolicies) (*policy.Policy, error) {
	names = append(slices.Clone(names), fl.names...)
	ps = append(slices.Clone(ps), fl.ps...)
	var rules []*policy.Rule
	for _, name := range slices.Sorted(maps.Keys(clients)) {
		for _, id := range slices.Sorted(maps.Keys(clients[name])) {
			file := fmt.Sprintf("filter client %s, rule %s", name, id)
			r, err := policy.ParseRule(file, clients[name][id], policy.Enforce)
			if err != nil {
				return nil, err
			}
			if r.Action != policy.Deny && r.Action != policy.Kill {
				return nil, fmt.Errorf("%s: action %s: a client may only add deny or kill rules", file, r.Action)
			}
			r.ID = "client-" + name + "-" + id
			r.Mode = policy.Enforce
			rules = append(rules, r)
		}
	}
	if len(rules) > 0 {
		names = append([]string{"filter clients"}, names...)
		ps = append([]*policy.Policy{policy.WithRules("filter-clients", rules)}, ps...)
	}
	if len(ps) == 0 {
		return nil, nil
	}
	return policy.Merge(names, ps)
}

// boundLocked is effectiveLocked with its process.signer conditions bound
// to their signers' catalogs (bindSignersLocked): what a change of the
// clients' rules or of the fleet's policies, or a start without a policy
// file, enforces. The caller holds a.policy.mu.
func (a *agent) boundLocked(clients map[string]map[string][]byte, fl fleetPolicies) (*policy.Policy, []string, signerBinding, error) {
	p, err := a.effectiveLocked(a.policy.baseNames, a.policy.base, clients, fl)
	if err != nil {
		return nil, nil, signerBinding{}, err
	}
	return a.bindSignersLocked(context.Background(), p)
}

// setClientRules makes rules the kernel rules of a filter client (none:
// removes them) and enforces the result at once; on error nothing changes.
func (a *agent) setClientRules(client string, rules map[string][]byte) error {
	ptr := a.sensor.Load()
	if ptr == nil {
		return errors.New("the sensors are not attached yet")
	}
	enf, ok := (*ptr).(sensor.Enforcer)
	if !ok {
		return errors.New("this sensor cannot enforce rules")
	}
	a.policy.mu.Lock()
	defer a.policy.mu.Unlock()
	next := maps.Clone(a.policy.clients)
	if next == nil {
		next = map[string]map[string][]byte{}
	}
	if len(rules) == 0 {
		delete(next, client)
	} else {
		next[client] = rules
	}
	p, sws, binding, err := a.boundLocked(next, a.policy.fleet)
	if err != nil {
		return err
	}
	ws, err := enf.Enforce(p)
	if err != nil {
		return err
	}
	ws = append(ws, sws...)
	a.policy.clients, a.policy.p, a.policy.signers = next, p, binding
	if p != nil && a.policy.appliedAt.IsZero() {
		a.policy.appliedAt = time.Now()
	}
	for _, w := range ws {
		a.log.Warn("client rule applied in part", "client", client, "warning", w)
	}
	a.log.Info("filter client rules in force", "client", client, "rules", len(rules))
	return nil
}

// filterSocket is the filter API's socket: the configured one, or
// filter.sock next to the agent API's.
func (a *agent) filterSocket() string {
	if a.cfg.FilterSocket != "" {
		return a.cfg.FilterSocket
	}
	return filepath.Join(filepath.Dir(a.cfg.Socket), "filter.sock")
}
