package policy

import (
	"strings"
	"testing"
)

func TestDigest(t *testing.T) {
	const base = `version: 1
mode: enforce
lists:
  tools: [/usr/bin/a, /usr/bin/b]
rules:
- id: r
  on: [exec, image_load]
  action: deny
  match: {process: {exe: $tools, uid: [0, 5-9, 7-12]}, target: {path_prefix: /tmp}}
  except: [{process: {uid: 0}}, {process: {exe: /x}}]
- id: s
  on: kernel
  action: alert
`
	digest := func(src string) string { return mustParse(t, src).Digest() }
	d := digest(base)
	if len(d) != 64 {
		t.Fatalf("digest %q", d)
	}
	same := map[string]string{
		"comments, layout, names and descriptions": `# a comment
version: 1
name: other
description: other
mode: enforce
lists: {renamed: [/usr/bin/b, /usr/bin/a, /usr/bin/a]}
rules:
  - id: r
    description: words
    on: [image_load, exec]
    action: deny
    mode: enforce
    match:
      target: {path_prefix: /tmp/}
      process: {uid: [5-12, 0], exe: [$renamed]}
    except:
      - process: {exe: /x}
      - process: {uid: "0"}
  - {id: s, on: [kernel], action: alert}
`,
	}
	for name, src := range same {
		if got := digest(src); got != d {
			t.Errorf("%s: digest changed", name)
		}
	}
	differ := map[string]string{
		"policy mode":   replace(base, "mode: enforce", "mode: monitor"),
		"a rule less":   replace(base, "- id: s\n  on: kernel\n  action: alert\n", ""),
		"action":        replace(base, "action: alert", "action: deny"),
		"rule mode":     replace(base, "action: alert", "action: alert\n  mode: monitor"),
		"rule id":       replace(base, "id: s", "id: t"),
		"a value":       replace(base, "/usr/bin/b]", "/usr/bin/c]"),
		"a uid":         replace(base, "7-12", "7-13"),
		"kinds":         replace(base, "[exec, image_load]", "[exec]"),
		"an except":     replace(base, ", {process: {exe: /x}}]", "]"),
		"exe to prefix": replace(base, "exe: $tools", "exe_prefix: $tools"),
	}
	for name, src := range differ {
		if got := digest(src); got == d {
			t.Errorf("%s: same digest", name)
		}
	}
	// process.signer: its key IDs are in the digest; catalogs bound to
	// the policy are not.
	sg := func(keys string) string {
		return digest("version: 1\nmode: enforce\nrules:\n- {id: a, on: exec, action: deny, match: {process: {signer: " + keys + "}}}\n")
	}
	if sg(keyA) == sg(keyB) || sg("["+keyA+", "+keyB+"]") != sg("["+keyB+", "+keyA+", "+keyB+"]") {
		t.Error("process.signer: the digest does not follow the key IDs as a set")
	}
	ps := mustParse(t, "version: 1\nmode: enforce\nrules:\n- {id: a, on: exec, action: deny, match: {process: {signer: ["+keyB+", "+keyA+"]}}, except: [{process: {signer: "+keyC+"}}]}\n")
	bound := ps.WithCatalogs(Catalogs{keyA: {hashA}})
	if bound.Digest() != ps.Digest() || bound.Catalogs()[keyA][0] != hashA || ps.Catalogs() != nil {
		t.Errorf("WithCatalogs: digest %s (was %s), catalogs %v, original's %v", bound.Digest(), ps.Digest(), bound.Catalogs(), ps.Catalogs())
	}
	if got := strings.Join(ps.Signers(), " "); got != keyC+" "+keyA+" "+keyB { // sorted
		t.Errorf("Signers() = %s", got)
	}
	// The order of rules matters (first match decides).
	a := digest("version: 1\nmode: enforce\nrules:\n- {id: a, on: exec, action: deny}\n- {id: b, on: exec, action: allow}\n")
	b := digest("version: 1\nmode: enforce\nrules:\n- {id: b, on: exec, action: allow}\n- {id: a, on: exec, action: deny}\n")
	if a == b {
		t.Error("rule order does not change the digest")
	}
	// An absent condition is not one naming an empty list.
	e1 := digest("version: 1\nmode: enforce\nlists: {none: []}\nrules:\n- {id: a, on: exec, action: deny, match: {process: {exe: $none}}}\n")
	e2 := digest("version: 1\nmode: enforce\nrules:\n- {id: a, on: exec, action: deny}\n")
	if e1 == e2 {
		t.Error("an empty condition and no condition have the same digest")
	}
}

func replace(s, old, new string) string {
	if !strings.Contains(s, old) {
		panic("no " + old)
	}
	return strings.Replace(s, old, new, 1)
}

func TestMergeUIDs(t *testing.T) {
	got := mergeUIDs([]UIDRange{{10, 20}, {0, 0}, {21, 25}, {5, 5}, {1, 1}, {4294967294, 4294967294}, {22, 23}})
	want := [][2]uint32{{0, 1}, {5, 5}, {10, 25}, {4294967294, 4294967294}}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
}
