package bpfsensor

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/vigil-hips/vigil/internal/policy"
	"github.com/vigil-hips/vigil/internal/sensor"
)

// Resolver answers what compiling needs of the filesystem. Compile is
// otherwise pure; tests give it a fake.
type Resolver interface {
	// PathKeys returns the keys a rule path names: the path as written
	// (parent resolved) and, when it is a symlink, its final target.
	PathKeys(path string) ([]PathKey, error)
	// CgroupID returns the id of the cgroup v2 directory path (relative to
	// the cgroup root, e.g. /system.slice/nginx.service).
	CgroupID(path string) (uint64, error)
}

// OSResolver resolves against this machine.
type OSResolver struct {
	CgroupRoot string // default /sys/fs/cgroup
}

// PathKeys implements Resolver.
func (r OSResolver) PathKeys(path string) ([]PathKey, error) {
	k, err := PathKeyFor(path)
	if err != nil {
		return nil, err
	}
	keys := []PathKey{k}
	if real, err := filepath.EvalSymlinks(path); err == nil && real != path {
		if rk, err := PathKeyFor(real); err == nil && rk != k {
			keys = append(keys, rk)
		}
	}
	return keys, nil
}

// CgroupID implements Resolver: a cgroup v2 id is its directory's inode.
func (r OSResolver) CgroupID(path string) (uint64, error) {
	root := r.CgroupRoot
	if root == "" {
		root = "/sys/fs/cgroup"
		var st unix.Statfs_t
		if unix.Statfs(root, &st) == nil && st.Type != unix.CGROUP2_SUPER_MAGIC {
			root = "/sys/fs/cgroup/unified" // hybrid hierarchy
		}
	}
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(root, path), &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// Warning is a part of a policy the kernel cannot hold as written; the
// policy is applied without it.
type Warning struct {
	Rule string
	Msg  string
}

func (w Warning) String() string { return fmt.Sprintf("rule %s: %s", w.Rule, w.Msg) }

// ErrNotInKernel is wrapped by compile errors for conditions the kernel
// cannot decide (yet).
var ErrNotInKernel = errors.New("not decidable in the kernel")

var kindOf = map[policy.Kind]sensorEventKind{
	policy.KindExec:       sensorEventKindKIND_EXEC,
	policy.KindImageLoad:  sensorEventKindKIND_IMAGE,
	policy.KindMemExec:    sensorEventKindKIND_MEMEXEC,
	policy.KindInject:     sensorEventKindKIND_INJECT,
	policy.KindKernel:     sensorEventKindKIND_KERNEL,
	policy.KindFileModify: sensorEventKindKIND_FILE,
}

var actionOf = map[policy.Action]sensorVerdictAction{
	policy.Allow: sensorVerdictActionACT_ALLOW,
	policy.Deny:  sensorVerdictActionACT_DENY,
	policy.Kill:  sensorVerdictActionACT_KILL,
	policy.Alert: sensorVerdictActionACT_ALERT,
}

// opOf maps the policy's method, kernel op and file op names to the
// kernel's event ops.
var opOf = func() map[string]sensorEventOp {
	m := map[string]sensorEventOp{
		"proc_mem_write":    sensorEventOpOP_PROC_MEM,
		"process_vm_writev": sensorEventOpOP_VM_WRITEV,
		"dev_mem_open":      sensorEventOpOP_DEV_MEM,
		"kcore_open":        sensorEventOpOP_KCORE,
	}
	for op, name := range opNames {
		if _, ok := m[name]; !ok {
			m[name] = op
		}
	}
	return m
}()

// setKind tells exact path sets from prefix sets.
type setKind int

const (
	exactSet setKind = iota
	prefixSet
	cgroupSet
	digestSet
)

// compiler holds the sets of one compilation.
type compiler struct {
	r        Resolver
	catalogs policy.Catalogs // process.signer: the digests of each signer's catalogs
	unsigned map[string]bool // signers warned about: no catalogs
	kp       *KernelPolicy
	sets     map[string]uint64 // set key -> bit
	nPath    int
	nCgroup  int
	nDigest  int
	warnings []Warning
	rule     string // the rule being compiled, for warnings
}

// Compile turns p into the contents of the kernel's policy maps.
// Everything in p is either compiled or reported: an error for what the
// kernel cannot decide, a warning for what it cannot hold right now (a
// path whose directory does not exist; it takes effect when the policy is
// applied again after the directory appears).
func Compile(p *policy.Policy, r Resolver) (*KernelPolicy, []Warning, error) {
	c := &compiler{
		r: r,
		kp: &KernelPolicy{Digest: p.Digest(), Paths: map[PathKey]sensorPathBits{}, Cgroups: map[uint64]uint64{},
			Digests: map[[32]byte]uint64{}},
		sets:     map[string]uint64{},
		catalogs: p.Catalogs(),
		unsigned: map[string]bool{},
	}
	for i, rule := range p.Rules {
		c.rule = rule.ID
		c.kp.RuleIDs = append(c.kp.RuleIDs, rule.ID)
		if err := c.compileRule(uint16(i), rule); err != nil {
			return nil, c.warnings, fmt.Errorf("rule %s: %w", rule.ID, err)
		}
	}
	if err := c.kp.Validate(); err != nil {
		return nil, c.warnings, err
	}
	return c.kp, c.warnings, nil
}

func (c *compiler) compileRule(index uint16, rule *policy.Rule) error {
	var kinds uint32
	for _, k := range rule.On {
		kinds |= kindBit(kindOf[k])
	}
	main, ok, err := c.entries(rule.Match)
	if err != nil {
		return err
	}
	if !ok {
		if len(rule.Match.Process.Signer) > 0 {
			c.warn("its match block can never hold (a condition names only empty lists, or no catalog of its signers verifies): it matches nothing")
		} else {
			c.warn("its match block names only empty lists: it can never match")
		}
		return nil
	}
	var skips []sensorRule
	for _, ex := range rule.Except {
		es, ok, err := c.entries(ex)
		if err != nil {
			return err
		}
		if ok {
			skips = append(skips, es...)
		}
	}
	// Except entries come first and jump past the rule's own entries. An
	// except block that holds where the match does not skips a rule that
	// would not have matched: so it needs only its own conditions.
	end := len(c.kp.Entries) + len(skips) + len(main)
	var enforce uint8
	if rule.Mode == policy.Enforce {
		enforce = 1
	}
	c.kp.Kinds |= kinds
	for _, e := range skips {
		e.Kinds, e.Action, e.SkipTo, e.RuleIndex = kinds, sensorVerdictActionACT_SKIP, uint16(end), index
		c.kp.Entries = append(c.kp.Entries, e)
	}
	for _, e := range main {
		e.Kinds, e.Action, e.Enforce, e.RuleIndex = kinds, actionOf[rule.Action], enforce, index
		c.kp.Entries = append(c.kp.Entries, e)
	}
	if len(c.kp.Entries) > MaxRuleEntries {
		return fmt.Errorf("the policy needs more than %d kernel rule entries", MaxRuleEntries)
	}
	return nil
}

func (c *compiler) warn(format string, args ...any) {
	c.warnings = append(c.warnings, Warning{Rule: c.rule, Msg: fmt.Sprintf(format, args...)})
}

// entries compiles one condition block into kernel entries that match
// when it holds (more than one when a uid list needs more than
// UIDRanges ranges: any of them matching is the block holding). ok is
// false when the block can never hold.
func (c *compiler) entries(cond policy.Cond) (out []sensorRule, ok bool, err error) {
	var e sensorRule
	set := func(vals []string, kind setKind, bit sensorCondBit, mask *uint64) bool {
		if vals == nil {
			return true
		}
		m, err2 := c.set(vals, kind)
		if err2 != nil {
			err = err2
			return false
		}
		if m == 0 {
			return false
		}
		e.Conds |= bit
		*mask |= m
		return true
	}
	pc, tc := cond.Process, cond.Target
	if slices.Contains(pc.ExePrefix, "/") || slices.Contains(tc.PathPrefix, "/") {
		return nil, false, fmt.Errorf(`prefix "/": %w (it holds for anything with a path; remove the condition, or name the top directories)`, ErrNotInKernel)
	}
	if !set(pc.Exe, exactSet, sensorCondBitC_EXE, &e.ExeMask) ||
		!set(c.digests(pc), digestSet, sensorCondBitC_SHA, &e.ShaMask) ||
		!set(pc.ExePrefix, prefixSet, sensorCondBitC_EXE_PREFIX, &e.ExePrefixMask) ||
		!set(pc.AncestorExe, exactSet, sensorCondBitC_ANCESTOR, &e.AncMask) ||
		!set(pc.Cgroup, cgroupSet, sensorCondBitC_CGROUP, &e.CgroupMask) ||
		!set(tc.Path, exactSet, sensorCondBitC_TPATH, &e.TpathMask) ||
		!set(tc.PathPrefix, prefixSet, sensorCondBitC_TPREFIX, &e.TprefixMask) ||
		!set(tc.ProcessExe, exactSet, sensorCondBitC_TEXE, &e.TexeMask) {
		return nil, false, err
	}
	if nd := tc.NotDescendant; nd != nil {
		if *nd {
			e.Conds |= sensorCondBitC_NOT_DESC
		} else {
			e.Conds |= sensorCondBitC_IS_DESC
		}
	}
	if tc.Prot&policy.ProtRead != 0 {
		return nil, false, fmt.Errorf("target.prot read: %w (the kernel decides on write and exec)", ErrNotInKernel)
	}
	if tc.Prot&policy.ProtWrite != 0 {
		e.Conds |= sensorCondBitC_PROT_WRITE
	}
	if a := tc.Anonymous; a != nil {
		if *a {
			e.Conds |= sensorCondBitC_ANON
		} else {
			e.Conds |= sensorCondBitC_NOT_ANON
		}
	}
	for _, ops := range [][]string{cond.InjectMethod, cond.KernelOp, cond.FileOp} {
		if ops == nil {
			continue
		}
		if len(ops) == 0 {
			return nil, false, nil
		}
		e.Conds |= sensorCondBitC_OP
		for _, name := range ops {
			op, known := opOf[name]
			if !known {
				return nil, false, fmt.Errorf("operation %q: %w", name, ErrNotInKernel)
			}
			e.Ops |= opBit(op)
		}
	}
	if pc.UID == nil {
		return []sensorRule{e}, true, nil
	}
	if len(pc.UID) == 0 {
		return nil, false, nil
	}
	e.Conds |= sensorCondBitC_UID_RANGE
	for uids := range slices.Chunk(pc.UID, UIDRanges) {
		u := e
		u.Nuid = uint8(len(uids))
		for i, r := range uids {
			u.UidLo[i], u.UidHi[i] = r.Lo, r.Hi
		}
		out = append(out, u)
	}
	return out, true, nil
}

// digests is the digest set a block's process.sha256 and process.signer
// conditions compile to: the sha256 list; the digests of the signers'
// catalogs (any of the signers); both: the digests in both, since a block
// holds when all its conditions do. nil: neither condition.
func (c *compiler) digests(pc policy.ProcessCond) []string {
	if pc.Signer == nil {
		return pc.SHA256
	}
	signed := map[string]bool{}
	for _, id := range pc.Signer {
		ds := c.catalogs[id]
		if len(ds) == 0 && !c.unsigned[id] {
			c.unsigned[id] = true
			c.warn("process.signer %s: no catalog of this signer verifies (not an approved signer, or none of its catalogs added); it matches nothing until one does", id)
		}
		for _, d := range ds {
			signed[strings.ToLower(d)] = true
		}
	}
	out := []string{}
	if pc.SHA256 != nil {
		for _, d := range pc.SHA256 {
			if signed[d] {
				out = append(out, d)
			}
		}
		return out
	}
	for d := range signed {
		out = append(out, d)
	}
	slices.Sort(out)
	return out
}

// set returns the bit of the set of vals, making it if new. A set none of
// whose members the kernel can hold right now has no bit (0).
func (c *compiler) set(vals []string, kind setKind) (uint64, error) {
	sorted := slices.Clone(vals)
	slices.Sort(sorted)
	key := fmt.Sprint(kind, ":", strings.Join(sorted, "\x00"))
	if bit, ok := c.sets[key]; ok {
		return bit, nil
	}
	n, what := &c.nPath, "path"
	switch kind {
	case cgroupSet:
		n, what = &c.nCgroup, "cgroup"
	case digestSet:
		n, what = &c.nDigest, "sha256"
	}
	if *n == MaxSets {
		return 0, fmt.Errorf("the policy needs more than %d distinct %s sets", MaxSets, what)
	}
	bit := uint64(1) << *n
	members := 0
	for _, v := range vals {
		if kind == digestSet {
			b, err := hex.DecodeString(v)
			if err != nil || len(b) != sha256.Size {
				return 0, fmt.Errorf("process.sha256 %q: not a hex SHA-256 digest", v)
			}
			c.kp.Digests[[sha256.Size]byte(b)] |= bit
			members++
			continue
		}
		if kind == cgroupSet {
			id, err := c.r.CgroupID(v)
			if err != nil {
				c.warn("cgroup %s: %v; it matches nothing until the policy is applied again", v, err)
				continue
			}
			c.kp.Cgroups[id] |= bit
			members++
			continue
		}
		keys, err := c.r.PathKeys(v)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				c.warn("%s: its directory does not exist; it matches nothing until the policy is applied again", v)
				continue
			}
			return 0, fmt.Errorf("%s: %w", v, err)
		}
		for _, k := range keys {
			b := c.kp.Paths[k]
			if kind == exactSet {
				b.Exact |= bit
			} else {
				b.Prefix |= bit
			}
			c.kp.Paths[k] = b
		}
		members++
	}
	if members == 0 {
		c.sets[key] = 0
		return 0, nil
	}
	*n++
	c.sets[key] = bit
	return bit, nil
}

// Enforce implements sensor.Enforcer: compile p for this machine and
// apply it.
func (s *Sensor) Enforce(p *policy.Policy) ([]string, error) {
	if p == nil {
		s.userPolicy.Store(nil)
		s.ForgetExecVerdicts()
		return nil, s.ApplyPolicy(nil)
	}
	kp, warnings, err := Compile(p, OSResolver{})
	var ws []string
	for _, w := range warnings {
		ws = append(ws, w.String())
	}
	if err != nil {
		return ws, fmt.Errorf("compile policy: %w", err)
	}
	if (kp.NeedsDigests() || len(p.Signers()) > 0) && s.backend != sensor.BackendLSM {
		// Only the LSM hooks know a process's executable digest (task
		// storage filled at exec); neither the tracepoint programs nor
		// the fanotify path do. A signer condition is refused even while
		// its signers have no catalogs: one added later could not be
		// enforced.
		return ws, fmt.Errorf("compile policy: process.sha256 or process.signer on the %s backend: %w (it needs BPF LSM)", s.backend, ErrNotInKernel)
	}
	if err := s.ApplyPolicy(kp); err != nil {
		return ws, err
	}
	s.userPolicy.Store(p)
	s.ForgetExecVerdicts()
	return ws, nil
}
