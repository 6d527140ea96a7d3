package harness

import (
	"context"
	"fmt"
	"time"

	"github.com/vigil-hips/vigil/bench"
)

// ramp describes one load of the throughput phase.
type ramp struct {
	name, label, unit string
	op                string
	workers           int
	rates             []float64
	arg               func(Tools) string
}

// runThroughput starts the agent once and drives two loads at rising
// rates: execs (each a fork, an exec and an exit event, plus the image
// loads of the exec'd program) and executable-memory events (an
// mprotect RW→RX, one mem_exec event each). A step runs StepSeconds; the
// loss of a step is the rise of the agent's events_lost counter once it
// has drained what the ring buffer held.
func (e *Env) runThroughput(ctx context.Context, c *Config) (*bench.Throughput, error) {
	t := &bench.Throughput{Config: c.Name, StepSeconds: e.P.StepSeconds}
	r, err := e.startConfig(ctx, c)
	if err != nil {
		return nil, err
	}
	defer e.stopConfig(ctx, r, "throughput ramp")
	if r.agent == nil {
		return nil, fmt.Errorf("%s is not an agent", c.Name)
	}
	sleepCtx(ctx, e.P.Settle)
	ramps := []ramp{
		{name: "exec", label: "Exec rate (fork+exec+exit of a static binary, 2 processes)", unit: "execs/s",
			op: "exec", workers: 2, rates: e.P.ExecRates, arg: func(t Tools) string { return t.Target }},
		{name: "events", label: "Event rate (mprotect RW→RX: one mem_exec event each, 1 process)", unit: "events/s",
			op: "mprotect", workers: 1, rates: e.P.EventRates},
	}
	for _, rp := range ramps {
		out := bench.Ramp{Name: rp.name, Label: rp.label, Unit: rp.unit}
		arg := ""
		if rp.arg != nil {
			arg = rp.arg(e.Tools)
		}
		steps := append(append([]float64{}, rp.rates...), 0)
		saturated := false
		for _, rate := range steps {
			if ctx.Err() != nil {
				break
			}
			if saturated && rate != 0 {
				continue
			}
			st, err := e.rampStep(ctx, r, rp, rate, arg)
			if err != nil {
				e.errorf("throughput %s at %v/s: %v", rp.name, rate, err)
				continue
			}
			e.Log.Info("throughput", "load", rp.name, "target", rate, "achieved", int(st.Achieved),
				"events", st.Events, "lost", st.Lost, "agent_cpu_pct", fmt.Sprintf("%.1f", st.AgentCPU))
			out.Steps = append(out.Steps, st)
			// The machine cannot go faster: the unpaced step says the rest.
			if rate > 0 && st.Achieved < 0.85*rate {
				saturated = true
			}
		}
		out.Analyze()
		t.Ramps = append(t.Ramps, out)
	}
	st, err := r.agent.status(ctx)
	if err == nil {
		g := &bench.GapCheck{Counter: uint64(st.Counters.Lost)}
		g.Records, g.LostInGap, err = r.agent.gaps(ctx)
		if err != nil {
			g.Note = err.Error()
		} else if g.LostInGap != g.Counter {
			g.Note = "the gap records and the counter disagree"
		}
		t.Gaps = g
	}
	return t, nil
}

func (e *Env) rampStep(ctx context.Context, r *Running, rp ramp, rate float64, arg string) (bench.RampStep, error) {
	before, err := r.agent.status(ctx)
	if err != nil {
		return bench.RampStep{}, err
	}
	cpu0 := r.CPU()
	res, err := runRate(ctx, e.Tools, rp.op, rate, e.P.StepSeconds, rp.workers, arg)
	if err != nil {
		return bench.RampStep{}, err
	}
	after, drain, err := r.agent.drain(ctx, 20*time.Second)
	if err != nil {
		return bench.RampStep{}, err
	}
	// CPU over the load and the drain after it (the status polls of the
	// drain cost the agent a little too).
	cpu := r.CPU() - cpu0
	wall := res.Seconds + drain.Seconds()
	return bench.RampStep{
		Target:       rate,
		Achieved:     res.Rate(),
		Ops:          res.Ops,
		Events:       uint64(after.Counters.Received - before.Counters.Received),
		Lost:         uint64(after.Counters.Lost - before.Counters.Lost),
		AgentCPU:     cpu.Seconds() / wall * 100,
		DrainSeconds: drain.Seconds(),
	}, nil
}
