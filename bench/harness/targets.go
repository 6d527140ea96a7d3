package harness

import (
	"fmt"
	"math"
	"strings"

	"github.com/vigil-hips/vigil/bench"
)

// overheads lists the overhead of config for op in every suite that has
// it, with its 90% interval over rounds where there is one, and, on one
// CPU, the ratio of the means of the wall clock (what the agent's
// batches add to the few operations they land on, which the median
// leaves out): "+2.1% (host; 90% interval −0.5…+4.6%), +4.0% (vm 6.12;
// mean +21.0%)".
func overheads(r *bench.Report, op, config string) string {
	var parts []string
	for _, s := range r.Micro {
		res := s.ResultOf(op, config)
		if res == nil || res.Ratio <= 0 {
			continue
		}
		where := s.Place
		if iv := bench.FormatInterval(res.RatioInterval); iv != "" {
			where += "; 90% interval " + iv
		}
		if s.CPUs == 1 && !strings.HasSuffix(op, cpuSuffix) && res.MeanRatio > 0 {
			where += fmt.Sprintf("; mean %+.1f%%", (res.MeanRatio-1)*100)
		}
		parts = append(parts, fmt.Sprintf("%+.1f%% (%s)", (res.Ratio-1)*100, where))
	}
	return strings.Join(parts, ", ")
}

// kernelShares lists what config's BPF programs add to op in the kernel,
// as a share of the operation with no agent, in every suite that measured
// it: "+0.8% (vm 6.12)".
func kernelShares(r *bench.Report, op, config string) string {
	var parts []string
	for _, s := range r.Micro {
		if t := s.BPFOf(op, config); t != nil {
			parts = append(parts, fmt.Sprintf("%+.2f%% (%s)", t.Share*100, s.Place))
		}
	}
	return strings.Join(parts, ", ")
}

// judged returns the ratio that judges an overhead target for config's op
// in suite s, and the name of its measure. It is the wall clock, except
// on a machine with one CPU (the VM suite's guest), where it is the
// operation's own CPU time when the operation has one: there the wall
// clock also holds the agent recording the very operations being timed,
// work that on a machine with a second CPU runs beside them (the host's
// rows: wall clock and CPU time agree) and that the agent-CPU target
// judges already. The wall clock is reported beside it in every case.
func judged(s *bench.MicroSuite, op, config string) (float64, string) {
	if s.CPUs == 1 {
		if ratio := s.OverheadOf(op+cpuSuffix, config); ratio > 0 {
			return ratio, measureCPU
		}
	}
	return s.OverheadOf(op, config), measureWall
}

const (
	measureWall = "wall clock"
	measureCPU  = "CPU time of its own processes"
)

// worst returns the largest judging ratio of config for op over the
// suites, whether any suite had it, and which measure judged where:
// "wall clock (host), CPU time of its own processes (vm 6.12: one CPU)".
func worst(r *bench.Report, op, config string) (float64, bool, string) {
	w, ok := 0.0, false
	var by []string
	for i := range r.Micro {
		s := &r.Micro[i]
		ratio, measure := judged(s, op, config)
		if ratio <= 0 {
			continue
		}
		w, ok = max(w, ratio), true
		where := s.Place
		if s.CPUs == 1 {
			where += ": one CPU"
		}
		by = append(by, measure+" ("+where+")")
	}
	return w, ok, strings.Join(by, ", ")
}

func ran(r *bench.Report, config string) bool {
	for _, c := range r.Configs {
		if c.Name == config && c.Ran {
			return true
		}
	}
	return false
}

// reason says why config did not run: the reason of its last row (the VM
// rows follow the host's, and a VM-only configuration's host row only
// says it is VM-only).
func reason(r *bench.Report, config string) string {
	why := "did not run"
	for _, c := range r.Configs {
		if c.Name == config && c.Reason != "" {
			why = c.Reason
		}
	}
	return why
}

// Targets reports the goals against what this run measured. They
// are reported, never asserted.
func Targets(r *bench.Report) []bench.Target {
	var out []bench.Target
	overheadTarget := func(what, op, config string, limit float64) {
		t := bench.Target{What: what, Goal: fmt.Sprintf("≤ %.0f%%", (limit-1)*100)}
		if w, ok, by := worst(r, op, config); ok && ran(r, config) {
			// Every measure is shown; judged says which one decides
			// where. Beside the wall clock, the parts that leave out
			// other processes' work: the operation's own CPU time and
			// its BPF programs' run time.
			parts := []string{overheads(r, op, config)}
			if c := overheads(r, op+cpuSuffix, config); c != "" {
				parts = append(parts, measureCPU+" "+c)
			}
			if k := kernelShares(r, op, config); k != "" {
				parts = append(parts, "in the kernel (its BPF programs' run time) "+k)
			}
			if len(parts) > 1 {
				parts[0] = measureWall + " " + parts[0]
				parts = append(parts, "judged by "+by)
			}
			t.Measured = strings.Join(parts, "; ")
			t.Verdict = bench.NotMet
			if w <= limit {
				t.Verdict = bench.Met
			}
		} else {
			t.Measured = "not run: " + reason(r, config)
			if o := overheads(r, op, "vigil"); o != "" {
				t.Measured += "; the observe-only agent today: " + o
			}
			t.Verdict = bench.NotYet
		}
		out = append(out, t)
	}
	overheadTarget("exec overhead, monitor (cached path)", "exec", "vigil-monitor", 1.03)
	overheadTarget("mmap (dlopen) overhead, monitor (cached path)", "dlopen", "vigil-monitor", 1.03)
	overheadTarget("exec overhead, enforce (cached path)", "exec", "vigil-enforce", 1.05)
	overheadTarget("exec overhead, lockdown on the host (fanotify, approved file, cached path)", "exec", LockdownHost, 1.05)
	overheadTarget("mmap (dlopen) overhead, enforce (cached path)", "dlopen", "vigil-enforce", 1.05)

	fl := bench.Target{What: "fleet server: zero event loss at 1,000 simulated hosts × 10 events/s", Goal: "no loss, load sustained",
		Verdict: bench.NotMeasured, Measured: "the fleet phase did not run"}
	if f := r.Fleet; f != nil {
		var parts []string
		met, seen := true, false
		for _, x := range f.Runs {
			if x.Hosts != 1000 || x.EventsPerHost != 10 {
				continue
			}
			seen = true
			if x.Error != "" {
				parts = append(parts, x.Deployment+": error")
				met = false
				continue
			}
			parts = append(parts, fmt.Sprintf("%s: %.0f of %.0f events/s acknowledged, %d lost, %d upload errors",
				x.Deployment, x.AckedPerSec, x.GoalPerSec, x.Lost+int64(x.ServerLost), x.UploadErrors))
			met = met && x.Sustained()
		}
		if seen {
			fl.Measured = strings.Join(parts, "; ")
			fl.Verdict = bench.NotMet
			if met {
				fl.Verdict = bench.Met
			}
		}
	}
	out = append(out, fl)

	loss := bench.Target{What: "zero loss up to the machine's maximum exec rate", Goal: "no events lost", Verdict: bench.NotMeasured,
		Measured: "the throughput phase did not run"}
	if t := r.Throughput; t != nil {
		for _, rp := range t.Ramps {
			if rp.Name != "exec" || len(rp.Steps) == 0 {
				continue
			}
			if rp.LossFree {
				loss.Measured = fmt.Sprintf("no loss up to %s execs/s (the machine's maximum with the agent)", bench.FormatRate(rp.MachineMax))
				loss.Verdict = bench.Met
			} else {
				loss.Measured = fmt.Sprintf("zero loss up to %s execs/s; loss above it (machine maximum %s execs/s)",
					bench.FormatRate(rp.MaxZeroLoss), bench.FormatRate(rp.MachineMax))
				loss.Verdict = bench.NotMet
			}
		}
	}
	out = append(out, loss)

	cpu := bench.Target{What: "agent CPU at 1,000 execs/s", Goal: "≤ 2% of one core", Verdict: bench.NotMeasured,
		Measured: "the cost phase did not run"}
	rss := bench.Target{What: "agent peak RSS", Goal: "≤ 64 MB", Verdict: bench.NotMeasured, Measured: "not measured"}
	for _, c := range r.Cost {
		if c.Config != "vigil" {
			continue
		}
		if c.PacedRate > 0 {
			cpu.Measured = fmt.Sprintf("%.2f%% at %s execs/s (observe-only agent)", c.PacedCPU, bench.FormatRate(c.PacedRate))
			cpu.Verdict = bench.NotMet
			if c.PacedCPU <= 2 {
				cpu.Verdict = bench.Met
			}
		}
		if c.PeakRSSMiB > 0 {
			mb := c.PeakRSSMiB * (1 << 20) / 1e6
			rss.Measured = fmt.Sprintf("%.1f MB (%.1f MiB), during the %s", mb, c.PeakRSSMiB, c.PeakWhere)
			rss.Verdict = bench.NotMet
			if mb <= 64 {
				rss.Verdict = bench.Met
			}
		}
	}
	out = append(out, cpu, rss)
	out = append(out, decisionTargets(r)...)
	out = append(out, authTarget(r))
	return out
}

// Findings derives what a reader (and the sensor engineer) should know
// from the numbers.
func Findings(r *bench.Report) []string {
	label := func(n string) string {
		for _, c := range r.Configs {
			if c.Name == n {
				return c.Label
			}
		}
		return n
	}
	var out []string
	for _, s := range r.Micro {
		out = append(out, bench.ControlFindings(s, label)...)
	}
	// The agent's own overheads above the monitor target.
	for _, s := range r.Micro {
		for _, op := range s.Ops {
			if op.Control {
				continue
			}
			res := op.Result("vigil")
			if res == nil || res.Ratio <= 1.03 {
				continue
			}
			spread := ""
			if len(res.RoundRatios) > 1 {
				rs := bench.Summarize(res.RoundRatios)
				spread = fmt.Sprintf(" (rounds %.3f–%.3f)", rs.Min, rs.Max)
			}
			out = append(out, fmt.Sprintf("%s: the observe-only agent adds %+.1f%% to %s%s, above the 3%% monitor target.",
				s.Place, (res.Ratio-1)*100, op.Label, spread))
		}
	}
	if t := r.Throughput; t != nil {
		for _, rp := range t.Ramps {
			if !rp.LossFree && len(rp.Steps) > 0 {
				var lost uint64
				for _, st := range rp.Steps {
					lost += st.Lost
				}
				out = append(out, fmt.Sprintf("%s: the agent loses events above %s %s (%d lost in all steps); machine maximum %s %s.",
					rp.Label, bench.FormatRate(rp.MaxZeroLoss), rp.Unit, lost, bench.FormatRate(rp.MachineMax), rp.Unit))
			}
			for _, st := range rp.Steps {
				if st.AgentCPU > 90 {
					out = append(out, fmt.Sprintf("%s: at %s %s the agent used %.0f%% of a core: its user-space pipeline is the bottleneck.",
						rp.Label, bench.FormatRate(st.Achieved), rp.Unit, st.AgentCPU))
					break
				}
			}
		}
		if g := t.Gaps; g != nil && g.Counter != g.LostInGap && g.Note != "" && !strings.HasPrefix(g.Note, "vigil events") {
			out = append(out, fmt.Sprintf("Loss accounting: %d gap records account for %d lost events, the counter says %d.",
				g.Records, g.LostInGap, g.Counter))
		}
	}
	if w := r.Workload; w != nil {
		for _, res := range w.Results {
			if res.Config != w.Baseline && res.MinRatio > 0 && math.Abs(res.Ratio-res.MinRatio) > 0.05 {
				out = append(out, fmt.Sprintf("Workload: the builds under %s are %s by their medians but %s by the "+
					"fastest runs: some builds were disturbed by other work on the machine; the fastest runs are the better estimate.",
					label(res.Config), bench.FormatRatio(res.Ratio), bench.FormatRatio(res.MinRatio)))
			}
		}
		for _, run := range w.Runs {
			if run.Lost > 0 {
				out = append(out, fmt.Sprintf("Workload round %d: the agent lost %d of %d events during the build.",
					run.Round+1, run.Lost, run.Events+run.Lost))
			}
		}
	}
	out = append(out, execControlFindings(r)...)
	if r.Machine.LoadStart > 0.5 || r.Machine.LoadEnd > 0.5 {
		out = append(out, fmt.Sprintf("The machine was busy (load average %.2f at the start, %.2f at the end): "+
			"ratios carry that noise; rerun on an idle machine for tighter numbers.", r.Machine.LoadStart, r.Machine.LoadEnd))
	}
	return out
}

// decisionTargets: issue 4's 10 MB goal on the host (judged by the p99),
// and the rows of every place, reported.
func decisionTargets(r *bench.Report) []bench.Target {
	goal := bench.Target{What: "first exec of an unknown 10 MB file decided (host, fanotify)",
		Goal: fmt.Sprintf("≤ %d ms (p99)", DecisionTargetMS), Verdict: bench.NotMeasured, Measured: "the decision phase did not run"}
	all := bench.Target{What: "decision latency, unknown 1 MB / 10 MB file", Goal: "reported (p50/p99)",
		Verdict: bench.NotMeasured, Measured: "the decision phase did not run"}
	var parts []string
	for _, d := range r.Decision {
		desc := d.Status
		if d.P50 != nil && d.P99 != nil {
			desc = fmt.Sprintf("p50 %.2f ms, p99 %.2f ms", *d.P50, *d.P99)
		}
		parts = append(parts, fmt.Sprintf("%s, %s: %s", d.Place, sizeLabel(d.Size), desc))
		if d.Place != "host" || d.Size != 10_000_000 {
			continue
		}
		goal.Measured = d.Status
		goal.Verdict = bench.NotYet
		if d.P99 != nil {
			goal.Measured = fmt.Sprintf("p50 %.2f ms, p99 %.2f ms over %d refused execs", *d.P50, *d.P99, d.Refused)
			if d.BaselineP50 != nil {
				goal.Measured += fmt.Sprintf(" (no agent: p50 %.2f ms)", *d.BaselineP50)
			}
			goal.Verdict = bench.NotMet
			if *d.P99 <= DecisionTargetMS && d.Refused == d.Samples {
				goal.Verdict = bench.Met
			}
		}
	}
	if len(parts) > 0 {
		all.Measured = strings.Join(parts, "; ")
		all.Verdict = bench.NotYet
		for _, d := range r.Decision {
			if d.P50 != nil {
				all.Verdict = bench.Reported
			}
		}
	}
	return []bench.Target{goal, all}
}

func sizeLabel(n int64) string {
	if n <= 0 {
		return "?"
	}
	return fmt.Sprintf("%g MB", float64(n)/1e6)
}

// execControlFindings: what exec control adds on top of the agent's
// sensors (lockdown against observe-only, same run), and decision rows
// where not every unknown file was refused.
func execControlFindings(r *bench.Report) []string {
	label := func(n string) string {
		for _, c := range r.Configs {
			if c.Name == n && c.Label != "" {
				return c.Label
			}
		}
		return n
	}
	var out []string
	for _, s := range r.Micro {
		for _, lock := range []string{LockdownHost, "vigil-enforce"} {
			l, v := s.OverheadOf("exec", lock), s.OverheadOf("exec", "vigil")
			if l <= 0 || v <= 0 {
				continue
			}
			out = append(out, fmt.Sprintf("%s: exec of an approved file under %s is %s against no agent; the observe-only "+
				"agent alone %s: exec control itself adds about %+.1f%% (ratio of the two).",
				s.Place, label(lock), bench.FormatRatio(l), bench.FormatRatio(v), (l/v-1)*100))
		}
	}
	for _, d := range r.Decision {
		if d.Samples > 0 && d.Refused < d.Samples {
			out = append(out, fmt.Sprintf("%s: %s: only %d of %d unknown files were refused under %s; the others ran.",
				d.Place, d.File, d.Refused, d.Samples, label(d.Config)))
		}
	}
	return out
}

// AuthTargetUS is issue 7's goal for the filter API round trip (p99).
const AuthTargetUS = 1000

// authTarget: the AUTH round trip with one client at 1,000 execs/s, p99
// ≤ 1 ms on the host: met by the default run, or by the real-time one
// (a documented setting, agent --realtime and client -realtime), which
// the line then says.
func authTarget(r *bench.Report) bench.Target {
	t := bench.Target{What: fmt.Sprintf("filter API AUTH round trip, one client, %d execs/s (host)", AuthRate),
		Goal: fmt.Sprintf("≤ %d µs (p99)", AuthTargetUS), Verdict: bench.NotMeasured, Measured: "the auth phase did not run"}
	a := r.Auth
	if a == nil {
		return t
	}
	if a.Reason != "" || a.Samples == 0 {
		t.Measured, t.Verdict = "did not run: "+a.Reason, bench.NotYet
		return t
	}
	t.Measured = fmt.Sprintf("default scheduling: p50 %.0f µs, p99 %.0f µs, max %.0f µs over %d decisions (%.0f execs/s driven, %d deadlines missed)",
		a.P50us, a.P99us, a.MaxUs, a.Samples, a.Achieved, a.Missed)
	met := a.P99us <= AuthTargetUS && a.Missed == 0
	if rt := a.Realtime; rt != nil {
		if rt.Reason != "" || rt.Samples == 0 {
			t.Measured += "; real-time (agent --realtime, client -realtime): did not run: " + rt.Reason
		} else {
			t.Measured += fmt.Sprintf("; real-time (agent --realtime, client -realtime): p50 %.0f µs, p99 %.0f µs, max %.0f µs over %d decisions (%.0f execs/s, %d missed)",
				rt.P50us, rt.P99us, rt.MaxUs, rt.Samples, rt.Achieved, rt.Missed)
			if !met && rt.P99us <= AuthTargetUS && rt.Missed == 0 {
				met = true
				t.Measured += " — met with --realtime only"
			}
		}
	}
	if f := a.FloorLoaded; f != nil && f.Error == "" {
		t.Measured += fmt.Sprintf("; the machine's two-process wakeup floor under the same load, no agent: p50 %.0f µs, p99 %.0f µs", f.P50us, f.P99us)
	}
	t.Verdict = bench.NotMet
	if met {
		t.Verdict = bench.Met
	}
	return t
}
