// Package integrity is Vigil's PatchGuard analog: it reads the kernel's
// security-relevant state through the interfaces the kernel documents
// (securityfs, procfs, sysfs, tracefs and the bpf() object APIs), records
// it as a State, and compares a State against a baseline.
//
// Collecting is split from the kernel: the filesystem and the bpf()
// inventory sit behind the small FS and BPF interfaces so every parser and
// the comparison run in tests on fake inputs. What a kernel does not let
// Vigil read is recorded per section in State.Unreadable with the reason;
// it is never by itself a violation.
package integrity

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"time"
)

// Section names, used as keys of State.Unreadable and in findings.
const (
	SecLockdown   = "lockdown"
	SecLSM        = "lsm"
	SecTaint      = "taint"
	SecSecureBoot = "secureboot"
	SecSysctl     = "sysctl"
	SecModules    = "modules"
	SecHooks      = "hooks"
	SecBPF        = "bpf"
	SecSyscalls   = "syscalls"
	SecKernel     = "kernel"
)

// FS is the read-only view of the kernel's pseudo filesystems the
// collector needs.
type FS interface {
	ReadFile(path string) ([]byte, error)
	// ReadDir returns the names of the entries of a directory.
	ReadDir(path string) ([]string, error)
}

// OSFS reads the real filesystem, below Root when it is set.
type OSFS struct{ Root string }

// ReadFile implements FS.
func (o OSFS) ReadFile(p string) ([]byte, error) { return os.ReadFile(filepath.Join(o.Root, p)) }

// ReadDir implements FS.
func (o OSFS) ReadDir(p string) ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(o.Root, p))
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names, nil
}

// State is what the kernel showed at one moment. A baseline is a State.
type State struct {
	KernelRelease string `json:"kernel_release"`
	// Lockdown is the active mode: none, integrity or confidentiality.
	Lockdown string   `json:"lockdown,omitempty"`
	LSMs     []string `json:"lsms,omitempty"`
	// Taint is /proc/sys/kernel/tainted; TaintFlags decodes it.
	Taint      uint64   `json:"taint"`
	TaintFlags []string `json:"taint_flags,omitempty"`
	// SecureBoot is "enabled", "disabled" or "not visible".
	SecureBoot string            `json:"secure_boot"`
	Sysctls    map[string]string `json:"sysctls,omitempty"`
	Modules    []Module          `json:"modules,omitempty"`
	Hooks      Hooks             `json:"hooks"`
	BPF        BPFState          `json:"bpf"`
	// Syscalls maps a syscall entry symbol to its offset from _text,
	// hex; offsets survive KASLR, absolute addresses do not.
	Syscalls map[string]string `json:"syscalls,omitempty"`
	// Unreadable says, per section, what could not be read and why.
	Unreadable map[string]string `json:"unreadable,omitempty"`
}

// Module is one kernel module and which sources show it.
type Module struct {
	Name     string `json:"name"`
	Proc     bool   `json:"proc_modules"`
	Sysfs    bool   `json:"sys_module"`
	Kallsyms bool   `json:"kallsyms"`
	// Hidden is set when a readable source does not show the module.
	Hidden bool `json:"hidden,omitempty"`
}

// Hooks are the function hooks the kernel reports.
type Hooks struct {
	// Ftrace are the functions with an ftrace hook (enabled_functions).
	Ftrace []string `json:"ftrace,omitempty"`
	// Touched are functions ever hooked since boot (touched_functions).
	Touched []string `json:"touched,omitempty"`
	// Kprobes are registered kprobes (debugfs kprobes/list), as "type symbol".
	Kprobes      []string `json:"kprobes,omitempty"`
	KprobeEvents []string `json:"kprobe_events,omitempty"`
	UprobeEvents []string `json:"uprobe_events,omitempty"`
	// Read names the sources that could be read ("enabled_functions",
	// "kprobes/list", …); a kind of hook is compared only when both the
	// baseline and the current read had it.
	Read []string `json:"read,omitempty"`
}

// BPFState is the bpf() inventory.
type BPFState struct {
	Programs []Program `json:"programs,omitempty"`
	Links    []Link    `json:"links,omitempty"`
	Maps     []Map     `json:"maps,omitempty"`
}

// Program is one loaded BPF program. Its identity across loads is
// Type+Name+Tag (Key); the ID is only for display.
type Program struct {
	ID   uint32 `json:"id"`
	Type string `json:"type"`
	Name string `json:"name"`
	Tag  string `json:"tag"`
	// Attach lists what links attach it ("tracing", "perf_event", …).
	Attach []string `json:"attach,omitempty"`
	// Helpers are the helper functions its instructions call; nil with
	// HelpersUnreadable set when the kernel refused the xlated dump.
	Helpers           []string `json:"helpers,omitempty"`
	HelpersUnreadable string   `json:"helpers_unreadable,omitempty"`
	// Dangerous are the helpers among Helpers that can change the kernel's
	// or a process's behavior (bpf_probe_write_user, bpf_override_return…).
	Dangerous []string `json:"dangerous,omitempty"`
	UID       *uint32  `json:"created_by_uid,omitempty"`
	MapIDs    []uint32 `json:"map_ids,omitempty"`
	// Vigil is set when the Vigil agent itself holds the program (see
	// Collector.OwnPID).
	Vigil bool `json:"held_by_vigil,omitempty"`
}

// Key identifies a program across loads.
func (p Program) Key() string { return p.Type + "/" + p.Name + "/" + p.Tag }

// Link is one BPF link. Its identity across loads is its type and the
// Key of the program it attaches.
type Link struct {
	ID        uint32 `json:"id"`
	Type      string `json:"type"`
	ProgramID uint32 `json:"program_id"`
	Vigil     bool   `json:"held_by_vigil,omitempty"`
}

// Map is one BPF map. Its identity across loads is Key: the kernel does not
// say who created a map; the programs using it (Program.MapIDs) and the
// processes holding it are what is known.
type Map struct {
	ID         uint32 `json:"id"`
	Type       string `json:"type"`
	Name       string `json:"name"`
	KeySize    uint32 `json:"key_size,omitempty"`
	ValueSize  uint32 `json:"value_size,omitempty"`
	MaxEntries uint32 `json:"max_entries,omitempty"`
	Vigil      bool   `json:"held_by_vigil,omitempty"`
}

// Key identifies a map across loads.
func (m Map) Key() string {
	return fmt.Sprintf("%s/%s/%d/%d/%d", m.Type, m.Name, m.KeySize, m.ValueSize, m.MaxEntries)
}

// BPF lists the kernel's BPF objects; sym (nil when kallsyms is not
// readable) names the helpers programs call.
type BPF interface {
	Inventory(sym Symbolizer) (BPFState, error)
}

// Collector reads a State.
type Collector struct {
	FS  FS
	BPF BPF // nil: the BPF section is reported unreadable
	// OwnPID, when set, is the Vigil agent's pid: the BPF objects it holds
	// open (its /proc/PID/fdinfo) are marked as Vigil's.
	OwnPID int
	// KallsymsTTL, when set, lets Collect reuse the /proc/kallsyms it
	// read for this long while the modules /proc/modules lists stay the
	// same. Reading and parsing it is most of a collection's cost (about
	// 0.25 s on the development host, 10 s in an emulated VM) and core
	// symbols do not move after boot. 0: read it every time.
	KallsymsTTL time.Duration

	ks        *Kallsyms // the last kallsyms read, for KallsymsTTL
	ksAt      time.Time
	ksModules string
}

// ForgetKallsyms makes the next Collect read /proc/kallsyms again.
func (c *Collector) ForgetKallsyms() { c.ks = nil }

// NewCollector reads the running kernel.
func NewCollector() *Collector { return &Collector{FS: OSFS{}, BPF: KernelBPF{}} }

// Collect reads every section; a section that cannot be read is noted in
// Unreadable and does not stop the others.
func (c *Collector) Collect() *State {
	s, _ := c.CollectContext(context.Background())
	return s
}

// CollectContext is Collect that gives up between sections once ctx is
// done, returning ctx's error.
func (c *Collector) CollectContext(ctx context.Context) (*State, error) {
	s := &State{Unreadable: map[string]string{}, Sysctls: map[string]string{}}
	if b, err := c.FS.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		s.KernelRelease = trimSpace(b)
	}
	c.collectLockdown(s)
	c.collectLSM(s)
	c.collectTaint(s)
	c.collectSecureBoot(s)
	c.collectSysctls(s)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ks, ksErr := c.kallsyms()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c.collectModules(s, ks, ksErr)
	c.collectHooks(s)
	c.collectSyscalls(s, ks, ksErr)
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if c.BPF == nil {
		s.Unreadable[SecBPF] = "no bpf() inventory configured"
	} else if inv, err := c.BPF.Inventory(symbolizer(ks)); err != nil {
		s.Unreadable[SecBPF] = err.Error()
		s.BPF = inv
	} else {
		s.BPF = inv
	}
	sort.Slice(s.BPF.Programs, func(i, j int) bool { return s.BPF.Programs[i].ID < s.BPF.Programs[j].ID })
	sort.Slice(s.BPF.Maps, func(i, j int) bool { return s.BPF.Maps[i].ID < s.BPF.Maps[j].ID })
	if c.OwnPID != 0 {
		c.markOwn(s)
	}
	return s, nil
}

func reason(err error) string {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "absent on this kernel (" + err.Error() + ")"
	case errors.Is(err, fs.ErrPermission):
		return "permission denied (" + err.Error() + ")"
	}
	return err.Error()
}

// symbolizer avoids a typed-nil interface when kallsyms was unreadable.
func symbolizer(ks *Kallsyms) Symbolizer {
	if ks == nil {
		return nil
	}
	return ks
}
