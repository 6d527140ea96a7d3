// Package fleetsrv is `vigil server`: the fleet API agents call (service
// Fleet, gRPC over TLS, mutual TLS after enrollment) and the administrators'
// API (service FleetAdmin, on a local unix socket). State is in a
// fleetdb.Store and events go to a fleetdb.EventSink.
//
// Bundles: whenever the rules, a host's tags or a host's enrollment change,
// the server remakes the bundle of each affected host (the rules in its
// scopes). A bundle whose rules changed gets the host's next version. With
// a signing key the server signs it at once and pushes it to the host's
// Watch stream; without one it waits for an offline signature (PutBundle),
// and agents keep the bundle they have. docs/fleet.md has the trust model.
package fleetsrv

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"regexp"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	fleetv1 "github.com/vigil-hips/vigil/api/vigil/fleet/v1"
	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/fleet"
	"github.com/vigil-hips/vigil/internal/fleet/fleetdb"
	"github.com/vigil-hips/vigil/internal/sign"
	"github.com/vigil-hips/vigil/internal/trust"
)

// Config configures a server.
type Config struct {
	Store fleetdb.Store
	Sink  fleetdb.EventSink
	// CA issues host certificates. Required.
	CA *fleet.CA
	// Cert is the TLS server certificate. Required.
	Cert tls.Certificate
	// SigningKey, when set, signs bundles online. Nil: bundles wait for
	// an offline signature (PutBundle).
	SigningKey ed25519.PrivateKey
	// AdminKey, when set, is the public key bundles given to PutBundle
	// must verify with (the agents' --admin-key). Defaults to
	// SigningKey's public key.
	AdminKey ed25519.PublicKey
	Logger   *slog.Logger
	// Export, when set, is given the events each upload newly stored,
	// once they are stored, with their host's ID and Hostname (the OCSF
	// export): every event once, a retried upload's not again. With a stream that is when the consumer applies
	// it to the database, on the replica whose consumer did. Sink must then
	// be a fleetdb.StoreNotifier (both stores and the stream's Sink are).
	Export func(h fleetdb.Host, evs []*vigilv1.Event)
	// Notices, when set, carries change notices between replicas
	// sharing the Store (scale-out): every change this server makes is
	// published, and the server gives it those of the others through
	// Wake.
	Notices Notifier
	// Recheck, when positive, makes each Watch stream read its host's
	// bundle this often even without a notice: how a replica learns of
	// changes made by another when there are no notices, and a safety
	// net when there are.
	Recheck time.Duration
}

// Notifier tells the other replicas that a host's bundle or standing
// changed.
type Notifier interface {
	Changed(host string) error
}

// Validate reports every problem with c.
func (c Config) Validate() error {
	var errs []error
	if c.Store == nil || c.Sink == nil {
		errs = append(errs, errors.New("no store or event sink"))
	}
	if c.CA == nil {
		errs = append(errs, errors.New("no CA"))
	}
	if len(c.Cert.Certificate) == 0 {
		errs = append(errs, errors.New("no server certificate"))
	}
	if c.SigningKey != nil && c.AdminKey != nil && !c.AdminKey.Equal(c.SigningKey.Public()) {
		errs = append(errs, errors.New("the signing key is not the admin key's private half: agents would refuse every bundle"))
	}
	return errors.Join(errs...)
}

// Server is the fleet server.
type Server struct {
	fleetv1.UnimplementedFleetServer
	cfg   Config
	log   *slog.Logger
	admin *adminServer

	rebuildMu sync.Mutex // one bundle rebuild at a time (versions are read, then written)

	mu      sync.Mutex
	changed map[string]chan struct{} // closed when the host's bundle or standing changes

	stopping     chan struct{} // closed when Serve's context is done: Watch streams end
	stoppingOnce sync.Once
}

// New returns a server.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("fleet server: %w", err)
	}
	if cfg.AdminKey == nil && cfg.SigningKey != nil {
		cfg.AdminKey = cfg.SigningKey.Public().(ed25519.PublicKey)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, log: log, changed: map[string]chan struct{}{}, stopping: make(chan struct{})}
	s.admin = &adminServer{s: s}
	if cfg.Export != nil {
		n, ok := cfg.Sink.(fleetdb.StoreNotifier)
		if !ok {
			return nil, fmt.Errorf("fleet server: export: the event sink (%T) cannot tell what it stored", cfg.Sink)
		}
		if err := n.OnStored(cfg.Export); err != nil {
			return nil, fmt.Errorf("fleet server: export: %w", err)
		}
	}
	return s, nil
}

// GRPCServer returns the agents' gRPC server (TLS; host certificates
// verified when given, and required by every call but Enroll).
func (s *Server) GRPCServer() *grpc.Server {
	pool := x509.NewCertPool()
	pool.AddCert(s.cfg.CA.Cert)
	tc := &tls.Config{
		Certificates: []tls.Certificate{s.cfg.Cert},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    pool,
		MinVersion:   tls.VersionTLS13,
	}
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(tc)),
		grpc.UnaryInterceptor(s.unaryAuth), grpc.StreamInterceptor(s.streamAuth),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}))
	fleetv1.RegisterFleetServer(g, s)
	return g
}

// AdminGRPCServer returns the administrators' gRPC server, for the unix
// socket.
func (s *Server) AdminGRPCServer() *grpc.Server {
	g := grpc.NewServer()
	fleetv1.RegisterFleetAdminServer(g, s.admin)
	return g
}

// Serve serves agents on ln and administrators on adminLn until ctx is
// done.
func (s *Server) Serve(ctx context.Context, ln, adminLn net.Listener) error {
	g, ag := s.GRPCServer(), s.AdminGRPCServer()
	errc := make(chan error, 2)
	go func() { errc <- g.Serve(ln) }()
	go func() { errc <- ag.Serve(adminLn) }()
	select {
	case <-ctx.Done():
	case err := <-errc:
		g.Stop()
		ag.Stop()
		return err
	}
	s.stoppingOnce.Do(func() { close(s.stopping) })
	stopped := make(chan struct{})
	go func() {
		g.GracefulStop()
		ag.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		g.Stop()
		ag.Stop()
	}
	return nil
}

// ---------------------------------------------------------------- auth

type hostKey struct{}

// hostOf is the authenticated host of a call.
func hostOf(ctx context.Context) string {
	h, _ := ctx.Value(hostKey{}).(string)
	return h
}

// authenticate checks the peer's certificate: issued by the CA (verified
// by TLS), naming an enrolled host that is not revoked, and the host's
// current certificate (enrolling again replaces it).
func (s *Server) authenticate(ctx context.Context) (context.Context, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "no peer")
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.VerifiedChains) == 0 || len(ti.State.VerifiedChains[0]) == 0 {
		return nil, status.Error(codes.Unauthenticated, "no host certificate: enroll first")
	}
	cert := ti.State.VerifiedChains[0][0]
	id := cert.Subject.CommonName
	h, err := s.cfg.Store.Host(ctx, id)
	switch {
	case errors.Is(err, fleetdb.ErrNotFound):
		return nil, status.Errorf(codes.Unauthenticated, "host %q is not enrolled", id)
	case err != nil:
		return nil, status.Errorf(codes.Internal, "%v", err)
	case h.Revoked:
		return nil, status.Errorf(codes.PermissionDenied, "host %q is revoked", id)
	case h.CertSerial != cert.SerialNumber.Text(16):
		return nil, status.Errorf(codes.Unauthenticated, "host %q: this certificate was replaced by a later enrollment", id)
	}
	return context.WithValue(ctx, hostKey{}, id), nil
}

const enrollMethod = "/vigil.fleet.v1.Fleet/Enroll"

func (s *Server) unaryAuth(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if info.FullMethod == enrollMethod {
		return h(ctx, req)
	}
	ctx, err := s.authenticate(ctx)
	if err != nil {
		return nil, err
	}
	return h(ctx, req)
}

type authStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (a authStream) Context() context.Context { return a.ctx }

func (s *Server) streamAuth(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	ctx, err := s.authenticate(ss.Context())
	if err != nil {
		return err
	}
	return h(srv, authStream{ss, ctx})
}

// ---------------------------------------------------------------- change notification

// changedCh returns a channel closed at the host's next change.
func (s *Server) changedCh(host string) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch, ok := s.changed[host]
	if !ok {
		ch = make(chan struct{})
		s.changed[host] = ch
	}
	return ch
}

// notify wakes the host's Watch streams here and, through Notices, on the
// other replicas.
func (s *Server) notify(host string) {
	s.Wake(host)
	if s.cfg.Notices != nil {
		if err := s.cfg.Notices.Changed(host); err != nil {
			s.log.Warn("change notice not sent: other replicas learn of it at their next recheck", "host", host, "err", err)
		}
	}
}

// Wake wakes the host's Watch streams on this server (a change notice
// from another replica).
func (s *Server) Wake(host string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ch, ok := s.changed[host]; ok {
		close(ch)
		delete(s.changed, host)
	}
}

// ---------------------------------------------------------------- secrets

// HashSecret is how enrollment secrets are stored.
func HashSecret(secret string) []byte {
	sum := sha256.Sum256([]byte(strings.TrimSpace(secret)))
	return sum[:]
}

// NewSecret returns a random enrollment secret.
func NewSecret() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// AddSecret stores secret (for --enroll-secret-file).
func (s *Server) AddSecret(ctx context.Context, name, secret string) error {
	if len(strings.TrimSpace(secret)) < 16 {
		return errors.New("enrollment secret: shorter than 16 characters")
	}
	return s.cfg.Store.AddSecret(ctx, name, HashSecret(secret), time.Time{})
}

// ---------------------------------------------------------------- Fleet

var hostIDRe = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,128}$`)

func (s *Server) Enroll(ctx context.Context, req *fleetv1.EnrollRequest) (*fleetv1.EnrollResponse, error) {
	name, err := s.cfg.Store.CheckSecret(ctx, HashSecret(req.GetSecret()), time.Now())
	if errors.Is(err, fleetdb.ErrBadSecret) {
		s.log.Warn("enrollment refused: bad secret", "host", req.GetHostId(), "hostname", req.GetHostname())
		return nil, status.Error(codes.PermissionDenied, "unknown or expired enrollment secret")
	}
	if err != nil {
		return nil, status.Errorf(codes.Internal, "%v", err)
	}
	if !hostIDRe.MatchString(req.GetHostId()) {
		return nil, status.Errorf(codes.InvalidArgument, "host id %q: want 1-128 of [A-Za-z0-9._:-]", req.GetHostId())
	}
	for _, t := range req.GetTags() {
		if !hostIDRe.MatchString(t) {
			return nil, status.Errorf(codes.InvalidArgument, "tag %q: want 1-128 of [A-Za-z0-9._:-]", t)
		}
	}
	cert, err := s.cfg.CA.ClientCert(req.GetHostId(), req.GetPublicKey())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "%v", err)
	}
	h, err := s.cfg.Store.Enroll(ctx, fleetdb.Host{ID: req.GetHostId(), Hostname: req.GetHostname(), Tags: req.GetTags(),
		Enrolled: time.Now(), CertSerial: cert.SerialNumber.Text(16)})
	if errors.Is(err, fleetdb.ErrRevoked) {
		return nil, status.Errorf(codes.PermissionDenied, "host %q is revoked", req.GetHostId())
	}
	if err != nil {
		return nil, status.Errorf(codes.Internal, "%v", err)
	}
	s.log.Info("host enrolled", "host", h.ID, "hostname", h.Hostname, "tags", h.Tags, "secret", name)
	s.notify(h.ID) // a Watch on the old certificate ends
	if err := s.rebuild(ctx, h.ID); err != nil {
		s.log.Error("bundle not made", "host", h.ID, "err", err)
	}
	return &fleetv1.EnrollResponse{Certificate: cert.Raw, HostId: h.ID}, nil
}

func (s *Server) Sync(ctx context.Context, req *fleetv1.SyncRequest) (*fleetv1.SyncResponse, error) {
	host := hostOf(ctx)
	if err := s.cfg.Store.Seen(ctx, host, fleetdb.Report{AppliedVersion: req.GetHaveVersion(), AgentVersion: req.GetAgentVersion(),
		Backend: req.GetBackend(), ExecMode: req.GetExecMode(), KernelLost: req.GetKernelLost(),
		Guarantees: req.GetGuarantees()}, time.Now()); err != nil {
		return nil, status.Errorf(codes.Internal, "%v", err)
	}
	h, err := s.cfg.Store.Host(ctx, host)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "%v", err)
	}
	resp := &fleetv1.SyncResponse{LastEventId: h.LastEventID, ServerTime: timestamppb.Now()}
	b, err := s.cfg.Store.Bundle(ctx, host)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "%v", err)
	}
	if b.SignedVersion > req.GetHaveVersion() && b.Envelope != nil {
		resp.Bundle = &fleetv1.Bundle{Version: b.SignedVersion, Envelope: b.Envelope}
	}
	return resp, nil
}

func (s *Server) Watch(req *fleetv1.WatchRequest, stream fleetv1.Fleet_WatchServer) error {
	ctx := stream.Context()
	host := hostOf(ctx)
	have := req.GetHaveVersion()
	var recheck <-chan time.Time
	if s.cfg.Recheck > 0 {
		t := time.NewTicker(s.cfg.Recheck)
		defer t.Stop()
		recheck = t.C
	}
	for {
		changed := s.changedCh(host)
		h, err := s.cfg.Store.Host(ctx, host)
		if err != nil {
			return status.Errorf(codes.Internal, "%v", err)
		}
		if h.Revoked {
			return status.Errorf(codes.PermissionDenied, "host %q is revoked", host)
		}
		b, err := s.cfg.Store.Bundle(ctx, host)
		if err != nil {
			return status.Errorf(codes.Internal, "%v", err)
		}
		if b.SignedVersion > have && b.Envelope != nil {
			if err := stream.Send(&fleetv1.Bundle{Version: b.SignedVersion, Envelope: b.Envelope}); err != nil {
				return err
			}
			have = b.SignedVersion
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.stopping:
			return status.Error(codes.Unavailable, "server stopping")
		case <-changed:
		case <-recheck:
		}
	}
}

func (s *Server) UploadEvents(ctx context.Context, req *fleetv1.UploadEventsRequest) (*fleetv1.UploadEventsResponse, error) {
	host := hostOf(ctx)
	if req.GetThroughId() < req.GetAfterId() {
		return nil, status.Errorf(codes.InvalidArgument, "through id %d before after id %d", req.GetThroughId(), req.GetAfterId())
	}
	last, err := s.cfg.Sink.Append(ctx, fleetdb.Upload{Host: host, AfterID: req.GetAfterId(), ThroughID: req.GetThroughId(), Events: req.GetEvents()})
	switch {
	case err == nil:
	case ctx.Err() != nil:
		// The agent gave up (its deadline): say so rather than blame its input.
		return nil, status.FromContextError(ctx.Err()).Err()
	default:
		// The store or the stream failed: the agent keeps its events and
		// sends them again.
		return nil, status.Errorf(codes.Unavailable, "upload not stored: %v", err)
	}
	return &fleetv1.UploadEventsResponse{LastEventId: last}, nil
}

// ---------------------------------------------------------------- bundles

// BundleFor returns the bundle payload of host h from rules (version and
// time left for the caller). A rule in a staged rollout goes only to the
// hosts its rollout chooses; in preview, as a monitor-mode policy or a
// would-be hash deny, and an allow not at all (fleet.Rollout).
func BundleFor(h fleetdb.Host, rules []fleetdb.Rule) fleet.Bundle {
	b := fleet.Bundle{Host: h.ID}
	for _, r := range rules {
		if !fleet.InScope(r.Scope, h.ID, h.Tags) || !r.Rollout.Chosen(h.ID, h.Tags) {
			continue
		}
		mode := ""
		if r.Rollout.Stage == fleet.StagePreview {
			mode = fleet.Monitor
		}
		switch r.Kind {
		case fleet.KindSHA256:
			if mode == fleet.Monitor && r.Verdict != fleet.Deny {
				continue // an allow has no preview
			}
			b.Hashes = append(b.Hashes, fleet.HashRule{SHA256: r.Value, Verdict: r.Verdict, Scope: r.Scope, Rule: r.ID, Mode: mode})
		case fleet.KindSigner:
			if mode == fleet.Monitor {
				continue
			}
			b.Signers = append(b.Signers, fleet.SignerRule{PublicKey: r.Value, Scope: r.Scope, Rule: r.ID})
		case fleet.KindPolicy:
			b.Policies = append(b.Policies, fleet.PolicyRule{Name: r.Comment, YAML: r.Value, Scope: r.Scope, Rule: r.ID, Mode: mode})
		}
	}
	b.Canonical()
	return b
}

// rebuild remakes the bundles of hosts (none: every host) whose rules
// changed, signs them when the server has a key, and tells the hosts'
// Watch streams.
func (s *Server) rebuild(ctx context.Context, hosts ...string) error {
	s.rebuildMu.Lock()
	defer s.rebuildMu.Unlock()
	rules, err := s.cfg.Store.Rules(ctx)
	if err != nil {
		return err
	}
	var hs []fleetdb.Host
	if len(hosts) == 0 {
		if hs, err = s.cfg.Store.Hosts(ctx); err != nil {
			return err
		}
	} else {
		for _, id := range hosts {
			h, err := s.cfg.Store.Host(ctx, id)
			if err != nil {
				return err
			}
			hs = append(hs, h)
		}
	}
	var errs []error
	for _, h := range hs {
		if h.Revoked {
			continue
		}
		if err := s.rebuildHost(ctx, h, rules); err != nil {
			errs = append(errs, fmt.Errorf("host %s: %w", h.ID, err))
		}
	}
	return errors.Join(errs...)
}

// rebuildConflicts bounds how often a host's bundle is remade after
// another replica made the same version first.
const rebuildConflicts = 5

func (s *Server) rebuildHost(ctx context.Context, h fleetdb.Host, rules []fleetdb.Rule) error {
	var err error
	for range rebuildConflicts {
		if err = s.rebuildHostOnce(ctx, h, rules); !errors.Is(err, fleetdb.ErrConflict) {
			return err
		}
		// Another replica stored this version: read again what it made
		// (the same rules, most often: then there is nothing to do).
		if rules, err = s.cfg.Store.Rules(ctx); err != nil {
			return err
		}
		if h, err = s.cfg.Store.Host(ctx, h.ID); err != nil {
			return err
		}
	}
	return err
}

func (s *Server) rebuildHostOnce(ctx context.Context, h fleetdb.Host, rules []fleetdb.Rule) error {
	cur, err := s.cfg.Store.Bundle(ctx, h.ID)
	if err != nil {
		return err
	}
	b := BundleFor(h, rules)
	digest := b.RulesDigest()
	if cur.Version > 0 && cur.RulesDigest == digest {
		return nil
	}
	b.Version, b.Issued = cur.Version+1, time.Now().UTC().Truncate(time.Millisecond)
	payload, err := b.Marshal()
	if err != nil {
		return err
	}
	var env []byte
	if s.cfg.SigningKey != nil {
		if env, err = fleet.SignPayload(ctx, s.cfg.SigningKey, payload); err != nil {
			return err
		}
	}
	if err := s.cfg.Store.NewBundle(ctx, h.ID, b.Version, digest, payload, env); err != nil {
		return err
	}
	s.log.Info("bundle made", "host", h.ID, "version", b.Version, "hashes", len(b.Hashes), "signers", len(b.Signers),
		"policies", len(b.Policies), "signed", env != nil)
	if env != nil {
		s.notify(h.ID)
	}
	return nil
}

// errNotWaiting: a bundle given to PutBundle is not the payload waiting
// for a signature.
var errNotWaiting = errors.New("not the bundle waiting for a signature")

// putSigned stores a bundle signed offline.
func (s *Server) putSigned(ctx context.Context, envelope []byte) (*fleet.Bundle, error) {
	b, err := fleet.PeekPayload(envelope)
	if err != nil {
		return nil, err
	}
	cur, err := s.cfg.Store.Bundle(ctx, b.Host)
	if err != nil {
		return nil, err
	}
	env, _ := sign.ReadEnvelope(envelope)
	raw, _ := env.DecodeB64Payload()
	if b.Version != cur.Version || string(raw) != string(cur.Payload) {
		return nil, fmt.Errorf("%w: bundle %s v%d (waiting: v%d); sign what `vigil fleet sign-bundle` fetches", errNotWaiting, b.Host, b.Version, cur.Version)
	}
	if s.cfg.AdminKey != nil {
		v := fleet.Verifier{Key: s.cfg.AdminKey, Host: b.Host}
		if _, err := v.Verify(ctx, envelope, cur.SignedVersion); err != nil {
			return nil, err
		}
	}
	if err := s.cfg.Store.SignBundle(ctx, b.Host, b.Version, envelope); err != nil {
		return nil, err
	}
	s.log.Info("bundle signed offline", "host", b.Host, "version", b.Version)
	s.notify(b.Host)
	return b, nil
}

func parseDigest(s string) (string, error) {
	d, err := trust.ParseDigest(s)
	if err != nil {
		return "", err
	}
	return hex.EncodeToString(d[:]), nil
}
