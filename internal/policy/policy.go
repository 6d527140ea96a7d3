// Package policy is Vigil's policy language: parsing and validating policy
// files (YAML), and the offline evaluator that defines what a policy means.
// It needs no kernel: the in-kernel enforcement compiles the same Policy
// into BPF maps and is tested against Evaluate.
//
// The semantics, in one place (docs/policy.md has the full reference):
// rules are evaluated top to bottom and the first rule that matches decides;
// when none matches the event is allowed. A rule matches an event when the
// event's kind is one of the rule's kinds, every condition of its match
// block holds, and none of its except blocks holds (a block holds when all
// its conditions hold; a condition with a list holds when any element
// matches). A verdict whose rule is in monitor mode is recorded, not
// enforced.
package policy

// Limits. They are what the kernel side can hold: a rule set is a 256-bit
// bitmap, a condition's values fit one BPF map, and a path with its
// separator fits an LPM trie key (LPM_DATA_SIZE_MAX, 256 bytes).
const (
	MaxRules      = 256     // rules in a policy
	MaxEntries    = 4096    // entries in a named list, and values of one condition after expansion
	MaxExcept     = 16      // except blocks in a rule
	MaxPathLen    = 255     // bytes of a path, path prefix or cgroup path
	MaxIDLen      = 64      // bytes of a rule id or list name
	MaxAncestors  = 16      // ancestors ancestor_exe and not_descendant look at, parent first
	MaxPolicySize = 4 << 20 // bytes of a policy file
)

// Kind is an event kind a rule can decide.
type Kind string

const (
	KindExec       Kind = "exec"
	KindImageLoad  Kind = "image_load"
	KindMemExec    Kind = "mem_exec"
	KindInject     Kind = "inject"
	KindKernel     Kind = "kernel"
	KindFileModify Kind = "file_modify"
)

// Action is what a rule decides.
type Action string

const (
	Allow Action = "allow" // let it happen
	Deny  Action = "deny"  // refuse the operation (EPERM)
	Kill  Action = "kill"  // refuse the operation and kill the acting process
	Alert Action = "alert" // let it happen, and record it
)

// Mode says whether a verdict is carried out or only recorded.
type Mode string

const (
	Monitor Mode = "monitor" // record the verdict as a would-be verdict
	Enforce Mode = "enforce" // carry the verdict out
)

// Prot is a set of memory protection flags, with the bits of PROT_READ,
// PROT_WRITE and PROT_EXEC.
type Prot uint32

const (
	ProtRead  Prot = 1
	ProtWrite Prot = 2
	ProtExec  Prot = 4
)

// Policy is a parsed, valid policy. Lists are expanded into the conditions
// that name them.
type Policy struct {
	Version     int
	Name        string
	Description string
	Mode        Mode // the default of every rule's mode, and the mode of the default verdict
	Rules       []*Rule
	// Trust is execution control; nil: off.
	Trust  *Trust
	digest string
	// catalogs is what process.signer conditions are compiled with
	// (WithCatalogs); not part of the digest.
	catalogs Catalogs
}

// Catalogs is what process.signer conditions are decided with in the
// kernel: for each signer's key ID, the SHA-256 digests (lowercase hex)
// listed in the catalogs whose signature verifies with that key. The
// agent builds it from the trust database (docs/policy.md,
// "process.signer").
type Catalogs map[string][]string

// Signers returns the key IDs the policy's process.signer conditions
// name, sorted, without duplicates.
func (p *Policy) Signers() []string {
	var ids []string
	for _, r := range p.Rules {
		ids = append(ids, r.Match.Process.Signer...)
		for _, c := range r.Except {
			ids = append(ids, c.Process.Signer...)
		}
	}
	return sorted(ids)
}

// WithCatalogs returns a copy of p whose process.signer conditions are
// compiled with c. The copy decides alike and has the same digest: the
// catalogs are what the world says about the signers, not the policy.
func (p *Policy) WithCatalogs(c Catalogs) *Policy {
	q := *p
	q.catalogs = c
	return &q
}

// Catalogs returns what WithCatalogs bound, nil if nothing.
func (p *Policy) Catalogs() Catalogs { return p.catalogs }

// Trust is a policy's execution control: which code may run or be mapped
// executable, decided by content (SHA-256) on every code-loading path.
// Precedence (docs/trust.md): a digest in Deny, or denied in the trust
// database, is refused first; then Allow and the enabled trust sources
// trust a digest; anything else is unknown, which lockdown refuses and
// monitor records.
type Trust struct {
	Mode    TrustMode
	Sources []string // trust sources that count: dpkg, database, catalogs
	Allow   []string // digests this policy trusts (lower-case hex)
	Deny    []string // digests this policy refuses, whatever else trusts them
	// Unlinked decides files without a name (memfd, deleted, O_TMPFILE):
	// "hash" by content like any file, "deny" always refused.
	Unlinked string
	// AnonymousExec decides anonymous memory made executable: "allow", or
	// "deny" except in the executables of AnonymousExecAllow (JITs).
	AnonymousExec      string
	AnonymousExecAllow []string
	// CatalogDir holds signed catalogs (vigil catalog sign) the agent adds
	// to its trust database at start and when they change; "" none.
	CatalogDir string
}

// TrustMode is execution control's mode.
type TrustMode string

const (
	TrustMonitor  TrustMode = "monitor"  // unknown code runs and is recorded
	TrustLockdown TrustMode = "lockdown" // unknown code is refused
)

// TrustSources are the trust sources a policy can enable.
var TrustSources = []string{"dpkg", "database", "catalogs"}

// Rule is one rule of a policy.
type Rule struct {
	ID          string
	Description string
	On          []Kind
	Action      Action
	Mode        Mode   // the effective mode: the rule's own, else the policy's
	Match       Cond   // all its conditions must hold
	Except      []Cond // the rule does not match if any of these holds
}

// Cond is a block of conditions, all of which must hold. In every field a
// nil slice (or nil pointer, or zero Prot) means the condition is absent; a
// non-nil empty slice is a present condition that cannot hold (it named
// only empty lists).
type Cond struct {
	Process      ProcessCond
	Target       TargetCond
	InjectMethod []string // inject: the method
	KernelOp     []string // kernel: the operation
	FileOp       []string // file_modify: the operation
}

// ProcessCond is about the acting process.
type ProcessCond struct {
	Exe         []string   // exact executable paths
	ExePrefix   []string   // directory prefixes of the executable, component-aware, no trailing slash but "/"
	SHA256      []string   // lowercase hex digests of the executable
	Signer      []string   // key IDs (SHA256:base64) of signers whose catalogs list the executable's digest
	AncestorExe []string   // exact executable paths of any of the nearest MaxAncestors ancestors
	UID         []UIDRange // the real uid
	Cgroup      []string   // cgroup v2 path prefixes, component-aware
}

// TargetCond is about what the process acts on.
type TargetCond struct {
	Path          []string // exact paths of the file (and for rename/link, the new path)
	PathPrefix    []string // component-aware prefixes of the same paths
	ProcessExe    []string // inject: exact executable paths of the target process
	NotDescendant *bool    // inject: whether the target must not be (true) or must be (false) a descendant of the actor
	Prot          Prot     // mem_exec: flags the mapping has now or had before
	Anonymous     *bool    // mem_exec: whether the memory is anonymous
}

// UIDRange is an inclusive range of uids.
type UIDRange struct{ Lo, Hi uint32 }

// Digest is the SHA-256 (hex) of the policy's canonical encoding: equal for
// policies that decide every event alike with the same rule ids, whatever
// their layout, comments, list names, value order or descriptions.
func (p *Policy) Digest() string { return p.digest }

var (
	allKinds   = []Kind{KindExec, KindImageLoad, KindMemExec, KindInject, KindKernel, KindFileModify}
	allActions = []Action{Allow, Deny, Kill, Alert}
	allModes   = []Mode{Monitor, Enforce}

	injectMethods = []string{"ptrace_attach", "ptrace_seize", "ptrace_poke", "ptrace_setregs", "process_vm_writev", "proc_mem_write"}
	kernelOps     = []string{"bpf_prog_load", "module_load", "kexec_load", "dev_mem_open", "kcore_open", "tracefs_write"}
	fileOps       = []string{"open_write", "truncate", "rename", "unlink", "chmod", "chown", "link", "create"}
	protNames     = map[string]Prot{"read": ProtRead, "write": ProtWrite, "exec": ProtExec}
)
