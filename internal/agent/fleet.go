package agent

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	fleetv1 "github.com/vigil-hips/vigil/api/vigil/fleet/v1"
	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/admin"
	"github.com/vigil-hips/vigil/internal/fleet"
	"github.com/vigil-hips/vigil/internal/sched"
	"github.com/vigil-hips/vigil/internal/sign"
	"github.com/vigil-hips/vigil/internal/store"
	"github.com/vigil-hips/vigil/internal/trust"
)

// The agent's fleet client (docs/fleet.md): it enrolls with `vigil server`
// once (the credential stays in StateDir/fleet), then
//
//   - takes the host's signed bundles from a Watch stream (push) and from
//     Sync every FleetPoll (the fallback, and the heartbeat), verifies each
//     with the admin key BEFORE anything of it is used (fleet.Verifier:
//     signature, this host, a version above the highest applied), keeps the
//     last applied bundle and its version in StateDir/fleet, and merges its
//     hash verdicts into execution control and its behavior policies into
//     the policy in force (fleetpolicy.go) without a restart; a refused
//     bundle leaves what was applied in force and is reported as a tamper
//     event (method fleet_bundle);
//   - uploads events from its store, after the last id the server holds:
//     blocked and would-be-blocked events always, events of
//     FleetUploadKinds too.

// Fleet client tuning.
const (
	fleetUploadEvery = time.Second
	fleetUploadBatch = 512
	fleetBackoffMax  = 30 * time.Second
	fleetCallTimeout = 30 * time.Second
	// fleetSignerComment marks the signers the fleet approved in the
	// trust database, so that a later bundle without them revokes them.
	fleetSignerComment = "fleet rule "
)

// DefaultFleetPoll is how often the agent syncs with the fleet server
// besides the Watch stream.
const DefaultFleetPoll = 30 * time.Second

// DefaultFleetUploadKinds are uploaded besides blocked and would-be-blocked
// events.
var DefaultFleetUploadKinds = []string{"tamper", "integrity", "gap"}

type fleetState struct {
	dir      string
	verifier fleet.Verifier
	enroll   fleet.Enrollment

	mu          sync.Mutex // applying bundles
	applied     uint64
	lastRefused string // digest of the last envelope refused, to report each once

	bundle atomic.Pointer[fleet.Bundle] // applied; read by buildExecControl
	// preview is the applied bundle's would-be denies (a rollout's
	// preview), by lower-case digest.
	preview atomic.Pointer[map[string]fleet.HashRule]
	cursor  atomic.Uint64 // the server's last event id from this host
	// For status: the last answered Sync (unix ns), the last failure.
	lastContact atomic.Int64
	lastErr     atomic.Pointer[string]
	enrolled    atomic.Bool
	synced      atomic.Bool // cursor is known
}

// fleetOn reports whether the agent is a fleet member.
func (c Config) fleetOn() bool { return c.FleetServer != "" }

// loadFleet prepares the fleet client and applies the bundle kept from
// before (verified again), before the policy is put in force.
func (a *agent) loadFleet(ctx context.Context) error {
	if !a.cfg.fleetOn() {
		return nil
	}
	keyPath := a.cfg.AdminKeyPath
	if keyPath == "" {
		keyPath = DefaultAdminKey
	}
	pub, err := sign.LoadPublicKey(keyPath)
	if err != nil {
		return fmt.Errorf("fleet: bundles are verified with the admin key: %w", err)
	}
	host, err := admin.HostID(a.cfg.HostIDFile)
	if err != nil {
		return fmt.Errorf("fleet: %w", err)
	}
	hostname, _ := os.Hostname()
	f := &fleetState{
		dir:      filepath.Join(a.cfg.StateDir, "fleet"),
		verifier: fleet.Verifier{Key: ed25519.PublicKey(pub), Host: host},
		enroll: fleet.Enrollment{Server: a.cfg.FleetServer, CAFile: a.cfg.FleetCA, SecretFile: a.cfg.FleetEnrollSecretFile,
			HostID: host, Hostname: hostname, Tags: a.cfg.FleetTags},
	}
	if err := os.MkdirAll(f.dir, 0o700); err != nil {
		return fmt.Errorf("fleet: %w", err)
	}
	if _, err := fleet.CertPool(a.cfg.FleetCA); err != nil {
		return fmt.Errorf("fleet CA: %w", err)
	}
	if _, err := os.Stat(filepath.Join(f.dir, fleet.CertFile)); errors.Is(err, os.ErrNotExist) {
		if _, err := os.Stat(a.cfg.FleetEnrollSecretFile); err != nil {
			return fmt.Errorf("fleet: not enrolled yet and no enrollment secret: %w", err)
		}
	}
	if b, err := os.ReadFile(filepath.Join(f.dir, fleet.VersionFile)); err == nil {
		if f.applied, err = strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err != nil {
			return fmt.Errorf("fleet: %s: %w", fleet.VersionFile, err)
		}
	}
	if env, err := os.ReadFile(filepath.Join(f.dir, fleet.BundleFile)); err == nil {
		b, err := f.verifier.Verify(ctx, env, 0)
		if err != nil {
			// The admin key changed, or the file was altered: nothing of
			// it is used; the version floor stays.
			a.log.Error("fleet: the kept bundle does not verify; none applied until the server sends a new one", "err", err)
		} else {
			f.bundle.Store(b)
			f.setPreview(b)
			f.applied = max(f.applied, b.Version)
			fp, err := parseFleetPolicies(b)
			if err != nil { // Verify parsed them
				return fmt.Errorf("fleet: kept bundle: %w", err)
			}
			a.policy.fleet = fp // merged by startPolicy
			a.log.Info("fleet: kept bundle applied", "version", b.Version, "hashes", len(b.Hashes), "policies", len(b.Policies))
		}
	}
	a.fleet = f
	return nil
}

// fleetMerge merges the applied bundle's hash verdicts into trust (digest
// → may run), after the policy and the trust database: a fleet deny
// denies; a fleet allow trusts what nothing denied.
func (a *agent) fleetMerge(t map[[32]byte]bool) {
	if a.fleet == nil {
		return
	}
	b := a.fleet.bundle.Load()
	if b == nil {
		return
	}
	for _, h := range b.Hashes {
		if h.Mode == fleet.Monitor {
			continue // a preview: recorded by fleetPreview, not enforced
		}
		sha, err := trust.ParseDigest(h.SHA256)
		if err != nil {
			continue // Verify checked them
		}
		switch h.Verdict {
		case fleet.Allow:
			if v, ok := t[sha]; !ok || v {
				t[sha] = true
			}
		case fleet.Deny:
			t[sha] = false
		}
	}
}

// runFleet runs the fleet client until ctx is done.
func (a *agent) runFleet(ctx context.Context) {
	defer sched.Background(a.warnSched)()
	f := a.fleet
	var cred *fleet.Credential
	for backoff := time.Second; ; backoff = min(2*backoff, fleetBackoffMax) {
		c, enrolled, err := fleet.LoadOrEnroll(ctx, f.dir, f.enroll)
		if err == nil {
			cred = c
			f.enrolled.Store(true)
			if enrolled {
				a.log.Info("fleet: enrolled", "server", f.enroll.Server, "host", c.HostID)
			}
			break
		}
		a.log.Warn("fleet: not enrolled, retrying", "server", f.enroll.Server, "err", err, "retry_in", backoff)
		msg := "enroll: " + err.Error()
		f.lastErr.Store(&msg)
		if !sleepCtx(ctx, backoff) {
			return
		}
	}
	conn, err := fleet.Dial(a.cfg.FleetServer, a.cfg.FleetCA, cred)
	if err != nil {
		a.log.Error("fleet: no connection", "err", err)
		return
	}
	defer conn.Close()
	c := fleetv1.NewFleetClient(conn)
	var wg sync.WaitGroup
	wg.Go(func() { a.fleetWatch(ctx, c) })
	wg.Go(func() { a.fleetPoll(ctx, c) })
	wg.Go(func() { a.fleetUpload(ctx, c) })
	wg.Wait()
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func (a *agent) fleetApplied() uint64 {
	a.fleet.mu.Lock()
	defer a.fleet.mu.Unlock()
	return a.fleet.applied
}

// fleetWatch keeps a Watch stream open and applies what it brings.
func (a *agent) fleetWatch(ctx context.Context, c fleetv1.FleetClient) {
	backoff := time.Second
	for ctx.Err() == nil {
		stream, err := c.Watch(ctx, &fleetv1.WatchRequest{HaveVersion: a.fleetApplied()}, grpc.WaitForReady(false))
		if err == nil {
			for {
				b, rerr := stream.Recv()
				if rerr != nil {
					err = rerr
					break
				}
				backoff = time.Second
				a.fleetApply(ctx, b.GetEnvelope(), "watch")
			}
		}
		if ctx.Err() != nil {
			return
		}
		a.log.Debug("fleet: watch stream ended", "err", err, "retry_in", backoff)
		if status.Code(err) == codes.PermissionDenied {
			a.log.Error("fleet: the server refuses this host (revoked?)", "err", err)
			backoff = fleetBackoffMax
		}
		if !sleepCtx(ctx, backoff) {
			return
		}
		backoff = min(2*backoff, fleetBackoffMax)
	}
}

// fleetPoll syncs every FleetPoll: the heartbeat, and bundles when the
// stream is down.
func (a *agent) fleetPoll(ctx context.Context, c fleetv1.FleetClient) {
	every := a.cfg.FleetPoll
	if every <= 0 {
		every = DefaultFleetPoll
	}
	for {
		if err := a.fleetSync(ctx, c); err != nil && ctx.Err() == nil {
			a.log.Warn("fleet: sync failed", "err", err)
		}
		if !sleepCtx(ctx, every) {
			return
		}
	}
}

func (a *agent) fleetSync(ctx context.Context, c fleetv1.FleetClient) error {
	req := &fleetv1.SyncRequest{HaveVersion: a.fleetApplied(), AgentVersion: a.version, Guarantees: a.guarantees()}
	if p := a.sensor.Load(); p != nil {
		req.Backend = (*p).Info().Backend
		req.KernelLost = (*p).Stats().Lost
	}
	req.ExecMode = "off"
	a.policy.mu.Lock()
	if a.policy.p != nil && a.policy.p.Trust != nil {
		req.ExecMode = string(a.policy.p.Trust.Mode)
	}
	a.policy.mu.Unlock()
	cctx, cancel := context.WithTimeout(ctx, fleetCallTimeout)
	defer cancel()
	resp, err := c.Sync(cctx, req)
	if err != nil {
		msg := "sync: " + err.Error()
		a.fleet.lastErr.Store(&msg)
		return err
	}
	a.fleet.lastContact.Store(time.Now().UnixNano())
	a.fleet.lastErr.Store(nil)
	if !a.fleet.synced.Load() {
		a.fleet.cursor.Store(resp.GetLastEventId())
		a.fleet.synced.Store(true)
	}
	if b := resp.GetBundle(); b != nil {
		a.fleetApply(ctx, b.GetEnvelope(), "sync")
	}
	return nil
}

// fleetApply verifies a bundle and applies it; a bundle that does not
// verify changes nothing and is reported.
func (a *agent) fleetApply(ctx context.Context, envelope []byte, via string) {
	f := a.fleet
	f.mu.Lock()
	defer f.mu.Unlock()
	b, err := f.verifier.Verify(ctx, envelope, f.applied)
	if err != nil {
		a.fleetRefuse(envelope, via, fleet.Reason(err), err)
		return
	}
	// The behavior policies first: if this host cannot put them in force
	// (a rule id its local policy has too, too many rules, the kernel
	// refuses them), nothing of the bundle is applied.
	fp, err := parseFleetPolicies(b)
	var (
		prevFP  fleetPolicies
		changed bool
	)
	if err == nil {
		prevFP, changed, err = a.setFleetPolicies(fp)
	}
	if err != nil {
		a.fleetRefuse(envelope, via, "policy", err)
		return
	}
	restore := func() {
		if changed {
			if _, _, err := a.setFleetPolicies(prevFP); err != nil {
				a.log.Error("fleet: previous fleet policies not restored", "err", err)
			}
		}
	}
	// Kept before it is used: a crash after this applies it at restart;
	// the version is written last, so it never runs ahead of the bundle.
	if err := fleet.WriteFileAtomic(filepath.Join(f.dir, fleet.BundleFile), envelope, 0o600); err != nil {
		a.log.Error("fleet: bundle not kept, not applied", "err", err)
		restore()
		return
	}
	if err := fleet.WriteFileAtomic(filepath.Join(f.dir, fleet.VersionFile), []byte(strconv.FormatUint(b.Version, 10)+"\n"), 0o600); err != nil {
		a.log.Error("fleet: bundle version not kept, not applied", "err", err)
		restore()
		return
	}
	f.applied = b.Version
	f.bundle.Store(b)
	f.setPreview(b)
	if err := a.fleetSigners(ctx, b); err != nil {
		a.log.Error("fleet: signers of the bundle not applied", "err", err)
	}
	if err := a.reloadExecControl(ctx); err != nil {
		a.log.Error("fleet: execution control not reloaded", "err", err)
	}
	a.log.Info("fleet: bundle applied", "version", b.Version, "via", via, "hashes", len(b.Hashes), "signers", len(b.Signers), "policies", len(b.Policies))
}

// fleetRefuse reports a refused bundle (once per distinct envelope): the
// agent keeps what it applied.
func (a *agent) fleetRefuse(envelope []byte, via, reason string, err error) {
	f := a.fleet
	sum := sha256.Sum256(envelope)
	d := hex.EncodeToString(sum[:])
	if d == f.lastRefused {
		return // reported already
	}
	f.lastRefused = d
	a.log.Warn("fleet: bundle refused; the one applied stays in force", "reason", reason, "via", via, "err", err, "applied", f.applied)
	a.emit(&vigilv1.Event{Time: timestamppb.Now(), Kind: "tamper", Backend: "agent", Hook: "fleet",
		Process: &vigilv1.Process{Pid: uint32(os.Getpid()), Exe: selfExe()},
		Detail: &vigilv1.Event_Tamper{Tamper: &vigilv1.Tamper{Method: "fleet_bundle",
			Target: fmt.Sprintf("bundle from %s (%s, sha256 %s)", a.cfg.FleetServer, via, d[:16]),
			Detail: reason + ": " + err.Error(), Refused: true}}})
}

func selfExe() string {
	exe, _ := os.Executable()
	return exe
}

// fleetSigners makes the trust database's fleet-approved signers those of
// b.
func (a *agent) fleetSigners(ctx context.Context, b *fleet.Bundle) error {
	have, err := a.xc.db.Signers(ctx)
	if err != nil {
		return err
	}
	want := map[string]fleet.SignerRule{}
	for _, s := range b.Signers {
		pub, err := sign.ParsePublicKey([]byte(s.PublicKey))
		if err != nil {
			return err
		}
		id, err := sign.KeyID(pub)
		if err != nil {
			return err
		}
		want[id] = s
	}
	var errs []error
	for _, s := range have {
		if _, ok := want[s.KeyID]; ok {
			delete(want, s.KeyID)
			continue
		}
		if strings.HasPrefix(s.Comment, fleetSignerComment) {
			if err := a.xc.db.RevokeSigner(ctx, s.KeyID); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, s := range want {
		pub, _ := sign.ParsePublicKey([]byte(s.PublicKey))
		if _, err := a.xc.db.ApproveSigner(ctx, pub, fmt.Sprintf("%s%d (%s)", fleetSignerComment, s.Rule, s.Scope)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// fleetWanted reports whether ev is uploaded: blocked and would-be-blocked
// events always, and events of the configured kinds.
func (a *agent) fleetWanted(ev *vigilv1.Event) bool {
	v := ev.GetVerdict()
	if v.GetRefused() || v.GetAction() == "deny" || v.GetAction() == "kill" {
		return true
	}
	if t := ev.GetTrust(); t != nil && t.GetVerdict() != "trusted" {
		return true
	}
	return slices.Contains(a.cfg.FleetUploadKinds, ev.GetKind())
}

// fleetUpload sends the store's events after the server's cursor.
func (a *agent) fleetUpload(ctx context.Context, c fleetv1.FleetClient) {
	backoff := fleetUploadEvery
	for sleepCtx(ctx, backoff) {
		if !a.fleet.synced.Load() {
			continue
		}
		n, err := a.fleetUploadOnce(ctx, c)
		switch {
		case err != nil && ctx.Err() == nil:
			a.log.Warn("fleet: event upload failed", "err", err)
			backoff = min(2*backoff, fleetBackoffMax)
			a.fleet.synced.Store(false) // the next sync says where the server is
		case n == fleetUploadBatch:
			backoff = 0 // more waiting
		default:
			backoff = fleetUploadEvery
		}
	}
}

// fleetUploadOnce uploads one batch; it returns how many store events it
// covered.
func (a *agent) fleetUploadOnce(ctx context.Context, c fleetv1.FleetClient) (int, error) {
	after := a.fleet.cursor.Load()
	qctx, cancel := context.WithTimeout(ctx, storeTimeout)
	evs, err := a.store.Query(qctx, store.Filter{AfterID: after, Limit: fleetUploadBatch})
	cancel()
	if err != nil || len(evs) == 0 {
		return 0, err
	}
	req := &fleetv1.UploadEventsRequest{AfterId: after, ThroughId: evs[len(evs)-1].GetId()}
	for _, ev := range evs {
		if a.fleetWanted(ev) {
			req.Events = append(req.Events, ev)
		}
	}
	cctx, cancel := context.WithTimeout(ctx, fleetCallTimeout)
	defer cancel()
	resp, err := c.UploadEvents(cctx, req)
	if err != nil {
		return 0, err
	}
	a.fleet.cursor.Store(max(resp.GetLastEventId(), req.ThroughId))
	return len(evs), nil
}

// fleetPending wraps the Pending handler: code the applied bundle decides
// (allowed or denied) is not pending on this host any more, though the
// trust database still lists it.
func (a *agent) fleetPending(h func(context.Context, *vigilv1.PendingRequest) (*vigilv1.PendingResponse, error)) func(context.Context, *vigilv1.PendingRequest) (*vigilv1.PendingResponse, error) {
	if a.fleet == nil {
		return h
	}
	return func(ctx context.Context, req *vigilv1.PendingRequest) (*vigilv1.PendingResponse, error) {
		resp, err := h(ctx, req)
		b := a.fleet.bundle.Load()
		if err != nil || b == nil {
			return resp, err
		}
		decided := map[string]bool{}
		for _, r := range b.Hashes {
			if r.Mode != fleet.Monitor {
				decided[strings.ToLower(r.SHA256)] = true
			}
		}
		resp.Items = slices.DeleteFunc(resp.Items, func(p *vigilv1.PendingCode) bool { return decided[strings.ToLower(p.GetSha256())] })
		return resp, nil
	}
}

func (f *fleetState) setPreview(b *fleet.Bundle) {
	m := map[string]fleet.HashRule{}
	for _, h := range b.Hashes {
		if h.Mode == fleet.Monitor {
			m[strings.ToLower(h.SHA256)] = h
		}
	}
	f.preview.Store(&m)
}

// fleetPreview marks an execution control event about code a rollout's
// preview would deny: the code ran (the deny is not enforced) and the
// event says it would have been denied (verdict denied, mode monitor,
// source the fleet rule), so it is uploaded and shows as would-block.
func (a *agent) fleetPreview(ev *vigilv1.Event) {
	if a.fleet == nil {
		return
	}
	m := a.fleet.preview.Load()
	t := ev.GetTrust()
	if m == nil || len(*m) == 0 || t == nil || t.GetSha256() == "" || t.GetVerdict() == "denied" {
		return
	}
	h, ok := (*m)[strings.ToLower(t.GetSha256())]
	if !ok {
		return
	}
	t.Verdict, t.Mode = "denied", "monitor"
	t.Source = fmt.Sprintf("fleet:rule %d (%s, preview)", h.Rule, h.Scope)
}

// fleetStatus is the fleet part of the agent's status.
func (a *agent) fleetStatus() *vigilv1.FleetStatus {
	f := a.fleet
	if f == nil {
		return nil
	}
	st := &vigilv1.FleetStatus{Server: a.cfg.FleetServer, HostId: f.verifier.Host, Enrolled: f.enrolled.Load(),
		AppliedVersion: a.fleetApplied()}
	if !st.Enrolled {
		if _, err := os.Stat(filepath.Join(f.dir, fleet.CertFile)); err == nil {
			st.Enrolled = true // enrolled before this start
		}
	}
	if b := f.bundle.Load(); b != nil {
		st.BundleIssued = timestamppb.New(b.Issued)
		st.Hashes, st.Signers, st.Policies = uint32(len(b.Hashes)), uint32(len(b.Signers)), uint32(len(b.Policies))
	}
	if ns := f.lastContact.Load(); ns != 0 {
		st.LastContact = timestamppb.New(time.Unix(0, ns))
	}
	if e := f.lastErr.Load(); e != nil {
		st.LastError = *e
	}
	return st
}
