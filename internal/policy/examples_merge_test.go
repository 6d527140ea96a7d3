package policy

import "testing"

// TestExamplesMerge: the shipped hardening.yaml and lockdown.yaml are meant
// to be given together (README quickstart): they merge.
func TestExamplesMerge(t *testing.T) {
	var ps []*Policy
	names := []string{"../../examples/policies/hardening.yaml", "../../examples/policies/lockdown.yaml"}
	for _, n := range names {
		p, err := Load(n)
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	m, err := Merge(names, ps)
	if err != nil {
		t.Fatal(err)
	}
	if m.Trust == nil || m.Trust.Mode != TrustLockdown || len(m.Rules) != len(ps[0].Rules) {
		t.Fatalf("%+v", m)
	}
}
