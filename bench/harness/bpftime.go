package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vigil-hips/vigil/bench"
	"golang.org/x/sys/unix"
)

// The in-kernel time of an operation: what every loaded BPF program ran,
// by the kernel's own statistics (BPF_ENABLE_STATS: run time and count of
// each program), divided by the operations. It is the work Vigil's hooks
// add to the path of the operation itself, the part of the overhead that
// no amount of machine noise hides or inflates: the wall-clock ratios on
// an emulated CPU whose speed wanders by half (the VM suite) cannot
// resolve a few percent, this can. It leaves out the cost of calling the
// hooks (a trampoline, tens of ns) and what a program does to the caches.
//
// The statistics are on only while bpfTimeBatches more batches of the
// operation run after the timed ones: they add two clock reads to every
// program run, which the timed rows must not carry.

// bpfTimeBatches is how many operations the in-kernel time is taken over,
// per configuration and round.
const bpfTimeBatches = 50

// bpfProgs are the statistics of every loaded BPF program, by id.
type bpfProgs map[ebpf.ProgramID]bpfProg

type bpfProg struct {
	name    string
	runtime time.Duration
	runs    uint64
}

// since is what the programs of p ran after earlier, by program name: a
// program loaded in between counts whole, one unloaded in between is
// lost with its time (the agent does not reload programs while it runs).
func (p bpfProgs) since(earlier bpfProgs) (total time.Duration, runs uint64, byName map[string]time.Duration) {
	byName = map[string]time.Duration{}
	for id, now := range p {
		before := earlier[id]
		d := now.runtime - before.runtime
		total += d
		runs += now.runs - before.runs
		if d > 0 {
			byName[now.name] += d
		}
	}
	return total, runs, byName
}

// readBPFProgs reads the statistics of every loaded program. A program
// unloaded between listing and opening is skipped; one that cannot be
// opened (tamper protection refuses) is an error, since its time would be
// missing.
func readBPFProgs() (bpfProgs, error) {
	progs := bpfProgs{}
	var id ebpf.ProgramID
	for {
		next, err := ebpf.ProgramGetNextID(id)
		if errors.Is(err, os.ErrNotExist) {
			return progs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("list BPF programs: %w", err)
		}
		id = next
		p, err := ebpf.NewProgramFromID(id)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("BPF program %d: %w", id, err)
		}
		st, err := p.Stats()
		name := fmt.Sprint(id)
		if info, err := p.Info(); err == nil && info.Name != "" {
			name = info.Name
		}
		p.Close()
		if err != nil {
			return nil, fmt.Errorf("BPF program %d statistics: %w", id, err)
		}
		progs[id] = bpfProg{name: name, runtime: st.Runtime, runs: st.RunCount}
	}
}

// enableBPFStats turns the kernel's BPF run-time statistics on until the
// returned closer is closed (or this process exits).
func enableBPFStats() (io.Closer, error) {
	c, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return nil, fmt.Errorf("BPF run-time statistics: %w", err)
	}
	return c, nil
}

// bpfAcc adds up the in-kernel time of each operation and configuration
// over the rounds of a suite. Once a measurement fails, note says why and
// nothing more is measured.
type bpfAcc struct {
	sums map[[2]string]*bpfSum
	note string
}

type bpfSum struct {
	runtime time.Duration
	runs    uint64
	ops     int64
	byName  map[string]time.Duration
}

func newBPFAcc() *bpfAcc { return &bpfAcc{sums: map[[2]string]*bpfSum{}} }

// measure runs bpfTimeBatches batches of each operation reported by CPU
// time, with the statistics on, and adds what the programs ran.
func (a *bpfAcc) measure(ctx context.Context, t Tools, ops []OpSpec, config string) {
	for _, op := range ops {
		if !op.CPU || ctx.Err() != nil || a.note != "" {
			continue
		}
		stats, err := enableBPFStats()
		if err != nil {
			a.note = err.Error()
			return
		}
		t0, err := readBPFProgs()
		if err == nil {
			_, _, err = runOp(ctx, t, op, bpfTimeBatches)
		}
		var t1 bpfProgs
		if err == nil {
			t1, err = readBPFProgs()
		}
		stats.Close()
		if err != nil {
			a.note = fmt.Sprintf("%s under %s: %v", op.Name, config, err)
			return
		}
		k := [2]string{op.Name, config}
		if a.sums[k] == nil {
			a.sums[k] = &bpfSum{byName: map[string]time.Duration{}}
		}
		sum := a.sums[k]
		runtime, runs, byName := t1.since(t0)
		for name, d := range byName {
			sum.byName[name] += d
		}
		sum.runtime += runtime
		sum.runs += runs
		sum.ops += int64(bpfTimeBatches * op.PerBatch)
	}
}

// results are the per-operation times of s's configurations, with each
// one's share of the baseline's operation.
func (a *bpfAcc) results(s *bench.MicroSuite) ([]bench.BPFTime, string) {
	if a.note != "" {
		return nil, "in-kernel time not measured: " + a.note
	}
	var out []bench.BPFTime
	for _, op := range s.Ops {
		base, wall := a.sums[[2]string{op.Op, s.Baseline}], op.Result(s.Baseline)
		for _, config := range s.Configs {
			sum := a.sums[[2]string{op.Op, config}]
			if sum == nil || sum.ops == 0 {
				continue
			}
			t := bench.BPFTime{Op: op.Op, Config: config, Ops: sum.ops,
				NSPerOp: sum.perOp(sum.runtime), RunsPerOp: float64(sum.runs) / float64(sum.ops)}
			if len(sum.byName) > 0 {
				t.Programs = make(map[string]float64, len(sum.byName))
				for name, d := range sum.byName {
					t.Programs[name] = sum.perOp(d)
				}
			}
			if base != nil && base.ops > 0 && wall != nil && wall.NS.Median > 0 {
				t.Share = (t.NSPerOp - base.perOp(base.runtime)) / wall.NS.Median
			}
			out = append(out, t)
		}
	}
	return out, ""
}

// perOp is d per operation, in ns.
func (s *bpfSum) perOp(d time.Duration) float64 {
	return float64(d.Nanoseconds()) / float64(s.ops)
}
