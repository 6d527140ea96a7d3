package harness

import (
	"errors"
	"math"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/vigil-hips/vigil/bench"
)

func TestBPFProgsSince(t *testing.T) {
	earlier := bpfProgs{
		1: {name: "a", runtime: 100, runs: 2},
		2: {name: "gone", runtime: 50, runs: 1}, // unloaded in between: lost
	}
	now := bpfProgs{
		1: {name: "a", runtime: 300, runs: 5},
		3: {name: "new", runtime: 40, runs: 1}, // loaded in between: counts whole
		4: {name: "a", runtime: 7, runs: 1},    // same name, another program
	}
	total, runs, byName := now.since(earlier)
	if total != 247 || runs != 5 {
		t.Errorf("since = %v, %d runs; want 247ns, 5 runs", total, runs)
	}
	if byName["a"] != 207 || byName["new"] != 40 || len(byName) != 2 {
		t.Errorf("by name = %v", byName)
	}
}

func TestBPFResults(t *testing.T) {
	a := newBPFAcc()
	a.sums[[2]string{"exec", "none"}] = &bpfSum{ops: 100, byName: map[string]time.Duration{}}
	a.sums[[2]string{"exec", "vigil"}] = &bpfSum{ops: 100, runtime: 2 * time.Millisecond, runs: 800,
		byName: map[string]time.Duration{"sched_process_exec": 2 * time.Millisecond}}
	var c bench.Collector
	c.Add("exec", "none", 0, []float64{800_000, 800_000})
	c.Add("exec", "vigil", 0, []float64{900_000})
	cfgs := []string{"none", "vigil"}
	s := &bench.MicroSuite{Baseline: "none", Configs: cfgs,
		Ops: []bench.OpResult{c.Results(bench.OpInfo{Name: "exec"}, cfgs, "none")}}
	out, note := a.results(s)
	if note != "" || len(out) != 2 {
		t.Fatalf("results = %+v, %q", out, note)
	}
	v := out[1]
	// 20 µs an exec against the baseline's 800 µs: 2.5%.
	if v.Config != "vigil" || v.NSPerOp != 20_000 || v.RunsPerOp != 8 || math.Abs(v.Share-0.025) > 1e-9 ||
		v.Programs["sched_process_exec"] != 20_000 {
		t.Errorf("vigil = %+v", v)
	}
	a.note = "exec under vigil: permission denied"
	if out, note := a.results(s); out != nil || note != "in-kernel time not measured: exec under vigil: permission denied" {
		t.Errorf("after a failure: %+v, %q", out, note)
	}
}

// TestReadBPFProgs runs a program of its own with the statistics on and
// finds its runs and time.
func TestReadBPFProgs(t *testing.T) {
	stats, err := enableBPFStats()
	if err != nil {
		if errors.Is(err, os.ErrPermission) {
			t.Skipf("needs root: %v", err)
		}
		t.Fatal(err)
	}
	defer stats.Close()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "vigil_bench_t", Type: ebpf.SocketFilter, License: "GPL",
		Instructions: asm.Instructions{asm.LoadImm(asm.R0, 0, asm.DWord), asm.Return()}})
	if err != nil {
		t.Skipf("cannot load a BPF program here: %v", err)
	}
	defer prog.Close()
	before, err := readBPFProgs()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := prog.Run(&ebpf.RunOptions{Data: make([]byte, 14), Repeat: 1000}); err != nil {
		t.Skipf("test run: %v", err)
	}
	after, err := readBPFProgs()
	if err != nil {
		t.Fatal(err)
	}
	_, runs, byName := after.since(before)
	if runs < 1000 || byName["vigil_bench_t"] <= 0 {
		t.Errorf("after 1000 runs: %d runs, %v", runs, byName)
	}
}
