package integrity

import (
	"fmt"
	"slices"
	"sort"
	"strings"
)

// Severity of a finding. Only violations make `vigil integrity check`
// fail.
type Severity string

const (
	Violation Severity = "violation"
	// Warning: a section readable in the baseline is unreadable now.
	Warning Severity = "warning"
	Info    Severity = "info"
)

// Finding is one difference from the baseline, or one state that is a
// violation on its own (a hidden module).
type Finding struct {
	Severity Severity `json:"severity"`
	Section  string   `json:"section"`
	Subject  string   `json:"subject"`
	Message  string   `json:"message"`
	// Expected and Actual are the baseline's value and the kernel's now,
	// where a finding has them ("" otherwise).
	Expected string `json:"expected,omitempty"`
	Actual   string `json:"actual,omitempty"`
	// Program is set for BPF program findings, Map and Link for map and
	// link findings.
	Program *Program `json:"program,omitempty"`
	Map     *Map     `json:"map,omitempty"`
	Link    *Link    `json:"link,omitempty"`
}

func (f Finding) String() string {
	return fmt.Sprintf("%s %s %s: %s", f.Severity, f.Section, f.Subject, f.Message)
}

// Report is a check's result.
type Report struct {
	Current  *State    `json:"current"`
	Findings []Finding `json:"findings"`
	// Unreadable repeats Current.Unreadable: what this kernel did not let
	// Vigil read, never a violation by itself.
	Unreadable map[string]string `json:"unreadable,omitempty"`
}

// Violations counts the findings of severity Violation.
func (r *Report) Violations() int {
	n := 0
	for _, f := range r.Findings {
		if f.Severity == Violation {
			n++
		}
	}
	return n
}

// Compare returns the findings of cur against the baseline base. A nil
// base reports only what is a violation on its own (hidden modules).
func Compare(base, cur *State) *Report {
	r := &Report{Current: cur, Unreadable: cur.Unreadable}
	add := func(sev Severity, sec, subj, format string, a ...any) {
		r.Findings = append(r.Findings, Finding{Severity: sev, Section: sec, Subject: subj, Message: fmt.Sprintf(format, a...)})
	}
	// diff is add with the expected and the actual value.
	diff := func(sec, subj, expected, actual, format string, a ...any) {
		r.Findings = append(r.Findings, Finding{Severity: Violation, Section: sec, Subject: subj,
			Expected: expected, Actual: actual, Message: fmt.Sprintf(format, a...)})
	}
	for _, m := range cur.Modules {
		if m.Hidden {
			diff(SecModules, m.Name, "listed by every readable source",
				fmt.Sprintf("/proc/modules=%v /sys/module=%v kallsyms=%v", m.Proc, m.Sysfs, m.Kallsyms),
				"hidden module: /proc/modules=%v /sys/module=%v kallsyms=%v", m.Proc, m.Sysfs, m.Kallsyms)
		}
	}
	if _, ok := cur.Unreadable[SecLSM]; !ok && !slices.Contains(cur.LSMs, "bpf") {
		add(Info, SecLSM, "bpf", "bpf is not an active LSM: BPF LSM prevention is not possible on this boot (add lsm=...,bpf)")
	}
	if base == nil {
		return r
	}
	// A section is compared only when both sides read it.
	both := func(sec string) bool {
		_, b := base.Unreadable[sec]
		_, c := cur.Unreadable[sec]
		if !b && c {
			add(Warning, sec, sec, "readable in the baseline, unreadable now: %s", cur.Unreadable[sec])
		}
		return !b && !c
	}
	if base.KernelRelease != cur.KernelRelease {
		diff(SecKernel, "release", base.KernelRelease, cur.KernelRelease, "kernel %q, baseline taken on %q", cur.KernelRelease, base.KernelRelease)
	}
	if both(SecLockdown) && base.Lockdown != cur.Lockdown {
		diff(SecLockdown, "mode", base.Lockdown, cur.Lockdown, "lockdown %q, baseline %q", cur.Lockdown, base.Lockdown)
	}
	if both(SecLSM) && !slices.Equal(base.LSMs, cur.LSMs) {
		diff(SecLSM, "active", strings.Join(base.LSMs, ","), strings.Join(cur.LSMs, ","), "LSMs %s, baseline %s", strings.Join(cur.LSMs, ","), strings.Join(base.LSMs, ","))
	}
	if both(SecTaint) && base.Taint != cur.Taint {
		diff(SecTaint, "flags", fmt.Sprint(base.Taint), fmt.Sprint(cur.Taint), "taint %d %v, baseline %d %v; new: %v", cur.Taint, cur.TaintFlags, base.Taint, base.TaintFlags, TaintFlags(cur.Taint&^base.Taint))
	}
	if base.SecureBoot != cur.SecureBoot {
		diff(SecSecureBoot, "state", base.SecureBoot, cur.SecureBoot, "secure boot %s, baseline %s", cur.SecureBoot, base.SecureBoot)
	}
	for _, n := range sortedKeys(keysOf(base.Sysctls, cur.Sysctls)) {
		b, bok := base.Sysctls[n]
		c, cok := cur.Sysctls[n]
		switch {
		case bok && cok && b != c:
			diff(SecSysctl, n, b, c, "%s, baseline %s", c, b)
		case bok && !cok:
			add(Warning, SecSysctl, n, "unreadable now, baseline %s", b)
		case !bok && cok:
			add(Info, SecSysctl, n, "%s, not in the baseline", c)
		}
	}
	if both(SecModules) || (len(base.Modules) > 0 || len(cur.Modules) > 0) {
		bm, cm := moduleSet(base.Modules), moduleSet(cur.Modules)
		for _, n := range sortedKeys(cm) {
			if !bm[n] {
				diff(SecModules, n, "absent", "loaded", "module loaded since the baseline")
			}
		}
		for _, n := range sortedKeys(bm) {
			if !cm[n] {
				diff(SecModules, n, "loaded", "absent", "module removed since the baseline")
			}
		}
	}
	hooks := func(src, kind string, sev Severity, b, c []string) {
		if !slices.Contains(base.Hooks.Read, src) || !slices.Contains(cur.Hooks.Read, src) {
			if slices.Contains(base.Hooks.Read, src) {
				add(Warning, SecHooks, src, "readable in the baseline, unreadable now")
			}
			return
		}
		for _, h := range c {
			if !slices.Contains(b, h) {
				r.Findings = append(r.Findings, Finding{Severity: sev, Section: SecHooks, Subject: h,
					Expected: "absent", Actual: "present", Message: "new " + kind})
			}
		}
		for _, h := range b {
			if !slices.Contains(c, h) {
				add(Info, SecHooks, h, "%s gone since the baseline", kind)
			}
		}
	}
	hooks("enabled_functions", "ftrace hook", Violation, base.Hooks.Ftrace, cur.Hooks.Ftrace)
	// touched_functions also keeps hooks already removed: evidence, not
	// necessarily a live hook.
	hooks("touched_functions", "function touched by ftrace since boot", Warning, base.Hooks.Touched, cur.Hooks.Touched)
	hooks("kprobes/list", "kprobe", Violation, base.Hooks.Kprobes, cur.Hooks.Kprobes)
	hooks("kprobe_events", "kprobe event", Violation, base.Hooks.KprobeEvents, cur.Hooks.KprobeEvents)
	hooks("uprobe_events", "uprobe event", Violation, base.Hooks.UprobeEvents, cur.Hooks.UprobeEvents)
	compareBPF(r, base, cur, add)
	if both(SecSyscalls) {
		for _, n := range sortedKeys(keysOf(base.Syscalls, cur.Syscalls)) {
			b, bok := base.Syscalls[n]
			c, cok := cur.Syscalls[n]
			switch {
			case bok && cok && b != c:
				diff(SecSyscalls, n, "_text"+b, "_text"+c, "entry at _text%s, baseline _text%s", c, b)
			case bok != cok:
				diff(SecSyscalls, n, presence(bok), presence(cok), "syscall symbol present now=%v, in baseline=%v", cok, bok)
			}
		}
	}
	sort.SliceStable(r.Findings, func(i, j int) bool { return sevRank(r.Findings[i].Severity) < sevRank(r.Findings[j].Severity) })
	return r
}

// compareBPF flags every program that is neither Vigil's own nor in the
// baseline's programs (by type, name and tag); every map that is neither
// Vigil's (held by the agent, or used by one of Vigil's programs) nor in
// the baseline (by type, name and sizes); every link that neither attaches
// one of Vigil's programs nor is in the baseline (by type and the program
// it attaches). Objects gone since the baseline are information only.
func compareBPF(r *Report, base, cur *State, add func(Severity, string, string, string, ...any)) {
	if _, ok := cur.Unreadable[SecBPF]; ok && len(cur.BPF.Programs) == 0 && len(cur.BPF.Maps) == 0 && len(cur.BPF.Links) == 0 {
		return
	}
	isVigil := func(p Program) bool { return p.Vigil || IsVigilProgram(p.Type, p.Name) }
	expected := map[string]bool{}
	for _, p := range base.BPF.Programs {
		expected[p.Key()] = true
	}
	present := map[string]bool{}
	curProgs := map[uint32]Program{}
	for i := range cur.BPF.Programs {
		p := cur.BPF.Programs[i]
		curProgs[p.ID] = p
		present[p.Key()] = true
		if expected[p.Key()] || isVigil(p) {
			continue
		}
		msg := "program not in the baseline's allowlist: " + describeProgram(p)
		r.Findings = append(r.Findings, Finding{Severity: Violation, Section: SecBPF, Subject: programSubject(p),
			Actual: fmt.Sprintf("loaded, id %d", p.ID), Message: msg, Program: &p})
	}
	for _, p := range base.BPF.Programs {
		if !present[p.Key()] && !isVigil(p) {
			add(Info, SecBPF, programSubject(p), "baseline program no longer loaded")
		}
	}

	// Maps: who uses each one.
	usedBy := map[uint32][]Program{}
	for _, p := range cur.BPF.Programs {
		for _, id := range p.MapIDs {
			usedBy[id] = append(usedBy[id], p)
		}
	}
	expectedMaps := map[string]bool{}
	for _, m := range base.BPF.Maps {
		expectedMaps[m.Key()] = true
	}
	for i := range cur.BPF.Maps {
		m := cur.BPF.Maps[i]
		if m.Vigil || expectedMaps[m.Key()] || slices.ContainsFunc(usedBy[m.ID], isVigil) {
			continue
		}
		var users []string
		for _, p := range usedBy[m.ID] {
			users = append(users, fmt.Sprintf("%s (id %d)", programSubject(p), p.ID))
		}
		who := "used by no loaded program"
		if len(users) > 0 {
			who = "used by " + strings.Join(users, ", ")
		}
		r.Findings = append(r.Findings, Finding{Severity: Violation, Section: SecBPF, Subject: mapSubject(m),
			Actual: fmt.Sprintf("created, id %d", m.ID), Map: &m,
			Message: fmt.Sprintf("map not in the baseline: id %d, key %d value %d max_entries %d, %s",
				m.ID, m.KeySize, m.ValueSize, m.MaxEntries, who)})
	}

	// Links: by type and the program they attach.
	baseProgs := map[uint32]Program{}
	for _, p := range base.BPF.Programs {
		baseProgs[p.ID] = p
	}
	linkKey := func(l Link, progs map[uint32]Program) string {
		if p, ok := progs[l.ProgramID]; ok {
			return l.Type + "->" + p.Key()
		}
		return l.Type + "->?"
	}
	expectedLinks := map[string]bool{}
	for _, l := range base.BPF.Links {
		expectedLinks[linkKey(l, baseProgs)] = true
	}
	for i := range cur.BPF.Links {
		l := cur.BPF.Links[i]
		p, known := curProgs[l.ProgramID]
		if l.Vigil || (known && isVigil(p)) || (known && expectedLinks[linkKey(l, curProgs)]) {
			continue
		}
		prog := fmt.Sprintf("program id %d (not listed)", l.ProgramID)
		if known {
			prog = fmt.Sprintf("%s (id %d)", programSubject(p), p.ID)
		}
		r.Findings = append(r.Findings, Finding{Severity: Violation, Section: SecBPF, Subject: fmt.Sprintf("link %s to %s", l.Type, prog),
			Actual: fmt.Sprintf("attached, link id %d", l.ID), Link: &l,
			Message: fmt.Sprintf("link not in the baseline: id %d, %s attaches %s", l.ID, l.Type, prog)})
	}
}

func mapSubject(m Map) string {
	name := m.Name
	if name == "" {
		name = "(unnamed)"
	}
	return fmt.Sprintf("map %s %s", m.Type, name)
}

func programSubject(p Program) string {
	name := p.Name
	if name == "" {
		name = "(unnamed)"
	}
	return fmt.Sprintf("%s %s tag %s", p.Type, name, p.Tag)
}

func describeProgram(p Program) string {
	var b strings.Builder
	fmt.Fprintf(&b, "id %d", p.ID)
	if len(p.Attach) > 0 {
		fmt.Fprintf(&b, ", attached by %s", strings.Join(p.Attach, ","))
	}
	if p.UID != nil {
		fmt.Fprintf(&b, ", loaded by uid %d", *p.UID)
	}
	if p.HelpersUnreadable != "" {
		fmt.Fprintf(&b, ", helpers unreadable: %s", p.HelpersUnreadable)
	} else {
		fmt.Fprintf(&b, ", helpers [%s]", strings.Join(p.Helpers, " "))
	}
	if len(p.Dangerous) > 0 {
		fmt.Fprintf(&b, ", DANGEROUS [%s]", strings.Join(p.Dangerous, " "))
	}
	return b.String()
}

func sevRank(s Severity) int {
	switch s {
	case Violation:
		return 0
	case Warning:
		return 1
	}
	return 2
}

func moduleSet(ms []Module) map[string]bool {
	out := map[string]bool{}
	for _, m := range ms {
		out[m.Name] = true
	}
	return out
}

func keysOf(ms ...map[string]string) map[string]bool {
	out := map[string]bool{}
	for _, m := range ms {
		for k := range m {
			out[k] = true
		}
	}
	return out
}

func presence(ok bool) string {
	if ok {
		return "present"
	}
	return "absent"
}
