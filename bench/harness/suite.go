package harness

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"time"

	"github.com/vigil-hips/vigil/bench"
)

// costAcc adds up a configuration's CPU during the exec microbenchmark.
type costAcc struct {
	cpu  time.Duration
	wall time.Duration
	ops  int64
}

// peakRSS is a configuration's largest VmHWM and where it was seen.
type peakRSS struct {
	kb    uint64
	where string
	procs string
}

func (e *Env) notePeak(name string, r *Running, where string) {
	if r == nil || r.d == nil {
		return
	}
	kb := r.HWMKB()
	if kb > e.peaks[name].kb {
		e.peaks[name] = peakRSS{kb: kb, where: where, procs: r.d.comms()}
	}
}

// startConfig starts c (nil Running for the baseline).
func (e *Env) startConfig(ctx context.Context, c *Config) (*Running, error) {
	if c.Start == nil {
		return nil, nil
	}
	t0 := time.Now()
	r, err := c.Start(ctx, e)
	if err != nil {
		return nil, err
	}
	e.startTimes[c.Name] = append(e.startTimes[c.Name], time.Since(t0).Seconds())
	r.Config = c.Name
	if r.Backend != "" {
		e.backends[c.Name] = r.Backend
	}
	return r, nil
}

// stopConfig stops r, noting its peak RSS first.
func (e *Env) stopConfig(ctx context.Context, r *Running, where string) {
	if r == nil {
		return
	}
	e.notePeak(r.Config, r, where)
	// Stopping must happen even when ctx is cancelled: use a fresh one.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	if err := r.Stop(sctx); err != nil {
		e.errorf("%v", err)
	}
}

// runSuite runs the microbenchmarks for cfgs, interleaved over rounds,
// and summarizes them against the baseline.
func (e *Env) runSuite(ctx context.Context, place string, cfgs []*Config, rounds int, scale float64) bench.MicroSuite {
	ops := Ops()
	names := make([]string, len(cfgs))
	byName := map[string]*Config{}
	for i, c := range cfgs {
		names[i] = c.Name
		byName[c.Name] = c
	}
	var col bench.Collector
	bpf := newBPFAcc()
	schedule := bench.Schedule(names, rounds)
	var r *Running // the running configuration, kept across a round boundary
	for i, slot := range schedule {
		if ctx.Err() != nil {
			break
		}
		c := byName[slot.Config]
		if why, ok := e.broken[c.Name]; ok {
			e.Log.Debug("skipping broken configuration", "config", c.Name, "why", why)
			continue
		}
		e.Log.Info("micro", "place", place, "round", slot.Round+1, "of", rounds, "config", c.Name)
		if r == nil || r.Config != c.Name {
			var err error
			if r, err = e.startConfig(ctx, c); err != nil {
				e.errorf("%s: %s: failed to start in round %d: %v", place, c.Name, slot.Round+1, err)
				e.broken[c.Name] = shorten(fmt.Sprintf("failed to start in round %d: %v", slot.Round+1, err), 300)
				r = nil
				continue
			}
			if r == nil {
				r = &Running{Config: c.Name} // the baseline: nothing runs
			}
			sleepCtx(ctx, e.P.Settle)
			e.waitQuiet(ctx, place, r)
			e.warmUp(ctx, place, c.Name, ops, scale)
		}
		for _, op := range ops {
			n := batches(op.Batches, scale)
			cpu0 := r.CPU()
			samples, wall, err := runOp(ctx, e.Tools, op, n)
			cpu := r.CPU() - cpu0
			if err != nil {
				if ctx.Err() == nil {
					e.errorf("%s: %s under %s: %v", place, op.Name, c.Name, err)
				}
				continue
			}
			col.Add(op.Name, c.Name, slot.Round, samples.Wall)
			if op.CPU {
				col.Add(op.CPUInfo().Name, c.Name, slot.Round, samples.CPU)
			}
			if op.Name == "exec" && r.d != nil {
				acc := e.microCost[c.Name]
				if acc == nil {
					acc = &costAcc{}
					e.microCost[c.Name] = acc
				}
				acc.cpu += cpu
				acc.wall += wall
				acc.ops += int64(n * op.PerBatch)
			}
		}
		bpf.measure(ctx, e.Tools, ops, c.Name)
		if r.d != nil && !r.d.alive() {
			e.errorf("%s: %s died during round %d%s", place, c.Name, slot.Round+1, r.d.logTail())
		}
		// A configuration that ends a round and starts the next (the
		// order reverses every round) keeps running: one start fewer.
		if i+1 < len(schedule) && schedule[i+1].Config == c.Name {
			continue
		}
		e.stopConfig(ctx, r, "microbenchmarks")
		r = nil
	}
	if r != nil {
		e.stopConfig(ctx, r, "microbenchmarks")
	}
	suite := bench.MicroSuite{Place: place, Baseline: Baseline, Rounds: rounds, Absolute: !e.InVM, CPUs: runtime.NumCPU()}
	rows := Rows(ops)
	for _, n := range names {
		for _, op := range rows {
			if len(col.Results(op, []string{n}, Baseline).Results) > 0 {
				suite.Configs = append(suite.Configs, n)
				break
			}
		}
	}
	for _, op := range rows {
		suite.Ops = append(suite.Ops, col.Results(op, suite.Configs, Baseline))
	}
	suite.BPF, suite.BPFNote = bpf.results(&suite)
	return suite
}

// Quiet: a configuration's timing starts once what it runs (in the VM:
// the whole guest) spent under quietShare of a CPU over a quietWindow (a
// second: the guest counts its CPU time in 10 ms ticks), or
// after quietLimit. An agent is busy for a while after it starts (its
// first scans, its first store transactions), and a guest just booted runs
// the kernel's crypto self-tests (cryptomgr_test, about 2.4 s of CPU on
// 6.12 under TCG), which landed in the first round's baseline and made its
// execs twice as slow as in later rounds.
const (
	quietWindow = time.Second
	quietShare  = 0.02
	quietLimit  = 30 * time.Second
)

// waitQuiet waits, after r started, until it is quiet (see quietWindow).
// On the host only the configuration's own processes are watched (the
// baseline has none): the machine's other load is not the bench's to wait
// for.
func (e *Env) waitQuiet(ctx context.Context, place string, r *Running) {
	var cpu func() (time.Duration, error)
	switch {
	case e.InVM:
		cpu = systemBusy
	case r != nil && r.d != nil:
		cpu = func() (time.Duration, error) { return r.CPU(), nil }
	default:
		return
	}
	waited, quiet, err := waitIdle(ctx, cpu, quietWindow, quietShare, quietLimit)
	switch {
	case err != nil:
		e.Log.Warn("waiting for quiet", "place", place, "config", r.Config, "err", err)
	case !quiet && ctx.Err() == nil:
		e.Log.Warn("still busy, timing anyway", "place", place, "config", r.Config, "waited", waited.Round(time.Millisecond))
	case waited > 2*quietWindow:
		e.Log.Info("quiet", "place", place, "config", r.Config, "waited", waited.Round(time.Millisecond))
	}
}

// waitIdle waits until cpu, a running total of CPU time, grows by less
// than share of window over one window, or until limit has passed. It
// returns how long it waited and whether it saw such a window.
func waitIdle(ctx context.Context, cpu func() (time.Duration, error), window time.Duration, share float64, limit time.Duration) (time.Duration, bool, error) {
	start := time.Now()
	last, err := cpu()
	if err != nil {
		return 0, false, err
	}
	for time.Since(start) < limit && ctx.Err() == nil {
		t0 := time.Now()
		sleepCtx(ctx, window)
		now, err := cpu()
		if err != nil {
			return time.Since(start), false, err
		}
		if float64(now-last) < share*float64(time.Since(t0)) {
			return time.Since(start), true, nil
		}
		last = now
	}
	return time.Since(start), false, nil
}

// warmUp runs a tenth of each op's batches, untimed, after a
// configuration starts. The first operations after a start pay for what
// the start left cold: the page cache and the CPU's caches on the host;
// in the VM also TCG's translation of every kernel and user path the
// operation takes. Under an agent it also fills the agent's caches (the verdict
// cache of the exec target): the microbenchmarks time the cached path.
func (e *Env) warmUp(ctx context.Context, place, config string, ops []OpSpec, scale float64) {
	for _, op := range ops {
		if _, _, err := runOp(ctx, e.Tools, op, max(batches(op.Batches, scale)/10, 1)); err != nil && ctx.Err() == nil {
			e.Log.Warn("warm-up failed", "place", place, "config", config, "op", op.Name, "err", err)
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// shorten cuts s to about n bytes for a table cell (the full text is in
// the errors).
func shorten(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) <= n {
		return s
	}
	return s[:n] + "… (see the errors)"
}
