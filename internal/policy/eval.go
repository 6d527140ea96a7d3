package policy

import (
	"slices"
	"strings"
)

// Input is one operation to decide: who acts (Process), how (Kind and Op)
// and on what (File, NewPath, Target, and the memory's protection).
type Input struct {
	Kind Kind
	// Process is the acting process. For exec it is the caller as it is
	// when it calls execve: its executable is the program that asks for
	// the exec, not the one to be run (File).
	Process Process
	// Op is the inject method, the kernel operation or the file operation
	// (inject, kernel and file_modify).
	Op string
	// File is the file acted on: exec the file to run, image_load the file
	// mapped, mem_exec the backing file if any, kernel the module, kexec
	// image or device, file_modify the file changed.
	File File
	// NewPath is, for the file_modify ops rename and link, the new name.
	NewPath string
	// Prot is, for mem_exec, the protection asked for; PrevProt the
	// protection the memory had before (mprotect; 0 for mmap).
	Prot, PrevProt Prot
	// Anonymous is, for mem_exec, whether the memory is not file-backed.
	Anonymous bool
	// Target is, for inject, the process injected into.
	Target Target
}

// Process is the acting process.
type Process struct {
	Pid         uint32
	StartTimeNs uint64 // with Pid, identifies the process
	UID         uint32 // real uid
	Exe         File   // the executable; its Path is empty when unknown
	CgroupID    uint64 // cgroup v2 id; 0 when unknown
	Ancestry    []Ancestor
}

// Ancestor is one process of an ancestry, parent first.
type Ancestor struct {
	Pid         uint32
	StartTimeNs uint64
	Exe         string
}

// Target is the process an inject acts on.
type Target struct {
	Pid         uint32
	StartTimeNs uint64 // 0 when unknown
	Exe         string
}

// File identifies a file by (Dev, Inode); Path is the path the kernel
// resolved. Dev and Inode are 0 when unknown.
type File struct {
	Path       string
	Dev, Inode uint64
}

// Env answers what an event alone does not tell. Every method says whether
// it knows the answer; a condition that needs an unknown answer does not
// hold (see Evaluate).
type Env interface {
	// SHA256 is the lowercase hex SHA-256 of the file's content.
	SHA256(f File) (string, bool)
	// Signers is the key IDs of the signers that vouch for the file's
	// content: those whose catalogs (signature verified with the key)
	// list its SHA-256.
	Signers(f File) ([]string, bool)
	// CgroupPath is the path of the cgroup v2 with this id, relative to
	// the cgroup root ("/system.slice/nginx.service").
	CgroupPath(id uint64) (string, bool)
	// Ancestry is the ancestry of the process, parent first. startTimeNs
	// is 0 when the caller does not know it.
	Ancestry(pid uint32, startTimeNs uint64) ([]Ancestor, bool)
}

// Verdict is what the policy decided about an Input.
type Verdict struct {
	Action Action `json:"action"`
	Rule   string `json:"rule"` // the id of the deciding rule; "" for the default allow
	Mode   Mode   `json:"mode"` // the deciding rule's mode; the policy's for the default
	// Enforced is true when the verdict refuses the operation: the action
	// is deny or kill and the mode enforce. A deny or kill in monitor mode
	// is a would-be verdict, recorded only.
	Enforced bool `json:"enforced"`
}

// Evaluate decides about in. Rules are tried top to bottom, and the first
// that matches decides; if none does, the verdict is allow with rule "".
// env may be nil: then nothing beyond the Input is known.
func (p *Policy) Evaluate(in Input, env Env) Verdict {
	f := &facts{in: in, env: env}
	for _, r := range p.Rules {
		if slices.Contains(r.On, in.Kind) && r.Match.holds(f) && !slices.ContainsFunc(r.Except, func(c Cond) bool { return c.holds(f) }) {
			return Verdict{
				Action:   r.Action,
				Rule:     r.ID,
				Mode:     r.Mode,
				Enforced: r.Mode == Enforce && (r.Action == Deny || r.Action == Kill),
			}
		}
	}
	return Verdict{Action: Allow, Mode: p.Mode}
}

// facts is an Input with the answers of Env, asked once and only when a
// condition needs them. An unknown answer is "": no value of a policy is
// empty, so it matches nothing.
type facts struct {
	in  Input
	env Env

	hash, cgroup                string
	hashAsked, cgroupAsked      bool
	signers                     []string
	signersAsked                bool
	descendant, descendantAsked bool
}

func (f *facts) sha256() string {
	if !f.hashAsked && f.env != nil && f.in.Process.Exe != (File{}) {
		if h, ok := f.env.SHA256(f.in.Process.Exe); ok {
			f.hash = strings.ToLower(h)
		}
	}
	f.hashAsked = true
	return f.hash
}

func (f *facts) signerIDs() []string {
	if !f.signersAsked && f.env != nil && f.in.Process.Exe != (File{}) {
		if ids, ok := f.env.Signers(f.in.Process.Exe); ok {
			f.signers = ids
		}
	}
	f.signersAsked = true
	return f.signers
}

func (f *facts) cgroupPath() string {
	if !f.cgroupAsked && f.env != nil && f.in.Process.CgroupID != 0 {
		if p, ok := f.env.CgroupPath(f.in.Process.CgroupID); ok {
			f.cgroup = p
		}
	}
	f.cgroupAsked = true
	return f.cgroup
}

// isDescendant: the target is the actor itself, or the actor is among the
// target's nearest MaxAncestors ancestors. An unknown ancestry is not a
// descendant's.
func (f *facts) isDescendant() bool {
	if f.descendantAsked {
		return f.descendant
	}
	f.descendantAsked = true
	actor, t := f.in.Process, f.in.Target
	same := func(pid uint32, start uint64) bool {
		return pid == actor.Pid && (start == 0 || actor.StartTimeNs == 0 || start == actor.StartTimeNs)
	}
	if same(t.Pid, t.StartTimeNs) {
		f.descendant = true
		return true
	}
	if f.env == nil {
		return false
	}
	anc, ok := f.env.Ancestry(t.Pid, t.StartTimeNs)
	if !ok {
		return false
	}
	f.descendant = slices.ContainsFunc(anc[:min(len(anc), MaxAncestors)], func(a Ancestor) bool { return same(a.Pid, a.StartTimeNs) })
	return f.descendant
}

// holds: every condition present in c holds for f.
func (c *Cond) holds(f *facts) bool {
	in := &f.in
	pc, tc := &c.Process, &c.Target
	targetPaths := func(match func(string) bool) bool {
		if in.File.Path != "" && match(in.File.Path) {
			return true
		}
		return (in.Op == "rename" || in.Op == "link") && in.NewPath != "" && match(in.NewPath)
	}
	return (pc.Exe == nil || slices.Contains(pc.Exe, in.Process.Exe.Path)) &&
		(pc.ExePrefix == nil || underAny(pc.ExePrefix, in.Process.Exe.Path)) &&
		(pc.SHA256 == nil || slices.Contains(pc.SHA256, f.sha256())) &&
		(pc.Signer == nil || slices.ContainsFunc(f.signerIDs(), func(id string) bool { return slices.Contains(pc.Signer, id) })) &&
		(pc.AncestorExe == nil || slices.ContainsFunc(in.Process.Ancestry[:min(len(in.Process.Ancestry), MaxAncestors)],
			func(a Ancestor) bool { return slices.Contains(pc.AncestorExe, a.Exe) })) &&
		(pc.UID == nil || slices.ContainsFunc(pc.UID, func(r UIDRange) bool { return r.Lo <= in.Process.UID && in.Process.UID <= r.Hi })) &&
		(pc.Cgroup == nil || underAny(pc.Cgroup, f.cgroupPath())) &&
		(tc.Path == nil || targetPaths(func(p string) bool { return slices.Contains(tc.Path, p) })) &&
		(tc.PathPrefix == nil || targetPaths(func(p string) bool { return underAny(tc.PathPrefix, p) })) &&
		(tc.ProcessExe == nil || slices.Contains(tc.ProcessExe, in.Target.Exe)) &&
		(tc.NotDescendant == nil || *tc.NotDescendant != f.isDescendant()) &&
		(tc.Prot&(in.Prot|in.PrevProt) == tc.Prot) &&
		(tc.Anonymous == nil || *tc.Anonymous == in.Anonymous) &&
		(c.InjectMethod == nil || slices.Contains(c.InjectMethod, in.Op)) &&
		(c.KernelOp == nil || slices.Contains(c.KernelOp, in.Op)) &&
		(c.FileOp == nil || slices.Contains(c.FileOp, in.Op))
}

// underAny: p is one of the prefixes or below one, by whole path
// components (/usr/bin holds /usr/bin and /usr/bin/x, not /usr/binx).
// Prefixes have no trailing slash, but "/".
func underAny(prefixes []string, p string) bool {
	return p != "" && slices.ContainsFunc(prefixes, func(pre string) bool {
		return p == pre || strings.HasPrefix(p, pre) && (pre == "/" || p[len(pre)] == '/')
	})
}
