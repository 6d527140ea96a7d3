// Package sensor defines what the agent needs from a kernel event source,
// independent of the backend (BPF LSM or tracepoints) that provides it.
package sensor

import (
	"context"
	"errors"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/policy"
)

// Backend names.
const (
	BackendLSM        = "lsm"
	BackendTracepoint = "tracepoint"
)

// ErrNotSupported is wrapped by errors that mean the running kernel lacks a
// feature (a hook, a program type, a helper).
var ErrNotSupported = errors.New("not supported by this kernel")

// Sensor is a source of kernel events. Start attaches; after it returns
// nil, Events delivers enriched events (process cache applied) until ctx
// is done or Close is called, after which the channel is closed. Gap
// records (kind "gap") are delivered in the stream where loss was seen.
type Sensor interface {
	Start(ctx context.Context) error
	Events() <-chan *vigilv1.Event
	Info() Info
	Stats() Stats
	Close() error
}

// Info describes what the sensor attached.
type Info struct {
	Backend      string
	Hooks        []string // attached
	MissingHooks []string // wanted but not offered by this kernel, with reason
}

// Stats are cumulative counters.
type Stats struct {
	Received uint64            // events read from the kernel
	Lost     uint64            // events the kernel could not queue
	ByKind   map[string]uint64 // received, by kind
}

// Enforcer is a sensor that can enforce a policy in the kernel.
type Enforcer interface {
	// Enforce makes p the policy in force, atomically: on error the
	// previous policy stays in force. Warnings name the parts of p the
	// kernel cannot hold right now.
	Enforce(p *policy.Policy) (warnings []string, err error)
	// RuleHits returns, by rule id, the decisions each rule of the policy
	// in force has made since it was applied.
	RuleHits() (map[string]uint64, error)
}

// Execution control modes.
const (
	ExecOff      = "off"
	ExecMonitor  = "monitor"  // unknown code runs and is recorded
	ExecLockdown = "lockdown" // unknown code is refused
)

// ExecControl is what execution control decides with: the mode and the
// merged trust set, already resolved by precedence (an explicitly denied
// digest is false, a trusted one true; digests absent are unknown).
type ExecControl struct {
	Mode string
	// Trust maps SHA-256 digests to trusted (true) or denied (false).
	Trust map[[32]byte]bool
	// UnlinkedDeny refuses files without a name (memfd, deleted,
	// O_TMPFILE) whatever their content; otherwise their content decides.
	UnlinkedDeny bool
	// AnonDeny refuses anonymous memory made executable, except in the
	// executables listed in AnonAllow (JITs).
	AnonDeny  bool
	AnonAllow []FileID
}

// FileID names a file by identity, as stat(2) reports it.
type FileID struct {
	Dev uint64 // st_dev
	Ino uint64
}

// ExecController is a sensor that can enforce execution control.
type ExecController interface {
	// SetExecControl makes xc the execution control in force. The kernel
	// verdict cache is re-validated before it returns: the next
	// decision uses xc.
	SetExecControl(xc *ExecControl) error
}

// Authorizer is a sensor that can ask others (filter API clients) about
// an exec or an open it decides in userspace (the fanotify path), after
// Vigil's own policy allowed it.
type Authorizer interface {
	// SetAuthorizer installs fn, asked about execs (event kind "exec")
	// and, while SetOpenAuth(true) is in force, opens (kind "open").
	SetAuthorizer(fn AuthorizeFunc)
	// SetOpenAuth starts or stops asking about opens: an open permission
	// event per open is costly, so only while a client wants them.
	SetOpenAuth(on bool) error
}

// AuthorizeFunc decides an exec or open event; key names the file's
// content state (identity and change times).
type AuthorizeFunc func(ev *vigilv1.Event, key string) AuthDecision

// AuthDecision is the clients' decision about one exec or open.
type AuthDecision struct {
	Allow bool
	// Clients are the clients' answers, in the order asked, for the
	// decision record.
	Clients []*vigilv1.ClientVerdict
	// Cacheable: the decision is an allow that holds for any process
	// until the file changes; the kernel may keep it.
	Cacheable bool
}

// Handover is a sensor that may have taken over the pinned programs of a
// previous agent: FinishHandover is called once the agent's policy is in
// force, and detaches what the previous agent left attached.
type Handover interface {
	FinishHandover() error
}
