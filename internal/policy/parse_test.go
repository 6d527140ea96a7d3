package policy

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// TestParseErrors: every validation error, at its exact position. Each
// source is a whole policy file.
func TestParseErrors(t *testing.T) {
	const head = "version: 1\nmode: enforce\n" // 2 lines
	tests := []struct {
		name string
		src  string
		want []string // "line:col: message"
	}{
		// YAML itself.
		{"YAML syntax", "version: 1\nmode: [enforce\n", []string{
			`2:1: YAML syntax: did not find expected ',' or ']'`}},
		{"empty file", "", []string{`1:1: empty policy: want a mapping with version, mode and rules`}},
		{"only comments", "# nothing\n", []string{`1:1: empty policy: want a mapping with version, mode and rules`}},
		{"two documents", head + "rules: []\n---\nversion: 1\n", []string{`5:1: a second YAML document: a policy file holds one`}},
		{"not a mapping", "- version: 1\n", []string{`1:1: policy: want a mapping, got a list`}},
		{"null document", "~\n", []string{`1:1: policy: want a mapping, got null`}},
		{"alias", head + "rules: &r []\nlists:\n  a: *r\n", []string{`5:6: a: YAML aliases are not supported`}},
		{"merge key", head + "rules:\n- &r {id: a, on: exec, action: deny}\n- <<: *r\n  id: b\n", []string{
			`5:3: rule: unknown key "<<" (want id, description, on, action, mode, match, except)`,
			`5:3: rule: missing key "on"`,
			`5:3: rule: missing key "action"`}},
		{"a key that is not a string", head + "rules: []\n1: x\n", []string{`4:1: policy: a key must be a string, not a number`}},
		{"duplicate key", head + "rules: []\nmode: monitor\n", []string{`4:1: policy: duplicate key "mode" (first at 2:1)`}},

		// The policy.
		{"unknown key", head + "rules: []\nrule: []\n", []string{
			`4:1: policy: unknown key "rule" (want version, name, description, mode, lists, rules, trust)`}},
		{"missing keys", "name: x\n", []string{
			`1:1: policy: missing key "version"`, `1:1: policy: missing key "mode"`, `1:1: policy: missing key "rules"`}},
		{"version 2", "version: 2\nmode: enforce\nrules: []\n", []string{
			`1:10: version: want 1 (the only version this Vigil reads), got a number "2"`}},
		{"version as a string", "version: \"1\"\nmode: enforce\nrules: []\n", []string{
			`1:10: version: want 1 (the only version this Vigil reads), got a string "1"`}},
		{"unknown mode", "version: 1\nmode: block\nrules: []\n", []string{`2:7: mode: unknown value "block" (want monitor, enforce)`}},
		{"mode not a string", "version: 1\nmode: [enforce]\nrules: []\n", []string{`2:7: mode: want a string, got a list`}},
		{"name not a string", head + "name: 5\nrules: []\n", []string{`3:7: name: want a string, got a number`}},
		{"description not a string", head + "description: {a: b}\nrules: []\n", []string{`3:14: description: want a string, got a mapping`}},
		{"rules not a list", head + "rules: {}\n", []string{`3:8: rules: want a list, got a mapping`}},

		// Lists.
		{"list name", head + "rules: []\nlists:\n  Bad: []\n  2x: []\n", []string{
			`5:3: list name "Bad": want lowercase letters, digits, _ and -, starting with a letter, at most 64 bytes`,
			`6:3: list name "2x": want lowercase letters, digits, _ and -, starting with a letter, at most 64 bytes`}},
		{"lists not a mapping", head + "rules: []\nlists: [a]\n", []string{`4:8: lists: want a mapping, got a list`}},
		{"list not a list", head + "rules: []\nlists:\n  a: /x\n", []string{`5:6: list a: want a list, got a string`}},
		{"list entry not a value", head + "rules: []\nlists:\n  a: [[/x]]\n", []string{`5:7: list a: an entry must be a single value, not a list`}},
		{"list of lists", head + "rules: []\nlists:\n  a: [/x]\n  b: [$a]\n", []string{`6:7: list b: lists cannot refer to other lists`}},
		{"unknown list", head + "rules:\n- {id: r, on: exec, action: deny, match: {process: {exe: $nope}}}\n", []string{
			`4:58: exe: unknown list $nope`}},
		{"bad value in a list, at the entry", head + "lists:\n  p: [/ok, rel]\nrules:\n- {id: r, on: exec, action: deny, match: {process: {exe: $p}}}\n", []string{
			`4:12: exe: "rel" is not an absolute path (in list $p, used at 6:58)`}},
		{"a list used twice: an error for each use", head + "lists:\n  p: [rel]\nrules:\n- {id: r, on: exec, action: deny, match: {process: {exe: $p}}}\n- {id: s, on: exec, action: deny, match: {process: {exe: $p}}}\n", []string{
			`4:7: exe: "rel" is not an absolute path (in list $p, used at 6:58)`,
			`4:7: exe: "rel" is not an absolute path (in list $p, used at 7:58)`}},
		{"lists are checked where used", head + "lists:\n  any: [rel, 5, abc]\nrules: []\n", nil},
		{"list not allowed in on", head + "lists:\n  k: [exec]\nrules:\n- {id: r, on: $k, action: deny}\n", []string{
			`6:15: on: lists cannot be used here`}},
		{"list not allowed in prot", head + "lists:\n  k: [exec]\nrules:\n- {id: r, on: mem_exec, action: deny, match: {target: {prot: $k}}}\n", []string{
			`6:62: prot: lists cannot be used here`}},

		// Rules.
		{"rule not a mapping", head + "rules:\n- r\n", []string{`4:3: rule: want a mapping, got a string`}},
		{"rule missing keys", head + "rules:\n- description: x\n", []string{
			`4:3: rule: missing key "id"`, `4:3: rule: missing key "on"`, `4:3: rule: missing key "action"`}},
		{"rule unknown key", head + "rules:\n- {id: r, on: exec, action: deny, when: x}\n", []string{
			`4:35: rule: unknown key "when" (want id, description, on, action, mode, match, except)`}},
		{"rule id", head + "rules:\n- {id: No_Caps, on: exec, action: deny}\n", []string{
			`4:8: id "No_Caps": want lowercase letters, digits and -, at most 64 bytes`}},
		{"rule id too long", head + "rules:\n- {id: " + strings.Repeat("a", 65) + ", on: exec, action: deny}\n", []string{
			`4:8: id "` + strings.Repeat("a", 65) + `": want lowercase letters, digits and -, at most 64 bytes`}},
		{"rule id not a string", head + "rules:\n- {id: [a], on: exec, action: deny}\n", []string{`4:8: id: want a string, got a list`}},
		{"duplicate rule id", head + "rules:\n- {id: r, on: exec, action: deny}\n- {id: r, on: exec, action: deny}\n", []string{
			`5:8: duplicate rule id "r" (first at 4:8)`}},
		{"empty on", head + "rules:\n- {id: r, on: [], action: deny}\n", []string{`4:15: on: empty list`}},
		{"on an undecided kind", head + "rules:\n- {id: r, on: [exec, fork], action: deny}\n", []string{
			`4:22: on: fork events are not decided by policy (want exec, image_load, mem_exec, inject, kernel, file_modify)`}},
		{"on an unknown kind", head + "rules:\n- {id: r, on: open, action: deny}\n", []string{
			`4:15: on: unknown event kind "open" (want exec, image_load, mem_exec, inject, kernel, file_modify)`}},
		{"on a number", head + "rules:\n- {id: r, on: 5, action: deny}\n", []string{`4:15: on: want an event kind, got a number`}},
		{"on a mapping", head + "rules:\n- {id: r, on: {exec: 1}, action: deny}\n", []string{`4:15: on: want a value or a list of values, got a mapping`}},
		{"unknown action", head + "rules:\n- {id: r, on: exec, action: block}\n", []string{
			`4:29: action: unknown value "block" (want allow, deny, kill, alert)`}},
		{"unknown rule mode", head + "rules:\n- {id: r, on: exec, action: deny, mode: audit}\n", []string{
			`4:41: mode: unknown value "audit" (want monitor, enforce)`}},
		{"too many rules", head + "rules:\n" + manyRules(MaxRules+1), []string{
			fmt.Sprintf(`%d:3: more than %d rules`, 4+MaxRules, MaxRules)}},

		// Blocks.
		{"match not a mapping", head + "rules:\n- {id: r, on: exec, action: deny, match: [a]}\n", []string{
			`4:42: match: want a mapping, got a list`}},
		{"match unknown key", head + "rules:\n- {id: r, on: exec, action: deny, match: {exe: /x}}\n", []string{
			`4:43: match: unknown key "exe" (want process, target, inject_method, kernel_op, file_op)`}},
		{"process unknown key", head + "rules:\n- {id: r, on: exec, action: deny, match: {process: {path: /x}}}\n", []string{
			`4:53: process: unknown key "path" (want exe, exe_prefix, sha256, signer, ancestor_exe, uid, cgroup)`}},
		{"target unknown key", head + "rules:\n- {id: r, on: exec, action: deny, match: {target: {exe: /x}}}\n", []string{
			`4:52: target: unknown key "exe" (want path, path_prefix, process_exe, not_descendant, prot, anonymous)`}},
		{"process not a mapping", head + "rules:\n- {id: r, on: exec, action: deny, match: {process: /x}}\n", []string{
			`4:52: process: want a mapping, got a string`}},

		// Values.
		{"relative path", head + "rules:\n- {id: r, on: exec, action: deny, match: {process: {exe: bin/sh}}}\n", []string{
			`4:58: exe: "bin/sh" is not an absolute path`}},
		{"unclean path", head + "rules:\n- {id: r, on: exec, action: deny, match: {target: {path: /a//b}}}\n", []string{
			`4:58: path: "/a//b" is not a clean path (want "/a/b")`}},
		{"exact path with a trailing slash", head + "rules:\n- {id: r, on: exec, action: deny, match: {target: {path: /a/}}}\n", []string{
			`4:58: path: "/a/" is not a clean path (want "/a")`}},
		{"unclean prefix", head + "rules:\n- {id: r, on: exec, action: deny, match: {target: {path_prefix: /a/../b/}}}\n", []string{
			`4:65: path_prefix: "/a/../b/" is not a clean path (want "/b")`}},
		{"path too long", head + "rules:\n- {id: r, on: exec, action: deny, match: {target: {path: /" + strings.Repeat("a", MaxPathLen) + "}}}\n", []string{
			`4:58: path: path longer than 255 bytes`}},
		{"path with a NUL", head + "rules:\n- {id: r, on: exec, action: deny, match: {target: {path: \"/a\\0\"}}}\n", []string{
			`4:58: path: path contains a NUL byte`}},
		{"path not a string", head + "rules:\n- {id: r, on: exec, action: deny, match: {process: {exe: [/a, 5, null]}}}\n", []string{
			`4:63: exe: want an absolute path, got a number`, `4:66: exe: want an absolute path, got null`}},
		{"empty value list", head + "rules:\n- {id: r, on: exec, action: deny, match: {process: {exe: []}}}\n", []string{`4:58: exe: empty list`}},
		{"nested value list", head + "rules:\n- {id: r, on: exec, action: deny, match: {process: {exe: [[/a]]}}}\n", []string{
			`4:59: exe: want a single value, got a list`}},
		{"relative cgroup", head + "rules:\n- {id: r, on: exec, action: deny, match: {process: {cgroup: system.slice}}}\n", []string{
			`4:61: cgroup: "system.slice" is not an absolute path`}},
		{"bad sha256", head + "rules:\n- {id: r, on: exec, action: deny, match: {process: {sha256: [abc, " + strings.Repeat("g", 64) + "]}}}\n", []string{
			`4:62: sha256: "abc" is not a SHA-256 digest (64 hex digits)`,
			`4:67: sha256: "` + strings.Repeat("g", 64) + `" is not a SHA-256 digest (64 hex digits)`}},
		{"bad signer", head + "lists:\n  keys: [SHA256:short]\nrules:\n- {id: r, on: exec, action: deny, match: {process: {signer: [" +
			keyA + ", " + keyA[len("SHA256:"):] + ", sha256:" + keyA[len("SHA256:"):] + ", \"SHA256:" + strings.Repeat("*", 43) + "\", 5, $keys]}}}\n", []string{
			`4:10: signer: "SHA256:short" is not a signer key ID (SHA256: and 43 base64 characters, as ` + "`vigil keys id`" + ` prints it) (in list $keys, used at 6:268)`,
			`6:114: signer: "` + keyA[len("SHA256:"):] + `" is not a signer key ID (SHA256: and 43 base64 characters, as ` + "`vigil keys id`" + ` prints it)`,
			`6:159: signer: "sha256:` + keyA[len("SHA256:"):] + `" is not a signer key ID (SHA256: and 43 base64 characters, as ` + "`vigil keys id`" + ` prints it)`,
			`6:211: signer: "SHA256:` + strings.Repeat("*", 43) + `" is not a signer key ID (SHA256: and 43 base64 characters, as ` + "`vigil keys id`" + ` prints it)`,
			`6:265: signer: want a signer key ID (SHA256:...), got a number`}},
		{"bad uids", head + "rules:\n- {id: r, on: exec, action: deny, match: {process: {uid: [abc, 5-1, -1, 4294967295, \"007\", 1.5, true, 1-]}}}\n", []string{
			`4:59: uid: "abc" is not a uid or a range lo-hi (decimal, 0 to 4294967294)`,
			`4:64: uid: range "5-1" is empty (5 > 1)`,
			`4:69: uid: "-1" is not a uid or a range lo-hi (decimal, 0 to 4294967294)`,
			`4:73: uid: "4294967295" is not a uid or a range lo-hi (decimal, 0 to 4294967294)`,
			`4:85: uid: "007" is not a uid or a range lo-hi (decimal, 0 to 4294967294)`,
			`4:92: uid: want a uid or a range lo-hi, got a number`,
			`4:97: uid: want a uid or a range lo-hi, got a boolean`,
			`4:103: uid: "1-" is not a uid or a range lo-hi (decimal, 0 to 4294967294)`}},
		{"not_descendant not a boolean", head + "rules:\n- {id: r, on: inject, action: deny, match: {target: {not_descendant: yes}}}\n", []string{
			`4:70: not_descendant: want true or false, got a string`}},
		{"anonymous not a boolean", head + "rules:\n- {id: r, on: mem_exec, action: deny, match: {target: {anonymous: 1}}}\n", []string{
			`4:67: anonymous: want true or false, got a number`}},
		{"unknown prot flag", head + "rules:\n- {id: r, on: mem_exec, action: deny, match: {target: {prot: [write, x, 4]}}}\n", []string{
			`4:70: prot: unknown flag "x" (want read, write, exec)`, `4:73: prot: want a flag (read, write, exec), got a number`}},
		{"unknown inject method", head + "rules:\n- {id: r, on: inject, action: deny, match: {inject_method: ptrace}}\n", []string{
			`4:60: inject_method: unknown value "ptrace" (want ptrace_attach, ptrace_seize, ptrace_poke, ptrace_setregs, process_vm_writev, proc_mem_write)`}},
		{"unknown kernel op", head + "rules:\n- {id: r, on: kernel, action: deny, match: {kernel_op: insmod}}\n", []string{
			`4:56: kernel_op: unknown value "insmod" (want bpf_prog_load, module_load, kexec_load, dev_mem_open, kcore_open, tracefs_write)`}},
		{"unknown file op", head + "rules:\n- {id: r, on: file_modify, action: deny, match: {file_op: write}}\n", []string{
			`4:59: file_op: unknown value "write" (want open_write, truncate, rename, unlink, chmod, chown, link, create)`}},
		{"too many values", head + "lists:\n  big: [" + manyPaths(MaxEntries) + "]\nrules:\n- {id: r, on: exec, action: deny, match: {process: {exe: [$big, /x]}}}\n", []string{
			`6:58: exe: 4097 values, more than 4096`}},
		{"too many list entries", head + "lists:\n  big: [" + manyPaths(MaxEntries+1) + "]\nrules: []\n", []string{
			fmt.Sprintf(`4:%d: list big: more than 4096 entries`, 9+len(manyPaths(MaxEntries))+2)}},

		// Conditions against kinds.
		{"inject_method on exec", head + "rules:\n- {id: r, on: [inject, exec], action: deny, match: {inject_method: ptrace_attach}}\n", []string{
			`4:53: inject_method does not apply to exec events (only to inject)`}},
		{"prot on kernel", head + "rules:\n- {id: r, on: kernel, action: deny, match: {target: {prot: exec}}}\n", []string{
			`4:54: prot does not apply to kernel events (only to mem_exec)`}},
		{"anonymous on inject", head + "rules:\n- {id: r, on: inject, action: deny, match: {target: {anonymous: true}}}\n", []string{
			`4:54: anonymous does not apply to inject events (only to mem_exec)`}},
		{"process_exe on exec", head + "rules:\n- {id: r, on: exec, action: deny, match: {target: {process_exe: /x}}}\n", []string{
			`4:52: process_exe does not apply to exec events (only to inject)`}},
		{"not_descendant on file_modify", head + "rules:\n- {id: r, on: file_modify, action: deny, match: {target: {not_descendant: true}}}\n", []string{
			`4:59: not_descendant does not apply to file_modify events (only to inject)`}},
		{"path on inject", head + "rules:\n- {id: r, on: inject, action: deny, match: {target: {path: /x}}}\n", []string{
			`4:54: path does not apply to inject events (only to exec, image_load, mem_exec, kernel, file_modify)`}},
		{"path_prefix on inject", head + "rules:\n- {id: r, on: inject, action: deny, match: {target: {path_prefix: /x}}}\n", []string{
			`4:54: path_prefix does not apply to inject events (only to exec, image_load, mem_exec, kernel, file_modify)`}},
		{"kernel_op on file_modify", head + "rules:\n- {id: r, on: file_modify, action: deny, match: {kernel_op: module_load}}\n", []string{
			`4:50: kernel_op does not apply to file_modify events (only to kernel)`}},
		{"file_op on kernel, in an except block", head + "rules:\n- {id: r, on: kernel, action: deny, match: {kernel_op: module_load}, except: [{file_op: create}]}\n", []string{
			`4:80: file_op does not apply to kernel events (only to file_modify)`}},

		// Except.
		{"except without match", head + "rules:\n- {id: r, on: exec, action: deny, except: [{process: {exe: /x}}]}\n", []string{
			`4:35: except: the rule has no match conditions to refine; say in match what the rule is about`}},
		{"except with an empty match", head + "rules:\n- {id: r, on: exec, action: deny, match: {process: {}}, except: [{process: {exe: /x}}]}\n", []string{
			`4:57: except: the rule has no match conditions to refine; say in match what the rule is about`}},
		{"except not a list", head + "rules:\n- {id: r, on: exec, action: deny, match: {process: {exe: /x}}, except: {process: {exe: /y}}}\n", []string{
			`4:72: except: want a list of condition blocks, got a mapping`}},
		{"empty except", head + "rules:\n- {id: r, on: exec, action: deny, match: {process: {exe: /x}}, except: []}\n", []string{
			`4:72: except: empty list`}},
		{"empty except block", head + "rules:\n- {id: r, on: exec, action: deny, match: {process: {exe: /x}}, except: [{}, {process: {}}]}\n", []string{
			`4:73: except block without conditions: it would always hold, and the rule never match`,
			`4:77: except block without conditions: it would always hold, and the rule never match`}},
		{"except block not a mapping", head + "rules:\n- {id: r, on: exec, action: deny, match: {process: {exe: /x}}, except: [/y]}\n", []string{
			`4:73: except block: want a mapping, got a string`}},
		{"too many except blocks", head + "rules:\n- {id: r, on: exec, action: deny, match: {process: {exe: /x}}, except: [" + strings.Repeat("{process: {uid: 0}}, ", MaxExcept) + "{process: {uid: 1}}]}\n", []string{
			fmt.Sprintf(`4:%d: except: more than 16 blocks`, 73+MaxExcept*len("{process: {uid: 0}}, "))}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("p.yaml", []byte(tt.src))
			var got []string
			var list *ErrorList
			if errors.As(err, &list) {
				for _, e := range list.Errors {
					if e.File != "p.yaml" {
						t.Errorf("error in file %q", e.File)
					}
					got = append(got, fmt.Sprintf("%d:%d: %s", e.Line, e.Col, e.Msg))
				}
			} else if err != nil {
				t.Fatalf("error %T, want *ErrorList: %v", err, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				var where strings.Builder
				if list != nil {
					for _, e := range list.Errors {
						where.WriteString(caret(tt.src, e.Line, e.Col))
					}
				}
				t.Errorf("errors:\n  %s\nwant:\n  %s\nat:\n%s", strings.Join(got, "\n  "), strings.Join(tt.want, "\n  "), where.String())
			}
		})
	}
}

// caret shows a position in src.
func caret(src string, line, col int) string {
	lines := strings.Split(src, "\n")
	if line > len(lines) {
		return fmt.Sprintf("  %d:%d beyond the end\n", line, col)
	}
	l := lines[line-1]
	start := max(0, col-40)
	return fmt.Sprintf("  %s\n  %s^\n", l[start:min(len(l), start+80)], strings.Repeat(" ", col-1-start))
}

func manyRules(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "- {id: r%d, on: exec, action: deny}\n", i)
	}
	return b.String()
}

func manyPaths(n int) string {
	p := make([]string, n)
	for i := range p {
		p[i] = fmt.Sprintf("/p%d", i)
	}
	return strings.Join(p, ", ")
}

func TestPolicySize(t *testing.T) {
	_, err := Parse("p.yaml", []byte("version: 1\n#"+strings.Repeat("x", MaxPolicySize)+"\n"))
	if err == nil || err.Error() != fmt.Sprintf("p.yaml:1:1: policy is %d bytes, more than %d", MaxPolicySize+13, MaxPolicySize) {
		t.Errorf("err = %v", err)
	}
}

func TestErrorList(t *testing.T) {
	_, err := Parse("dir/p.yaml", []byte("version: 1\nmode: x\nrules: 5\n"))
	want := "dir/p.yaml:2:7: mode: unknown value \"x\" (want monitor, enforce)\ndir/p.yaml:3:8: rules: want a list, got a number"
	if err == nil || err.Error() != want {
		t.Fatalf("err:\n%v\nwant:\n%s", err, want)
	}
	var e *Error
	if !errors.As(err, &e) || e.Line != 2 || e.Col != 7 {
		t.Errorf("errors.As *Error: %+v", e)
	}
}

// TestParse checks what a valid policy becomes: every condition, lists
// expanded, values normalized, modes inherited.
func TestParse(t *testing.T) {
	p, err := Load("testdata/all-conditions.yaml")
	if err != nil {
		t.Fatal(err)
	}
	yes, no := true, false
	want := &Policy{
		Version:     1,
		Name:        "all-conditions",
		Description: "Every condition, for the tests.",
		Mode:        Monitor,
		Rules: []*Rule{
			{ID: "process", Description: "Process conditions.", On: []Kind{KindExec, KindImageLoad, KindMemExec, KindInject, KindKernel, KindFileModify},
				Action: Alert, Mode: Monitor, Match: Cond{Process: ProcessCond{
					Exe:         []string{"/usr/bin/a", "/usr/bin/b", "/usr/bin/c"},
					ExePrefix:   []string{"/opt", "/"},
					SHA256:      []string{strings.Repeat("ab", 32)},
					Signer:      []string{keyA, keyB},
					AncestorExe: []string{"/usr/sbin/sshd"},
					UID:         []UIDRange{{0, 0}, {1000, 1999}, {65534, 65534}},
					Cgroup:      []string{"/system.slice/nginx.service"},
				}}},
			{ID: "exec", On: []Kind{KindExec}, Action: Deny, Mode: Enforce,
				Match:  Cond{Target: TargetCond{Path: []string{"/usr/bin/dash"}, PathPrefix: []string{"/tmp", "/dev/shm"}}},
				Except: []Cond{{Process: ProcessCond{Exe: []string{"/usr/bin/a", "/usr/bin/b"}}}, {Process: ProcessCond{UID: []UIDRange{{0, 0}}}}}},
			{ID: "mem", On: []Kind{KindMemExec}, Action: Kill, Mode: Monitor,
				Match: Cond{Target: TargetCond{Prot: ProtWrite | ProtExec, Anonymous: &yes}}},
			{ID: "inject", On: []Kind{KindInject}, Action: Deny, Mode: Monitor,
				Match: Cond{InjectMethod: injectMethods, Target: TargetCond{ProcessExe: []string{"/usr/sbin/sshd"}, NotDescendant: &yes}}},
			{ID: "inject-own", On: []Kind{KindInject}, Action: Allow, Mode: Monitor,
				Match: Cond{Target: TargetCond{NotDescendant: &no}}},
			{ID: "kernel", On: []Kind{KindKernel}, Action: Deny, Mode: Monitor,
				Match: Cond{KernelOp: kernelOps, Target: TargetCond{Path: []string{"/dev/mem"}}}},
			{ID: "files", On: []Kind{KindFileModify}, Action: Deny, Mode: Monitor,
				Match: Cond{FileOp: fileOps, Target: TargetCond{PathPrefix: []string{"/etc/cron.d"}}}},
			{ID: "empty", On: []Kind{KindExec}, Action: Deny, Mode: Monitor,
				Match: Cond{Process: ProcessCond{Exe: []string{}}}},
		},
	}
	p.digest = ""
	if !reflect.DeepEqual(p, want) {
		for i := range max(len(p.Rules), len(want.Rules)) {
			if i >= len(p.Rules) || i >= len(want.Rules) || !reflect.DeepEqual(p.Rules[i], want.Rules[i]) {
				t.Errorf("rule %d:\n got %+v\nwant %+v", i, at(p.Rules, i), at(want.Rules, i))
			}
		}
		t.Errorf("policy:\n got %+v\nwant %+v", p, want)
	}
}

func at(rs []*Rule, i int) *Rule {
	if i < len(rs) {
		return rs[i]
	}
	return nil
}

// TestParseValidFiles: the examples and every valid test policy parse.
func TestParseValidFiles(t *testing.T) {
	files, _ := filepath.Glob("../../examples/policies/*.yaml")
	more, _ := filepath.Glob("testdata/*.yaml")
	files = append(files, more...)
	if len(files) < 3 {
		t.Fatalf("found only %v", files)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Parse(f, data); err != nil {
			t.Errorf("%v", err)
		}
	}
}
