package integrity

import (
	"slices"
	"sort"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// TestVigilProgramsMatchObject keeps vigilPrograms in step with the
// compiled sensor object.
func TestVigilProgramsMatchObject(t *testing.T) {
	spec, err := ebpf.LoadCollectionSpec("../sensor/bpfsensor/sensor_bpfel.o")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for n, p := range spec.Programs {
		names = append(names, n)
		if got := VigilProgramType(n); got != p.Type.String() {
			t.Errorf("%s: VigilProgramType %q, object says %q", n, got, p.Type)
		}
	}
	sort.Strings(names)
	if !slices.Equal(names, vigilPrograms) {
		t.Fatalf("vigilPrograms is stale:\n got %q\nwant %q", vigilPrograms, names)
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
