package agent

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/admin"
	"github.com/vigil-hips/vigil/internal/policy"
	"github.com/vigil-hips/vigil/internal/probe"
	"github.com/vigil-hips/vigil/internal/sensor"
	"github.com/vigil-hips/vigil/internal/sign"
	"github.com/vigil-hips/vigil/internal/store"
)

// FeatureTamperProtection is the Status feature that says whether the
// agent protects itself here.
const FeatureTamperProtection = "tamper_protection"

// Guard is tamper protection (internal/tamper), behind an interface so the
// agent (and the CLI) need no BPF code.
type Guard interface {
	// Events delivers the tamper attempts; it closes after Close.
	Events() <-chan *vigilv1.Event
	// ProtectIDs adds BPF object ids to the protected set.
	ProtectIDs(progs, maps, links []uint32) error
	Hooks() []string
	Warnings() []string
	// Adopted: the guard took over the pinned protection of an agent
	// that died.
	Adopted() bool
	// Close ends the protection (an authorized stop); Release only lets
	// go of it, leaving what is pinned in force.
	Close() error
	Release() error
}

// GuardConfig is what the agent asks to protect.
type GuardConfig struct {
	AgentPID int
	Files    []string
	Dirs     []string
}

// objectLister is a sensor that can list its BPF object ids.
type objectLister interface {
	ObjectIDs() (progs, maps, links []uint32, err error)
}

// protection is the agent's tamper protection state.
type protection struct {
	guard    Guard
	verifier *admin.Verifier // nil: no admin key
	detail   string          // for Status
}

func (p *protection) protected() bool { return p != nil && p.guard != nil }

// loadAdmin reads the admin key and the host id, if an admin key is set.
// An explicit --admin-key that cannot be read is an error; the default
// path missing means no admin key.
func (a *agent) loadAdmin() (*admin.Verifier, error) {
	path := a.cfg.AdminKeyPath
	explicit := path != ""
	if !explicit {
		path = DefaultAdminKey
	}
	pub, err := sign.LoadPublicKey(path)
	if err != nil {
		if !explicit && errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("admin key: %w", err)
	}
	host, err := admin.HostID(a.cfg.HostIDFile)
	if err != nil {
		return nil, fmt.Errorf("admin key set but %w", err)
	}
	a.adminKeyPath = path
	return &admin.Verifier{Key: ed25519.PublicKey(pub), Host: host, Nonces: nonceStore{a.store}}, nil
}

// nonceStore keeps used nonces in the event store's database.
type nonceStore struct{ s *store.Store }

func (n nonceStore) UseNonce(ctx context.Context, nonce string, expires time.Time) error {
	err := n.s.UseNonce(ctx, nonce, expires)
	if errors.Is(err, store.ErrNonceUsed) {
		return fmt.Errorf("%w (nonce %s)", admin.ErrReplayed, nonce)
	}
	return err
}

// startProtection turns tamper protection on when the sensor runs on BPF
// LSM, protection is wanted and an admin key is set (without one nothing
// could ever stop the agent). It returns the cleanup that ends it.
func (a *agent) startProtection(ctx context.Context, newGuard func(GuardConfig) (Guard, error), s sensor.Sensor) (func() error, error) {
	p := &protection{}
	defer func() { a.prot.Store(p) }()
	v, err := a.loadAdmin()
	if err != nil {
		return nil, err
	}
	p.verifier = v
	backend := s.Info().Backend
	switch {
	case !a.cfg.Protect:
		p.detail = "off (--protect=false): tamper attempts are reported, not refused"
		return nil, nil
	case backend != sensor.BackendLSM:
		p.detail = "degraded to detection: BPF LSM is not available, so nothing refuses attempts on the agent; " +
			"ptrace, process_vm_writev and /proc/PID/mem injections aimed at it are reported as tamper events"
		return nil, nil
	case v == nil:
		p.detail = "off: no admin key (--admin-key, default " + DefaultAdminKey + "): without one nothing could stop a protected agent"
		a.log.Warn("tamper protection off: no admin key", "default", DefaultAdminKey)
		return nil, nil
	case newGuard == nil:
		p.detail = "off: this build has no tamper protection"
		return nil, nil
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("tamper protection: own executable: %w", err)
	}
	if r, err := filepath.EvalSymlinks(exe); err == nil {
		exe = r
	}
	files := []string{exe, a.adminKeyPath, a.cfg.Socket}
	for _, f := range append(slices.Clone(a.cfg.PolicyPaths), a.cfg.JSONLPath) {
		if f != "" {
			files = append(files, f)
		}
	}
	dirs := []string{a.cfg.StateDir, filepath.Dir(a.cfg.Socket)}
	if a.fleet != nil {
		// The fleet credential, the kept bundle and the version floor
		// that refuses replayed bundles (docs/fleet.md).
		dirs = append(dirs, a.fleet.dir)
		files = append(files, a.cfg.FleetCA)
	}
	if d := a.cfg.SensorPinDir; d != "" {
		// The sensor's pins (bpfsensor/pin.go): unpinning them would let
		// enforcement end with the agent.
		dirs = append(dirs, d, filepath.Join(d, "maps"), filepath.Join(d, "links"))
	}
	g, err := newGuard(GuardConfig{
		AgentPID: os.Getpid(),
		Files:    files,
		Dirs:     dirs,
	})
	if err != nil {
		return nil, fmt.Errorf("tamper protection: %w", err)
	}
	if l, ok := s.(objectLister); ok {
		progs, maps, links, err := l.ObjectIDs()
		if err == nil {
			err = g.ProtectIDs(progs, maps, links)
		}
		if err != nil {
			g.Close()
			return nil, fmt.Errorf("tamper protection: the sensor's objects: %w", err)
		}
	}
	// The OOM killer's last choice: only this process could lower it, and
	// no other may raise it.
	if err := os.WriteFile("/proc/self/oom_score_adj", []byte("-1000"), 0); err != nil {
		a.log.Warn("oom_score_adj not set", "err", err)
	}
	p.guard = g
	adopted := ""
	if g.Adopted() {
		adopted = " (adopted from the pins of an agent that died)"
	}
	p.detail = fmt.Sprintf("on%s: %d LSM hooks refuse signals, ptrace, writes to the agent's files and cgroup, and access to its BPF objects", adopted, len(g.Hooks()))
	if w := g.Warnings(); len(w) > 0 {
		p.detail += fmt.Sprintf(" (%d warnings: %v)", len(w), w)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range g.Events() {
			enrich(ev.Process)
			a.emit(ev)
		}
	}()
	a.log.Info("tamper protection on", "hooks", len(g.Hooks()), "files", files)
	return func() error {
		var err error
		if a.stopAuthorized.Load() {
			err = g.Close()
		} else {
			a.log.Warn("agent exiting without an authorized stop: pinned tamper protection stays in force")
			err = g.Release()
		}
		<-done
		return err
	}, nil
}

// enrich fills the acting process's executable, if it still exists.
func enrich(p *vigilv1.Process) {
	if p == nil || p.Exe != "" {
		return
	}
	if exe, err := os.Readlink("/proc/" + strconv.Itoa(int(p.Pid)) + "/exe"); err == nil {
		p.Exe = exe
	}
}

// sensorTamper turns what the sensor saw aimed at the agent into a tamper
// event, when no guard reports it (without BPF LSM, or protection off).
func (a *agent) sensorTamper(ev *vigilv1.Event) *vigilv1.Event {
	if a.prot.Load().protected() {
		return nil
	}
	in := ev.GetInject()
	if in == nil || in.TargetPid != uint32(os.Getpid()) || ev.GetProcess().GetPid() == uint32(os.Getpid()) {
		return nil
	}
	method := "ptrace"
	switch in.Method {
	case "process_vm_writev":
		method = "process_vm"
	case "proc_mem_write":
		method = "proc_mem"
	}
	return &vigilv1.Event{
		Seq:     ev.Seq,
		Time:    ev.Time,
		Kind:    "tamper",
		Backend: ev.Backend,
		Hook:    ev.Hook,
		Process: ev.Process,
		Detail: &vigilv1.Event_Tamper{Tamper: &vigilv1.Tamper{
			Method:  method,
			Target:  fmt.Sprintf("pid %d", in.TargetPid),
			Detail:  "seen by the sensor (" + in.Method + ")",
			Refused: ev.GetVerdict().GetRefused(),
		}},
	}
}

// protectionFeature is the Status line for tamper protection.
func (a *agent) protectionFeature() *vigilv1.Feature {
	p := a.prot.Load()
	if p == nil {
		return &vigilv1.Feature{Name: FeatureTamperProtection, Detail: "not started yet"}
	}
	return &vigilv1.Feature{Name: FeatureTamperProtection, Available: p.protected(), Detail: p.detail}
}

// authorize checks an admin token for action. Unprotected agents without
// an admin key need none.
func (a *agent) authorize(ctx context.Context, token []byte, req admin.Request, needed bool) error {
	p := a.prot.Load()
	if !needed {
		return nil
	}
	if p == nil || p.verifier == nil {
		return status.Error(codes.FailedPrecondition, "no admin key is set on this agent")
	}
	if _, err := p.verifier.Verify(ctx, token, req); err != nil {
		a.log.Warn("admin token refused", "action", req.Action, "err", err)
		return status.Error(codes.PermissionDenied, "admin token refused: "+err.Error())
	}
	a.log.Info("admin token accepted", "action", req.Action)
	return nil
}

// authorizePolicy decides whether an ApplyPolicy call may go ahead: in
// protected mode only with a token for this very policy.
func (a *agent) authorizePolicy(ctx context.Context, req *vigilv1.ApplyPolicyRequest) error {
	if !a.prot.Load().protected() {
		return nil
	}
	p, err := policy.Parse(req.GetName(), req.GetContent())
	if err != nil {
		return status.Error(codes.InvalidArgument, fmt.Sprintf("%v:\n%v", ErrBadPolicy, err))
	}
	return a.authorize(ctx, req.GetToken(), admin.Request{Action: admin.ActionApplyPolicy, PolicyDigest: p.Digest()}, true)
}

// authorizeApprove: in protected mode, trusting or denying code (Approve)
// needs an admin token for exactly that change; otherwise root could
// approve its own code.
func (a *agent) authorizeApprove(ctx context.Context, req *vigilv1.ApproveRequest) error {
	if !a.prot.Load().protected() {
		return nil
	}
	keyID := ""
	if len(req.GetSignerKey()) > 0 {
		pub, err := sign.ParsePublicKey(req.GetSignerKey())
		if err != nil {
			return status.Error(codes.InvalidArgument, "signer key: "+err.Error())
		}
		if keyID, err = sign.KeyID(pub); err != nil {
			return status.Error(codes.InvalidArgument, "signer key: "+err.Error())
		}
	}
	subject := admin.ApproveSubject(req.GetSha256(), keyID, req.GetDeny())
	return a.authorize(ctx, req.GetToken(), admin.Request{Action: admin.ActionApprove, Subject: subject}, true)
}

// stopAgent serves the Stop RPC: with a valid token when an admin key is
// set (always in protected mode), else at once.
func (a *agent) stopAgent(ctx context.Context, req *vigilv1.StopRequest) (*vigilv1.StopResponse, error) {
	p := a.prot.Load()
	needed := p != nil && p.verifier != nil
	if err := a.authorize(ctx, req.GetToken(), admin.Request{Action: admin.ActionStop}, needed); err != nil {
		return nil, err
	}
	a.log.Info("stopping on request")
	a.stopAuthorized.Store(true)
	a.stop()
	return &vigilv1.StopResponse{}, nil
}

// guarantees are what this agent guarantees as it runs: the kernel's, for
// the backend its sensor is on, with fanotify exec control only where it
// was given marks, and with tamper protection as it is (off: the status's
// reason).
func (a *agent) guarantees() []*vigilv1.Guarantee {
	if a.kernel.GuaranteesFor == nil {
		return a.kernel.Guarantees
	}
	run := probe.Running{Fanotify: len(a.cfg.FanotifyMarks) > 0}
	if p := a.sensor.Load(); p != nil {
		run.LSM = (*p).Info().Backend == sensor.BackendLSM
	}
	if p := a.prot.Load(); p != nil && !p.protected() {
		run.TamperOff = p.detail
	}
	return a.kernel.GuaranteesFor(run)
}
