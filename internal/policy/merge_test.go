package policy

import (
	"strings"
	"testing"
)

func TestMerge(t *testing.T) {
	a := mustParse(t, `version: 1
name: a
mode: monitor
rules:
  - id: one
    on: exec
    action: alert
    match: {target: {path_prefix: /tmp}}
`)
	b := mustParse(t, `version: 1
name: b
mode: enforce
rules:
  - id: two
    on: exec
    action: deny
    match: {target: {path_prefix: /tmp}}
trust:
  mode: lockdown
  sources: [database]
`)
	m, err := Merge([]string{"a.yaml", "b.yaml"}, []*Policy{a, b})
	if err != nil {
		t.Fatal(err)
	}
	if m.Name != "a+b" || m.Mode != Enforce || len(m.Rules) != 2 || m.Rules[0].ID != "one" || m.Trust == nil {
		t.Fatalf("merged: %+v", m)
	}
	// First match decides across parts: a's alert comes first.
	v := m.Evaluate(Input{Kind: KindExec, Op: "exec", File: File{Path: "/tmp/x"}}, nil)
	if v.Rule != "one" {
		t.Fatalf("verdict %+v, want rule one", v)
	}
	if m.Digest() == a.Digest() || m.Digest() == b.Digest() || len(m.Digest()) != 64 {
		t.Fatalf("digest %q", m.Digest())
	}
	if _, err := Merge([]string{"b.yaml", "b2.yaml"}, []*Policy{b, b}); err == nil || !strings.Contains(err.Error(), "rule two: also in b.yaml") {
		t.Fatalf("duplicate rule ids: %v", err)
	}
	noRules := mustParse(t, "version: 1\nmode: monitor\nrules: []\ntrust: {mode: monitor}\n")
	if _, err := Merge([]string{"b.yaml", "c.yaml"}, []*Policy{b, noRules}); err == nil || !strings.Contains(err.Error(), "trust block") {
		t.Fatalf("two trust blocks: %v", err)
	}
}

func TestParseRule(t *testing.T) {
	r, err := ParseRule("client rule", []byte("id: no-marker\non: exec\naction: deny\nmatch: {target: {path_prefix: /srv}}\n"), Enforce)
	if err != nil || r.ID != "no-marker" || r.Action != Deny || r.Mode != Enforce {
		t.Fatalf("ParseRule: %+v, %v", r, err)
	}
	_, err = ParseRule("client rule", []byte("id: x\non: exec\naction: deny\nmatch: {target: {path_prefx: /srv}}\n"), Enforce)
	if err == nil || !strings.Contains(err.Error(), "client rule:4:") {
		t.Fatalf("bad rule: %v, want an error at client rule:4", err)
	}
}
