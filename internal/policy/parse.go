package policy

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Load reads and parses the policy file at path.
func Load(path string) (*Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, data)
}

// Parse parses and validates a policy. filename is used in error messages
// only. The error, if any, is an *ErrorList holding every problem found.
func Parse(filename string, data []byte) (*Policy, error) {
	p := &parser{file: filename, lists: map[string][]*yaml.Node{}, ids: map[string]*yaml.Node{}}
	for line := range bytes.Lines(data) {
		p.lineLen = append(p.lineLen, len(line))
	}
	var pol *Policy
	if len(data) > MaxPolicySize {
		p.errorf(nil, "policy is %d bytes, more than %d", len(data), MaxPolicySize)
	} else if doc := p.decode(data); doc != nil {
		pol = p.policy(doc)
	}
	if len(p.errs) > 0 {
		return nil, &ErrorList{Errors: sortErrors(p.errs)}
	}
	pol.digest = digest(pol)
	return pol, nil
}

type parser struct {
	file    string
	lineLen []int // bytes of each line, newline included
	errs    []*Error
	lists   map[string][]*yaml.Node // list name → entries
	ids     map[string]*yaml.Node   // rule id → where first defined
}

// errorf records an error at n (nil: the start of the file). Positions are
// kept inside the input, as the YAML parser's are not always.
func (p *parser) errorf(n *yaml.Node, format string, args ...any) {
	line, col := 1, 1
	if n != nil {
		line, col = n.Line, n.Column
	}
	p.errorAt(line, col, fmt.Sprintf(format, args...))
}

func (p *parser) errorAt(line, col int, msg string) {
	line = min(max(line, 1), max(len(p.lineLen), 1))
	width := 0
	if line <= len(p.lineLen) {
		width = p.lineLen[line-1]
	}
	col = min(max(col, 1), width+1)
	p.errs = append(p.errs, &Error{File: p.file, Line: line, Col: col, Msg: msg})
}

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): `)

// parserProblems are the YAML parser's (not scanner's) messages: the
// parser gives their line 0-based, the scanner 1-based.
var parserProblems = []string{
	"did not find expected ',' or ']'", "did not find expected ',' or '}'", "did not find expected '-' indicator",
	"did not find expected <document start>", "did not find expected <stream-start>", "did not find expected key",
	"did not find expected node content", "found duplicate %TAG directive", "found duplicate %YAML directive",
	"found incompatible YAML document", "found undefined tag handle",
}

// decode parses the YAML text into its one document's root node.
func (p *parser) decode(data []byte) (root *yaml.Node) {
	defer func() {
		// The YAML parser must not take Parse down with it.
		if r := recover(); r != nil {
			p.errorf(nil, "YAML: %v", r)
			root = nil
		}
	}()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			p.errorf(nil, "empty policy: want a mapping with version, mode and rules")
		} else {
			p.yamlError(err)
		}
		return nil
	}
	var next yaml.Node
	if err := dec.Decode(&next); err == nil {
		at := &next
		if len(next.Content) > 0 {
			at = next.Content[0]
		}
		p.errorf(at, "a second YAML document: a policy file holds one")
	} else if !errors.Is(err, io.EOF) {
		p.yamlError(err)
	}
	if len(doc.Content) == 0 {
		p.errorf(&doc, "empty policy: want a mapping with version, mode and rules")
		return nil
	}
	return doc.Content[0]
}

func (p *parser) yamlError(err error) {
	msg, line := err.Error(), 1
	if m := yamlLine.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = msg[len(m[0]):]
		if slices.Contains(parserProblems, msg) {
			line++
		}
	} else {
		msg = strings.TrimPrefix(msg, "yaml: ")
	}
	p.errorAt(line, 1, "YAML syntax: "+msg)
}

func typeName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	}
	switch t := n.ShortTag(); t {
	case "!!str":
		return "a string"
	case "!!int", "!!float":
		return "a number"
	case "!!bool":
		return "a boolean"
	case "!!null":
		return "null"
	case "!!timestamp":
		return "a timestamp"
	default:
		return "a value tagged " + t
	}
}

// fields walks the mapping n, calling f for each key in keys (any key when
// keys is nil). It reports non-string, duplicate and unknown keys, and
// alias values. It returns false if n is not a mapping.
func (p *parser) fields(n *yaml.Node, what string, keys []string, f func(key string, k, v *yaml.Node)) bool {
	if n.Kind != yaml.MappingNode {
		p.errorf(n, "%s: want a mapping, got %s", what, typeName(n))
		return false
	}
	seen := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		switch {
		case k.Kind != yaml.ScalarNode || k.ShortTag() != "!!str" && k.ShortTag() != "!!merge":
			p.errorf(k, "%s: a key must be a string, not %s", what, typeName(k))
		case seen[k.Value] != nil:
			p.errorf(k, "%s: duplicate key %q (first at %d:%d)", what, k.Value, seen[k.Value].Line, seen[k.Value].Column)
		case keys != nil && !slices.Contains(keys, k.Value):
			seen[k.Value] = k
			p.errorf(k, "%s: unknown key %q (want %s)", what, k.Value, strings.Join(keys, ", "))
		case v.Kind == yaml.AliasNode:
			seen[k.Value] = k
			p.errorf(v, "%s: YAML aliases are not supported", k.Value)
		default:
			seen[k.Value] = k
			f(k.Value, k, v)
		}
	}
	return true
}

// require reports the keys of mapping n that are missing from have.
func (p *parser) require(n *yaml.Node, what string, have map[string]bool, keys ...string) {
	for _, k := range keys {
		if !have[k] {
			p.errorf(n, "%s: missing key %q", what, k)
		}
	}
}

func (p *parser) str(v *yaml.Node, key string) string {
	if v.Kind != yaml.ScalarNode || v.ShortTag() != "!!str" {
		p.errorf(v, "%s: want a string, got %s", key, typeName(v))
		return ""
	}
	return v.Value
}

func (p *parser) boolean(v *yaml.Node, key string) *bool {
	var b bool
	if v.Kind != yaml.ScalarNode || v.ShortTag() != "!!bool" || v.Decode(&b) != nil {
		p.errorf(v, "%s: want true or false, got %s", key, typeName(v))
		return nil
	}
	return &b
}

func enum[T ~string](p *parser, v *yaml.Node, key string, allowed []T) T {
	s := T(p.str(v, key))
	if slices.Contains(allowed, s) {
		return s
	}
	if v.ShortTag() == "!!str" {
		p.errorf(v, "%s: unknown value %q (want %s)", key, s, join(allowed))
	}
	return ""
}

func join[T ~string](xs []T) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = string(x)
	}
	return strings.Join(s, ", ")
}

var (
	listName = regexp.MustCompile(`^[a-z][a-z0-9_-]*$`)
	ruleID   = regexp.MustCompile(`^[a-z0-9-]+$`)
)

func (p *parser) policy(doc *yaml.Node) *Policy {
	pol := &Policy{}
	have := map[string]bool{}
	var rules, trust *yaml.Node
	ok := p.fields(doc, "policy", []string{"version", "name", "description", "mode", "lists", "rules", "trust"}, func(key string, k, v *yaml.Node) {
		have[key] = true
		switch key {
		case "version":
			if v.Kind != yaml.ScalarNode || v.ShortTag() != "!!int" || v.Value != "1" {
				p.errorf(v, "version: want 1 (the only version this Vigil reads), got %s %q", typeName(v), v.Value)
			}
			pol.Version = 1
		case "name":
			pol.Name = p.str(v, key)
		case "description":
			pol.Description = p.str(v, key)
		case "mode":
			pol.Mode = enum(p, v, key, allModes)
		case "lists":
			p.defineLists(v)
		case "rules":
			rules = v
		case "trust":
			trust = v
		}
	})
	if !ok {
		return nil
	}
	p.require(doc, "policy", have, "version", "mode", "rules")
	if trust != nil { // after lists, which it may name
		pol.Trust = p.trust(trust)
	}
	if rules == nil {
		return pol
	}
	if rules.Kind != yaml.SequenceNode {
		p.errorf(rules, "rules: want a list, got %s", typeName(rules))
		return pol
	}
	for i, rn := range rules.Content {
		if i == MaxRules {
			p.errorf(rn, "more than %d rules", MaxRules)
			break
		}
		if r := p.rule(rn, pol.Mode); r != nil {
			pol.Rules = append(pol.Rules, r)
		}
	}
	return pol
}

// trust parses the trust block (execution control).
func (p *parser) trust(n *yaml.Node) *Trust {
	t := &Trust{Unlinked: "hash", AnonymousExec: "allow", Sources: []string{}}
	have := map[string]bool{}
	keys := []string{"mode", "sources", "allow_sha256", "deny_sha256", "unlinked", "anonymous_exec",
		"anonymous_exec_allow", "catalog_dir"}
	if !p.fields(n, "trust", keys, func(key string, k, v *yaml.Node) {
		have[key] = true
		switch key {
		case "mode":
			t.Mode = enum(p, v, "trust.mode", []TrustMode{TrustMonitor, TrustLockdown})
		case "sources":
			t.Sources = p.strings(v, "trust.sources", oneOf("a trust source", TrustSources))
		case "allow_sha256":
			t.Allow = p.strings(v, "trust.allow_sha256", sha256Hex)
		case "deny_sha256":
			t.Deny = p.strings(v, "trust.deny_sha256", sha256Hex)
		case "unlinked":
			t.Unlinked = string(enum(p, v, "trust.unlinked", []string{"hash", "deny"}))
		case "anonymous_exec":
			t.AnonymousExec = string(enum(p, v, "trust.anonymous_exec", []string{"allow", "deny"}))
		case "anonymous_exec_allow":
			t.AnonymousExecAllow = p.strings(v, "trust.anonymous_exec_allow", exactPath)
		case "catalog_dir":
			if d := p.str(v, "trust.catalog_dir"); d != "" {
				if norm, problem := checkPath(d, false); problem != "" {
					p.errorf(v, "trust.catalog_dir: %s", problem)
				} else {
					t.CatalogDir = norm
				}
			}
		}
	}) {
		return nil
	}
	p.require(n, "trust", have, "mode")
	return t
}

func (p *parser) defineLists(n *yaml.Node) {
	p.fields(n, "lists", nil, func(name string, k, v *yaml.Node) {
		if !listName.MatchString(name) || len(name) > MaxIDLen {
			p.errorf(k, "list name %q: want lowercase letters, digits, _ and -, starting with a letter, at most %d bytes", name, MaxIDLen)
		}
		if v.Kind != yaml.SequenceNode {
			p.errorf(v, "list %s: want a list, got %s", name, typeName(v))
			return
		}
		entries := []*yaml.Node{}
		for i, e := range v.Content {
			switch {
			case i == MaxEntries:
				p.errorf(e, "list %s: more than %d entries", name, MaxEntries)
			case i > MaxEntries:
			case e.Kind != yaml.ScalarNode:
				p.errorf(e, "list %s: an entry must be a single value, not %s", name, typeName(e))
			case strings.HasPrefix(e.Value, "$"):
				p.errorf(e, "list %s: lists cannot refer to other lists", name)
			default:
				entries = append(entries, e)
			}
		}
		p.lists[name] = entries
	})
}

// usedCond is a condition a block uses, for the check against the rule's
// kinds.
type usedCond struct {
	name string // "target.prot"
	key  *yaml.Node
}

var fileKinds = []Kind{KindExec, KindImageLoad, KindMemExec, KindKernel, KindFileModify}

// condKinds are the kinds each condition applies to; the process
// conditions apply to every kind.
var condKinds = map[string][]Kind{
	"target.path":           fileKinds,
	"target.path_prefix":    fileKinds,
	"target.process_exe":    {KindInject},
	"target.not_descendant": {KindInject},
	"target.prot":           {KindMemExec},
	"target.anonymous":      {KindMemExec},
	"inject_method":         {KindInject},
	"kernel_op":             {KindKernel},
	"file_op":               {KindFileModify},
}

func (p *parser) rule(n *yaml.Node, policyMode Mode) *Rule {
	r := &Rule{}
	have := map[string]bool{}
	var matchV, exceptK, exceptV *yaml.Node
	ok := p.fields(n, "rule", []string{"id", "description", "on", "action", "mode", "match", "except"}, func(key string, k, v *yaml.Node) {
		have[key] = true
		switch key {
		case "id":
			r.ID = p.ruleID(v)
		case "description":
			r.Description = p.str(v, key)
		case "on":
			r.On = p.kinds(v)
		case "action":
			r.Action = enum(p, v, key, allActions)
		case "mode":
			r.Mode = enum(p, v, key, allModes)
		case "match":
			matchV = v
		case "except":
			exceptK, exceptV = k, v
		}
	})
	if !ok {
		return nil
	}
	p.require(n, "rule", have, "id", "on", "action")
	if !have["mode"] {
		r.Mode = policyMode
	}
	var used []usedCond
	if matchV != nil {
		r.Match, used = p.cond(matchV, "match")
	}
	if exceptV != nil {
		if len(used) == 0 {
			p.errorf(exceptK, "except: the rule has no match conditions to refine; say in match what the rule is about")
		}
		r.Except, used = p.except(exceptV, used)
	}
	for _, u := range used {
		kinds := condKinds[u.name]
		for _, k := range r.On {
			if kinds != nil && !slices.Contains(kinds, k) {
				p.errorf(u.key, "%s does not apply to %s events (only to %s)", u.key.Value, k, join(kinds))
				break
			}
		}
	}
	return r
}

func (p *parser) ruleID(v *yaml.Node) string {
	id := p.str(v, "id")
	switch {
	case v.ShortTag() != "!!str":
	case !ruleID.MatchString(id) || len(id) > MaxIDLen:
		p.errorf(v, "id %q: want lowercase letters, digits and -, at most %d bytes", id, MaxIDLen)
	case p.ids[id] != nil:
		p.errorf(v, "duplicate rule id %q (first at %d:%d)", id, p.ids[id].Line, p.ids[id].Column)
	default:
		p.ids[id] = v
	}
	return id
}

func (p *parser) kinds(v *yaml.Node) []Kind {
	var out []Kind
	for _, x := range p.values(v, "on", false) {
		k := Kind(x.n.Value)
		switch {
		case x.n.ShortTag() != "!!str":
			p.errorf(x.n, "on: want an event kind, got %s", typeName(x.n))
		case k == "fork" || k == "exit" || k == "gap":
			p.errorf(x.n, "on: %s events are not decided by policy (want %s)", k, join(allKinds))
		case !slices.Contains(allKinds, k):
			p.errorf(x.n, "on: unknown event kind %q (want %s)", k, join(allKinds))
		case !slices.Contains(out, k):
			out = append(out, k)
		}
	}
	return out
}

func (p *parser) except(v *yaml.Node, used []usedCond) ([]Cond, []usedCond) {
	if v.Kind != yaml.SequenceNode {
		p.errorf(v, "except: want a list of condition blocks, got %s", typeName(v))
		return nil, used
	}
	if len(v.Content) == 0 {
		p.errorf(v, "except: empty list")
	}
	var out []Cond
	for i, b := range v.Content {
		if i == MaxExcept {
			p.errorf(b, "except: more than %d blocks", MaxExcept)
			break
		}
		c, u := p.cond(b, "except block")
		if len(u) == 0 && b.Kind == yaml.MappingNode {
			p.errorf(b, "except block without conditions: it would always hold, and the rule never match")
		}
		out = append(out, c)
		used = append(used, u...)
	}
	return out, used
}

// cond parses a match or except block.
func (p *parser) cond(n *yaml.Node, what string) (c Cond, used []usedCond) {
	use := func(group, key string, k *yaml.Node) {
		used = append(used, usedCond{name: strings.TrimPrefix(group+"."+key, "."), key: k})
	}
	p.fields(n, what, []string{"process", "target", "inject_method", "kernel_op", "file_op"}, func(key string, k, v *yaml.Node) {
		switch key {
		case "process":
			pc := &c.Process
			p.fields(v, key, []string{"exe", "exe_prefix", "sha256", "signer", "ancestor_exe", "uid", "cgroup"}, func(key string, k, v *yaml.Node) {
				use("process", key, k)
				switch key {
				case "exe":
					pc.Exe = p.strings(v, key, exactPath)
				case "exe_prefix":
					pc.ExePrefix = p.strings(v, key, prefixPath)
				case "sha256":
					pc.SHA256 = p.strings(v, key, sha256Hex)
				case "signer":
					pc.Signer = p.strings(v, key, signerKeyID)
				case "ancestor_exe":
					pc.AncestorExe = p.strings(v, key, exactPath)
				case "uid":
					pc.UID = p.uids(v)
				case "cgroup":
					pc.Cgroup = p.strings(v, key, prefixPath)
				}
			})
		case "target":
			tc := &c.Target
			p.fields(v, key, []string{"path", "path_prefix", "process_exe", "not_descendant", "prot", "anonymous"}, func(key string, k, v *yaml.Node) {
				use("target", key, k)
				switch key {
				case "path":
					tc.Path = p.strings(v, key, exactPath)
				case "path_prefix":
					tc.PathPrefix = p.strings(v, key, prefixPath)
				case "process_exe":
					tc.ProcessExe = p.strings(v, key, exactPath)
				case "not_descendant":
					tc.NotDescendant = p.boolean(v, key)
				case "prot":
					tc.Prot = p.prot(v)
				case "anonymous":
					tc.Anonymous = p.boolean(v, key)
				}
			})
		case "inject_method":
			use("", key, k)
			c.InjectMethod = p.strings(v, key, oneOf("an injection method", injectMethods))
		case "kernel_op":
			use("", key, k)
			c.KernelOp = p.strings(v, key, oneOf("a kernel operation", kernelOps))
		case "file_op":
			use("", key, k)
			c.FileOp = p.strings(v, key, oneOf("a file operation", fileOps))
		}
	})
	return c, used
}

// value is one element of a condition's value, as written or taken from a
// list.
type value struct {
	n   *yaml.Node // where it is written
	via *yaml.Node // the $list reference that brought it in, or nil
}

// values returns the elements of a condition value, a single value or a
// list, with $list references expanded when refs is set. A condition that
// names only empty lists has no elements: the result is then empty but not
// nil.
func (p *parser) values(v *yaml.Node, key string, refs bool) []value {
	elems := []*yaml.Node{v}
	switch v.Kind {
	case yaml.ScalarNode:
	case yaml.SequenceNode:
		if len(v.Content) == 0 {
			p.errorf(v, "%s: empty list", key)
			return nil
		}
		elems = v.Content
	default:
		p.errorf(v, "%s: want a value or a list of values, got %s", key, typeName(v))
		return nil
	}
	out := []value{}
	for _, e := range elems {
		switch {
		case e.Kind != yaml.ScalarNode:
			p.errorf(e, "%s: want a single value, got %s", key, typeName(e))
		case e.ShortTag() == "!!str" && strings.HasPrefix(e.Value, "$"):
			entries, ok := p.lists[e.Value[1:]]
			if !refs {
				p.errorf(e, "%s: lists cannot be used here", key)
				continue
			}
			if !ok {
				p.errorf(e, "%s: unknown list %s", key, e.Value)
			}
			for _, le := range entries {
				out = append(out, value{n: le, via: e})
			}
		default:
			out = append(out, value{n: e})
		}
	}
	if len(out) > MaxEntries {
		p.errorf(v, "%s: %d values, more than %d", key, len(out), MaxEntries)
		return nil
	}
	return out
}

// valueErr reports a bad value, saying which reference brought it in.
func (p *parser) valueErr(x value, key, format string, args ...any) {
	msg := key + ": " + fmt.Sprintf(format, args...)
	if x.via != nil {
		msg += fmt.Sprintf(" (in list %s, used at %d:%d)", x.via.Value, x.via.Line, x.via.Column)
	}
	p.errorf(x.n, "%s", msg)
}

// checker validates and normalizes one string value.
type checker struct {
	want  string
	check func(string) (norm, problem string)
}

func (p *parser) strings(v *yaml.Node, key string, c checker) []string {
	vals := p.values(v, key, true)
	if vals == nil {
		return nil
	}
	out, seen := []string{}, map[string]bool{}
	for _, x := range vals {
		if x.n.ShortTag() != "!!str" {
			p.valueErr(x, key, "want %s, got %s", c.want, typeName(x.n))
			continue
		}
		s, problem := c.check(x.n.Value)
		if problem != "" {
			p.valueErr(x, key, "%s", problem)
			continue
		}
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

var (
	exactPath  = checker{"an absolute path", func(s string) (string, string) { return checkPath(s, false) }}
	prefixPath = checker{"an absolute path", func(s string) (string, string) { return checkPath(s, true) }}
	sha256Hex  = checker{"a SHA-256 digest", func(s string) (string, string) {
		if _, err := hex.DecodeString(s); err != nil || len(s) != 64 {
			return "", fmt.Sprintf("%q is not a SHA-256 digest (64 hex digits)", s)
		}
		return strings.ToLower(s), ""
	}}
)

// signerKeyID is a signer's key ID as Vigil prints it (`vigil keys id`,
// `vigil catalog list`): the SSH-style SHA-256 fingerprint of the public
// key, "SHA256:" and 43 characters of unpadded standard base64.
var signerKeyID = checker{"a signer key ID (SHA256:...)", func(s string) (string, string) {
	b64, ok := strings.CutPrefix(s, "SHA256:")
	if b, err := base64.RawStdEncoding.Strict().DecodeString(b64); !ok || err != nil || len(b) != sha256.Size {
		return "", fmt.Sprintf("%q is not a signer key ID (SHA256: and 43 base64 characters, as `vigil keys id` prints it)", s)
	}
	return s, ""
}}

func oneOf(want string, allowed []string) checker {
	return checker{want, func(s string) (string, string) {
		if !slices.Contains(allowed, s) {
			return "", fmt.Sprintf("unknown value %q (want %s)", s, strings.Join(allowed, ", "))
		}
		return s, ""
	}}
}

// checkPath accepts an absolute, clean path; a prefix may end in "/",
// which is dropped.
func checkPath(s string, prefix bool) (string, string) {
	t := s
	if prefix && len(t) > 1 {
		t = strings.TrimSuffix(t, "/")
	}
	switch {
	case !strings.HasPrefix(s, "/"):
		return "", fmt.Sprintf("%q is not an absolute path", s)
	case len(s) > MaxPathLen:
		return "", fmt.Sprintf("path longer than %d bytes", MaxPathLen)
	case strings.ContainsRune(s, 0):
		return "", "path contains a NUL byte"
	case path.Clean(t) != t:
		return "", fmt.Sprintf("%q is not a clean path (want %q)", s, path.Clean(t))
	}
	return t, ""
}

func (p *parser) uids(v *yaml.Node) []UIDRange {
	vals := p.values(v, "uid", true)
	if vals == nil {
		return nil
	}
	out := []UIDRange{}
	for _, x := range vals {
		if t := x.n.ShortTag(); t != "!!int" && t != "!!str" {
			p.valueErr(x, "uid", "want a uid or a range lo-hi, got %s", typeName(x.n))
			continue
		}
		lo, hi, isRange := strings.Cut(x.n.Value, "-")
		if !isRange {
			hi = lo
		}
		a, okA := uidNumber(lo)
		b, okB := uidNumber(hi)
		switch {
		case !okA || !okB:
			p.valueErr(x, "uid", "%q is not a uid or a range lo-hi (decimal, 0 to %d)", x.n.Value, uint32(math.MaxUint32-1))
		case a > b:
			p.valueErr(x, "uid", "range %q is empty (%d > %d)", x.n.Value, a, b)
		default:
			out = append(out, UIDRange{a, b})
		}
	}
	return out
}

// uidNumber parses a decimal uid; (uid_t)-1 is not a uid.
func uidNumber(s string) (uint32, bool) {
	if s == "" || len(s) > 1 && s[0] == '0' {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 32)
	return uint32(n), err == nil && n != math.MaxUint32
}

func (p *parser) prot(v *yaml.Node) Prot {
	var prot Prot
	for _, x := range p.values(v, "prot", false) {
		bit, ok := protNames[x.n.Value]
		switch {
		case x.n.ShortTag() != "!!str":
			p.errorf(x.n, "prot: want a flag (read, write, exec), got %s", typeName(x.n))
		case !ok:
			p.errorf(x.n, "prot: unknown flag %q (want read, write, exec)", x.n.Value)
		}
		prot |= bit
	}
	return prot
}

// ParseRule parses one rule (a YAML mapping, as one entry of a policy's
// rules) in mode, e.g. a filter API client's kernel rule. filename is used
// in error messages only.
func ParseRule(filename string, data []byte, mode Mode) (*Rule, error) {
	p := &parser{file: filename, lists: map[string][]*yaml.Node{}, ids: map[string]*yaml.Node{}}
	for line := range bytes.Lines(data) {
		p.lineLen = append(p.lineLen, len(line))
	}
	var r *Rule
	if len(data) > MaxPolicySize {
		p.errorf(nil, "rule is %d bytes, more than %d", len(data), MaxPolicySize)
	} else if doc := p.decode(data); doc != nil {
		r = p.rule(doc, mode)
	}
	if len(p.errs) > 0 {
		return nil, &ErrorList{Errors: sortErrors(p.errs)}
	}
	return r, nil
}

// WithRules returns a policy of rules alone (mode enforce), for rules that
// come from elsewhere than a file (a filter API client's), to be merged
// with the policy in force (Merge).
func WithRules(name string, rules []*Rule) *Policy {
	p := &Policy{Version: 1, Name: name, Mode: Enforce, Rules: rules}
	p.digest = digest(p)
	return p
}
