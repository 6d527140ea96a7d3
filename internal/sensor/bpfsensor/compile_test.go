package bpfsensor

import (
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"path"
	"slices"
	"strings"
	"testing"

	"github.com/vigil-hips/vigil/internal/policy"
)

// fakeFS resolves every path as if its directory existed, except those
// under /missing; /bin is a symlink to /usr/bin.
type fakeFS struct{ cgroups map[string]uint64 }

func dirIno(dir string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(dir))
	return h.Sum64()
}

func fakeKey(p string) PathKey {
	return PathKey{ParentDev: 1, ParentIno: dirIno(path.Dir(p)), Name: path.Base(p)}
}

func (fakeFS) PathKeys(p string) ([]PathKey, error) {
	if strings.HasPrefix(p, "/missing/") {
		return nil, fmt.Errorf("stat %s: %w", path.Dir(p), os.ErrNotExist)
	}
	if rest, ok := strings.CutPrefix(p, "/bin/"); ok {
		return []PathKey{fakeKey(p), fakeKey("/usr/bin/" + rest)}, nil
	}
	return []PathKey{fakeKey(p)}, nil
}

func (f fakeFS) CgroupID(p string) (uint64, error) {
	if id, ok := f.cgroups[p]; ok {
		return id, nil
	}
	return 0, os.ErrNotExist
}

// kernelFacts is what the kernel's walk (facts_step) finds for a path:
// exact bits of the entry itself, prefix bits of it and every directory
// above it.
func kernelFacts(kp *KernelPolicy, p string) uint64 {
	if p == "" {
		return 0
	}
	var bits uint64
	for level := 0; p != "/"; level++ {
		if b, ok := kp.Paths[fakeKey(p)]; ok {
			if level == 0 {
				bits |= b.Exact
			}
			bits |= b.Prefix
		}
		p = path.Dir(p)
	}
	return bits
}

// kernelDecide transcribes scan_step and rule_matches (policy.bpf.h):
// the model the compiler is tested against, with policy.Evaluate as the
// reference of what it must decide.
// exeSHA is the digest exe_shas holds for the process ("": none; the
// kernel then has no digest-set bits for it, sha_facts).
func kernelDecide(kp *KernelPolicy, in policy.Input, cgroupBits uint64, notDesc bool, exeSHA string) (rule string, action sensorVerdictAction, enforce bool) {
	kind := kindOf[in.Kind]
	self := kernelFacts(kp, in.Process.Exe.Path)
	var sha uint64
	if b, err := hex.DecodeString(exeSHA); err == nil && len(b) == 32 {
		sha = kp.Digests[[32]byte(b)]
	}
	var anc uint64
	for i, a := range in.Process.Ancestry {
		if i < 16 {
			anc |= kernelFacts(kp, a.Exe)
		}
	}
	target := kernelFacts(kp, in.File.Path)
	if in.Op == "rename" || in.Op == "link" {
		target |= kernelFacts(kp, in.NewPath)
	}
	texe := kernelFacts(kp, in.Target.Exe)
	op := opOf[in.Op]
	writable := (in.Prot|in.PrevProt)&policy.ProtWrite != 0
	for i := 0; i < len(kp.Entries); i++ {
		r := kp.Entries[i]
		c := r.Conds
		has := func(b sensorCondBit) bool { return c&b != 0 }
		uidOK := !has(sensorCondBitC_UID_RANGE)
		for j := 0; j < int(r.Nuid); j++ {
			uidOK = uidOK || in.Process.UID >= r.UidLo[j] && in.Process.UID <= r.UidHi[j]
		}
		ok := r.Kinds&kindBit(kind) != 0 &&
			(!has(sensorCondBitC_EXE) || self&r.ExeMask != 0) &&
			(!has(sensorCondBitC_EXE_PREFIX) || self&r.ExePrefixMask != 0) &&
			(!has(sensorCondBitC_ANCESTOR) || anc&r.AncMask != 0) &&
			(!has(sensorCondBitC_CGROUP) || cgroupBits&r.CgroupMask != 0) &&
			(!has(sensorCondBitC_SHA) || sha&r.ShaMask != 0) &&
			(!has(sensorCondBitC_TPATH) || target&r.TpathMask != 0) &&
			(!has(sensorCondBitC_TPREFIX) || target&r.TprefixMask != 0) &&
			(!has(sensorCondBitC_TEXE) || texe&r.TexeMask != 0) &&
			(!has(sensorCondBitC_NOT_DESC) || notDesc) &&
			(!has(sensorCondBitC_IS_DESC) || !notDesc) &&
			(!has(sensorCondBitC_PROT_WRITE) || writable) &&
			(!has(sensorCondBitC_ANON) || in.Anonymous) &&
			(!has(sensorCondBitC_NOT_ANON) || !in.Anonymous) &&
			(!has(sensorCondBitC_OP) || r.Ops&opBit(op) != 0) &&
			uidOK
		if !ok {
			continue
		}
		if r.Action == sensorVerdictActionACT_SKIP {
			i = int(r.SkipTo) - 1
			continue
		}
		return kp.RuleIDs[r.RuleIndex], r.Action, r.Enforce == 1
	}
	return "", sensorVerdictActionACT_NONE, false
}

func mustParse(t *testing.T, src string) *policy.Policy {
	t.Helper()
	p, err := policy.Parse("test.yaml", []byte(src))
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	return p
}

var conformancePolicy = `
version: 1
mode: enforce
rules:
  - id: exe-exact
    on: [exec]
    action: deny
    match:
      process: {exe: [/usr/bin/curl]}
      target: {path_prefix: [/tmp]}
  - id: shells-under-servers
    on: [exec]
    action: kill
    match:
      process: {exe_prefix: [/usr/sbin]}
      target: {path: [/bin/sh, /usr/bin/bash]}
    except:
      - process: {exe: [/usr/sbin/sshd]}
  - id: ancestors
    on: [exec]
    action: alert
    mode: monitor
    match:
      process: {ancestor_exe: [/usr/sbin/cron]}
  - id: uids
    on: [image_load]
    action: deny
    match:
      process: {uid: [1, 3, 5, 7, 9, "100-200"]}
      target: {path_prefix: [/home]}
  - id: wx
    on: [mem_exec]
    action: deny
    match:
      target: {prot: [write, exec], anonymous: true}
    except:
      - process: {exe_prefix: [/usr/lib/jvm]}
  - id: inject
    on: [inject]
    action: deny
    match:
      inject_method: [ptrace_attach, proc_mem_write]
      target: {not_descendant: true}
  - id: inject-own
    on: [inject]
    action: alert
    match:
      target: {not_descendant: false, process_exe: [/usr/bin/sleep]}
  - id: kernel
    on: [kernel]
    action: deny
    match:
      kernel_op: [module_load, bpf_prog_load]
    except:
      - process: {exe: [/usr/bin/kmod]}
  - id: persistence
    on: [file_modify]
    action: deny
    match:
      target: {path: [/etc/ld.so.preload], path_prefix: [/etc/sudoers.d]}
  - id: cgroup
    on: [file_modify]
    action: alert
    match:
      process: {cgroup: [/system.slice/nginx.service]}
  - id: digest
    on: [file_modify]
    action: deny
    match:
      process: {sha256: [` + shaA + `, ` + shaBUpper + `]}
      target: {path_prefix: [/srv]}
    except:
      - process: {sha256: [` + shaB + `]}
  - id: digest-and-exe
    on: [exec, file_modify]
    action: alert
    mode: monitor
    match:
      process: {sha256: [` + shaC + `], exe_prefix: [/opt]}
`

// Digests of the conformance policy (B also written in upper case).
var (
	shaA      = strings.Repeat("a1", 32)
	shaB      = strings.Repeat("b2", 32)
	shaBUpper = strings.ToUpper(shaB)
	shaC      = strings.Repeat("c3", 32)
	shaD      = strings.Repeat("d4", 32) // in no rule
)

func TestCompileConformsToEvaluate(t *testing.T) {
	p := mustParse(t, conformancePolicy)
	fs := fakeFS{cgroups: map[string]uint64{"/system.slice/nginx.service": 42}}
	kp, warnings, err := Compile(p, fs)
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) != 0 {
		t.Fatalf("warnings: %v", warnings)
	}
	proc := func(exe string, uid uint32, anc ...string) policy.Process {
		pr := policy.Process{Pid: 10, Exe: policy.File{Path: exe}, UID: uid}
		for i, a := range anc {
			pr.Ancestry = append(pr.Ancestry, policy.Ancestor{Pid: uint32(9 - i), Exe: a})
		}
		return pr
	}
	file := func(p string) policy.File { return policy.File{Path: p} }
	inputs := []struct {
		name    string
		in      policy.Input
		notDesc bool
		cgroup  uint64 // cgroup-set bits the kernel finds
		sha     string // the process's executable digest, "" if unknown
	}{
		{"curl execs from /tmp", policy.Input{Kind: policy.KindExec, Process: proc("/usr/bin/curl", 0), File: file("/tmp/x/payload")}, false, 0, ""},
		{"curl execs elsewhere", policy.Input{Kind: policy.KindExec, Process: proc("/usr/bin/curl", 0), File: file("/usr/bin/id")}, false, 0, ""},
		{"curl execs /tmpx", policy.Input{Kind: policy.KindExec, Process: proc("/usr/bin/curl", 0), File: file("/tmpx/a")}, false, 0, ""},
		{"nginx spawns bash", policy.Input{Kind: policy.KindExec, Process: proc("/usr/sbin/nginx", 33), File: file("/usr/bin/bash")}, false, 0, ""},
		{"sshd spawns bash", policy.Input{Kind: policy.KindExec, Process: proc("/usr/sbin/sshd", 0), File: file("/usr/bin/bash")}, false, 0, ""},
		{"nginx spawns id", policy.Input{Kind: policy.KindExec, Process: proc("/usr/sbin/nginx", 33), File: file("/usr/bin/id")}, false, 0, ""},
		{"under cron", policy.Input{Kind: policy.KindExec, Process: proc("/bin/x", 0, "/usr/bin/sh", "/usr/sbin/cron"), File: file("/usr/bin/id")}, false, 0, ""},
		{"uid 7 loads from home", policy.Input{Kind: policy.KindImageLoad, Process: proc("/usr/bin/a", 7), File: file("/home/u/lib.so")}, false, 0, ""},
		{"uid 150 loads from home", policy.Input{Kind: policy.KindImageLoad, Process: proc("/usr/bin/a", 150), File: file("/home/u/lib.so")}, false, 0, ""},
		{"uid 8 loads from home", policy.Input{Kind: policy.KindImageLoad, Process: proc("/usr/bin/a", 8), File: file("/home/u/lib.so")}, false, 0, ""},
		{"wx anon", policy.Input{Kind: policy.KindMemExec, Process: proc("/usr/bin/a", 0), Prot: 5, PrevProt: 3, Anonymous: true}, false, 0, ""},
		{"wx anon java", policy.Input{Kind: policy.KindMemExec, Process: proc("/usr/lib/jvm/j17/bin/java", 0), Prot: 5, PrevProt: 3, Anonymous: true}, false, 0, ""},
		{"rx file", policy.Input{Kind: policy.KindMemExec, Process: proc("/usr/bin/a", 0), Prot: 5, File: file("/x")}, false, 0, ""},
		{"ptrace foreign", policy.Input{Kind: policy.KindInject, Op: "ptrace_attach", Process: proc("/usr/bin/gdb", 0), Target: policy.Target{Pid: 1, Exe: "/sbin/init"}}, true, 0, ""},
		{"ptrace own child", policy.Input{Kind: policy.KindInject, Op: "ptrace_attach", Process: proc("/usr/bin/gdb", 0), Target: policy.Target{Pid: 10, Exe: "/usr/bin/sleep"}}, false, 0, ""},
		{"vm_writev foreign", policy.Input{Kind: policy.KindInject, Op: "process_vm_writev", Process: proc("/usr/bin/x", 0), Target: policy.Target{Pid: 1, Exe: "/sbin/init"}}, true, 0, ""},
		{"module by kmod", policy.Input{Kind: policy.KindKernel, Op: "module_load", Process: proc("/usr/bin/kmod", 0)}, false, 0, ""},
		{"module by other", policy.Input{Kind: policy.KindKernel, Op: "module_load", Process: proc("/tmp/rootkit", 0)}, false, 0, ""},
		{"kcore", policy.Input{Kind: policy.KindKernel, Op: "kcore_open", Process: proc("/tmp/rootkit", 0)}, false, 0, ""},
		{"preload create", policy.Input{Kind: policy.KindFileModify, Op: "create", Process: proc("/usr/bin/tee", 0), File: file("/etc/ld.so.preload")}, false, 0, ""},
		{"sudoers.d rename into", policy.Input{Kind: policy.KindFileModify, Op: "rename", Process: proc("/usr/bin/mv", 0), File: file("/tmp/x"), NewPath: "/etc/sudoers.d/evil"}, false, 0, ""},
		{"sudoers.dx", policy.Input{Kind: policy.KindFileModify, Op: "open_write", Process: proc("/usr/bin/mv", 0), File: file("/etc/sudoers.dx")}, false, 0, ""},
		{"nginx writes", policy.Input{Kind: policy.KindFileModify, Op: "open_write", Process: proc("/usr/sbin/nginx", 0), File: file("/var/log/x")}, false, 1, ""},
		{"digest A writes /srv", policy.Input{Kind: policy.KindFileModify, Op: "open_write", Process: proc("/usr/bin/a", 0), File: file("/srv/data/x")}, false, 0, shaA},
		{"digest A writes /srvx", policy.Input{Kind: policy.KindFileModify, Op: "open_write", Process: proc("/usr/bin/a", 0), File: file("/srvx/x")}, false, 0, shaA},
		{"digest B writes /srv (except)", policy.Input{Kind: policy.KindFileModify, Op: "unlink", Process: proc("/usr/bin/a", 0), File: file("/srv/x")}, false, 0, shaB},
		{"digest D writes /srv", policy.Input{Kind: policy.KindFileModify, Op: "open_write", Process: proc("/usr/bin/a", 0), File: file("/srv/x")}, false, 0, shaD},
		{"unknown digest writes /srv", policy.Input{Kind: policy.KindFileModify, Op: "open_write", Process: proc("/usr/bin/a", 0), File: file("/srv/x")}, false, 0, ""},
		{"digest C under /opt execs", policy.Input{Kind: policy.KindExec, Process: proc("/opt/t/bin/t", 0), File: file("/usr/bin/id")}, false, 0, shaC},
		{"digest C under /opt writes /srv", policy.Input{Kind: policy.KindFileModify, Op: "create", Process: proc("/opt/t", 0), File: file("/srv/y")}, false, 0, shaC},
		{"digest C elsewhere execs", policy.Input{Kind: policy.KindExec, Process: proc("/usr/bin/t", 0), File: file("/usr/bin/id")}, false, 0, shaC},
		{"digest A under /opt execs", policy.Input{Kind: policy.KindExec, Process: proc("/opt/t", 0), File: file("/usr/bin/id")}, false, 0, shaA},
		{"unknown digest under /opt execs", policy.Input{Kind: policy.KindExec, Process: proc("/opt/t", 0), File: file("/usr/bin/id")}, false, 0, ""},
	}
	for _, tc := range inputs {
		env := testEnv{cgroups: map[uint64]string{42: "/system.slice/nginx.service"}}
		if tc.sha != "" {
			env.sha = map[string]string{tc.in.Process.Exe.Path: tc.sha}
		}
		in := tc.in
		if tc.cgroup != 0 {
			in.Process.CgroupID = 42
		}
		if !tc.notDesc && in.Kind == policy.KindInject {
			in.Target.Pid = in.Process.Pid // the model's "descendant": itself
		}
		want := p.Evaluate(in, env)
		rule, action, enforce := kernelDecide(kp, in, tc.cgroup, tc.notDesc, tc.sha)
		wantAction := actionOf[want.Action]
		if want.Rule == "" {
			wantAction = sensorVerdictActionACT_NONE
		}
		if rule != want.Rule || action != wantAction || enforce != (want.Mode == policy.Enforce && want.Rule != "") {
			t.Errorf("%s: kernel decides %q %v enforce=%v, Evaluate %+v", tc.name, rule, action, enforce, want)
		}
	}
}

// testEnv answers Evaluate's questions: cgroup paths by id, executable
// digests by path.
type testEnv struct {
	cgroups  map[uint64]string
	sha      map[string]string
	catalogs policy.Catalogs
}

// Signers: the signers whose catalogs list the executable's digest.
func (e testEnv) Signers(f policy.File) ([]string, bool) {
	h, ok := e.sha[f.Path]
	if !ok {
		return nil, false
	}
	ids := []string{}
	for id, ds := range e.catalogs {
		if slices.Contains(ds, h) {
			ids = append(ids, id)
		}
	}
	return ids, true
}

func (e testEnv) SHA256(f policy.File) (string, bool) {
	h, ok := e.sha[f.Path]
	return h, ok
}
func (e testEnv) CgroupPath(id uint64) (string, bool) {
	p, ok := e.cgroups[id]
	return p, ok
}
func (testEnv) Ancestry(uint32, uint64) ([]policy.Ancestor, bool) { return nil, false }

func TestCompileLayout(t *testing.T) {
	p := mustParse(t, conformancePolicy)
	kp, _, err := Compile(p, fakeFS{cgroups: map[string]uint64{"/system.slice/nginx.service": 42}})
	if err != nil {
		t.Fatal(err)
	}
	// shells-under-servers: its except entry comes first and skips the rule.
	var skip, main int = -1, -1
	for i, e := range kp.Entries {
		if kp.RuleIDs[e.RuleIndex] == "shells-under-servers" {
			if e.Action == sensorVerdictActionACT_SKIP && skip < 0 {
				skip = i
			} else if e.Action == sensorVerdictActionACT_KILL {
				main = i
			}
		}
	}
	if skip < 0 || main != skip+1 || int(kp.Entries[skip].SkipTo) != main+1 {
		t.Fatalf("except layout: skip %d main %d skip_to %d", skip, main, kp.Entries[skip].SkipTo)
	}
	// /bin/sh names both the link and /usr/bin/sh.
	e := kp.Entries[main]
	if kp.Paths[fakeKey("/bin/sh")].Exact&e.TpathMask == 0 || kp.Paths[fakeKey("/usr/bin/sh")].Exact&e.TpathMask == 0 {
		t.Errorf("/bin/sh: symlink and target not both in the set")
	}
	// uids: six values and a range become two entries of at most four ranges.
	n := 0
	for _, e := range kp.Entries {
		if kp.RuleIDs[e.RuleIndex] == "uids" {
			n++
			if e.Nuid == 0 || e.Nuid > UIDRanges {
				t.Errorf("uid entry with %d ranges", e.Nuid)
			}
		}
	}
	if n != 2 {
		t.Errorf("uids: %d entries, want 2", n)
	}
	if kp.Cgroups[42] == 0 {
		t.Errorf("cgroup 42 not in a set")
	}
	wantKinds := uint32(0)
	for _, k := range []sensorEventKind{sensorEventKindKIND_EXEC, sensorEventKindKIND_IMAGE, sensorEventKindKIND_MEMEXEC,
		sensorEventKindKIND_INJECT, sensorEventKindKIND_KERNEL, sensorEventKindKIND_FILE} {
		wantKinds |= kindBit(k)
	}
	if kp.Kinds != wantKinds {
		t.Errorf("kinds %#x, want %#x", kp.Kinds, wantKinds)
	}
}

func TestCompileRejectsAndWarns(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		err       error
		warn      string
	}{
		{"prot read", `
version: 1
mode: enforce
rules:
  - id: r
    on: [mem_exec]
    action: deny
    match: {target: {prot: [read]}}
`, ErrNotInKernel, ""},
		{"missing directory", `
version: 1
mode: enforce
rules:
  - id: m
    on: [file_modify]
    action: deny
    match: {target: {path: [/missing/dir/file]}}
`, nil, "matches nothing until the policy is applied again"},
	} {
		p := mustParse(t, tc.src)
		kp, warnings, err := Compile(p, fakeFS{})
		if tc.err != nil {
			if !errors.Is(err, tc.err) {
				t.Errorf("%s: err %v, want %v", tc.name, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if len(warnings) == 0 || !strings.Contains(warnings[0].Msg, tc.warn) {
			t.Errorf("%s: warnings %v, want %q", tc.name, warnings, tc.warn)
		}
		if len(kp.Entries) != 0 {
			t.Errorf("%s: a rule that can never match has %d entries", tc.name, len(kp.Entries))
		}
	}
}

// TestCompileDigests: each distinct process.sha256 list is one digest set
// of its own bit space (64 sets, apart from the path and cgroup sets); a
// digest in several lists carries each list's bit.
func TestCompileDigests(t *testing.T) {
	kp, _, err := Compile(mustParse(t, conformancePolicy), fakeFS{cgroups: map[string]uint64{"/system.slice/nginx.service": 42}})
	if err != nil {
		t.Fatal(err)
	}
	masks := map[string]uint64{}
	for _, e := range kp.Entries {
		if e.Conds&sensorCondBitC_SHA != 0 {
			masks[fmt.Sprintf("%s/%d", kp.RuleIDs[e.RuleIndex], e.Action)] = e.ShaMask
		}
	}
	match, except, mixed := masks[fmt.Sprintf("digest/%d", sensorVerdictActionACT_DENY)],
		masks[fmt.Sprintf("digest/%d", sensorVerdictActionACT_SKIP)], masks[fmt.Sprintf("digest-and-exe/%d", sensorVerdictActionACT_ALERT)]
	if len(masks) != 3 || match == 0 || except == 0 || mixed == 0 || match == except || match == mixed || except == mixed {
		t.Fatalf("sha masks %v: want three distinct sets", masks)
	}
	dig := func(h string) uint64 {
		b, _ := hex.DecodeString(h)
		return kp.Digests[[32]byte(b)]
	}
	if dig(shaA) != match || dig(shaB) != match|except || dig(shaC) != mixed || dig(shaD) != 0 || len(kp.Digests) != 3 {
		t.Errorf("digest sets: A %#x B %#x C %#x D %#x (%d digests); match %#x except %#x mixed %#x",
			dig(shaA), dig(shaB), dig(shaC), dig(shaD), len(kp.Digests), match, except, mixed)
	}
	if !kp.NeedsDigests() {
		t.Error("NeedsDigests false for a policy with process.sha256")
	}
	plain, _, err := Compile(mustParse(t, "version: 1\nmode: enforce\nrules:\n  - {id: x, on: [exec], action: deny, match: {process: {exe: [/usr/bin/x]}}}\n"), fakeFS{})
	if err != nil || plain.NeedsDigests() {
		t.Errorf("a policy without process.sha256: needs digests %v, err %v", plain.NeedsDigests(), err)
	}

	// 64 distinct digest sets fit next to 64 path sets; the 65th does not.
	var b strings.Builder
	b.WriteString("version: 1\nmode: enforce\nrules:\n")
	for i := 0; i < MaxSets+1; i++ {
		fmt.Fprintf(&b, "  - {id: r%d, on: [exec], action: deny, match: {process: {sha256: [\"%064x\"], exe: [/usr/bin/x%d]}}}\n", i, i, i%MaxSets)
	}
	p := mustParse(t, b.String())
	p.Rules = p.Rules[:MaxSets]
	if _, _, err := Compile(p, fakeFS{}); err != nil {
		t.Errorf("%d digest sets and %d path sets: %v", MaxSets, MaxSets, err)
	}
	p = mustParse(t, b.String())
	if _, _, err := Compile(p, fakeFS{}); err == nil || !strings.Contains(err.Error(), "sha256 sets") {
		t.Errorf("%d digest sets: err %v, want too many sha256 sets", MaxSets+1, err)
	}
}

func TestNameHashIsWordwise(t *testing.T) {
	// The kernel reads the name into a buffer holding older, longer names:
	// bytes past the end must not count. Equal names hash equal, and a
	// one-byte difference anywhere changes the hash.
	names := []string{"a", "sh", "bash", "ld.so.preload", "authorized_keys", "authorized_keys2", strings.Repeat("x", 255)}
	seen := map[uint64]string{}
	for _, n := range names {
		h := NameHash(n)
		if other, dup := seen[h]; dup {
			t.Errorf("%q and %q hash alike", n, other)
		}
		seen[h] = n
		if NameHash(n) != h {
			t.Errorf("%q: unstable", n)
		}
	}
}

// Signer key IDs of the signer tests.
const (
	keyK = "SHA256:S0tLS0tLS0tLS0tLS0tLS0tLS0tLS0tLS0tLS0tLS0s"
	keyL = "SHA256:TExMTExMTExMTExMTExMTExMTExMTExMTExMTExMTEw"
	keyM = "SHA256:TU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU1NTU0" // approved, no catalog
)

var signerPolicy = `
version: 1
mode: enforce
rules:
  - id: by-k
    on: [file_modify]
    action: deny
    match:
      process: {signer: [` + keyK + `]}
      target: {path_prefix: [/srv]}
    except:
      - process: {sha256: [` + shaB + `]}
  - id: by-l-or-m
    on: [exec]
    action: alert
    match:
      process: {signer: [` + keyL + `, ` + keyM + `]}
  - id: by-k-and-digest
    on: [kernel]
    action: deny
    match:
      process: {signer: [` + keyK + `], sha256: [` + shaA + `, ` + shaD + `]}
`

// TestCompileSigners: process.signer compiles to the digests of the
// signers' catalogs, a set like a sha256 list (two signers: the union;
// with sha256 in the same block: the intersection), and decides as
// Evaluate does with the same catalogs.
func TestCompileSigners(t *testing.T) {
	catalogs := policy.Catalogs{keyK: {shaA, shaB}, keyL: {shaC}}
	p := mustParse(t, signerPolicy).WithCatalogs(catalogs)
	kp, warnings, err := Compile(p, fakeFS{})
	if err != nil {
		t.Fatal(err)
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0].String(), keyM) || !strings.Contains(warnings[0].Msg, "matches nothing") {
		t.Errorf("warnings %v, want one about %s, which has no catalog", warnings, keyM)
	}
	dig := func(h string) uint64 {
		b, _ := hex.DecodeString(h)
		return kp.Digests[[32]byte(b)]
	}
	if dig(shaA) == 0 || dig(shaB) == 0 || dig(shaC) == 0 || dig(shaD) != 0 || len(kp.Digests) != 3 {
		t.Errorf("digests: A %#x B %#x C %#x D %#x (%d), want A, B, C in sets and D in none", dig(shaA), dig(shaB), dig(shaC), dig(shaD), len(kp.Digests))
	}
	if !kp.NeedsDigests() {
		t.Error("NeedsDigests false for a policy with process.signer")
	}
	proc := policy.Process{Pid: 10, Exe: policy.File{Path: "/usr/bin/a"}}
	for _, tc := range []struct {
		kind policy.Kind
		file string
		sha  string
		want string // the deciding rule
	}{
		{policy.KindFileModify, "/srv/x", shaA, "by-k"},
		{policy.KindFileModify, "/srv/x", shaB, ""}, // K signed it, but the except names it
		{policy.KindFileModify, "/srv/x", shaC, ""}, // signed by L
		{policy.KindFileModify, "/srv/x", shaD, ""}, // signed by nobody
		{policy.KindFileModify, "/srv/x", "", ""},   // digest unknown
		{policy.KindFileModify, "/etc/x", shaA, ""},
		{policy.KindExec, "/usr/bin/id", shaC, "by-l-or-m"},
		{policy.KindExec, "/usr/bin/id", shaA, ""},
		{policy.KindKernel, "", shaA, "by-k-and-digest"},
		{policy.KindKernel, "", shaB, ""}, // signed by K, not in the sha256 list
		{policy.KindKernel, "", shaD, ""}, // in the list, not signed by K
	} {
		in := policy.Input{Kind: tc.kind, Process: proc, File: policy.File{Path: tc.file}}
		if tc.kind == policy.KindKernel {
			in.Op = "module_load"
		}
		env := testEnv{catalogs: catalogs}
		if tc.sha != "" {
			env.sha = map[string]string{"/usr/bin/a": tc.sha}
		}
		want := p.Evaluate(in, env)
		rule, _, _ := kernelDecide(kp, in, 0, false, tc.sha)
		if want.Rule != tc.want || rule != tc.want {
			t.Errorf("%s %s by digest %.8s: kernel decides %q, Evaluate %q, want %q", tc.kind, tc.file, tc.sha, rule, want.Rule, tc.want)
		}
	}

	// Unbound (no catalogs known): the signer rules can never match, and
	// the policy still compiles, with a warning for each signer.
	kp, warnings, err = Compile(mustParse(t, signerPolicy), fakeFS{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range kp.Entries {
		if e.Action != sensorVerdictActionACT_SKIP {
			t.Errorf("unbound: rule %s has an entry", kp.RuleIDs[e.RuleIndex])
		}
	}
	if ws := fmt.Sprint(warnings); !strings.Contains(ws, keyK) || !strings.Contains(ws, keyL) || !strings.Contains(ws, keyM) {
		t.Errorf("unbound: warnings %s, want one for each signer", ws)
	}
}

// TestCompileSignerLimit: the expansion counts against MaxDigests; one
// digest more is an error that says so, not a truncated set.
func TestCompileSignerLimit(t *testing.T) {
	catalog := func(n int) []string {
		ds := make([]string, n)
		for i := range ds {
			ds[i] = fmt.Sprintf("%064x", i+1)
		}
		return ds
	}
	src := "version: 1\nmode: enforce\nrules:\n  - {id: r, on: [exec], action: deny, match: {process: {signer: [" + keyK + ", " + keyL + "]}}}\n"
	// Two catalogs sharing one digest: MaxDigests distinct digests fit.
	full := policy.Catalogs{keyK: catalog(MaxDigests / 2), keyL: catalog(MaxDigests/2 + 1)[MaxDigests/2-1:]}
	full[keyL] = append(full[keyL], catalog(MaxDigests)[MaxDigests/2:]...)
	kp, _, err := Compile(mustParse(t, src).WithCatalogs(full), fakeFS{})
	if err != nil || len(kp.Digests) != MaxDigests {
		t.Fatalf("%d digests: err %v", MaxDigests, err)
	}
	over := policy.Catalogs{keyK: catalog(MaxDigests / 2), keyL: catalog(MaxDigests + 1)[MaxDigests/2:]}
	if _, _, err := Compile(mustParse(t, src).WithCatalogs(over), fakeFS{}); err == nil ||
		!strings.Contains(err.Error(), fmt.Sprintf("%d distinct digests in process.sha256 and process.signer", MaxDigests+1)) {
		t.Errorf("%d digests: err %v, want the limit named", MaxDigests+1, err)
	}
}
