package fleet

import (
	"testing"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
)

func TestSummarizeGuarantees(t *testing.T) {
	g := func(control, level string) *vigilv1.Guarantee {
		return &vigilv1.Guarantee{Control: control, Level: level}
	}
	for _, tc := range []struct {
		name string
		in   []*vigilv1.Guarantee
		want string
	}{
		{"none", nil, "not reported"},
		{"all strong", []*vigilv1.Guarantee{g("exec", "synchronous block"), g("file_open", "synchronous block")},
			"2 synchronous block; weakest: exec (synchronous block)"},
		{"mixed, strongest first, first weakest named", []*vigilv1.Guarantee{
			g("file_write", "observe only"), g("exec", "synchronous block"), g("modules", "not provided"),
			g("memory", "kill after the fact"), g("ptrace", "not provided")},
			"1 synchronous block, 1 kill after the fact, 1 observe only, 2 not provided; weakest: modules (not provided)"},
		{"an unknown level counts as weakest", []*vigilv1.Guarantee{g("exec", "synchronous block"), g("new", "maybe")},
			"1 synchronous block, 1 not provided; weakest: new (maybe)"},
	} {
		if got := SummarizeGuarantees(tc.in).String(); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}
