package integrity

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"unicode"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
)

// DangerousHelpers are helpers that let a BPF program change what the
// kernel or a process does, rather than only observe it.
var DangerousHelpers = map[string]string{
	"bpf_probe_write_user":     "writes user memory of any process",
	"bpf_override_return":      "changes a kernel function's return value",
	"bpf_send_signal":          "signals (kills) the current process",
	"bpf_send_signal_thread":   "signals (kills) the current thread",
	"bpf_sys_bpf":              "issues bpf() syscalls from BPF",
	"bpf_sys_close":            "closes file descriptors from BPF",
	"bpf_set_retval":           "changes a hook's return value",
	"bpf_copy_from_user_task":  "reads memory of another process",
	"bpf_access_process_vm":    "reads memory of another process",
	"bpf_kallsyms_lookup_name": "resolves kernel symbols",
}

// HelperName turns cilium/ebpf's "FnProbeWriteUser" into the kernel's
// "bpf_probe_write_user".
func HelperName(fn asm.BuiltinFunc) string {
	s := strings.TrimPrefix(fn.String(), "Fn")
	var b strings.Builder
	b.WriteString("bpf")
	for i, r := range s {
		if unicode.IsUpper(r) {
			prevLower := i > 0 && (unicode.IsLower(rune(s[i-1])) || unicode.IsDigit(rune(s[i-1])))
			if i == 0 || prevLower {
				b.WriteByte('_')
			}
			b.WriteRune(unicode.ToLower(r))
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// Symbolizer resolves a helper call's immediate in translated
// instructions (the helper's address minus __bpf_call_base) to a kernel
// function name. *Kallsyms is one.
type Symbolizer interface {
	Helper(imm int32) (string, bool)
}

// maxHelperID bounds the helper IDs of BPF's uapi (about 212 in 6.18);
// an immediate below it that no symbol matches is read as an ID.
const maxHelperID = 1024

// ErrHelpersHidden means the kernel zeroed the helper calls of a
// translated dump (it does so unless kallsyms addresses are visible).
var ErrHelpersHidden = errors.New("helper call targets hidden by the kernel (kernel.kptr_restrict)")

// Helpers returns the distinct helpers insns call and the dangerous ones
// among them, both sorted. In a program read back from the kernel a call's
// immediate is an address relative to __bpf_call_base, resolved with sym;
// in a program built here it is the helper ID.
func Helpers(insns asm.Instructions, sym Symbolizer) (helpers, dangerous []string, err error) {
	seen := map[string]bool{}
	calls, zero := 0, 0
	for _, ins := range insns {
		if !ins.IsBuiltinCall() {
			continue
		}
		calls++
		imm := int32(ins.Constant)
		if imm == 0 {
			zero++
			continue
		}
		if sym != nil {
			if name, ok := sym.Helper(imm); ok {
				seen[name] = true
				continue
			}
		}
		if imm > 0 && imm < maxHelperID {
			seen[HelperName(asm.BuiltinFunc(imm))] = true
			continue
		}
		seen[fmt.Sprintf("unresolved_call(%+#x)", imm)] = true
	}
	if calls > 0 && zero == calls {
		return nil, nil, ErrHelpersHidden
	}
	helpers = sortedKeys(seen)
	for _, h := range helpers {
		if _, ok := DangerousHelpers[h]; ok {
			dangerous = append(dangerous, h)
		}
	}
	return helpers, dangerous, nil
}

// KernelBPF lists the running kernel's BPF objects through bpf()
// (next-id and get-info), which needs CAP_SYS_ADMIN.
type KernelBPF struct{}

// Inventory implements BPF. Objects that vanish while being listed are
// skipped; a partial inventory is returned with the first error.
func (KernelBPF) Inventory(sym Symbolizer) (BPFState, error) {
	var st BPFState
	var errs []error
	links := map[uint32][]string{}
	it := new(link.Iterator)
	for it.Next() {
		l := it.Take()
		if info, err := l.Info(); err == nil {
			lt := linkTypeName(info.Type)
			st.Links = append(st.Links, Link{ID: uint32(info.ID), Type: lt, ProgramID: uint32(info.Program)})
			links[uint32(info.Program)] = append(links[uint32(info.Program)], lt)
		}
		l.Close()
	}
	if err := it.Err(); err != nil {
		errs = append(errs, fmt.Errorf("links: %w", err))
	}
	it.Close()

	// cilium/ebpf runs its feature probes (which load small programs of
	// their own) at the first get-info; do that once before listing so
	// they are gone, not listed as foreign programs.
	if first, err := ebpf.ProgramGetNextID(0); err == nil {
		_, _ = programInfo(first, sym)
	}
	for id := ebpf.ProgramID(0); ; {
		next, err := ebpf.ProgramGetNextID(id)
		if errors.Is(err, os.ErrNotExist) {
			break
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("programs: %w", err))
			break
		}
		id = next
		p, err := programInfo(next, sym)
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("program %d: %w", next, err))
			}
			continue
		}
		p.Attach = links[p.ID]
		st.Programs = append(st.Programs, p)
	}

	for id := ebpf.MapID(0); ; {
		next, err := ebpf.MapGetNextID(id)
		if errors.Is(err, os.ErrNotExist) {
			break
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("maps: %w", err))
			break
		}
		id = next
		m, err := ebpf.NewMapFromID(next)
		if err != nil {
			continue
		}
		if info, err := m.Info(); err == nil {
			st.Maps = append(st.Maps, Map{ID: uint32(next), Type: info.Type.String(), Name: info.Name,
				KeySize: info.KeySize, ValueSize: info.ValueSize, MaxEntries: info.MaxEntries})
		}
		m.Close()
	}
	sort.Slice(st.Links, func(i, j int) bool { return st.Links[i].ID < st.Links[j].ID })
	return st, errors.Join(errs...)
}

func programInfo(id ebpf.ProgramID, sym Symbolizer) (Program, error) {
	prog, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return Program{}, err
	}
	defer prog.Close()
	info, err := prog.Info()
	if err != nil {
		return Program{}, err
	}
	p := Program{ID: uint32(id), Type: info.Type.String(), Name: info.Name, Tag: info.Tag}
	if uid, ok := info.CreatedByUID(); ok {
		p.UID = &uid
	}
	if ids, ok := info.MapIDs(); ok {
		for _, m := range ids {
			p.MapIDs = append(p.MapIDs, uint32(m))
		}
	}
	insns, err := info.Instructions()
	if err != nil {
		p.HelpersUnreadable = err.Error()
	} else if p.Helpers, p.Dangerous, err = Helpers(insns, sym); err != nil {
		p.HelpersUnreadable = err.Error()
	}
	return p, nil
}

func linkTypeName(t link.Type) string {
	names := map[link.Type]string{
		link.UnspecifiedType: "unspecified", link.RawTracepointType: "raw_tracepoint",
		link.TracingType: "tracing", link.CgroupType: "cgroup", link.IterType: "iter",
		link.NetNsType: "netns", link.XDPType: "xdp", link.PerfEventType: "perf_event",
		link.KprobeMultiType: "kprobe_multi", link.TCXType: "tcx",
		link.UprobeMultiType: "uprobe_multi", link.NetfilterType: "netfilter", link.NetkitType: "netkit",
	}
	if n, ok := names[t]; ok {
		return n
	}
	return fmt.Sprintf("type%d", t)
}
