package policy

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/santhosh-tekuri/jsonschema/v6"
	"go.yaml.in/yaml/v3"
)

const schemaPath = "../../api/policy/v1/policy.schema.json"

func compileSchema(t *testing.T) *jsonschema.Schema {
	t.Helper()
	f, err := os.Open(schemaPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	doc, err := jsonschema.UnmarshalJSON(f)
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource("policy.schema.json", doc); err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile("policy.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// yamlToJSON decodes YAML into the values the schema validator takes.
func yamlToJSON(t *testing.T, data []byte) any {
	t.Helper()
	var v any
	if err := yaml.Unmarshal(data, &v); err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	return inst
}

// TestSchemaExamples: every example policy and valid test policy
// validates against the JSON Schema, and Parse accepts it too.
func TestSchemaExamples(t *testing.T) {
	s := compileSchema(t)
	files, _ := filepath.Glob("../../examples/policies/*.yaml")
	more, _ := filepath.Glob("testdata/*.yaml")
	if len(files) < 2 || len(more) < 1 {
		t.Fatalf("found %v %v", files, more)
	}
	for _, f := range append(files, more...) {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Validate(yamlToJSON(t, data)); err != nil {
			t.Errorf("%s: schema: %v", f, err)
		}
		if _, err := Parse(f, data); err != nil {
			t.Errorf("%s: Parse: %v", f, err)
		}
	}
}

// TestSchemaAgrees: policies of the wrong shape are rejected by both.
func TestSchemaAgrees(t *testing.T) {
	s := compileSchema(t)
	const head = "version: 1\nmode: enforce\n"
	bad := map[string]string{
		"version 2":             "version: 2\nmode: enforce\nrules: []\n",
		"no mode":               "version: 1\nrules: []\n",
		"unknown key":           head + "rules: []\nextra: 1\n",
		"bad list name":         head + "rules: []\nlists: {Bad: [/x]}\n",
		"list of lists":         head + "rules: []\nlists: {a: [/x], b: [$a]}\n",
		"rule without on":       head + "rules: [{id: r, action: deny}]\n",
		"bad id":                head + "rules: [{id: R, on: exec, action: deny}]\n",
		"empty on":              head + "rules: [{id: r, on: [], action: deny}]\n",
		"fork":                  head + "rules: [{id: r, on: fork, action: deny}]\n",
		"unknown action":        head + "rules: [{id: r, on: exec, action: block}]\n",
		"unknown condition":     head + "rules: [{id: r, on: exec, action: deny, match: {process: {path: /x}}}]\n",
		"relative path":         head + "rules: [{id: r, on: exec, action: deny, match: {process: {exe: x}}}]\n",
		"unclean path":          head + "rules: [{id: r, on: exec, action: deny, match: {process: {exe: /a/../b}}}]\n",
		"exact path with /":     head + "rules: [{id: r, on: exec, action: deny, match: {target: {path: /a/}}}]\n",
		"bad digest":            head + "rules: [{id: r, on: exec, action: deny, match: {process: {sha256: abc}}}]\n",
		"bad signer":            head + "rules: [{id: r, on: exec, action: deny, match: {process: {signer: \"SHA256:abc\"}}}]\n",
		"signer without prefix": head + "rules: [{id: r, on: exec, action: deny, match: {process: {signer: QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE}}}]\n",
		"bad uid":               head + "rules: [{id: r, on: exec, action: deny, match: {process: {uid: x-y}}}]\n",
		"negative uid":          head + "rules: [{id: r, on: exec, action: deny, match: {process: {uid: -1}}}]\n",
		"bad prot":              head + "rules: [{id: r, on: mem_exec, action: deny, match: {target: {prot: rwx}}}]\n",
		"bool as string":        head + "rules: [{id: r, on: mem_exec, action: deny, match: {target: {anonymous: \"yes\"}}}]\n",
		"unknown method":        head + "rules: [{id: r, on: inject, action: deny, match: {inject_method: ptrace}}]\n",
		"unknown op":            head + "rules: [{id: r, on: kernel, action: deny, match: {kernel_op: insmod}}]\n",
		"unknown file op":       head + "rules: [{id: r, on: file_modify, action: deny, match: {file_op: write}}]\n",
		"except without match":  head + "rules: [{id: r, on: exec, action: deny, except: [{process: {exe: /x}}]}]\n",
		"empty except block":    head + "rules: [{id: r, on: exec, action: deny, match: {process: {exe: /x}}, except: [{}]}]\n",
		"empty value list":      head + "rules: [{id: r, on: exec, action: deny, match: {process: {exe: []}}}]\n",
		"too many rules":        head + "rules:\n" + manyRules(MaxRules+1),
	}
	for name, src := range bad {
		if err := s.Validate(yamlToJSON(t, []byte(src))); err == nil {
			t.Errorf("%s: the schema accepts it", name)
		}
		if _, err := Parse("p.yaml", []byte(src)); err == nil {
			t.Errorf("%s: Parse accepts it", name)
		}
	}
}
