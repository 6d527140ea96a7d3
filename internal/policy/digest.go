package policy

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"slices"
)

// digest is the SHA-256 of the canonical encoding of a valid policy: JSON
// (keys sorted, no spaces) of its version, mode and rules in order, each
// rule with its id, action, effective mode, sorted kinds, and its blocks;
// a block is an object of the conditions present, values sorted and
// deduplicated, uid ranges merged; the except blocks are sorted by their
// encoding. Names, descriptions, comments, layout and list names are not
// part of it: they do not change a decision.
func digest(p *Policy) string {
	type rule struct {
		ID     string            `json:"id"`
		On     []Kind            `json:"on"`
		Action Action            `json:"action"`
		Mode   Mode              `json:"mode"`
		Match  map[string]any    `json:"match"`
		Except []json.RawMessage `json:"except"`
	}
	type trust struct {
		Mode      TrustMode `json:"mode"`
		Sources   []string  `json:"sources"`
		Allow     []string  `json:"allow_sha256"`
		Deny      []string  `json:"deny_sha256"`
		Unlinked  string    `json:"unlinked"`
		Anon      string    `json:"anonymous_exec"`
		AnonAllow []string  `json:"anonymous_exec_allow"`
		Catalogs  string    `json:"catalog_dir"`
	}
	doc := struct {
		Format  string `json:"format"`
		Version int    `json:"version"`
		Mode    Mode   `json:"mode"`
		Rules   []rule `json:"rules"`
		Trust   *trust `json:"trust,omitempty"` // absent: the digest of a policy without trust is unchanged
	}{Format: "vigil.policy", Version: p.Version, Mode: p.Mode, Rules: []rule{}}
	if t := p.Trust; t != nil {
		doc.Trust = &trust{Mode: t.Mode, Sources: sorted(t.Sources), Allow: sorted(t.Allow), Deny: sorted(t.Deny),
			Unlinked: t.Unlinked, Anon: t.AnonymousExec, AnonAllow: sorted(t.AnonymousExecAllow), Catalogs: t.CatalogDir}
	}
	for _, r := range p.Rules {
		cr := rule{ID: r.ID, On: sorted(r.On), Action: r.Action, Mode: r.Mode, Match: canonical(&r.Match), Except: []json.RawMessage{}}
		for i := range r.Except {
			b, _ := json.Marshal(canonical(&r.Except[i]))
			cr.Except = append(cr.Except, b)
		}
		slices.SortFunc(cr.Except, func(a, b json.RawMessage) int { return cmp.Compare(string(a), string(b)) })
		cr.Except = slices.CompactFunc(cr.Except, func(a, b json.RawMessage) bool { return string(a) == string(b) })
		doc.Rules = append(doc.Rules, cr)
	}
	b, err := json.Marshal(doc)
	if err != nil {
		panic("policy: canonical encoding: " + err.Error()) // plain strings, numbers and bools cannot fail
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// canonical is a block as a map of the conditions present, keyed by their
// YAML paths.
func canonical(c *Cond) map[string]any {
	m := map[string]any{}
	set := func(key string, v []string) {
		if v != nil {
			m[key] = sorted(v)
		}
	}
	set("process.exe", c.Process.Exe)
	set("process.exe_prefix", c.Process.ExePrefix)
	set("process.sha256", c.Process.SHA256)
	set("process.signer", c.Process.Signer)
	set("process.ancestor_exe", c.Process.AncestorExe)
	set("process.cgroup", c.Process.Cgroup)
	if c.Process.UID != nil {
		m["process.uid"] = mergeUIDs(c.Process.UID)
	}
	set("target.path", c.Target.Path)
	set("target.path_prefix", c.Target.PathPrefix)
	set("target.process_exe", c.Target.ProcessExe)
	if c.Target.NotDescendant != nil {
		m["target.not_descendant"] = *c.Target.NotDescendant
	}
	if c.Target.Prot != 0 {
		m["target.prot"] = c.Target.Prot
	}
	if c.Target.Anonymous != nil {
		m["target.anonymous"] = *c.Target.Anonymous
	}
	set("inject_method", c.InjectMethod)
	set("kernel_op", c.KernelOp)
	set("file_op", c.FileOp)
	return m
}

func sorted[T cmp.Ordered](v []T) []T {
	out := slices.Clone(v)
	slices.Sort(out)
	return slices.Compact(out)
}

// mergeUIDs sorts ranges and merges those that overlap or touch, as
// [lo, hi] pairs.
func mergeUIDs(rs []UIDRange) [][2]uint32 {
	rs = slices.Clone(rs)
	slices.SortFunc(rs, func(a, b UIDRange) int { return cmp.Compare(a.Lo, b.Lo) })
	out := [][2]uint32{}
	for _, r := range rs {
		if n := len(out); n > 0 && uint64(r.Lo) <= uint64(out[n-1][1])+1 {
			out[n-1][1] = max(out[n-1][1], r.Hi)
			continue
		}
		out = append(out, [2]uint32{r.Lo, r.Hi})
	}
	return out
}
