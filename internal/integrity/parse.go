package integrity

import (
	"bufio"
	"bytes"
	"cmp"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
)

func trimSpace(b []byte) string { return string(bytes.TrimSpace(b)) }

// ParseLockdown returns the bracketed mode of
// /sys/kernel/security/lockdown ("none [integrity] confidentiality").
func ParseLockdown(b []byte) (string, error) {
	for _, f := range strings.Fields(string(b)) {
		if strings.HasPrefix(f, "[") && strings.HasSuffix(f, "]") {
			return strings.Trim(f, "[]"), nil
		}
	}
	return "", fmt.Errorf("no [mode] in %q", trimSpace(b))
}

// ParseLSMs splits /sys/kernel/security/lsm ("lockdown,capability,bpf").
func ParseLSMs(b []byte) []string {
	var out []string
	for _, f := range strings.Split(trimSpace(b), ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// taintLetters are the kernel's taint flags by bit
// (Documentation/admin-guide/tainted-kernels.rst).
var taintLetters = []string{
	"P:proprietary_module", "F:forced_module_load", "S:cpu_out_of_spec",
	"R:forced_rmmod", "M:machine_check", "B:bad_page", "U:user_requested",
	"D:died_recently", "A:acpi_table_override", "W:warning",
	"C:staging_driver", "I:firmware_workaround", "O:out_of_tree_module",
	"E:unsigned_module", "L:soft_lockup", "K:live_patched", "X:auxiliary",
	"T:randstruct", "N:test", "J:fwctl",
}

// ParseTainted decodes /proc/sys/kernel/tainted.
func ParseTainted(b []byte) (uint64, []string, error) {
	v, err := strconv.ParseUint(trimSpace(b), 10, 64)
	if err != nil {
		return 0, nil, fmt.Errorf("tainted %q: %w", trimSpace(b), err)
	}
	return v, TaintFlags(v), nil
}

// TaintFlags names the bits set in v.
func TaintFlags(v uint64) []string {
	var out []string
	for bit := 0; bit < 64; bit++ {
		if v&(1<<bit) == 0 {
			continue
		}
		if bit < len(taintLetters) {
			out = append(out, taintLetters[bit])
		} else {
			out = append(out, fmt.Sprintf("?:bit%d", bit))
		}
	}
	return out
}

// ParseProcModules returns the module names of /proc/modules.
func ParseProcModules(b []byte) []string {
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) > 0 {
			out = append(out, f[0])
		}
	}
	sort.Strings(out)
	return out
}

// Kallsyms is what the collector keeps of /proc/kallsyms.
type Kallsyms struct {
	// Modules are the names in the [module] column.
	Modules map[string]bool
	// Syscalls are the syscall entry symbols and their addresses.
	Syscalls map[string]uint64
	// Text is the address of _text (0 when absent or hidden).
	Text uint64
	// Hidden is set when every address read as zero (kptr_restrict).
	Hidden bool
	// CallBase is __bpf_call_base: the kernel stores a BPF helper call as
	// the helper's address minus it.
	CallBase uint64
	// funcs are the core kernel's text symbols, sorted by address, the
	// first name for an address only; their names are slices of names.
	// About 120,000 symbols cost about 4.5 MiB kept for as long as the
	// agent caches kallsyms, where a map of strings cost several times that.
	funcs []kfunc
	names string
}

type kfunc struct {
	addr uint64
	off  uint32 // of the name, in the file while parsing, then in names
	len  uint32
}

func byAddr(f kfunc, addr uint64) int { return cmp.Compare(f.addr, addr) }

// Func returns the core kernel text symbol at addr.
func (k *Kallsyms) Func(addr uint64) (string, bool) {
	i, ok := slices.BinarySearchFunc(k.funcs, addr, byAddr)
	if !ok {
		return "", false
	}
	f := k.funcs[i]
	return k.names[f.off : f.off+f.len], true
}

// Helper resolves the immediate of a helper call in a program's
// translated instructions to the kernel function it calls.
func (k *Kallsyms) Helper(imm int32) (string, bool) {
	if k == nil || k.Hidden || k.CallBase == 0 || imm == 0 {
		return "", false
	}
	return k.Func(uint64(int64(k.CallBase) + int64(imm)))
}

// isSyscallEntry says whether a symbol is a syscall entry point or table.
func isSyscallEntry(name string) bool {
	for _, p := range []string{"__x64_sys_", "__ia32_sys_", "__arm64_sys_", "__riscv_sys_", "__s390x_sys_", "__se_sys_"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	switch name {
	case "sys_call_table", "ia32_sys_call_table", "x32_sys_call_table", "x64_sys_call", "ia32_sys_call", "entry_SYSCALL_64":
		return true
	}
	return false
}

// ParseKallsyms reads /proc/kallsyms ("addr type name [module]"). The file
// is about 5 MiB and is read again every KallsymsTTL, so the parse works
// on b in place and allocates little besides what it keeps.
func ParseKallsyms(b []byte) (*Kallsyms, error) {
	k := &Kallsyms{Modules: map[string]bool{}, Syscalls: map[string]uint64{}, Hidden: true}
	funcs := make([]kfunc, 0, bytes.Count(b, []byte{'\n'})+1)
	n := 0
	for pos := 0; pos < len(b); {
		end := bytes.IndexByte(b[pos:], '\n')
		if end < 0 {
			end = len(b) - pos
		}
		lineOff := pos
		line := b[pos : pos+end]
		pos += end + 1
		// Up to four fields, with their offsets in b.
		var f [4][]byte
		var fOff [4]int
		nf := 0
		for i := 0; nf < len(f); {
			for i < len(line) && (line[i] == ' ' || line[i] == '\t') {
				i++
			}
			if i == len(line) {
				break
			}
			j := i
			for j < len(line) && line[j] != ' ' && line[j] != '\t' {
				j++
			}
			f[nf], fOff[nf] = line[i:j], lineOff+i
			nf++
			i = j
		}
		if nf < 3 {
			continue
		}
		n++
		addr, err := strconv.ParseUint(string(f[0]), 16, 64)
		if err != nil {
			return nil, fmt.Errorf("kallsyms line %d: %w", n, err)
		}
		if addr != 0 {
			k.Hidden = false
		}
		if nf >= 4 && len(f[3]) > 0 && f[3][0] == '[' {
			mod := string(bytes.Trim(f[3], "[]"))
			// bpf programs and ftrace trampolines appear as [bpf],
			// [__builtin__ftrace] and the like: not modules.
			if mod != "bpf" && !strings.HasPrefix(mod, "__builtin") {
				k.Modules[mod] = true
			}
			continue
		}
		name := f[2]
		switch string(name) {
		case "_text":
			k.Text = addr
		case "__bpf_call_base":
			k.CallBase = addr
		}
		if addr != 0 && len(f[1]) == 1 && bytes.IndexByte([]byte("TtWw"), f[1][0]) >= 0 {
			funcs = append(funcs, kfunc{addr, uint32(fOff[2]), uint32(len(name))})
		}
		if isSyscallEntry(string(name)) {
			k.Syscalls[string(name)] = addr
		}
	}
	if n == 0 {
		return nil, fmt.Errorf("kallsyms is empty")
	}
	// Stable: the first name of an address wins, as the kernel lists it.
	slices.SortStableFunc(funcs, func(a, b kfunc) int { return cmp.Compare(a.addr, b.addr) })
	funcs = slices.CompactFunc(funcs, func(a, b kfunc) bool { return a.addr == b.addr })
	// The names move into one string of their own, so b is not kept.
	size := 0
	for _, f := range funcs {
		size += int(f.len)
	}
	var names strings.Builder
	names.Grow(size)
	k.funcs = make([]kfunc, len(funcs))
	for i, f := range funcs {
		k.funcs[i] = kfunc{f.addr, uint32(names.Len()), f.len}
		names.Write(b[f.off : f.off+f.len])
	}
	k.names = names.String()
	return k, nil
}

// ParseEnabledFunctions returns the function names of tracefs
// enabled_functions / touched_functions ("func (1) R ...").
func ParseEnabledFunctions(b []byte) []string {
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) > 0 && !strings.HasPrefix(f[0], "#") {
			seen[f[0]] = true
		}
	}
	return sortedKeys(seen)
}

// ParseKprobeList returns "type symbol" for each line of debugfs
// kprobes/list ("ffffffff81000000  k  do_exit+0x0    [FTRACE]"); the
// address is dropped so the entry is stable across boots.
func ParseKprobeList(b []byte) []string {
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 3 {
			seen[f[1]+" "+f[2]] = true
		}
	}
	return sortedKeys(seen)
}

// ParseLines returns the non-empty, non-comment lines, sorted.
func ParseLines(b []byte) []string {
	seen := map[string]bool{}
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			seen[l] = true
		}
	}
	return sortedKeys(seen)
}

// ParseSecureBoot reads an efivars SecureBoot variable: 4 bytes of
// attributes, then one byte 1 (enabled) or 0 (disabled).
func ParseSecureBoot(b []byte) (string, error) {
	if len(b) < 5 {
		return "", fmt.Errorf("SecureBoot variable is %d bytes, want 5", len(b))
	}
	if b[4] == 1 {
		return "enabled", nil
	}
	return "disabled", nil
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	if len(out) == 0 {
		return nil
	}
	return out
}

// ParseFdinfoIDs returns the BPF object ids a /proc/PID/fdinfo/FD file
// names: prog_id, map_id and link_id (a link's fdinfo names its program's
// prog_id too).
func ParseFdinfoIDs(b []byte) map[string]uint32 {
	out := map[string]uint32{}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch k = strings.TrimSpace(k); k {
		case "prog_id", "map_id", "link_id":
			if n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32); err == nil {
				out[k] = uint32(n)
			}
		}
	}
	return out
}
