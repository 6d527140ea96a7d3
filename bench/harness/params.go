package harness

import "time"

// Params size a run. Full is what `make bench` runs (about 30 minutes
// on a 2-core machine); Quick is for working on the bench itself (about 3
// minutes), with the same phases at a smaller scale.
type Params struct {
	Mode string
	// Rounds of the interleaved host microbenchmarks; BatchScale scales
	// every OpSpec's batch count.
	Rounds     int
	BatchScale float64
	// Settle is the pause after a configuration starts, before timing.
	Settle time.Duration
	// CostSeconds is how long execs run at 1,000/s for the CPU cost.
	CostSeconds float64
	CostRate    float64
	// StepSeconds is each throughput step; ExecRates and EventRates the
	// paced rates tried before the unpaced step.
	StepSeconds float64
	ExecRates   []float64
	EventRates  []float64
	// WorkloadRounds of the build; WorkloadFull runs configure and make,
	// otherwise only configure.
	WorkloadRounds int
	WorkloadFull   bool
	// Decision latency: rounds (no agent and lockdown interleaved) and
	// samples per file size and round, on the host and in the VM.
	DecisionRounds    int
	DecisionSamples   int
	VMDecisionRounds  int
	VMDecisionSamples int
	// VM suite: kernels, rounds and batch scale (TCG is slow).
	VMKernels    []string
	VMRounds     int
	VMBatchScale float64
	VMTimeout    time.Duration
	// VMIcount is qemu's -icount setting for the VM suite: the guest's
	// clock counts the instructions it runs (see vmIcount).
	VMIcount string
}

// vmIcount: one instruction is 4 ns of guest time (2^2), and an idle
// guest's clock jumps to its next timer rather than waiting for the
// host's. Guest time then measures the instructions an operation ran, so
// the host's load and drift, which moved TCG's wall clock by ±30% from
// round to round, do not reach the VM's ratios.
const vmIcount = "shift=2,sleep=off"

// FullParams is `make bench`.
func FullParams() Params {
	return Params{
		Mode:              "full",
		Rounds:            16,
		BatchScale:        1,
		Settle:            time.Second,
		CostSeconds:       10,
		CostRate:          1000,
		StepSeconds:       4,
		ExecRates:         []float64{250, 500, 1000, 2000, 4000, 8000, 16000},
		EventRates:        []float64{5000, 10000, 25000, 50000, 100000, 200000, 400000, 800000},
		WorkloadRounds:    2,
		WorkloadFull:      true,
		DecisionRounds:    4,
		DecisionSamples:   25,
		VMDecisionRounds:  2,
		VMDecisionSamples: 10,
		VMKernels:         []string{"6.12", "6.1"},
		VMRounds:          3,
		VMBatchScale:      0.5,
		VMTimeout:         25 * time.Minute,
		VMIcount:          vmIcount,
	}
}

// QuickParams is `make bench BENCH_QUICK=1`.
func QuickParams() Params {
	return Params{
		Mode:              "quick",
		Rounds:            2,
		BatchScale:        0.25,
		Settle:            500 * time.Millisecond,
		CostSeconds:       2,
		CostRate:          1000,
		StepSeconds:       1,
		ExecRates:         []float64{1000, 4000},
		EventRates:        []float64{20000, 200000},
		WorkloadRounds:    1,
		WorkloadFull:      false,
		DecisionRounds:    2,
		DecisionSamples:   10,
		VMDecisionRounds:  1,
		VMDecisionSamples: 5,
		VMKernels:         []string{"6.12"},
		VMRounds:          1,
		VMBatchScale:      0.08,
		VMTimeout:         12 * time.Minute,
		VMIcount:          vmIcount,
	}
}

// batches scales n, keeping at least a few samples.
func batches(n int, scale float64) int {
	return max(int(float64(n)*scale+0.5), 5)
}
