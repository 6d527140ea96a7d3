package fleet

import (
	"fmt"
	"strings"
	"testing"
)

func TestRollout(t *testing.T) {
	for _, bad := range []Rollout{
		{Stage: StagePreview},
		{Stage: StageStaged, Percent: 101},
		{Stage: "soon", Percent: 5},
		{Percent: 5},
		{Tag: "x"},
		{Stage: StagePreview, Tag: "a b"},
	} {
		if err := bad.Validate(); err == nil {
			t.Errorf("%+v validated", bad)
		}
	}
	ro := Rollout{Stage: StagePreview, Percent: 20, Tag: "canary"}
	if err := ro.Validate(); err != nil {
		t.Fatal(err)
	}
	if ro.String() != "preview 20% tag:canary" {
		t.Errorf("String: %q", ro.String())
	}
	next, err := ro.Promote()
	if err != nil || next != (Rollout{Stage: StageStaged, Percent: 20, Tag: "canary"}) {
		t.Fatalf("promote preview: %+v %v", next, err)
	}
	if full, err := next.Promote(); err != nil || full != (Rollout{}) || full.String() != "full" {
		t.Fatalf("promote staged: %+v %v", full, err)
	}
	if _, err := (Rollout{}).Promote(); err == nil {
		t.Fatal("promoted past full")
	}

	// The chosen hosts: a share of them near the percentage, the tagged
	// ones always, a superset as the percentage grows.
	var in20, in50 int
	for i := range 2000 {
		h := fmt.Sprintf("host-%d", i)
		p := HostPercentile(h)
		if p > 99 {
			t.Fatalf("percentile %d", p)
		}
		a := Rollout{Stage: StageStaged, Percent: 20}.Chosen(h, nil)
		b := Rollout{Stage: StageStaged, Percent: 50}.Chosen(h, nil)
		if a && !b {
			t.Fatalf("%s in the 20%% rollout but not the 50%%", h)
		}
		if a {
			in20++
		}
		if b {
			in50++
		}
		if !(Rollout{Stage: StagePreview, Tag: "canary"}).Chosen(h, []string{"web", "canary"}) {
			t.Fatal("a tagged host is not chosen")
		}
		if (Rollout{Stage: StagePreview, Tag: "canary"}).Chosen(h, []string{"web"}) {
			t.Fatal("an untagged host is chosen by a tag-only rollout")
		}
		if !(Rollout{}).Chosen(h, nil) {
			t.Fatal("a full rollout leaves a host out")
		}
	}
	if in20 < 300 || in20 > 500 || in50 < 850 || in50 > 1150 {
		t.Fatalf("of 2000 hosts, %d in 20%% and %d in 50%%", in20, in50)
	}
}

func TestPolicyRuleParse(t *testing.T) {
	doc := "version: 1\nname: p\nmode: enforce\nrules:\n- id: r\n  on: [exec]\n  action: deny\n"
	p, err := PolicyRule{Name: "p", YAML: doc}.Parse()
	if err != nil || p.Rules[0].Mode != "enforce" {
		t.Fatalf("parse: %v %v", p, err)
	}
	m, err := PolicyRule{Name: "p", YAML: doc, Mode: Monitor}.Parse()
	if err != nil || m.Rules[0].Mode != "monitor" || m.Mode != "monitor" || m.Digest() == p.Digest() {
		t.Fatalf("monitor preview: %+v %v", m, err)
	}
	if p.Rules[0].Mode != "enforce" {
		t.Fatal("the preview changed the parsed policy it copied")
	}
	for name, r := range map[string]PolicyRule{
		"trust block": {Name: "t", YAML: "version: 1\nname: t\nmode: enforce\nrules: []\ntrust: {mode: monitor}\n"},
		"mode":        {Name: "p", YAML: doc, Mode: "enforce"},
		"no name":     {YAML: doc},
		"bad yaml":    {Name: "p", YAML: "version: 1\nrules:\n- id: r\n  on: [exec]\n  action: maybe\n"},
	} {
		if _, err := r.Parse(); err == nil {
			t.Errorf("%s: parsed", name)
		} else if name == "trust block" && !strings.Contains(err.Error(), "trust block") {
			t.Errorf("trust block: %v", err)
		}
	}
}
