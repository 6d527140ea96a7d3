package integrity

import (
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strings"
	"time"
)

// Sysctls are the security-relevant sysctls read and compared.
var Sysctls = []string{
	"kernel.kptr_restrict",
	"kernel.dmesg_restrict",
	"kernel.unprivileged_bpf_disabled",
	"kernel.modules_disabled",
	"kernel.kexec_load_disabled",
	"kernel.perf_event_paranoid",
	"kernel.yama.ptrace_scope",
	"kernel.randomize_va_space",
	"kernel.sysrq",
	"kernel.unprivileged_userns_clone",
	"net.core.bpf_jit_enable",
	"net.core.bpf_jit_harden",
	"net.core.bpf_jit_kallsyms",
	"fs.protected_symlinks",
	"fs.protected_hardlinks",
	"fs.protected_fifos",
	"fs.protected_regular",
	"vm.mmap_min_addr",
}

// SysctlPath is the procfs path of a dotted sysctl name.
func SysctlPath(name string) string {
	return "/proc/sys/" + strings.ReplaceAll(name, ".", "/")
}

const securebootVar = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-e0a3e8e1f6b9"

func (c *Collector) collectLockdown(s *State) {
	b, err := c.FS.ReadFile("/sys/kernel/security/lockdown")
	if err != nil {
		s.Unreadable[SecLockdown] = reason(err) + "; is securityfs mounted?"
		return
	}
	if s.Lockdown, err = ParseLockdown(b); err != nil {
		s.Unreadable[SecLockdown] = err.Error()
	}
}

func (c *Collector) collectLSM(s *State) {
	b, err := c.FS.ReadFile("/sys/kernel/security/lsm")
	if err != nil {
		s.Unreadable[SecLSM] = reason(err)
		return
	}
	s.LSMs = ParseLSMs(b)
}

func (c *Collector) collectTaint(s *State) {
	b, err := c.FS.ReadFile("/proc/sys/kernel/tainted")
	if err != nil {
		s.Unreadable[SecTaint] = reason(err)
		return
	}
	if s.Taint, s.TaintFlags, err = ParseTainted(b); err != nil {
		s.Unreadable[SecTaint] = err.Error()
	}
}

func (c *Collector) collectSecureBoot(s *State) {
	s.SecureBoot = "not visible"
	if _, err := c.FS.ReadDir("/sys/firmware/efi"); err != nil {
		s.Unreadable[SecSecureBoot] = "not visible: no /sys/firmware/efi (legacy BIOS boot, or EFI runtime hidden)"
		return
	}
	b, err := c.FS.ReadFile(securebootVar)
	if err != nil {
		s.Unreadable[SecSecureBoot] = "not visible: " + reason(err) + "; is efivarfs mounted?"
		return
	}
	v, err := ParseSecureBoot(b)
	if err != nil {
		s.Unreadable[SecSecureBoot] = "not visible: " + err.Error()
		return
	}
	s.SecureBoot = v
}

func (c *Collector) collectSysctls(s *State) {
	var missing []string
	for _, n := range Sysctls {
		b, err := c.FS.ReadFile(SysctlPath(n))
		if err != nil {
			missing = append(missing, n+": "+reason(err))
			continue
		}
		s.Sysctls[n] = trimSpace(b)
	}
	if len(missing) > 0 {
		s.Unreadable[SecSysctl] = strings.Join(missing, "; ")
	}
}

func (c *Collector) kallsyms() (*Kallsyms, error) {
	var mods string
	if c.KallsymsTTL > 0 {
		if b, err := c.FS.ReadFile("/proc/modules"); err == nil {
			mods = strings.Join(ParseProcModules(b), " ")
		}
		if c.ks != nil && time.Since(c.ksAt) < c.KallsymsTTL && mods == c.ksModules {
			return c.ks, nil
		}
	}
	b, err := c.FS.ReadFile("/proc/kallsyms")
	if err != nil {
		return nil, errors.New(reason(err))
	}
	ks, err := ParseKallsyms(b)
	if err == nil && c.KallsymsTTL > 0 {
		c.ks, c.ksAt, c.ksModules = ks, time.Now(), mods
	}
	return ks, err
}

// collectModules compares the three views of loaded modules.
// /sys/module also holds built-in modules; only entries with an initstate
// file are loadable modules.
func (c *Collector) collectModules(s *State, ks *Kallsyms, ksErr error) {
	var notes []string
	proc := map[string]bool{}
	procOK, noModules := false, false
	if b, err := c.FS.ReadFile("/proc/modules"); err == nil {
		procOK = true
		for _, m := range ParseProcModules(b) {
			proc[m] = true
		}
	} else if errors.Is(err, fs.ErrNotExist) {
		noModules = true
		notes = append(notes, "/proc/modules absent: kernel built without module support")
	} else {
		notes = append(notes, "/proc/modules: "+reason(err))
	}
	sysfs := map[string]bool{}
	sysOK := false
	if names, err := c.FS.ReadDir("/sys/module"); err == nil {
		sysOK = true
		for _, n := range names {
			if _, err := c.FS.ReadFile("/sys/module/" + n + "/initstate"); err == nil {
				sysfs[n] = true
			}
		}
	} else {
		notes = append(notes, "/sys/module: "+reason(err))
	}
	ksOK := ksErr == nil
	if !ksOK {
		notes = append(notes, "/proc/kallsyms: "+ksErr.Error())
	}
	all := map[string]bool{}
	for m := range proc {
		all[m] = true
	}
	for m := range sysfs {
		all[m] = true
	}
	if ksOK {
		for m := range ks.Modules {
			all[m] = true
		}
	}
	for _, name := range sortedKeys(all) {
		m := Module{Name: name, Proc: proc[name], Sysfs: sysfs[name], Kallsyms: ksOK && ks.Modules[name]}
		switch {
		case procOK:
			m.Hidden = !m.Proc || (sysOK && !m.Sysfs) || (ksOK && !m.Kallsyms)
		case noModules:
			// No module support, yet another view shows a module.
			m.Hidden = true
		default:
			m.Hidden = (sysOK && !m.Sysfs) || (ksOK && !m.Kallsyms)
		}
		s.Modules = append(s.Modules, m)
	}
	if len(notes) > 0 {
		s.Unreadable[SecModules] = strings.Join(notes, "; ")
	}
}

func (c *Collector) tracefs() (string, error) {
	var errs []string
	for _, d := range []string{"/sys/kernel/tracing", "/sys/kernel/debug/tracing"} {
		if _, err := c.FS.ReadFile(d + "/README"); err == nil {
			return d, nil
		} else {
			errs = append(errs, d+": "+reason(err))
		}
	}
	return "", fmt.Errorf("tracefs not readable (%s); mount it: mount -t tracefs nodev /sys/kernel/tracing", strings.Join(errs, "; "))
}

func (c *Collector) collectHooks(s *State) {
	var notes []string
	if tr, err := c.tracefs(); err != nil {
		notes = append(notes, err.Error())
	} else {
		read := func(name string, parse func([]byte) []string, dst *[]string) {
			b, err := c.FS.ReadFile(tr + "/" + name)
			if err != nil {
				notes = append(notes, name+": "+reason(err))
				return
			}
			*dst = parse(b)
			s.Hooks.Read = append(s.Hooks.Read, name)
		}
		read("enabled_functions", ParseEnabledFunctions, &s.Hooks.Ftrace)
		read("touched_functions", ParseEnabledFunctions, &s.Hooks.Touched)
		read("kprobe_events", ParseLines, &s.Hooks.KprobeEvents)
		read("uprobe_events", ParseLines, &s.Hooks.UprobeEvents)
	}
	if b, err := c.FS.ReadFile("/sys/kernel/debug/kprobes/list"); err != nil {
		notes = append(notes, "kprobes/list: "+reason(err)+" (debugfs not mounted, or kprobes not built)")
	} else {
		s.Hooks.Kprobes = ParseKprobeList(b)
		s.Hooks.Read = append(s.Hooks.Read, "kprobes/list")
	}
	if len(notes) > 0 {
		sort.Strings(notes)
		s.Unreadable[SecHooks] = strings.Join(notes, "; ")
	}
}

func (c *Collector) collectSyscalls(s *State, ks *Kallsyms, ksErr error) {
	switch {
	case ksErr != nil:
		s.Unreadable[SecSyscalls] = "/proc/kallsyms: " + ksErr.Error()
		return
	case ks.Hidden:
		s.Unreadable[SecSyscalls] = "kallsyms addresses are hidden (kernel.kptr_restrict, or not root): syscall entry points not compared"
		return
	case ks.Text == 0:
		s.Unreadable[SecSyscalls] = "no _text symbol in kallsyms: cannot compute KASLR-independent offsets"
		return
	case len(ks.Syscalls) == 0:
		s.Unreadable[SecSyscalls] = "no syscall entry symbols in kallsyms"
		return
	}
	s.Syscalls = map[string]string{}
	for n, a := range ks.Syscalls {
		s.Syscalls[n] = fmt.Sprintf("%+#x", int64(a-ks.Text))
	}
}

// markOwn marks the BPF objects the process OwnPID holds open: each bpf
// fd's fdinfo names the object's id (prog_id, map_id or link_id).
func (c *Collector) markOwn(s *State) {
	dir := fmt.Sprintf("/proc/%d/fdinfo", c.OwnPID)
	fds, err := c.FS.ReadDir(dir)
	if err != nil {
		return
	}
	progs, maps, links := map[uint32]bool{}, map[uint32]bool{}, map[uint32]bool{}
	for _, fd := range fds {
		b, err := c.FS.ReadFile(dir + "/" + fd)
		if err != nil {
			continue
		}
		for k, v := range ParseFdinfoIDs(b) {
			switch k {
			case "prog_id":
				progs[v] = true
			case "map_id":
				maps[v] = true
			case "link_id":
				links[v] = true
			}
		}
	}
	for i := range s.BPF.Programs {
		s.BPF.Programs[i].Vigil = progs[s.BPF.Programs[i].ID]
	}
	for i := range s.BPF.Maps {
		s.BPF.Maps[i].Vigil = maps[s.BPF.Maps[i].ID]
	}
	for i := range s.BPF.Links {
		s.BPF.Links[i].Vigil = links[s.BPF.Links[i].ID]
	}
}
