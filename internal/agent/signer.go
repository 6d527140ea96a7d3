package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/vigil-hips/vigil/internal/policy"
	"github.com/vigil-hips/vigil/internal/sensor"
)

// process.signer in the agent: a policy names signers by key ID; the
// kernel decides on digests. The agent expands each signer into the
// digests of its catalogs in the trust database (those whose signature
// verifies with its key, catalog_dir's included once added) and binds
// them to the policy it has the sensor enforce, which compiles them like
// a process.sha256 list. When the database changes (a catalog added,
// replaced or gone with its signer) and the expansion with it, the policy
// in force is compiled again and swapped in atomically, as `vigil policy
// apply` does; if that fails, the previous expansion stays in force.

// signerBinding is what the expansion in force was made from.
type signerBinding struct {
	gen uint64 // trust database generation it was read at
	sig string // digest of the expansion; "" none
}

// bindSignersLocked returns p with its signers' catalogs bound, the trust
// database's problems with them (warnings), and what the binding was made
// from. A policy without process.signer is returned as it is. The caller
// holds a.policy.mu.
func (a *agent) bindSignersLocked(ctx context.Context, p *policy.Policy) (*policy.Policy, []string, signerBinding, error) {
	if p == nil || a.xc == nil {
		return p, nil, signerBinding{}, nil
	}
	ids := p.Signers()
	if len(ids) == 0 {
		return p, nil, signerBinding{}, nil
	}
	gen, err := a.xc.db.Generation(ctx)
	if err != nil {
		return nil, nil, signerBinding{}, fmt.Errorf("process.signer: trust database: %w", err)
	}
	signed, problems, err := a.xc.db.SignedDigests(ctx, ids)
	if err != nil {
		return nil, nil, signerBinding{}, fmt.Errorf("process.signer: trust database: %w", err)
	}
	cats := policy.Catalogs{}
	h := sha256.New()
	for _, id := range slices.Sorted(maps.Keys(signed)) {
		ds := make([]string, len(signed[id]))
		fmt.Fprintf(h, "%s:", id)
		for i, d := range signed[id] {
			ds[i] = hex.EncodeToString(d[:])
			h.Write(d[:])
		}
		h.Write([]byte{'\n'})
		cats[id] = ds
	}
	return p.WithCatalogs(cats), problems, signerBinding{gen: gen, sig: hex.EncodeToString(h.Sum(nil))}, nil
}

// rebindSignersLocked compiles the policy in force again when the trust
// database changed its signers' catalogs, and swaps it in. The caller
// holds a.policy.mu.
func (a *agent) rebindSignersLocked(ctx context.Context) {
	p := a.policy.p
	if p == nil || len(p.Signers()) == 0 {
		return
	}
	gen, err := a.xc.db.Generation(ctx)
	if err != nil || gen == a.policy.signers.gen {
		return
	}
	bound, problems, b, err := a.bindSignersLocked(ctx, p)
	if err != nil {
		a.log.Error("process.signer: catalogs not read again; the previous expansion stays in force", "err", err)
		return
	}
	if b.sig == a.policy.signers.sig {
		a.policy.signers.gen = gen
		return
	}
	ptr := a.sensor.Load()
	if ptr == nil {
		return
	}
	enf, ok := (*ptr).(sensor.Enforcer)
	if !ok {
		return
	}
	ws, err := enf.Enforce(bound)
	if err != nil {
		// Not tried again until the database changes again.
		a.policy.signers.gen = gen
		const prefix = "process.signer: the catalogs changed but the policy could not be compiled with them"
		ws := slices.DeleteFunc(slices.Clone(a.policy.warnings), func(w string) bool { return strings.HasPrefix(w, prefix) })
		a.policy.warnings = append(ws, fmt.Sprintf("%s; the previous expansion stays in force: %v", prefix, err))
		a.log.Error("process.signer: policy not recompiled; the previous one stays in force", "err", err)
		return
	}
	ws = append(ws, problems...)
	if a.xc != nil {
		ws = append(ws, a.xc.warnings...)
	}
	a.policy.p, a.policy.signers, a.policy.warnings = bound, b, ws
	n := 0
	for _, ds := range bound.Catalogs() {
		n += len(ds)
	}
	a.log.Info("process.signer: catalogs changed, policy recompiled", "digest", p.Digest(), "signers", len(p.Signers()), "signed_digests", n, "generation", gen)
}
