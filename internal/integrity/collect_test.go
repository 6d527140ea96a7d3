package integrity

import (
	"io/fs"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

// fakeFS is a map of path → content; directories are implied.
type fakeFS map[string]string

func (f fakeFS) ReadFile(p string) ([]byte, error) {
	if v, ok := f[p]; ok {
		if v == "EPERM" {
			return nil, &fs.PathError{Op: "open", Path: p, Err: fs.ErrPermission}
		}
		return []byte(v), nil
	}
	return nil, &fs.PathError{Op: "open", Path: p, Err: fs.ErrNotExist}
}

func (f fakeFS) ReadDir(p string) ([]string, error) {
	seen := map[string]bool{}
	for k := range f {
		if strings.HasPrefix(k, p+"/") {
			seen[strings.SplitN(strings.TrimPrefix(k, p+"/"), "/", 2)[0]] = true
		}
	}
	if len(seen) == 0 {
		return nil, &fs.PathError{Op: "open", Path: p, Err: fs.ErrNotExist}
	}
	out := make([]string, 0, len(seen))
	for k := range seen {
		out = append(out, k)
	}
	sort.Strings(out)
	return out, nil
}

type fakeBPF struct{ st BPFState }

func (f *fakeBPF) Inventory(Symbolizer) (BPFState, error) { return f.st, nil }

// host is a kernel with modules, readable tracefs and kallsyms.
func host() fakeFS {
	f := fakeFS{
		"/proc/sys/kernel/osrelease":            "6.12.0-test\n",
		"/sys/kernel/security/lockdown":         "none [integrity] confidentiality\n",
		"/sys/kernel/security/lsm":              "lockdown,capability,yama,bpf",
		"/proc/sys/kernel/tainted":              "0\n",
		"/proc/modules":                         "fat 94208 1 vfat, Live 0x0\nnf_tables 352256 0 - Live 0x0\n",
		"/sys/module/fat/initstate":             "live\n",
		"/sys/module/nf_tables/initstate":       "live\n",
		"/sys/module/printk/parameters/time":    "Y\n", // built in: no initstate
		"/proc/kallsyms":                        kallsymsFixture,
		"/sys/kernel/tracing/README":            "tracing mini-HOWTO",
		"/sys/kernel/tracing/enabled_functions": "",
		"/sys/kernel/tracing/touched_functions": "",
		"/sys/kernel/tracing/kprobe_events":     "",
		"/sys/kernel/tracing/uprobe_events":     "",
		"/sys/kernel/debug/kprobes/list":        "",
		"/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-e0a3e8e1f6b9": "\x06\x00\x00\x00\x01",
	}
	for _, n := range Sysctls {
		f[SysctlPath(n)] = "1\n"
	}
	return f
}

func collect(f fakeFS, progs ...Program) *State {
	return (&Collector{FS: f, BPF: &fakeBPF{BPFState{Programs: progs}}}).Collect()
}

func TestCollectHost(t *testing.T) {
	s := collect(host())
	if len(s.Unreadable) != 0 {
		t.Fatalf("unreadable: %v", s.Unreadable)
	}
	if s.Lockdown != "integrity" || s.SecureBoot != "enabled" || s.KernelRelease != "6.12.0-test" || len(s.Sysctls) != len(Sysctls) {
		t.Fatalf("state %+v", s)
	}
	if len(s.Modules) != 2 || s.Modules[0].Hidden || s.Modules[1].Hidden {
		t.Fatalf("modules %+v", s.Modules)
	}
	if s.Syscalls["__x64_sys_read"] != "+0x6b8fd0" {
		t.Fatalf("syscalls %v", s.Syscalls)
	}
	if r := Compare(s, collect(host())); len(r.Findings) != 0 {
		t.Fatalf("clean system against its own baseline: %v", r.Findings)
	}
}

func TestHiddenModules(t *testing.T) {
	tests := []struct {
		name   string
		edit   func(fakeFS)
		hidden []string
	}{
		{"unlinked from /proc/modules", func(f fakeFS) { f["/proc/modules"] = "fat 94208 1 vfat, Live 0x0\n" }, []string{"nf_tables"}},
		{"removed from sysfs", func(f fakeFS) { delete(f, "/sys/module/fat/initstate") }, []string{"fat"}},
		{"only in kallsyms", func(f fakeFS) {
			f["/proc/kallsyms"] += "ffffffffc0009000 t evil_hook\t[rootkit]\n"
		}, []string{"rootkit"}},
		{"kallsyms unreadable: other two agree", func(f fakeFS) { f["/proc/kallsyms"] = "EPERM" }, nil},
		{"no module support, module in kallsyms", func(f fakeFS) {
			delete(f, "/proc/modules")
			delete(f, "/sys/module/fat/initstate")
			delete(f, "/sys/module/nf_tables/initstate")
			f["/proc/kallsyms"] = "ffffffff81000000 T _text\nffffffffc0009000 t evil_hook\t[rootkit]\n"
		}, []string{"rootkit"}},
		{"no module support, clean", func(f fakeFS) {
			delete(f, "/proc/modules")
			delete(f, "/sys/module/fat/initstate")
			delete(f, "/sys/module/nf_tables/initstate")
			f["/proc/kallsyms"] = "ffffffff81000000 T _text\n"
		}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := host()
			tt.edit(f)
			s := collect(f)
			r := Compare(nil, s)
			var got []string
			for _, fd := range r.Findings {
				if fd.Severity == Violation {
					got = append(got, fd.Subject)
				}
			}
			if !slices.Equal(got, tt.hidden) {
				t.Fatalf("hidden %q, want %q (modules %+v)", got, tt.hidden, s.Modules)
			}
		})
	}
}

func TestUnreadableIsNotAViolation(t *testing.T) {
	// The development host: no modules, tracefs control files refused,
	// no EFI, kallsyms addresses zeroed.
	f := host()
	for k := range f {
		if strings.HasPrefix(k, "/sys/module/") || strings.HasPrefix(k, "/sys/firmware/") || strings.HasPrefix(k, "/sys/kernel/debug/") {
			delete(f, k)
		}
	}
	delete(f, "/proc/modules")
	f["/sys/kernel/tracing/enabled_functions"] = "EPERM"
	delete(f, "/sys/kernel/tracing/kprobe_events")
	f["/proc/kallsyms"] = "0000000000000000 T _text\n0000000000000000 T __x64_sys_read\n"
	delete(f, SysctlPath("kernel.modules_disabled"))
	base := collect(f)
	for _, sec := range []string{SecModules, SecHooks, SecSecureBoot, SecSyscalls, SecSysctl} {
		if base.Unreadable[sec] == "" {
			t.Errorf("section %s: no unreadable note", sec)
		}
	}
	if !strings.Contains(base.Unreadable[SecSyscalls], "kptr_restrict") {
		t.Errorf("syscalls note does not say why: %q", base.Unreadable[SecSyscalls])
	}
	if base.SecureBoot != "not visible" {
		t.Errorf("secure boot %q", base.SecureBoot)
	}
	r := Compare(base, collect(f))
	if r.Violations() != 0 {
		t.Fatalf("violations on an unreadable-but-unchanged kernel: %v", r.Findings)
	}
}

func TestCompareViolations(t *testing.T) {
	own := Program{ID: 5, Type: "TracePoint", Name: KernelName("tp_sys_enter_process_vm_writev"), Tag: "aaaa"}
	known := Program{ID: 6, Type: "CGroupDevice", Name: "sd_devices", Tag: "bbbb"}
	base := collect(host(), known)

	f := host()
	f[SysctlPath("kernel.perf_event_paranoid")] = "-1\n"
	f["/sys/kernel/security/lockdown"] = "[none] integrity confidentiality\n"
	f["/sys/kernel/security/lsm"] = "lockdown,capability,yama"
	f["/proc/sys/kernel/tainted"] = "4096\n"
	f["/sys/kernel/tracing/enabled_functions"] = "do_sys_open (1)\n"
	f["/sys/kernel/tracing/kprobe_events"] = "p:kprobes/evil do_sys_open\n"
	f["/proc/kallsyms"] = strings.Replace(kallsymsFixture, "ffffffff816b8fd0 T __x64_sys_read", "ffffffffc0005000 T __x64_sys_read", 1)
	foreign := Program{ID: 9, Type: "SocketFilter", Name: "evil", Tag: "cccc", Helpers: []string{"bpf_probe_write_user"}, Dangerous: []string{"bpf_probe_write_user"}}
	moved := known
	moved.ID = 77 // reloaded: same type+name+tag, new id
	cur := collect(f, own, moved, foreign)
	r := Compare(base, cur)
	var got []string
	for _, fd := range r.Findings {
		if fd.Severity == Violation {
			got = append(got, fd.Section+" "+fd.Subject)
		}
	}
	want := []string{
		"lockdown mode", "lsm active", "taint flags",
		"sysctl kernel.perf_event_paranoid",
		"hooks do_sys_open", "hooks p:kprobes/evil do_sys_open",
		"bpf SocketFilter evil tag cccc",
		"syscalls __x64_sys_read",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("violations\n got %q\nwant %q", got, want)
	}
	for _, fd := range r.Findings {
		if fd.Section == SecBPF && fd.Severity == Violation && !strings.Contains(fd.Message, "DANGEROUS [bpf_probe_write_user]") {
			t.Errorf("bpf finding does not name the helper: %s", fd.Message)
		}
		if fd.Section == SecTaint && !strings.Contains(fd.Message, "O:out_of_tree_module") {
			t.Errorf("taint finding does not name the new flag: %s", fd.Message)
		}
	}
	// A foreign program that takes one of Vigil's names but not its type is
	// not Vigil's.
	fake := Program{ID: 10, Type: "Kprobe", Name: "lsm_bpf", Tag: "dddd"}
	if r := Compare(base, collect(host(), known, fake)); r.Violations() != 1 {
		t.Fatalf("impostor of a Vigil name: %v", r.Findings)
	}
}

// TestHooksComparedOnlyWhenReadable: tracefs mounted after the baseline
// does not turn existing hooks into violations, but a new hook in a source
// read both times is one, and a source that became unreadable is a warning.
func TestHooksComparedOnlyWhenReadable(t *testing.T) {
	f := host()
	delete(f, "/sys/kernel/tracing/kprobe_events")
	base := collect(f)
	f2 := host()
	f2["/sys/kernel/tracing/kprobe_events"] = "p:kprobes/old do_exit\n"
	f2["/sys/kernel/tracing/touched_functions"] = "vfs_read\n"
	delete(f2, "/sys/kernel/debug/kprobes/list")
	r := Compare(base, collect(f2))
	var got []string
	for _, fd := range r.Findings {
		got = append(got, string(fd.Severity)+" "+fd.Subject)
	}
	want := []string{"warning vfs_read", "warning kprobes/list"}
	if !slices.Equal(got, want) {
		t.Fatalf("findings %q, want %q", got, want)
	}
}

// TestCompareMapsAndLinks: a map or link is expected when it is in the
// baseline, is Vigil's (held by the agent, or used by or attaching one of
// Vigil's programs); a new map names the programs using it, a new link the
// program it attaches.
func TestCompareMapsAndLinks(t *testing.T) {
	vigilProg := Program{ID: 5, Type: "TracePoint", Name: KernelName("tp_sys_enter_process_vm_writev"), Tag: "aaaa", MapIDs: []uint32{1}}
	known := Program{ID: 6, Type: "CGroupDevice", Name: "sd_devices", Tag: "bbbb", MapIDs: []uint32{2}}
	knownMap := Map{ID: 2, Type: "Hash", Name: "sd_map", KeySize: 4, ValueSize: 8, MaxEntries: 16}
	knownLink := Link{ID: 3, Type: "cgroup", ProgramID: 6}
	base := (&Collector{FS: host(), BPF: &fakeBPF{BPFState{
		Programs: []Program{known}, Maps: []Map{knownMap}, Links: []Link{knownLink}}}}).Collect()

	foreign := Program{ID: 9, Type: "Kprobe", Name: "evil", Tag: "cccc", MapIDs: []uint32{20}}
	reloaded := known
	reloaded.ID, reloaded.MapIDs = 60, []uint32{21}
	reMap := knownMap
	reMap.ID = 21
	cur := State{BPF: BPFState{
		Programs: []Program{vigilProg, reloaded, foreign},
		Maps: []Map{
			{ID: 1, Type: "RingBuf", Name: "events", MaxEntries: 1 << 20},               // used by Vigil's program
			{ID: 4, Type: "Array", Name: "held", KeySize: 4, ValueSize: 4, Vigil: true}, // held by the agent
			reMap, // the baseline's map, recreated
			{ID: 20, Type: "Hash", Name: "evil_map", KeySize: 4, ValueSize: 4, MaxEntries: 8},
			{ID: 22, Type: "Array", Name: "stash", KeySize: 4, ValueSize: 64, MaxEntries: 1},
		},
		Links: []Link{
			{ID: 7, Type: "perf_event", ProgramID: 5},  // attaches Vigil's program
			{ID: 8, Type: "cgroup", ProgramID: 60},     // the baseline's link, re-made
			{ID: 10, Type: "perf_event", ProgramID: 9}, // foreign
			{ID: 11, Type: "tracing", ProgramID: 60},   // baseline program, new attach type
		},
	}}
	for _, s := range []*State{base, &cur} {
		if s.Unreadable == nil {
			s.Unreadable = map[string]string{}
		}
	}
	cur.KernelRelease, cur.SecureBoot = base.KernelRelease, base.SecureBoot
	r := Compare(base, &cur)
	var got []string
	for _, f := range r.Findings {
		if f.Severity == Violation && f.Section == SecBPF {
			got = append(got, f.Subject)
			switch {
			case f.Map != nil && f.Map.ID == 20 && !strings.Contains(f.Message, "used by Kprobe evil tag cccc (id 9)"):
				t.Errorf("map finding does not name its program: %s", f.Message)
			case f.Map != nil && f.Map.ID == 22 && !strings.Contains(f.Message, "used by no loaded program"):
				t.Errorf("unused map finding: %s", f.Message)
			}
		}
	}
	want := []string{
		"Kprobe evil tag cccc",
		"map Hash evil_map",
		"map Array stash",
		"link perf_event to Kprobe evil tag cccc (id 9)",
		"link tracing to CGroupDevice sd_devices tag bbbb (id 60)",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("bpf violations\n got %q\nwant %q", got, want)
	}
}

// TestMarkOwn: the objects the agent's fds name are marked Vigil's.
func TestMarkOwn(t *testing.T) {
	f := host()
	f["/proc/42/fdinfo/3"] = "pos:\t0\nflags:\t02000002\nmap_type:\t2\nmap_id:\t17\n"
	f["/proc/42/fdinfo/4"] = "link_type:\tperf\nlink_id:\t9\nprog_tag:\tabcd\nprog_id:\t30\n"
	f["/proc/42/fdinfo/5"] = "pos:\t0\n"
	c := &Collector{FS: f, OwnPID: 42, BPF: &fakeBPF{BPFState{
		Programs: []Program{{ID: 30}, {ID: 31}}, Maps: []Map{{ID: 17}, {ID: 18}}, Links: []Link{{ID: 9}, {ID: 10}}}}}
	s := c.Collect()
	if !s.BPF.Programs[0].Vigil || s.BPF.Programs[1].Vigil || !s.BPF.Maps[0].Vigil || s.BPF.Maps[1].Vigil ||
		!s.BPF.Links[0].Vigil || s.BPF.Links[1].Vigil {
		t.Fatalf("marks: %+v", s.BPF)
	}
}

// countFS counts the reads of each path.
type countFS struct {
	fakeFS
	reads map[string]int
}

func (c *countFS) ReadFile(p string) ([]byte, error) {
	c.reads[p]++
	return c.fakeFS.ReadFile(p)
}

// TestKallsymsTTL: with a TTL, kallsyms is read once while the modules
// stay the same; a module loaded makes it read again (so the new module is
// not taken for a hidden one), and so does ForgetKallsyms.
func TestKallsymsTTL(t *testing.T) {
	f := &countFS{fakeFS: host(), reads: map[string]int{}}
	c := &Collector{FS: f, BPF: &fakeBPF{}, KallsymsTTL: time.Hour}
	c.Collect()
	c.Collect()
	if n := f.reads["/proc/kallsyms"]; n != 1 {
		t.Fatalf("kallsyms read %d times in two collections, want 1", n)
	}
	f.fakeFS["/proc/modules"] += "dummy 12288 0 - Live 0x0\n"
	f.fakeFS["/sys/module/dummy/initstate"] = "live\n"
	f.fakeFS["/proc/kallsyms"] += "ffffffffc0100000 t dummy_setup\t[dummy]\n"
	s := c.Collect()
	if n := f.reads["/proc/kallsyms"]; n != 2 {
		t.Fatalf("kallsyms read %d times after a module load, want 2", n)
	}
	for _, m := range s.Modules {
		if m.Hidden {
			t.Errorf("module %s taken for hidden", m.Name)
		}
	}
	c.ForgetKallsyms()
	c.Collect()
	if n := f.reads["/proc/kallsyms"]; n != 3 {
		t.Fatalf("kallsyms read %d times after ForgetKallsyms, want 3", n)
	}
	c.KallsymsTTL = 0
	c.Collect()
	c.Collect()
	if n := f.reads["/proc/kallsyms"]; n != 5 {
		t.Fatalf("without a TTL kallsyms read %d times, want 5", n)
	}
}
