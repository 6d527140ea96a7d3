package integrity

import (
	"errors"
	"os"
	"runtime"
	"slices"
	"testing"

	"github.com/cilium/ebpf/asm"
)

func TestParseLockdown(t *testing.T) {
	for in, want := range map[string]string{
		"none [integrity] confidentiality\n": "integrity",
		"[none] integrity confidentiality":   "none",
		"none integrity [confidentiality]":   "confidentiality",
	} {
		got, err := ParseLockdown([]byte(in))
		if err != nil || got != want {
			t.Errorf("%q: %q %v, want %q", in, got, err, want)
		}
	}
	if _, err := ParseLockdown([]byte("none integrity")); err == nil {
		t.Error("no bracket: no error")
	}
}

func TestParseLSMs(t *testing.T) {
	got := ParseLSMs([]byte("lockdown,capability,landlock,bpf")) // no newline, as the kernel writes it
	if !slices.Equal(got, []string{"lockdown", "capability", "landlock", "bpf"}) {
		t.Fatalf("%q", got)
	}
	if got := ParseLSMs([]byte("\n")); got != nil {
		t.Fatalf("empty: %q", got)
	}
}

func TestParseTainted(t *testing.T) {
	tests := []struct {
		in    string
		want  uint64
		flags []string
	}{
		{"0\n", 0, nil},
		{"1", 1, []string{"P:proprietary_module"}},
		{"12289\n", 1<<0 | 1<<12 | 1<<13, []string{"P:proprietary_module", "O:out_of_tree_module", "E:unsigned_module"}},
		{"32768", 1 << 15, []string{"K:live_patched"}},
		{"1099511627776", 1 << 40, []string{"?:bit40"}},
	}
	for _, tt := range tests {
		v, f, err := ParseTainted([]byte(tt.in))
		if err != nil || v != tt.want || !slices.Equal(f, tt.flags) {
			t.Errorf("%q: %d %v %v, want %d %v", tt.in, v, f, err, tt.want, tt.flags)
		}
	}
	if _, _, err := ParseTainted([]byte("x")); err == nil {
		t.Error("garbage accepted")
	}
}

func TestParseProcModules(t *testing.T) {
	in := "nf_tables 352256 0 - Live 0x0000000000000000\nfat 94208 1 vfat, Live 0x0000000000000000\n\n"
	if got := ParseProcModules([]byte(in)); !slices.Equal(got, []string{"fat", "nf_tables"}) {
		t.Fatalf("%q", got)
	}
}

const kallsymsFixture = `ffffffff81000000 T _text
ffffffff81000100 T _stext
ffffffff816b8fd0 T __x64_sys_read
ffffffff816b9000 T __x64_sys_write
ffffffff82000000 D sys_call_table
ffffffff81234567 t helper_fn
ffffffffc0001000 t fat_fill_super	[fat]
ffffffffc0001100 T fat_attach	[fat]
ffffffffc0002000 t nft_do_chain	[nf_tables]
ffffffffc0003000 t bpf_prog_6deef7357e7b4530_sd_fw_ingress	[bpf]
ffffffffc0004000 t ftrace_trampoline	[__builtin__ftrace]
`

func TestParseKallsyms(t *testing.T) {
	k, err := ParseKallsyms([]byte(kallsymsFixture))
	if err != nil {
		t.Fatal(err)
	}
	if k.Hidden || k.Text != 0xffffffff81000000 {
		t.Fatalf("hidden=%v text=%#x", k.Hidden, k.Text)
	}
	if got := sortedKeys(k.Modules); !slices.Equal(got, []string{"fat", "nf_tables"}) {
		t.Fatalf("modules %q (bpf and ftrace pseudo-modules must not count)", got)
	}
	if len(k.Syscalls) != 3 || k.Syscalls["__x64_sys_write"] != 0xffffffff816b9000 {
		t.Fatalf("syscalls %v", k.Syscalls)
	}
	hidden, err := ParseKallsyms([]byte("0000000000000000 T _text\n0000000000000000 T __x64_sys_read\n"))
	if err != nil || !hidden.Hidden {
		t.Fatalf("zeroed addresses: hidden=%v err=%v", hidden.Hidden, err)
	}
	if _, err := ParseKallsyms(nil); err == nil {
		t.Fatal("empty kallsyms accepted")
	}
}

func TestParseHooks(t *testing.T) {
	ef := "schedule (1) R   \ttramp: 0xffffffffa0001000 (call_direct_funcs+0x0/0x20) ->bpf_trampoline\ndo_sys_open (2)    ->ftrace_ops_list_func\n"
	if got := ParseEnabledFunctions([]byte(ef)); !slices.Equal(got, []string{"do_sys_open", "schedule"}) {
		t.Fatalf("enabled_functions %q", got)
	}
	kl := "ffffffff8112a9e0  k  do_exit+0x0    [FTRACE]\n0000000000000000  r  vfs_read+0x0\n"
	if got := ParseKprobeList([]byte(kl)); !slices.Equal(got, []string{"k do_exit+0x0", "r vfs_read+0x0"}) {
		t.Fatalf("kprobes/list %q", got)
	}
	if got := ParseLines([]byte("p:kprobes/x do_sys_open\n\n# comment\n")); !slices.Equal(got, []string{"p:kprobes/x do_sys_open"}) {
		t.Fatalf("events %q", got)
	}
}

func TestParseSecureBoot(t *testing.T) {
	for in, want := range map[string]string{"\x06\x00\x00\x00\x01": "enabled", "\x06\x00\x00\x00\x00": "disabled"} {
		if got, err := ParseSecureBoot([]byte(in)); err != nil || got != want {
			t.Errorf("%q: %q %v", in, got, err)
		}
	}
	if _, err := ParseSecureBoot([]byte{6}); err == nil {
		t.Error("short variable accepted")
	}
}

func TestKallsymsHelper(t *testing.T) {
	k, err := ParseKallsyms([]byte("ffffffff814ca650 T __bpf_call_base\nffffffff814bad90 T bpf_send_signal\nffffffff8150c150 T bpf_get_current_pid_tgid\n"))
	if err != nil {
		t.Fatal(err)
	}
	for imm, want := range map[int32]string{-63680: "bpf_send_signal", 269056: "bpf_get_current_pid_tgid"} {
		if got, ok := k.Helper(imm); !ok || got != want {
			t.Errorf("%d: %q %v, want %q", imm, got, ok, want)
		}
	}
	if _, ok := k.Helper(12345); ok {
		t.Error("unknown offset resolved")
	}
	// Translated calls read back: offsets resolve, IDs still work, and a
	// dump with every call zeroed says the targets are hidden.
	insns := asm.Instructions{asm.BuiltinFunc(uint32(0xffff0740)).Call(), asm.FnKtimeGetNs.Call(), asm.Return()}
	h, d, err := Helpers(insns, k)
	if err != nil || !slices.Equal(h, []string{"bpf_ktime_get_ns", "bpf_send_signal"}) || !slices.Equal(d, []string{"bpf_send_signal"}) {
		t.Fatalf("helpers %q dangerous %q err %v", h, d, err)
	}
	if _, _, err := Helpers(asm.Instructions{asm.BuiltinFunc(0).Call(), asm.Return()}, k); !errors.Is(err, ErrHelpersHidden) {
		t.Fatalf("zeroed calls: %v", err)
	}
}

func TestKallsymsFuncFirstNameWins(t *testing.T) {
	k, err := ParseKallsyms([]byte("ffffffff81000200 T second\nffffffff81000100 t first\nffffffff81000100 T alias\n0000000000000000 T zero\nffffffff81000300 d data\n"))
	if err != nil {
		t.Fatal(err)
	}
	for addr, want := range map[uint64]string{0xffffffff81000100: "first", 0xffffffff81000200: "second"} {
		if got, ok := k.Func(addr); !ok || got != want {
			t.Errorf("%#x: %q %v, want %q", addr, got, ok, want)
		}
	}
	for _, addr := range []uint64{0, 0xffffffff81000300, 0xffffffff81000150} {
		if got, ok := k.Func(addr); ok {
			t.Errorf("%#x resolved to %q", addr, got)
		}
	}
}

// BenchmarkParseKallsyms parses this machine's /proc/kallsyms and reports
// what the result keeps on the heap (retained-B), the agent's cost for as
// long as it caches kallsyms (KallsymsTTL).
func BenchmarkParseKallsyms(b *testing.B) {
	raw, err := os.ReadFile("/proc/kallsyms")
	if err != nil || len(raw) == 0 {
		b.Skip("no /proc/kallsyms")
	}
	var k *Kallsyms
	for b.Loop() {
		k, err = ParseKallsyms(raw)
		if err != nil {
			b.Fatal(err)
		}
	}
	// Retained: the live heap with the result minus the live heap once
	// it is dropped.
	var with, without runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&with)
	funcs := len(k.funcs)
	k = nil
	runtime.GC()
	runtime.ReadMemStats(&without)
	b.ReportMetric(float64(with.HeapAlloc)-float64(without.HeapAlloc), "retained-B")
	b.ReportMetric(float64(funcs), "funcs")
}
