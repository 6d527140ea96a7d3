package integrity

import (
	"slices"
	"testing"

	"github.com/cilium/ebpf/asm"
)

// TestIsVigilProgram: Vigil's programs are known by name (as the kernel
// cuts it) and type; the same name under another type is foreign.
func TestIsVigilProgram(t *testing.T) {
	for _, tc := range []struct {
		typ, name string
		want      bool
	}{
		{"LSM", "lsm_bprm_check", true},
		{"Tracing", KernelName("sched_process_exec"), true},
		{"TracePoint", KernelName("tp_sys_enter_process_vm_writev"), true},
		{"TracePoint", "tp_sys_enter_process_vm_writev", true}, // cilium/ebpf's full name from BTF
		{"TracePoint", "tp_sys_enter_process_vm_writevX", false},
		{"Kprobe", "lsm_bpf", false},
		{"TracePoint", "lsm_bpf", false},
		{"SocketFilter", "vigil_tw_prog", false},
	} {
		if got := IsVigilProgram(tc.typ, tc.name); got != tc.want {
			t.Errorf("IsVigilProgram(%s, %s) = %v, want %v", tc.typ, tc.name, got, tc.want)
		}
	}
	own, err := ownPrograms()
	if err != nil || len(own) == 0 {
		t.Fatalf("own programs: %v, %v", own, err)
	}
}

func TestHelperName(t *testing.T) {
	for fn, want := range map[asm.BuiltinFunc]string{
		asm.FnProbeWriteUser: "bpf_probe_write_user", asm.FnOverrideReturn: "bpf_override_return",
		asm.FnSendSignal: "bpf_send_signal", asm.FnSendSignalThread: "bpf_send_signal_thread",
		asm.FnKtimeGetNs: "bpf_ktime_get_ns", asm.FnGetCurrentPidTgid: "bpf_get_current_pid_tgid",
		asm.FnMapLookupElem: "bpf_map_lookup_elem", asm.FnSysBpf: "bpf_sys_bpf",
	} {
		if got := HelperName(fn); got != want {
			t.Errorf("%v: %q, want %q", fn, got, want)
		}
	}
	insns := asm.Instructions{
		asm.FnProbeWriteUser.Call(), asm.FnKtimeGetNs.Call(), asm.FnProbeWriteUser.Call(),
		asm.Mov.Imm(asm.R0, 0), asm.Return(),
	}
	h, d, err := Helpers(insns, nil)
	if err != nil || !slices.Equal(h, []string{"bpf_ktime_get_ns", "bpf_probe_write_user"}) || !slices.Equal(d, []string{"bpf_probe_write_user"}) {
		t.Fatalf("helpers %q dangerous %q", h, d)
	}
}
