package fleetsrv

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	fleetv1 "github.com/vigil-hips/vigil/api/vigil/fleet/v1"
	"github.com/vigil-hips/vigil/internal/fleet"
	"github.com/vigil-hips/vigil/internal/fleet/fleetdb"
	"github.com/vigil-hips/vigil/internal/sign"
)

// adminServer is the FleetAdmin service. It is served on a unix socket
// only root can open: whoever reaches it administers the fleet (and, on a
// server with a signing key, signs bundles with it).
type adminServer struct {
	fleetv1.UnimplementedFleetAdminServer
	s *Server
}

func grpcErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, fleetdb.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, fleetdb.ErrConflict), errors.Is(err, fleetdb.ErrOldVersion), errors.Is(err, fleet.ErrOldVersion):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, fleet.ErrBadSignature), errors.Is(err, fleet.ErrUnsigned), errors.Is(err, fleet.ErrWrongHost),
		errors.Is(err, fleet.ErrMalformed):
		return status.Error(codes.InvalidArgument, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}

func hostProto(h fleetdb.Host, b fleetdb.BundleState) *fleetv1.Host {
	p := &fleetv1.Host{Id: h.ID, Hostname: h.Hostname, Tags: h.Tags, Revoked: h.Revoked, BundleVersion: b.Version,
		AppliedVersion: h.AppliedVersion, LastEventId: h.LastEventID, EventsLost: h.EventsLost, KernelLost: h.KernelLost,
		AgentVersion: h.AgentVersion, Backend: h.Backend, ExecMode: h.ExecMode,
		Guarantees: h.Guarantees}
	if !h.Enrolled.IsZero() {
		p.Enrolled = timestamppb.New(h.Enrolled)
	}
	if !h.LastSeen.IsZero() {
		p.LastSeen = timestamppb.New(h.LastSeen)
	}
	return p
}

func ruleProto(r fleetdb.Rule) *fleetv1.Rule {
	p := &fleetv1.Rule{Id: r.ID, Kind: r.Kind, Value: r.Value, Verdict: r.Verdict, Scope: r.Scope, Comment: r.Comment,
		Created: timestamppb.New(r.Created)}
	if r.Rollout.Stage != fleet.StageFull {
		p.Rollout = &fleetv1.Rollout{Stage: r.Rollout.Stage, Percent: r.Rollout.Percent, Tag: r.Rollout.Tag}
	}
	return p
}

func rolloutOf(p *fleetv1.Rollout) fleet.Rollout {
	return fleet.Rollout{Stage: p.GetStage(), Percent: p.GetPercent(), Tag: p.GetTag()}
}

func (a *adminServer) host(ctx context.Context, h fleetdb.Host) (*fleetv1.Host, error) {
	b, err := a.s.cfg.Store.Bundle(ctx, h.ID)
	if err != nil {
		return nil, grpcErr(err)
	}
	return hostProto(h, b), nil
}

func (a *adminServer) CreateEnrollSecret(ctx context.Context, req *fleetv1.CreateEnrollSecretRequest) (*fleetv1.CreateEnrollSecretResponse, error) {
	secret, err := NewSecret()
	if err != nil {
		return nil, grpcErr(err)
	}
	name := req.GetName()
	if name == "" {
		name = "unnamed"
	}
	var expires time.Time // zero: never
	if req.GetExpires() != nil {
		expires = req.GetExpires().AsTime()
	}
	if err := a.s.cfg.Store.AddSecret(ctx, name, HashSecret(secret), expires); err != nil {
		return nil, grpcErr(err)
	}
	a.s.log.Info("enrollment secret created", "name", name, "expires", expires)
	return &fleetv1.CreateEnrollSecretResponse{Secret: secret}, nil
}

func (a *adminServer) ListHosts(ctx context.Context, _ *fleetv1.ListHostsRequest) (*fleetv1.ListHostsResponse, error) {
	hs, err := a.s.cfg.Store.Hosts(ctx)
	if err != nil {
		return nil, grpcErr(err)
	}
	resp := &fleetv1.ListHostsResponse{}
	for _, h := range hs {
		p, err := a.host(ctx, h)
		if err != nil {
			return nil, err
		}
		resp.Hosts = append(resp.Hosts, p)
	}
	return resp, nil
}

func (a *adminServer) TagHost(ctx context.Context, req *fleetv1.TagHostRequest) (*fleetv1.Host, error) {
	for _, t := range append(req.GetAdd(), req.GetRemove()...) {
		if !hostIDRe.MatchString(t) {
			return nil, status.Errorf(codes.InvalidArgument, "tag %q: want 1-128 of [A-Za-z0-9._:-]", t)
		}
	}
	h, err := a.s.cfg.Store.TagHost(ctx, req.GetHostId(), req.GetAdd(), req.GetRemove())
	if err != nil {
		return nil, grpcErr(err)
	}
	if err := a.s.rebuild(ctx, h.ID); err != nil {
		return nil, grpcErr(err)
	}
	return a.host(ctx, h)
}

func (a *adminServer) RevokeHost(ctx context.Context, req *fleetv1.RevokeHostRequest) (*fleetv1.Host, error) {
	h, err := a.s.cfg.Store.RevokeHost(ctx, req.GetHostId())
	if err != nil {
		return nil, grpcErr(err)
	}
	a.s.log.Warn("host revoked", "host", h.ID)
	a.s.notify(h.ID) // its Watch stream ends
	return a.host(ctx, h)
}

func (a *adminServer) ListQueue(ctx context.Context, _ *fleetv1.ListQueueRequest) (*fleetv1.ListQueueResponse, error) {
	q, err := a.s.cfg.Sink.Queue(ctx)
	if err != nil {
		return nil, grpcErr(err)
	}
	resp := &fleetv1.ListQueueResponse{}
	for _, e := range q {
		resp.Entries = append(resp.Entries, &fleetv1.QueueEntry{Sha256: e.SHA256, Count: e.Count, Refused: e.Refused,
			Hosts: e.Hosts, FirstSeen: timestamppb.New(e.FirstSeen), LastSeen: timestamppb.New(e.LastSeen),
			Processes: e.Processes, Paths: e.Paths, Signers: e.Signers})
	}
	return resp, nil
}

func (a *adminServer) Approve(ctx context.Context, req *fleetv1.ApproveRequest) (*fleetv1.Rule, error) {
	if req.GetSignerKey() != "" {
		return a.approveSigner(ctx, req)
	}
	verdict := fleet.Allow
	if req.GetDeny() {
		verdict = fleet.Deny
	}
	r, err := a.AddRule(ctx, &fleetv1.Rule{Kind: fleet.KindSHA256, Value: req.GetSha256(), Verdict: verdict,
		Scope: req.GetScope(), Comment: req.GetComment()})
	if err != nil {
		return nil, err
	}
	if err := a.s.cfg.Sink.Dequeue(ctx, r.GetValue()); err != nil {
		return nil, grpcErr(err)
	}
	return r, nil
}

// approveSigner makes a signer rule of req.signer_key for req.scope and
// takes the digests hosts reported as listed by that signer off the queue.
func (a *adminServer) approveSigner(ctx context.Context, req *fleetv1.ApproveRequest) (*fleetv1.Rule, error) {
	if req.GetSha256() != "" || req.GetDeny() {
		return nil, status.Error(codes.InvalidArgument, "approve by signer: give signer_key alone (no sha256, no deny)")
	}
	pub, err := sign.ParsePublicKey([]byte(req.GetSignerKey()))
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "signer key: %v", err)
	}
	id, err := sign.KeyID(pub)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "signer key: %v", err)
	}
	r, err := a.AddRule(ctx, &fleetv1.Rule{Kind: fleet.KindSigner, Value: req.GetSignerKey(), Verdict: fleet.Allow,
		Scope: req.GetScope(), Comment: req.GetComment()})
	if err != nil {
		return nil, err
	}
	if _, err := a.s.cfg.Sink.DequeueSigner(ctx, id); err != nil {
		return nil, grpcErr(err)
	}
	return r, nil
}

// checkRule validates r and puts its value in canonical form.
func checkRule(r *fleetv1.Rule) error {
	if err := fleet.ValidScope(r.GetScope()); err != nil {
		return err
	}
	switch r.GetKind() {
	case fleet.KindSHA256:
		d, err := parseDigest(r.GetValue())
		if err != nil {
			return err
		}
		r.Value = d
		if r.GetVerdict() != fleet.Allow && r.GetVerdict() != fleet.Deny {
			return fmt.Errorf("verdict %q: want allow or deny", r.GetVerdict())
		}
	case fleet.KindSigner:
		pub, err := sign.ParsePublicKey([]byte(r.GetValue()))
		if err != nil {
			return err
		}
		pem, err := sign.MarshalPublicKey(pub)
		if err != nil {
			return err
		}
		r.Value = string(pem)
		if r.GetVerdict() == "" {
			r.Verdict = fleet.Allow
		}
		if r.GetVerdict() != fleet.Allow {
			return fmt.Errorf("signer verdict %q: want allow (revoke a signer by deleting its rule)", r.GetVerdict())
		}
	case fleet.KindPolicy:
		if strings.TrimSpace(r.GetComment()) == "" {
			return errors.New("a policy rule needs a name (comment)")
		}
		if _, err := (fleet.PolicyRule{Name: r.GetComment(), YAML: r.GetValue()}).Parse(); err != nil {
			return err
		}
		r.Verdict = "apply"
	default:
		return fmt.Errorf("rule kind %q: want sha256, signer or policy", r.GetKind())
	}
	return nil
}

func (a *adminServer) AddRule(ctx context.Context, req *fleetv1.Rule) (*fleetv1.Rule, error) {
	if err := checkRule(req); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	ro := rolloutOf(req.GetRollout())
	if err := ro.Validate(); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	r, err := a.s.cfg.Store.AddRule(ctx, fleetdb.Rule{Kind: req.GetKind(), Value: req.GetValue(), Verdict: req.GetVerdict(),
		Scope: req.GetScope(), Comment: req.GetComment(), Rollout: ro})
	if err != nil {
		return nil, grpcErr(err)
	}
	a.s.log.Info("rule added", "id", r.ID, "kind", r.Kind, "verdict", r.Verdict, "scope", r.Scope, "rollout", r.Rollout.String())
	if err := a.s.rebuild(ctx); err != nil {
		return nil, grpcErr(fmt.Errorf("rule %d stored, but bundles not remade: %w", r.ID, err))
	}
	return ruleProto(r), nil
}

func (a *adminServer) DeleteRule(ctx context.Context, req *fleetv1.DeleteRuleRequest) (*fleetv1.DeleteRuleResponse, error) {
	if err := a.s.cfg.Store.DeleteRule(ctx, req.GetId()); err != nil {
		return nil, grpcErr(err)
	}
	if err := a.s.rebuild(ctx); err != nil {
		return nil, grpcErr(err)
	}
	return &fleetv1.DeleteRuleResponse{}, nil
}

func (a *adminServer) ListRules(ctx context.Context, _ *fleetv1.ListRulesRequest) (*fleetv1.ListRulesResponse, error) {
	rs, err := a.s.cfg.Store.Rules(ctx)
	if err != nil {
		return nil, grpcErr(err)
	}
	hs, err := a.s.cfg.Store.Hosts(ctx)
	if err != nil {
		return nil, grpcErr(err)
	}
	resp := &fleetv1.ListRulesResponse{}
	for _, r := range rs {
		p := ruleProto(r)
		for _, h := range hs {
			if h.Revoked || !fleet.InScope(r.Scope, h.ID, h.Tags) {
				continue
			}
			p.ScopeHosts++
			if r.Rollout.Chosen(h.ID, h.Tags) {
				p.RolloutHosts++
			}
		}
		resp.Rules = append(resp.Rules, p)
	}
	return resp, nil
}

// UpdateRollout sets a rule's rollout or promotes it, and remakes the
// bundles.
func (a *adminServer) UpdateRollout(ctx context.Context, req *fleetv1.UpdateRolloutRequest) (*fleetv1.Rule, error) {
	ro := rolloutOf(req.GetRollout())
	if req.GetPromote() {
		rs, err := a.s.cfg.Store.Rules(ctx)
		if err != nil {
			return nil, grpcErr(err)
		}
		i := slices.IndexFunc(rs, func(r fleetdb.Rule) bool { return r.ID == req.GetId() })
		if i < 0 {
			return nil, status.Errorf(codes.NotFound, "rule %d: not found", req.GetId())
		}
		if ro, err = rs[i].Rollout.Promote(); err != nil {
			return nil, status.Errorf(codes.FailedPrecondition, "rule %d: %v", req.GetId(), err)
		}
	}
	if err := ro.Validate(); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	r, err := a.s.cfg.Store.SetRollout(ctx, req.GetId(), ro)
	if err != nil {
		return nil, grpcErr(err)
	}
	a.s.log.Info("rule rollout changed", "id", r.ID, "rollout", r.Rollout.String())
	if err := a.s.rebuild(ctx); err != nil {
		return nil, grpcErr(fmt.Errorf("rule %d changed, but bundles not remade: %w", r.ID, err))
	}
	return ruleProto(r), nil
}

func (a *adminServer) UnsignedBundles(ctx context.Context, _ *fleetv1.UnsignedBundlesRequest) (*fleetv1.UnsignedBundlesResponse, error) {
	bs, err := a.s.cfg.Store.Unsigned(ctx)
	if err != nil {
		return nil, grpcErr(err)
	}
	resp := &fleetv1.UnsignedBundlesResponse{}
	for _, b := range bs {
		resp.Bundles = append(resp.Bundles, &fleetv1.UnsignedBundle{HostId: b.Host, Version: b.Version, Payload: b.Payload})
	}
	return resp, nil
}

func (a *adminServer) PutBundle(ctx context.Context, req *fleetv1.PutBundleRequest) (*fleetv1.PutBundleResponse, error) {
	b, err := a.s.putSigned(ctx, req.GetEnvelope())
	switch {
	case errors.Is(err, errNotWaiting):
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	case err != nil:
		return nil, grpcErr(err)
	}
	return &fleetv1.PutBundleResponse{HostId: b.Host, Version: b.Version}, nil
}

func (a *adminServer) ListEvents(ctx context.Context, req *fleetv1.ListEventsRequest) (*fleetv1.ListEventsResponse, error) {
	f := fleetdb.EventFilter{Host: req.GetHostId(), Kind: req.GetKind(), Verdict: req.GetVerdict(),
		Offset: int(req.GetOffset()), Limit: int(req.GetLimit())}
	if req.GetSince() != nil {
		f.Since = req.GetSince().AsTime()
	}
	if req.GetUntil() != nil {
		f.Until = req.GetUntil().AsTime()
	}
	if f.Verdict != "" && !slices.Contains(fleetdb.Verdicts, f.Verdict) {
		return nil, status.Errorf(codes.InvalidArgument, "verdict %q: want one of %s", f.Verdict, strings.Join(fleetdb.Verdicts, ", "))
	}
	evs, total, err := a.s.cfg.Sink.QueryEvents(ctx, f)
	if err != nil {
		return nil, grpcErr(err)
	}
	resp := &fleetv1.ListEventsResponse{Total: uint64(total)}
	for i := len(evs) - 1; i >= 0; i-- { // oldest first, as before
		resp.Events = append(resp.Events, &fleetv1.ServerEvent{HostId: evs[i].Host, Event: evs[i].Event})
	}
	return resp, nil
}
