package harness

import (
	"bufio"
	"bytes"
	"context"
	"embed"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/vigil-hips/vigil/bench"
)

//go:embed csrc/*.c
var csrc embed.FS

// Tools are the helper programs the benchmarks run, compiled at bench time
// with Debian's gcc.
type Tools struct {
	Dir    string
	Micro  string // the timing and load program (dynamically linked)
	Target string // the small static binary exec'd (on the host: a copy on the bench's tmpfs, see execFS)
	Stamp  string // the tiny static binary the decision-latency phase pads and execs
	Lib    string // the shared library dlopen'ed
	File   string // the file opened
}

// BuildTools compiles the helpers into dir.
func BuildTools(ctx context.Context, dir string) (Tools, error) {
	t := Tools{Dir: dir, Micro: filepath.Join(dir, "micro"), Target: filepath.Join(dir, "target"),
		Stamp: filepath.Join(dir, "stamp"), Lib: filepath.Join(dir, "libvigilbench.so"), File: filepath.Join(dir, "file")}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return t, err
	}
	for _, name := range []string{"micro.c", "target.c", "stamp.c", "lib.c"} {
		data, err := csrc.ReadFile("csrc/" + name)
		if err != nil {
			return t, err
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return t, err
		}
	}
	builds := [][]string{
		{"-O2", "-Wall", "-Werror", "-o", t.Micro, filepath.Join(dir, "micro.c"), "-ldl"},
		{"-O2", "-Wall", "-Werror", "-static", "-o", t.Target, filepath.Join(dir, "target.c")},
		{"-O2", "-Wall", "-Werror", "-static", "-nostdlib", "-fno-stack-protector", "-o", t.Stamp, filepath.Join(dir, "stamp.c")},
		{"-O2", "-Wall", "-Werror", "-shared", "-fPIC", "-o", t.Lib, filepath.Join(dir, "lib.c")},
	}
	for _, args := range builds {
		out, err := exec.CommandContext(ctx, "gcc", args...).CombinedOutput()
		if err != nil {
			return t, fmt.Errorf("gcc %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	if err := os.WriteFile(t.File, bytes.Repeat([]byte("vigil-bench\n"), 342), 0o644); err != nil {
		return t, err
	}
	return t, nil
}

// OpSpec is a microbenchmark: the operation and how many batches of it a
// run takes.
type OpSpec struct {
	bench.OpInfo
	Batches int
	// CPU also reports the operation by the CPU time its own processes
	// spent (CPUInfo), beside the wall-clock time.
	CPU bool
	// arg picks the operand from Tools.
	arg func(Tools) string
}

func (o OpSpec) Arg(t Tools) string {
	if o.arg == nil {
		return ""
	}
	return o.arg(t)
}

// cpuSuffix names the CPU-time row of an operation: "exec" + cpuSuffix.
const cpuSuffix = ".cpu"

// CPUInfo is the row of o measured in CPU time.
func (o OpSpec) CPUInfo() bench.OpInfo {
	info := o.OpInfo
	info.Name += cpuSuffix
	info.Label += ", CPU time of its own processes"
	return info
}

// Rows are the report rows of ops, in report order: each operation, then
// its CPU-time row if it has one.
func Rows(ops []OpSpec) []bench.OpInfo {
	var out []bench.OpInfo
	for _, op := range ops {
		out = append(out, op.OpInfo)
		if op.CPU {
			out = append(out, op.CPUInfo())
		}
	}
	return out
}

// Ops are the microbenchmarks, in report order. Batch sizes keep one
// sample well above the clock's resolution; batch counts are for the full
// mode on a 2-core machine (Params scales them).
//
// Exec and dlopen are also reported by CPU time: what the exec'ing (or
// mapping) process and its child spent, in the kernel's hooks included.
// The wall-clock row adds whatever else ran on the machine meanwhile; on
// one CPU (the VM suite's guest) that includes the agent storing the
// events of the execs, which is the agent's CPU cost, reported by the cost
// phase. A decision made in user space (a fanotify round trip) shows in
// the wall-clock row only: the waiting process spends no CPU.
func Ops() []OpSpec {
	return []OpSpec{
		{OpInfo: bench.OpInfo{Name: "exec", Label: "fork+exec of a static binary", PerBatch: 1},
			Batches: 300, CPU: true, arg: func(t Tools) string { return t.Target }},
		{OpInfo: bench.OpInfo{Name: "open", Label: "open+close of a file", PerBatch: 200},
			Batches: 200, arg: func(t Tools) string { return t.File }},
		{OpInfo: bench.OpInfo{Name: "dlopen", Label: "dlopen+dlclose (mmap PROT_EXEC)", PerBatch: 20},
			Batches: 200, CPU: true, arg: func(t Tools) string { return t.Lib }},
		{OpInfo: bench.OpInfo{Name: "mprotect", Label: "mprotect RW→RX→RW", PerBatch: 100},
			Batches: 200},
		{OpInfo: bench.OpInfo{Name: "getpid", Label: "getpid (control)", PerBatch: 2000, Control: true},
			Batches: 200},
	}
}

// opSamples are a run's samples, one per batch: wall-clock and CPU
// nanoseconds per operation.
type opSamples struct {
	Wall, CPU []float64
}

// runOp runs batches batches of op and returns its samples and the wall
// time of the run.
func runOp(ctx context.Context, t Tools, op OpSpec, batches int) (opSamples, time.Duration, error) {
	args := []string{"time", op.Name, strconv.Itoa(batches), strconv.Itoa(op.PerBatch)}
	if a := op.Arg(t); a != "" {
		args = append(args, a)
	}
	cmd := exec.CommandContext(ctx, t.Micro, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	out, err := cmd.Output()
	wall := time.Since(start)
	if err != nil {
		return opSamples{}, wall, fmt.Errorf("micro %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	samples, err := parseSamples(out)
	if err == nil && len(samples.Wall) != batches {
		err = fmt.Errorf("micro %s: %d samples, want %d", op.Name, len(samples.Wall), batches)
	}
	return samples, wall, err
}

// parseSamples reads `micro time`'s lines: "WALL CPU".
func parseSamples(out []byte) (opSamples, error) {
	var s opSamples
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if len(f) != 2 {
			return s, fmt.Errorf("micro: bad sample %q", sc.Text())
		}
		wall, err1 := strconv.ParseFloat(f[0], 64)
		cpu, err2 := strconv.ParseFloat(f[1], 64)
		if err1 != nil || err2 != nil {
			return s, fmt.Errorf("micro: bad sample %q", sc.Text())
		}
		s.Wall, s.CPU = append(s.Wall, wall), append(s.CPU, cpu)
	}
	return s, sc.Err()
}

// rateResult is what `micro rate` reports.
type rateResult struct {
	Ops     int64
	Seconds float64
}

func (r rateResult) Rate() float64 {
	if r.Seconds <= 0 {
		return 0
	}
	return float64(r.Ops) / r.Seconds
}

// runRate drives op at rate per second (0: unpaced) for secs over workers
// processes.
func runRate(ctx context.Context, t Tools, op string, rate, secs float64, workers int, arg string) (rateResult, error) {
	args := []string{"rate", op, strconv.FormatFloat(rate, 'f', 0, 64), strconv.FormatFloat(secs, 'f', 3, 64), strconv.Itoa(workers)}
	if arg != "" {
		args = append(args, arg)
	}
	out, err := exec.CommandContext(ctx, t.Micro, args...).CombinedOutput()
	if err != nil {
		return rateResult{}, fmt.Errorf("micro %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return parseRate(string(out))
}

func parseRate(out string) (rateResult, error) {
	var r rateResult
	for _, l := range strings.Split(out, "\n") {
		if _, err := fmt.Sscanf(strings.TrimSpace(l), "ops %d seconds %f", &r.Ops, &r.Seconds); err == nil {
			return r, nil
		}
	}
	return r, fmt.Errorf("micro rate: unexpected output %q", out)
}
