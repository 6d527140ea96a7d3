package policy

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse: Parse never panics; it returns a policy or an *ErrorList
// whose every error is at a position inside the input; a policy parses
// again to the same digest and can be evaluated. Seeds: the examples and
// testdata.
func FuzzParse(f *testing.F) {
	seeds, _ := filepath.Glob("../../examples/policies/*.yaml")
	more, _ := filepath.Glob("testdata/*.yaml")
	for _, name := range append(seeds, more...) {
		data, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte("version: 1\nmode: enforce\nrules:\n- {id: r, on: exec, action: deny, match: {process: {exe: $x}}}\n"))
	f.Add([]byte("version: 1\nmode: [enforce\n"))
	f.Add([]byte("---\n---\n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse("f.yaml", data)
		if err != nil {
			var list *ErrorList
			if !errors.As(err, &list) || len(list.Errors) == 0 {
				t.Fatalf("error %T %v, want a non-empty *ErrorList", err, err)
			}
			lines := bytes.SplitAfter(data, []byte("\n"))
			for _, e := range list.Errors {
				if e.File != "f.yaml" || e.Line < 1 || e.Col < 1 || e.Msg == "" {
					t.Fatalf("bad error %#v", e)
				}
				if len(data) == 0 {
					if e.Line != 1 || e.Col != 1 {
						t.Fatalf("error %v in an empty input", e)
					}
					continue
				}
				if e.Line > len(lines) || e.Col > len(lines[e.Line-1])+1 {
					t.Fatalf("error %v outside the input (%d lines)", e, len(lines))
				}
			}
			return
		}
		if p == nil || len(p.Digest()) != 64 {
			t.Fatalf("policy %v without digest", p)
		}
		again, err := Parse("f.yaml", data)
		if err != nil || again.Digest() != p.Digest() {
			t.Fatalf("parsing again: %v, digest %s then %s", err, p.Digest(), again.Digest())
		}
		for _, k := range allKinds {
			p.Evaluate(Input{Kind: k}, nil)
		}
	})
}
