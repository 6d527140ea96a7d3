package harness

import (
	"context"
	"fmt"

	"github.com/vigil-hips/vigil/bench"
)

// pacedCost is a configuration's CPU while execs ran at a fixed rate.
type pacedCost struct {
	rate, cpuPct float64
}

// runCost starts each daemon configuration and runs execs at
// P.CostRate per second for P.CostSeconds, reading the daemon's CPU
// around it: the "% of one core at 1,000 execs/s" figure.
func (e *Env) runCost(ctx context.Context, cfgs []*Config) {
	for _, c := range cfgs {
		if c.Start == nil || ctx.Err() != nil {
			continue
		}
		if _, ok := e.broken[c.Name]; ok {
			continue
		}
		e.Log.Info("cost", "config", c.Name, "rate", e.P.CostRate, "seconds", e.P.CostSeconds)
		r, err := e.startConfig(ctx, c)
		if err != nil {
			e.errorf("cost: %s: %v", c.Name, err)
			continue
		}
		sleepCtx(ctx, e.P.Settle)
		cpu0 := r.CPU()
		res, err := runRate(ctx, e.Tools, "exec", e.P.CostRate, e.P.CostSeconds, 2, e.Tools.Target)
		cpu := r.CPU() - cpu0
		if err != nil {
			e.errorf("cost: %s: %v", c.Name, err)
		} else if res.Seconds > 0 {
			e.paced[c.Name] = pacedCost{rate: res.Rate(), cpuPct: cpu.Seconds() / res.Seconds * 100}
		}
		e.stopConfig(ctx, r, fmt.Sprintf("%.0f execs/s", e.P.CostRate))
	}
}

// costs assembles the cost table from what the phases measured.
func (e *Env) costs(out []bench.Cost) []bench.Cost {
	for _, c := range Configs {
		if c.Start == nil {
			continue
		}
		row := bench.Cost{Config: c.Name, Label: c.Label}
		has := false
		if p, ok := e.paced[c.Name]; ok {
			row.PacedRate, row.PacedCPU, has = p.rate, p.cpuPct, true
		}
		if acc := e.microCost[c.Name]; acc != nil && acc.wall > 0 {
			row.MicroRate = float64(acc.ops) / acc.wall.Seconds()
			row.MicroCPU = acc.cpu.Seconds() / acc.wall.Seconds() * 100
			has = true
		}
		if pk, ok := e.peaks[c.Name]; ok && pk.kb > 0 {
			row.PeakRSSMiB = float64(pk.kb) / 1024
			row.PeakWhere = pk.where
			row.Processes = pk.procs
			has = true
		}
		if has {
			out = append(out, row)
		}
	}
	return out
}
