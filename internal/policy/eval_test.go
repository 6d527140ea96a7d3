package policy

import (
	"strings"
	"testing"
)

// fakeEnv knows what it is given.
type fakeEnv struct {
	hashes   map[string]string   // by path
	signers  map[string][]string // by path
	cgroups  map[uint64]string
	ancestry map[uint32][]Ancestor
}

func (e fakeEnv) SHA256(f File) (string, bool) { h, ok := e.hashes[f.Path]; return h, ok }

func (e fakeEnv) Signers(f File) ([]string, bool) { ids, ok := e.signers[f.Path]; return ids, ok }

func (e fakeEnv) CgroupPath(id uint64) (string, bool) { p, ok := e.cgroups[id]; return p, ok }

func (e fakeEnv) Ancestry(pid uint32, _ uint64) ([]Ancestor, bool) {
	a, ok := e.ancestry[pid]
	return a, ok
}

func mustParse(t *testing.T, src string) *Policy {
	t.Helper()
	p, err := Parse("test.yaml", []byte(src))
	if err != nil {
		t.Fatalf("Parse:\n%v\nsource:\n%s", err, src)
	}
	return p
}

const (
	hashA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	hashB = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"

	keyA = "SHA256:QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE" // signer key IDs
	keyB = "SHA256:QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI"
	keyC = "SHA256:Q0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0NDQ0M"
)

// ancestry builds n ancestors with pids 1000.., exe /anc/a, /anc/b, ...
func ancestry(n int) []Ancestor {
	var a []Ancestor
	for i := range n {
		a = append(a, Ancestor{Pid: uint32(1000 + i), Exe: "/anc/" + string(rune('a'+i))})
	}
	return a
}

// TestConditions checks every condition, each with inputs that match and
// inputs that do not: a one-rule policy decides deny by rule "r" or the
// default allow.
func TestConditions(t *testing.T) {
	env := fakeEnv{
		hashes:  map[string]string{"/usr/bin/a": hashA, "/usr/bin/b": hashB},
		signers: map[string][]string{"/usr/bin/a": {keyA}, "/usr/bin/b": {keyB, keyC}, "/usr/bin/n": {}},
		cgroups: map[uint64]string{1: "/system.slice/nginx.service", 2: "/system.slice/nginx.service/worker", 3: "/system.slice/nginx.service2", 4: "/"},
		ancestry: map[uint32][]Ancestor{
			50: {{Pid: 10, StartTimeNs: 100}, {Pid: 1}},                   // a child of the actor (pid 10, started at 100)
			51: {{Pid: 30}, {Pid: 1}},                                     // unrelated
			52: {{Pid: 10, StartTimeNs: 999}, {Pid: 1}},                   // a child of an earlier process with pid 10
			53: append(ancestry(15), Ancestor{Pid: 10, StartTimeNs: 100}), // the actor is the 16th ancestor
			54: append(ancestry(16), Ancestor{Pid: 10, StartTimeNs: 100}), // the 17th
		},
	}
	proc := func(exe string) Process { return Process{Pid: 10, StartTimeNs: 100, UID: 1000, Exe: File{Path: exe}} }
	exec := func(exe, file string) Input { return Input{Kind: KindExec, Process: proc(exe), File: File{Path: file}} }
	inject := func(method string, target uint32, targetExe string) Input {
		return Input{Kind: KindInject, Process: proc("/usr/bin/gdb"), Op: method, Target: Target{Pid: target, Exe: targetExe}}
	}
	memExec := func(prot, prev Prot, anon bool) Input {
		return Input{Kind: KindMemExec, Process: proc("/usr/bin/x"), Prot: prot, PrevProt: prev, Anonymous: anon}
	}
	fileMod := func(op, path, newPath string) Input {
		return Input{Kind: KindFileModify, Process: proc("/usr/bin/x"), Op: op, File: File{Path: path}, NewPath: newPath}
	}
	withUID := func(uid uint32) Input { in := exec("/usr/bin/x", "/bin/y"); in.Process.UID = uid; return in }
	withCgroup := func(id uint64) Input { in := exec("/usr/bin/x", "/bin/y"); in.Process.CgroupID = id; return in }
	withAncestry := func(a []Ancestor) Input { in := exec("/usr/bin/x", "/bin/y"); in.Process.Ancestry = a; return in }

	tests := []struct {
		name  string
		on    string
		match string // the match block, YAML flow
		in    Input
		env   Env
		want  bool
	}{
		{"exe", "exec", `{process: {exe: /usr/bin/a}}`, exec("/usr/bin/a", "/bin/y"), nil, true},
		{"exe other", "exec", `{process: {exe: /usr/bin/a}}`, exec("/usr/bin/ab", "/bin/y"), nil, false},
		{"exe unknown", "exec", `{process: {exe: /usr/bin/a}}`, exec("", "/bin/y"), nil, false},
		{"exe any of a list", "exec", `{process: {exe: [/usr/bin/z, /usr/bin/a]}}`, exec("/usr/bin/a", "/bin/y"), nil, true},

		{"exe_prefix below", "exec", `{process: {exe_prefix: /usr/bin}}`, exec("/usr/bin/a", "/bin/y"), nil, true},
		{"exe_prefix deeper", "exec", `{process: {exe_prefix: /usr}}`, exec("/usr/bin/a", "/bin/y"), nil, true},
		{"exe_prefix itself", "exec", `{process: {exe_prefix: /usr/bin}}`, exec("/usr/bin", "/bin/y"), nil, true},
		{"exe_prefix is component-aware", "exec", `{process: {exe_prefix: /usr/bin}}`, exec("/usr/binx", "/bin/y"), nil, false},
		{"exe_prefix trailing slash", "exec", `{process: {exe_prefix: /usr/bin/}}`, exec("/usr/bin/a", "/bin/y"), nil, true},
		{"exe_prefix trailing slash, component-aware", "exec", `{process: {exe_prefix: /usr/bin/}}`, exec("/usr/binx/a", "/bin/y"), nil, false},
		{"exe_prefix root", "exec", `{process: {exe_prefix: /}}`, exec("/a", "/bin/y"), nil, true},
		{"exe_prefix unknown exe", "exec", `{process: {exe_prefix: /}}`, exec("", "/bin/y"), nil, false},

		{"sha256", "exec", `{process: {sha256: ` + hashA + `}}`, exec("/usr/bin/a", "/bin/y"), env, true},
		{"sha256 written in upper case", "exec", `{process: {sha256: ` + strings.ToUpper(hashA) + `}}`, exec("/usr/bin/a", "/bin/y"), env, true},
		{"sha256 other", "exec", `{process: {sha256: ` + hashA + `}}`, exec("/usr/bin/b", "/bin/y"), env, false},
		{"sha256 unknown to env", "exec", `{process: {sha256: ` + hashA + `}}`, exec("/usr/bin/c", "/bin/y"), env, false},
		{"sha256 without env", "exec", `{process: {sha256: ` + hashA + `}}`, exec("/usr/bin/a", "/bin/y"), nil, false},

		{"signer", "exec", `{process: {signer: ` + keyA + `}}`, exec("/usr/bin/a", "/bin/y"), env, true},
		{"signer other", "exec", `{process: {signer: ` + keyA + `}}`, exec("/usr/bin/b", "/bin/y"), env, false},
		{"signer, one of two signers", "exec", `{process: {signer: ` + keyC + `}}`, exec("/usr/bin/b", "/bin/y"), env, true},
		{"signer any of a list", "exec", `{process: {signer: [` + keyC + `, ` + keyA + `]}}`, exec("/usr/bin/a", "/bin/y"), env, true},
		{"signer of a file no catalog lists", "exec", `{process: {signer: ` + keyA + `}}`, exec("/usr/bin/n", "/bin/y"), env, false},
		{"signer unknown to env", "exec", `{process: {signer: ` + keyA + `}}`, exec("/usr/bin/c", "/bin/y"), env, false},
		{"signer without env", "exec", `{process: {signer: ` + keyA + `}}`, exec("/usr/bin/a", "/bin/y"), nil, false},
		{"signer and sha256 both hold", "exec", `{process: {signer: ` + keyA + `, sha256: ` + hashA + `}}`, exec("/usr/bin/a", "/bin/y"), env, true},
		{"signer holds, sha256 does not", "exec", `{process: {signer: ` + keyB + `, sha256: ` + hashA + `}}`, exec("/usr/bin/b", "/bin/y"), env, false},

		{"ancestor_exe parent", "exec", `{process: {ancestor_exe: /anc/a}}`, withAncestry(ancestry(3)), nil, true},
		{"ancestor_exe grandparent", "exec", `{process: {ancestor_exe: /anc/b}}`, withAncestry(ancestry(3)), nil, true},
		{"ancestor_exe 16th", "exec", `{process: {ancestor_exe: /anc/p}}`, withAncestry(ancestry(17)), nil, true},
		{"ancestor_exe 17th is too far", "exec", `{process: {ancestor_exe: /anc/q}}`, withAncestry(ancestry(17)), nil, false},
		{"ancestor_exe is not the process", "exec", `{process: {ancestor_exe: /usr/bin/x}}`, withAncestry(ancestry(3)), nil, false},

		{"uid", "exec", `{process: {uid: 0}}`, withUID(0), nil, true},
		{"uid other", "exec", `{process: {uid: 0}}`, withUID(1), nil, false},
		{"uid range low end", "exec", `{process: {uid: 1000-1999}}`, withUID(1000), nil, true},
		{"uid range high end", "exec", `{process: {uid: 1000-1999}}`, withUID(1999), nil, true},
		{"uid below range", "exec", `{process: {uid: 1000-1999}}`, withUID(999), nil, false},
		{"uid above range", "exec", `{process: {uid: 1000-1999}}`, withUID(2000), nil, false},
		{"uid any of a list", "exec", `{process: {uid: [0, "5-6", 1000-1999]}}`, withUID(6), nil, true},

		{"cgroup itself", "exec", `{process: {cgroup: /system.slice/nginx.service}}`, withCgroup(1), env, true},
		{"cgroup below", "exec", `{process: {cgroup: /system.slice/nginx.service}}`, withCgroup(2), env, true},
		{"cgroup is component-aware", "exec", `{process: {cgroup: /system.slice/nginx.service}}`, withCgroup(3), env, false},
		{"cgroup root", "exec", `{process: {cgroup: /}}`, withCgroup(4), env, true},
		{"cgroup unknown id", "exec", `{process: {cgroup: /}}`, withCgroup(9), env, false},
		{"cgroup no id", "exec", `{process: {cgroup: /}}`, withCgroup(0), env, false},

		{"path", "exec", `{target: {path: /bin/y}}`, exec("/usr/bin/x", "/bin/y"), nil, true},
		{"path other", "exec", `{target: {path: /bin/y}}`, exec("/usr/bin/x", "/bin/yy"), nil, false},
		{"path image_load", "image_load", `{target: {path: /lib/l.so}}`, Input{Kind: KindImageLoad, File: File{Path: "/lib/l.so"}}, nil, true},
		{"path kernel", "kernel", `{target: {path: /m.ko}}`, Input{Kind: KindKernel, Op: "module_load", File: File{Path: "/m.ko"}}, nil, true},
		{"path mem_exec file", "mem_exec", `{target: {path: /f}}`, Input{Kind: KindMemExec, File: File{Path: "/f"}}, nil, true},
		{"path mem_exec anonymous", "mem_exec", `{target: {path: /f}}`, memExec(ProtExec, 0, true), nil, false},
		{"path_prefix", "exec", `{target: {path_prefix: /tmp}}`, exec("/usr/bin/x", "/tmp/a/b"), nil, true},
		{"path_prefix is component-aware", "exec", `{target: {path_prefix: /tmp}}`, exec("/usr/bin/x", "/tmpa/b"), nil, false},
		{"path_prefix on a file", "file_modify", `{target: {path_prefix: /etc/crontab}}`, fileMod("open_write", "/etc/crontab", ""), nil, true},
		{"path rename source", "file_modify", `{target: {path: /etc/crontab}}`, fileMod("rename", "/etc/crontab", "/tmp/x"), nil, true},
		{"path rename destination", "file_modify", `{target: {path: /etc/crontab}}`, fileMod("rename", "/tmp/x", "/etc/crontab"), nil, true},
		{"path_prefix link destination", "file_modify", `{target: {path_prefix: /etc/cron.d}}`, fileMod("link", "/tmp/x", "/etc/cron.d/x"), nil, true},
		{"new_path only for rename and link", "file_modify", `{target: {path_prefix: /etc/cron.d}}`, fileMod("create", "/tmp/x", "/etc/cron.d/x"), nil, false},

		{"process_exe", "inject", `{target: {process_exe: /usr/sbin/sshd}}`, inject("ptrace_attach", 51, "/usr/sbin/sshd"), nil, true},
		{"process_exe other", "inject", `{target: {process_exe: /usr/sbin/sshd}}`, inject("ptrace_attach", 51, "/usr/sbin/cron"), nil, false},

		{"not_descendant: unrelated", "inject", `{target: {not_descendant: true}}`, inject("ptrace_attach", 51, ""), env, true},
		{"not_descendant: a child", "inject", `{target: {not_descendant: true}}`, inject("ptrace_attach", 50, ""), env, false},
		{"not_descendant: itself", "inject", `{target: {not_descendant: true}}`, inject("proc_mem_write", 10, ""), env, false},
		{"not_descendant: a reused pid is another process", "inject", `{target: {not_descendant: true}}`, inject("ptrace_attach", 52, ""), env, true},
		{"not_descendant: 16th ancestor", "inject", `{target: {not_descendant: true}}`, inject("ptrace_attach", 53, ""), env, false},
		{"not_descendant: 17th ancestor is too far", "inject", `{target: {not_descendant: true}}`, inject("ptrace_attach", 54, ""), env, true},
		{"not_descendant: unknown ancestry", "inject", `{target: {not_descendant: true}}`, inject("ptrace_attach", 99, ""), env, true},
		{"not_descendant: no env", "inject", `{target: {not_descendant: true}}`, inject("ptrace_attach", 50, ""), nil, true},
		{"not_descendant false: a child", "inject", `{target: {not_descendant: false}}`, inject("ptrace_attach", 50, ""), env, true},
		{"not_descendant false: unrelated", "inject", `{target: {not_descendant: false}}`, inject("ptrace_attach", 51, ""), env, false},

		{"prot write+exec at once", "mem_exec", `{target: {prot: [write, exec]}}`, memExec(ProtRead|ProtWrite|ProtExec, 0, true), nil, true},
		{"prot writable before", "mem_exec", `{target: {prot: [write, exec]}}`, memExec(ProtRead|ProtExec, ProtRead|ProtWrite, true), nil, true},
		{"prot never writable", "mem_exec", `{target: {prot: [write, exec]}}`, memExec(ProtRead|ProtExec, ProtRead, true), nil, false},
		{"prot one flag", "mem_exec", `{target: {prot: exec}}`, memExec(ProtExec, 0, false), nil, true},
		{"anonymous", "mem_exec", `{target: {anonymous: true}}`, memExec(ProtExec, 0, true), nil, true},
		{"anonymous, file-backed", "mem_exec", `{target: {anonymous: true}}`, memExec(ProtExec, 0, false), nil, false},
		{"anonymous false", "mem_exec", `{target: {anonymous: false}}`, memExec(ProtExec, 0, false), nil, true},

		{"inject_method", "inject", `{inject_method: [ptrace_seize, process_vm_writev]}`, inject("process_vm_writev", 51, ""), nil, true},
		{"inject_method other", "inject", `{inject_method: [ptrace_seize, process_vm_writev]}`, inject("ptrace_attach", 51, ""), nil, false},
		{"kernel_op", "kernel", `{kernel_op: module_load}`, Input{Kind: KindKernel, Op: "module_load"}, nil, true},
		{"kernel_op other", "kernel", `{kernel_op: module_load}`, Input{Kind: KindKernel, Op: "bpf_prog_load"}, nil, false},
		{"file_op", "file_modify", `{file_op: [unlink, chmod]}`, fileMod("chmod", "/etc/x", ""), nil, true},
		{"file_op other", "file_modify", `{file_op: [unlink, chmod]}`, fileMod("chown", "/etc/x", ""), nil, false},

		{"all conditions must hold", "exec", `{process: {exe: /usr/bin/a}, target: {path: /bin/y}}`, exec("/usr/bin/a", "/bin/y"), nil, true},
		{"all conditions must hold: one fails", "exec", `{process: {exe: /usr/bin/a}, target: {path: /bin/y}}`, exec("/usr/bin/a", "/bin/z"), nil, false},
		{"empty match holds", "exec", `{}`, exec("/usr/bin/a", "/bin/y"), nil, true},
		{"kind not in on", "exec", `{}`, Input{Kind: KindImageLoad}, nil, false},
		{"several kinds", "[exec, image_load]", `{}`, Input{Kind: KindImageLoad}, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustParse(t, "version: 1\nmode: enforce\nrules:\n- id: r\n  on: "+tt.on+"\n  action: deny\n  match: "+tt.match+"\n")
			got := p.Evaluate(tt.in, tt.env)
			if matched := got.Rule == "r"; matched != tt.want {
				t.Errorf("match %s on %+v: got %+v, want match=%v", tt.match, tt.in, got, tt.want)
			}
		})
	}
}

// TestLists: references expand, in place of a value or among values; a
// condition naming only empty lists never holds.
func TestLists(t *testing.T) {
	p := mustParse(t, `version: 1
mode: enforce
lists:
  tools: [/usr/bin/a, /usr/bin/b]
  dirs: [/opt/]
  uids: [0, 1000-1999]
  none: []
rules:
- id: by-list
  on: exec
  action: deny
  match: {process: {exe: $tools, uid: $uids}}
- id: mixed
  on: exec
  action: deny
  match: {process: {exe_prefix: [/srv, $dirs]}}
- id: empty
  on: exec
  action: deny
  match: {process: {exe: $none}}
- id: empty-among-others
  on: exec
  action: alert
  match: {process: {exe: [$none, /usr/bin/c]}}
`)
	tests := []struct {
		exe  string
		uid  uint32
		want string
	}{
		{"/usr/bin/b", 1500, "by-list"},
		{"/usr/bin/b", 0, "by-list"},
		{"/usr/bin/b", 5, ""},
		{"/opt/x", 5, "mixed"},
		{"/srv/x", 5, "mixed"},
		{"/usr/bin/c", 5, "empty-among-others"},
		{"/usr/bin/d", 5, ""},
	}
	for _, tt := range tests {
		got := p.Evaluate(Input{Kind: KindExec, Process: Process{UID: tt.uid, Exe: File{Path: tt.exe}}}, nil)
		if got.Rule != tt.want {
			t.Errorf("exe %s uid %d: rule %q, want %q", tt.exe, tt.uid, got.Rule, tt.want)
		}
	}
	if c := p.Rules[2].Match.Process.Exe; c == nil || len(c) != 0 {
		t.Errorf("a condition naming an empty list: %#v, want present and empty", c)
	}
}

// TestPrecedence: first match decides; except blocks make a rule not match
// (and the next rules are tried); modes; the default.
func TestPrecedence(t *testing.T) {
	exec := func(exe, file string) Input {
		return Input{Kind: KindExec, Process: Process{Exe: File{Path: exe}}, File: File{Path: file}}
	}
	tests := []struct {
		name   string
		policy string
		in     Input
		want   Verdict
	}{
		{"first match decides", `mode: enforce
rules:
- {id: allow-a, on: exec, action: allow, match: {process: {exe: /a}}}
- {id: deny-all, on: exec, action: deny}`,
			exec("/a", "/x"), Verdict{Action: Allow, Rule: "allow-a", Mode: Enforce}},
		{"first match decides, the other way round", `mode: enforce
rules:
- {id: deny-all, on: exec, action: deny}
- {id: allow-a, on: exec, action: allow, match: {process: {exe: /a}}}`,
			exec("/a", "/x"), Verdict{Action: Deny, Rule: "deny-all", Mode: Enforce, Enforced: true}},
		{"no match: the next rule", `mode: enforce
rules:
- {id: allow-a, on: exec, action: allow, match: {process: {exe: /a}}}
- {id: deny-all, on: exec, action: deny}`,
			exec("/b", "/x"), Verdict{Action: Deny, Rule: "deny-all", Mode: Enforce, Enforced: true}},
		{"default allow, enforce", `mode: enforce
rules:
- {id: r, on: exec, action: deny, match: {process: {exe: /a}}}`,
			exec("/b", "/x"), Verdict{Action: Allow, Mode: Enforce}},
		{"default allow, monitor", `mode: monitor
rules: []`,
			exec("/b", "/x"), Verdict{Action: Allow, Mode: Monitor}},
		{"except holds: the rule does not match", `mode: enforce
rules:
- {id: r, on: exec, action: deny, match: {target: {path_prefix: /tmp}}, except: [{process: {exe: /a}}]}`,
			exec("/a", "/tmp/x"), Verdict{Action: Allow, Mode: Enforce}},
		{"except holds: the next rule decides", `mode: enforce
rules:
- {id: r, on: exec, action: deny, match: {target: {path_prefix: /tmp}}, except: [{process: {exe: /a}}]}
- {id: s, on: exec, action: alert}`,
			exec("/a", "/tmp/x"), Verdict{Action: Alert, Rule: "s", Mode: Enforce}},
		{"except does not hold", `mode: enforce
rules:
- {id: r, on: exec, action: deny, match: {target: {path_prefix: /tmp}}, except: [{process: {exe: /a}}]}`,
			exec("/b", "/tmp/x"), Verdict{Action: Deny, Rule: "r", Mode: Enforce, Enforced: true}},
		{"any except block", `mode: enforce
rules:
- {id: r, on: exec, action: deny, match: {target: {path_prefix: /tmp}}, except: [{process: {exe: /a}}, {process: {exe: /b}}]}`,
			exec("/b", "/tmp/x"), Verdict{Action: Allow, Mode: Enforce}},
		{"an except block needs all its conditions", `mode: enforce
rules:
- {id: r, on: exec, action: deny, match: {target: {path_prefix: /tmp}}, except: [{process: {exe: /a, uid: 5}}]}`,
			exec("/a", "/tmp/x"), Verdict{Action: Deny, Rule: "r", Mode: Enforce, Enforced: true}},
		{"kill enforced", `mode: enforce
rules:
- {id: r, on: exec, action: kill}`,
			exec("/a", "/x"), Verdict{Action: Kill, Rule: "r", Mode: Enforce, Enforced: true}},
		{"alert is never enforced", `mode: enforce
rules:
- {id: r, on: exec, action: alert}`,
			exec("/a", "/x"), Verdict{Action: Alert, Rule: "r", Mode: Enforce}},
		{"deny in a monitor policy is a would-be verdict", `mode: monitor
rules:
- {id: r, on: exec, action: deny}`,
			exec("/a", "/x"), Verdict{Action: Deny, Rule: "r", Mode: Monitor}},
		{"kill in monitor", `mode: monitor
rules:
- {id: r, on: exec, action: kill}`,
			exec("/a", "/x"), Verdict{Action: Kill, Rule: "r", Mode: Monitor}},
		{"a rule in monitor overrides an enforcing policy", `mode: enforce
rules:
- {id: r, on: exec, action: deny, mode: monitor}`,
			exec("/a", "/x"), Verdict{Action: Deny, Rule: "r", Mode: Monitor}},
		{"a rule in enforce overrides a monitoring policy", `mode: monitor
rules:
- {id: r, on: exec, action: deny, mode: enforce}`,
			exec("/a", "/x"), Verdict{Action: Deny, Rule: "r", Mode: Enforce, Enforced: true}},
		{"a monitor rule still decides: later rules are not tried", `mode: enforce
rules:
- {id: trial, on: exec, action: deny, mode: monitor, match: {process: {exe: /a}}}
- {id: r, on: exec, action: deny}`,
			exec("/a", "/x"), Verdict{Action: Deny, Rule: "trial", Mode: Monitor}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustParse(t, "version: 1\n"+tt.policy+"\n")
			if got := p.Evaluate(tt.in, nil); got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestExamples decides typical operations with the example policies.
func TestExamples(t *testing.T) {
	hardening, err := Load("../../examples/policies/hardening.yaml")
	if err != nil {
		t.Fatal(err)
	}
	baseline, err := Load("../../examples/policies/baseline.yaml")
	if err != nil {
		t.Fatal(err)
	}
	nginxWorker := Process{Pid: 200, StartTimeNs: 2, UID: 33, Exe: File{Path: "/usr/sbin/nginx"},
		Ancestry: []Ancestor{{Pid: 100, Exe: "/usr/sbin/nginx"}, {Pid: 1, Exe: "/usr/lib/systemd/systemd"}}}
	nginxChild := nginxWorker
	nginxChild.Pid = 300
	nginxChild.Ancestry = append([]Ancestor{{Pid: 200, Exe: "/usr/sbin/nginx"}}, nginxWorker.Ancestry...)
	admin := Process{Pid: 400, StartTimeNs: 4, Exe: File{Path: "/usr/bin/bash"},
		Ancestry: []Ancestor{{Pid: 90, Exe: "/usr/sbin/sshd"}, {Pid: 1, Exe: "/usr/lib/systemd/systemd"}}}
	as := func(p Process, exe string) Process { p.Exe = File{Path: exe}; return p }
	under := func(p Process, exe string) Process {
		p.Ancestry = append([]Ancestor{{Pid: p.Pid, Exe: p.Exe.Path}}, p.Ancestry...)
		p.Pid++
		p.Exe = File{Path: exe}
		return p
	}
	env := fakeEnv{
		cgroups:  map[uint64]string{7: "/system.slice/apt-daily-upgrade.service", 8: "/user.slice/user-0.slice"},
		ancestry: map[uint32][]Ancestor{401: {{Pid: 400, StartTimeNs: 4}}, 500: {{Pid: 1}}},
	}
	inCgroup := func(p Process, id uint64) Process { p.CgroupID = id; return p }
	modify := func(p Process, op, path, newPath string) Input {
		return Input{Kind: KindFileModify, Process: p, Op: op, File: File{Path: path}, NewPath: newPath}
	}
	tests := []struct {
		name                string
		in                  Input
		hardening, baseline string // deciding rules; "" is the default allow
		hardeningAction     Action
	}{
		{"nginx forks a shell", Input{Kind: KindExec, Process: nginxWorker, File: File{Path: "/usr/bin/dash"}},
			"no-shell-from-server", "", Deny},
		{"a shell under nginx runs another shell", Input{Kind: KindExec, Process: as(nginxChild, "/usr/bin/python3.11"), File: File{Path: "/usr/bin/bash"}},
			"no-shell-under-server", "", Deny},
		{"nginx runs a program that is not a shell", Input{Kind: KindExec, Process: nginxWorker, File: File{Path: "/usr/bin/id"}},
			"", "", Allow},
		{"sshd starts a shell", Input{Kind: KindExec, Process: as(admin, "/usr/sbin/sshd"), File: File{Path: "/usr/bin/bash"}},
			"", "", Allow},
		{"a program run from /tmp", Input{Kind: KindExec, Process: admin, File: File{Path: "/tmp/x"}},
			"", "exec-from-writable-dir", Allow},
		{"W+X anonymous memory in python", Input{Kind: KindMemExec, Process: as(admin, "/usr/bin/python3.11"), Prot: 7, Anonymous: true},
			"no-wx-anonymous-memory", "anonymous-memory-made-executable", Deny},
		{"W then X in java", Input{Kind: KindMemExec, Process: as(admin, "/usr/lib/jvm/java-17-openjdk-amd64/bin/java"), Prot: 5, PrevProt: 3, Anonymous: true},
			"", "anonymous-memory-made-executable", Allow},
		{"W+X in node", Input{Kind: KindMemExec, Process: as(admin, "/usr/bin/node"), Prot: 7, Anonymous: true},
			"", "anonymous-memory-made-executable", Allow},
		{"X only, never writable", Input{Kind: KindMemExec, Process: admin, Prot: 5, PrevProt: 1, Anonymous: true},
			"", "anonymous-memory-made-executable", Allow},
		{"gdb attaches to its child", Input{Kind: KindInject, Process: as(admin, "/usr/bin/gdb"), Op: "ptrace_attach", Target: Target{Pid: 401}},
			"", "code-injection", Allow},
		{"gdb attaches to another tree", Input{Kind: KindInject, Process: as(admin, "/usr/bin/gdb"), Op: "ptrace_seize", Target: Target{Pid: 500}},
			"no-injection-outside-own-tree", "code-injection", Deny},
		{"a /proc/PID/mem write, target unknown", Input{Kind: KindInject, Process: admin, Op: "proc_mem_write", Target: Target{Pid: 999}},
			"no-injection-outside-own-tree", "code-injection", Deny},
		{"modprobe loads a module", Input{Kind: KindKernel, Process: as(admin, "/usr/bin/kmod"), Op: "module_load", File: File{Path: "/usr/lib/modules/x.ko"}},
			"kernel-loaders", "kernel-change", Allow},
		{"the agent loads BPF", Input{Kind: KindKernel, Process: as(admin, "/usr/local/bin/vigil"), Op: "bpf_prog_load"},
			"kernel-loaders", "kernel-change", Allow},
		{"someone else loads BPF", Input{Kind: KindKernel, Process: as(admin, "/tmp/bpftool"), Op: "bpf_prog_load"},
			"no-kernel-code-loads", "kernel-change", Deny},
		{"kexec", Input{Kind: KindKernel, Process: as(admin, "/usr/sbin/kexec"), Op: "kexec_load"},
			"no-kernel-code-loads", "kernel-change", Deny},
		{"the loaders may not read kernel memory", Input{Kind: KindKernel, Process: as(admin, "/usr/bin/kmod"), Op: "dev_mem_open", File: File{Path: "/dev/mem"}},
			"no-kernel-memory-access", "kernel-change", Deny},
		{"/proc/kcore", Input{Kind: KindKernel, Process: admin, Op: "kcore_open", File: File{Path: "/proc/kcore"}},
			"no-kernel-memory-access", "kernel-change", Deny},
		{"a kprobe registered through tracefs", Input{Kind: KindKernel, Process: admin, Op: "tracefs_write",
			File: File{Path: "/sys/kernel/tracing/kprobe_events"}},
			"no-kernel-hooks-through-tracefs", "kernel-change", Deny},
		{"a shell writes /etc/sudoers.d", modify(admin, "create", "/etc/sudoers.d/evil", ""),
			"persistence-only-by-packages-and-admin-tools", "persistence-change", Deny},
		{"a rename into /etc/cron.d", modify(admin, "rename", "/tmp/job", "/etc/cron.d/job"),
			"persistence-only-by-packages-and-admin-tools", "persistence-change", Deny},
		{"a shell writes root's authorized_keys", modify(admin, "open_write", "/root/.ssh/authorized_keys", ""),
			"persistence-only-by-packages-and-admin-tools", "persistence-change", Deny},
		{"root's other ssh files are not persistence", modify(admin, "open_write", "/root/.ssh/known_hosts", ""),
			"", "persistence-change", Allow},
		{"/etc/sudoers.tmp is not /etc/sudoers", modify(admin, "open_write", "/etc/sudoers.tmp", ""),
			"", "", Allow},
		{"visudo renames its temporary file to /etc/sudoers", modify(as(admin, "/usr/sbin/visudo"), "rename", "/etc/sudoers.tmp", "/etc/sudoers"),
			"", "persistence-change", Allow},
		{"dpkg installs a unit", modify(as(admin, "/usr/bin/dpkg"), "rename", "/usr/lib/systemd/system/x.service.dpkg-new", "/usr/lib/systemd/system/x.service"),
			"", "persistence-change", Allow},
		{"a maintainer script under dpkg", modify(under(as(admin, "/usr/bin/dpkg"), "/usr/bin/dash"), "create", "/etc/cron.d/pkg", ""),
			"", "persistence-change", Allow},
		{"unattended-upgrade's python in its service", modify(inCgroup(as(admin, "/usr/bin/python3.11"), 7), "open_write", "/etc/profile.d/x.sh", ""),
			"", "persistence-change", Allow},
		{"python elsewhere", modify(inCgroup(as(admin, "/usr/bin/python3.11"), 8), "open_write", "/etc/profile.d/x.sh", ""),
			"persistence-only-by-packages-and-admin-tools", "persistence-change", Deny},
		{"a file in /etc that is not persistence", modify(admin, "open_write", "/etc/hosts", ""),
			"", "", Allow},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := hardening.Evaluate(tt.in, env)
			if h.Rule != tt.hardening || h.Action != tt.hardeningAction || h.Mode != Enforce || h.Enforced != (tt.hardeningAction == Deny) {
				t.Errorf("hardening: %+v, want rule %q, %s", h, tt.hardening, tt.hardeningAction)
			}
			b := baseline.Evaluate(tt.in, env)
			wantAction := Allow
			if tt.baseline != "" {
				wantAction = Alert
			}
			if b != (Verdict{Action: wantAction, Rule: tt.baseline, Mode: Monitor}) {
				t.Errorf("baseline: %+v, want rule %q", b, tt.baseline)
			}
		})
	}
}

// TestEnvAskedOnce: facts from Env are asked only when needed, and once.
func TestEnvAskedOnce(t *testing.T) {
	p := mustParse(t, `version: 1
mode: enforce
rules:
- {id: a, on: exec, action: deny, match: {process: {exe: /x, sha256: `+hashA+`}}}
- {id: b, on: exec, action: deny, match: {process: {sha256: `+hashB+`}}}
- {id: c, on: exec, action: deny, match: {process: {sha256: `+hashB+`}}}
`)
	env := &countingEnv{fakeEnv: fakeEnv{hashes: map[string]string{"/y": hashA}}}
	if v := p.Evaluate(Input{Kind: KindExec, Process: Process{Exe: File{Path: "/y"}}}, env); v.Rule != "" {
		t.Errorf("verdict %+v", v)
	}
	if env.n != 1 {
		t.Errorf("SHA256 asked %d times, want 1", env.n)
	}
	env.n = 0
	p.Evaluate(Input{Kind: KindImageLoad, Process: Process{Exe: File{Path: "/y"}}}, env)
	if env.n != 0 {
		t.Errorf("SHA256 asked %d times for an input no rule is on, want 0", env.n)
	}
}

type countingEnv struct {
	fakeEnv
	n int
}

func (e *countingEnv) SHA256(f File) (string, bool) { e.n++; return e.fakeEnv.SHA256(f) }
