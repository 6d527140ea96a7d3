package bench

import (
	"cmp"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"time"
)

// FormatNS formats nanoseconds with a unit that keeps three significant
// digits.
func FormatNS(ns float64) string {
	switch {
	case math.IsNaN(ns) || ns <= 0:
		return "–"
	case ns < 1e3:
		return fmt.Sprintf("%.0f ns", ns)
	case ns < 1e4:
		return fmt.Sprintf("%.2f µs", ns/1e3)
	case ns < 1e5:
		return fmt.Sprintf("%.1f µs", ns/1e3)
	case ns < 1e6:
		return fmt.Sprintf("%.0f µs", ns/1e3)
	case ns < 1e7:
		return fmt.Sprintf("%.2f ms", ns/1e6)
	default:
		return fmt.Sprintf("%.1f ms", ns/1e6)
	}
}

// FormatRatio formats a ratio to the baseline with the overhead it means:
// "1.031× (+3.1%)".
func FormatRatio(r float64) string {
	if r <= 0 || math.IsNaN(r) {
		return "–"
	}
	return fmt.Sprintf("%.3f× (%+.1f%%)", r, (r-1)*100)
}

// FormatRate formats operations per second.
func FormatRate(r float64) string {
	switch {
	case r <= 0:
		return "–"
	case r >= 1e6:
		return fmt.Sprintf("%.2fM", r/1e6)
	case r >= 1e4:
		return fmt.Sprintf("%.0fk", r/1e3)
	case r >= 1e3:
		return fmt.Sprintf("%.1fk", r/1e3)
	default:
		return fmt.Sprintf("%.0f", r)
	}
}

func (r *Report) label(name string) string {
	for _, c := range r.Configs {
		if c.Name == name && c.Label != "" {
			return c.Label
		}
	}
	return name
}

// table writes a markdown table.
func table(w io.Writer, head []string, rows [][]string) {
	esc := func(s string) string { return strings.ReplaceAll(s, "|", `\|`) }
	cells := func(c []string) string {
		out := make([]string, len(c))
		for i, s := range c {
			out[i] = esc(s)
		}
		return "| " + strings.Join(out, " | ") + " |\n"
	}
	io.WriteString(w, cells(head))
	sep := make([]string, len(head))
	for i := range sep {
		sep[i] = "---"
	}
	io.WriteString(w, "|"+strings.Join(sep, "|")+"|\n")
	for _, row := range rows {
		io.WriteString(w, cells(row))
	}
	io.WriteString(w, "\n")
}

// WriteMarkdown renders the report for people: the side-by-side tables
// first, then the details, then how it was measured.
func (r *Report) WriteMarkdown(w io.Writer) error {
	var b strings.Builder
	title := r.Title
	if title == "" {
		title = "Vigil benchmarks"
	}
	fmt.Fprintf(&b, "# %s\n\n", title)
	fmt.Fprintf(&b, "Run %s, %s mode, took %s. Host: %s, %d cores, %.0f GiB, kernel %s. "+
		"Load average %.2f at the start, %.2f at the end.\n\n",
		r.Started.UTC().Format(time.RFC3339), r.Mode, (time.Duration(r.Seconds) * time.Second).String(),
		orDash(r.Machine.CPU), r.Machine.Cores, r.Machine.MemoryGiB, r.Machine.Kernel,
		r.Machine.LoadStart, r.Machine.LoadEnd)
	fmt.Fprintf(&b, "Every figure is a ratio against **no agent, measured in the same run**, "+
		"the configurations interleaved round by round. Targets are reported against, not asserted.\n\n")
	for _, n := range r.Machine.Notes {
		fmt.Fprintf(&b, "- %s\n", n)
	}
	if len(r.Machine.Notes) > 0 {
		b.WriteString("\n")
	}

	r.writeConfigs(&b)
	r.writeSummary(&b)
	r.writeTargets(&b)
	if len(r.Findings) > 0 || len(r.Errors) > 0 {
		b.WriteString("## Findings\n\n")
		for _, f := range r.Findings {
			fmt.Fprintf(&b, "- %s\n", f)
		}
		for _, e := range r.Errors {
			fmt.Fprintf(&b, "- **error:** %s\n", e)
		}
		b.WriteString("\n")
	}
	r.writeMicroDetails(&b)
	r.writeThroughput(&b)
	r.writeCost(&b)
	r.writeDecision(&b)
	r.writeAuth(&b)
	r.writeFleet(&b)
	r.writeWorkload(&b)
	_, err := io.WriteString(w, b.String())
	return err
}

func orDash(s string) string {
	if s == "" {
		return "–"
	}
	return s
}

func (r *Report) writeConfigs(b *strings.Builder) {
	b.WriteString("## Configurations\n\n")
	var rows [][]string
	for _, c := range r.Configs {
		status := "ran"
		if !c.Ran {
			status = "**not run:** " + c.Reason
		} else if c.Reason != "" {
			status = "ran; " + c.Reason
		}
		if len(c.Notes) > 0 {
			status += " (" + strings.Join(c.Notes, "; ") + ")"
		}
		rows = append(rows, []string{c.Label, c.Place, status})
	}
	table(b, []string{"configuration", "where", "status"}, rows)
}

func (r *Report) writeSummary(b *strings.Builder) {
	b.WriteString("## Overhead against no agent\n\n")
	b.WriteString("Median time per operation under each configuration divided by the median with no agent, " +
		"in the same run. Below 1.000× is noise. A row \"CPU time of its own processes\" measures the same runs by the " +
		"CPU the operation's processes spent (user and system, the kernel's hooks included), not by the clock: " +
		"it leaves out other work that ran on the CPU meanwhile, such as the agent storing the events of the " +
		"execs (the agent's own cost, the cost phase), and a decision made in user space (a fanotify round trip), " +
		"which only the wall-clock row shows. The overhead targets are judged by the wall clock, except where the " +
		"machine had one CPU (the VM's guest): there the agent's recording runs in the timed execs' wall clock " +
		"rather than beside them, so the CPU-time row judges (see the targets).\n\n")
	for _, s := range r.Micro {
		fmt.Fprintf(b, "### %s\n\n", s.Place)
		if s.Note != "" {
			fmt.Fprintf(b, "%s\n\n", s.Note)
		}
		if len(s.Ops) == 0 {
			b.WriteString("No results.\n\n")
			continue
		}
		head := r.suiteHead(s)
		var rows [][]string
		for _, op := range s.Ops {
			row := []string{op.Label}
			for _, c := range s.Configs {
				res := op.Result(c)
				switch {
				case res == nil:
					row = append(row, "–")
				case c == s.Baseline && s.Absolute:
					row = append(row, FormatNS(res.NS.Median))
				case c == s.Baseline:
					row = append(row, "1.000×")
				default:
					row = append(row, FormatRatio(res.Ratio))
				}
			}
			rows = append(rows, row)
		}
		if w := r.Workload; w != nil && s.Place == "host" && len(w.Results) > 0 {
			row := []string{"workload: " + w.Project}
			for _, c := range s.Configs {
				var cell = "–"
				for _, wr := range w.Results {
					if wr.Config == c {
						if c == w.Baseline {
							cell = fmt.Sprintf("%.1f s", wr.Seconds.Median)
						} else {
							cell = FormatRatio(wr.Ratio)
						}
					}
				}
				row = append(row, cell)
			}
			rows = append(rows, row)
		}
		table(b, head, rows)
		r.writeBPF(b, s)
	}
}

// suiteHead is the head of a table of s's operations: a column for each
// configuration.
func (r *Report) suiteHead(s MicroSuite) []string {
	head := []string{"operation"}
	for _, c := range s.Configs {
		head = append(head, r.label(c))
	}
	return head
}

// writeBPF is the in-kernel time of the operations reported by CPU time.
func (r *Report) writeBPF(b *strings.Builder, s MicroSuite) {
	if s.BPFNote != "" {
		fmt.Fprintf(b, "In-kernel time of the BPF programs: %s.\n\n", s.BPFNote)
	}
	if len(s.BPF) == 0 {
		return
	}
	b.WriteString("**In-kernel time of the BPF programs** per operation, by the kernel's own statistics " +
		"(BPF_ENABLE_STATS, on only for a separate run of the operation after the timed ones): what every loaded " +
		"program ran, the agent's own activity meanwhile included, and, in brackets, that time less the " +
		"baseline's as a share of the operation's median wall-clock time with no agent. It is the work the hooks " +
		"add to the operation's own path, untouched by the machine's noise; it leaves out the cost of calling " +
		"the hooks and what they do to the caches.\n\n")
	head := r.suiteHead(s)
	var rows [][]string
	for _, op := range s.Ops {
		row := []string{op.Label}
		seen := false
		for _, c := range s.Configs {
			t := s.BPFOf(op.Op, c)
			if t == nil {
				row = append(row, "–")
				continue
			}
			seen = true
			ns := FormatNS(t.NSPerOp)
			if t.NSPerOp <= 0 {
				ns = "0 ns"
			}
			cell := fmt.Sprintf("%s (%.1f runs)", ns, t.RunsPerOp)
			if c != s.Baseline {
				cell += fmt.Sprintf(" [%+.2f%%]", t.Share*100)
			}
			row = append(row, cell)
		}
		if seen {
			rows = append(rows, row)
		}
	}
	table(b, head, rows)
	for _, t := range s.BPF {
		if top := topPrograms(t.Programs, 4); t.Config != s.Baseline && top != "" {
			fmt.Fprintf(b, "- %s under %s, by program: %s\n", t.Op, r.label(t.Config), top)
		}
	}
	b.WriteString("\n")
}

// topPrograms names the n programs that ran longest, with their time.
func topPrograms(ns map[string]float64, n int) string {
	names := make([]string, 0, len(ns))
	for name := range ns {
		names = append(names, name)
	}
	slices.SortFunc(names, func(a, b string) int {
		if c := cmp.Compare(ns[b], ns[a]); c != 0 {
			return c
		}
		return strings.Compare(a, b)
	})
	var parts []string
	for _, name := range names[:min(n, len(names))] {
		parts = append(parts, fmt.Sprintf("%s %s", name, FormatNS(ns[name])))
	}
	return strings.Join(parts, ", ")
}

func (r *Report) writeTargets(b *strings.Builder) {
	if len(r.Targets) == 0 {
		return
	}
	b.WriteString("## Targets\n\n")
	var rows [][]string
	for _, t := range r.Targets {
		rows = append(rows, []string{t.What, t.Goal, t.Measured, t.Verdict})
	}
	table(b, []string{"target", "goal", "measured", "verdict"}, rows)
}

func (r *Report) writeMicroDetails(b *strings.Builder) {
	if len(r.Micro) == 0 {
		return
	}
	b.WriteString("## Microbenchmarks in detail\n\n")
	b.WriteString("One sample is the mean time per operation of one batch (batch size in the heading); " +
		"median, p99 and min–max are over all samples of all rounds. " +
		"\"90% interval\" is a bootstrap over rounds (each configuration's rounds drawn on their own): " +
		"how far this run's ratio could move with the machine's drift from round to round. " +
		"\"per round\" is the median and range of the ratios of each round's medians: a round whose two " +
		"configurations ran a few seconds apart is the least exposed to slow changes of the machine.\n\n")
	for _, s := range r.Micro {
		fmt.Fprintf(b, "### %s: %d rounds\n\n", s.Place, s.Rounds)
		for _, op := range s.Ops {
			fmt.Fprintf(b, "**%s** (batches of %d)\n\n", op.Label, op.PerBatch)
			var rows [][]string
			for _, res := range op.Results {
				per := "–"
				if len(res.RoundRatios) > 0 {
					rs := Summarize(res.RoundRatios)
					per = fmt.Sprintf("%.3f (%.3f–%.3f)", rs.Median, rs.Min, rs.Max)
				}
				ratio, iv := FormatRatio(res.Ratio), FormatInterval(res.RatioInterval)
				if iv == "" {
					iv = "–"
				}
				if res.Config == s.Baseline {
					ratio, per, iv = "baseline", "–", "–"
				}
				rows = append(rows, []string{r.label(res.Config),
					FormatNS(res.NS.Median), FormatNS(res.NS.P99),
					FormatNS(res.NS.Min) + " – " + FormatNS(res.NS.Max),
					fmt.Sprint(res.NS.N), ratio, iv, per})
			}
			table(b, []string{"configuration", "median", "p99", "min – max", "samples", "ratio", "90% interval", "per round"}, rows)
		}
	}
}

func (r *Report) writeThroughput(b *strings.Builder) {
	t := r.Throughput
	if t == nil {
		return
	}
	fmt.Fprintf(b, "## Throughput: %s\n\n", r.label(t.Config))
	fmt.Fprintf(b, "Each step runs the load at a fixed rate for %.0f s, then waits until the agent has "+
		"received everything it is going to; loss is the rise of the agent's `events_lost` counter.", t.StepSeconds)
	if t.Note != "" {
		fmt.Fprintf(b, " %s", t.Note)
	}
	b.WriteString("\n\n")
	for _, rp := range t.Ramps {
		fmt.Fprintf(b, "### %s\n\n", rp.Label)
		switch {
		case rp.LossFree:
			fmt.Fprintf(b, "No loss at any rate, up to the machine's maximum of %s %s.\n\n",
				FormatRate(rp.MachineMax), rp.Unit)
		default:
			fmt.Fprintf(b, "Highest rate with zero loss: **%s %s** (machine maximum with the agent: %s %s).\n\n",
				FormatRate(rp.MaxZeroLoss), rp.Unit, FormatRate(rp.MachineMax), rp.Unit)
		}
		var rows [][]string
		for _, s := range rp.Steps {
			target := FormatRate(s.Target)
			if s.Target == 0 {
				target = "unpaced"
			}
			rows = append(rows, []string{target, FormatRate(s.Achieved), fmt.Sprint(s.Events),
				fmt.Sprint(s.Lost), fmt.Sprintf("%.1f%%", s.AgentCPU), fmt.Sprintf("%.1f s", s.DrainSeconds)})
		}
		table(b, []string{"target " + rp.Unit, "achieved", "events received", "events lost", "agent CPU (one core)", "drain"}, rows)
	}
	if g := t.Gaps; g != nil {
		fmt.Fprintf(b, "Gap records in the store: %d, accounting for %d lost events; the counter says %d.", g.Records, g.LostInGap, g.Counter)
		if g.Note != "" {
			fmt.Fprintf(b, " %s", g.Note)
		}
		b.WriteString("\n\n")
	}
}

func (r *Report) writeCost(b *strings.Builder) {
	if len(r.Cost) == 0 {
		return
	}
	b.WriteString("## Agent cost\n\n")
	fmt.Fprintf(b, "CPU of the daemon's own processes (%s), in %% of one core, while execs ran at the given rate; "+
		"peak RSS is the largest VmHWM seen over every start of the configuration in this run. "+
		"Work done in the kernel on behalf of the workload (BPF programs, audit records, fanotify) is charged "+
		"to the workload and shows in the ratios above, not here.\n\n", orDash(r.Machine.CPUAccounting))
	var rows [][]string
	for _, c := range r.Cost {
		paced, micro := "–", "–"
		if c.PacedRate > 0 {
			paced = fmt.Sprintf("%.2f%% at %s execs/s", c.PacedCPU, FormatRate(c.PacedRate))
		}
		if c.MicroRate > 0 {
			micro = fmt.Sprintf("%.1f%% at %s execs/s", c.MicroCPU, FormatRate(c.MicroRate))
		}
		rss := "–"
		if c.PeakRSSMiB > 0 {
			rss = fmt.Sprintf("%.1f MiB", c.PeakRSSMiB)
			if c.PeakWhere != "" {
				rss += " (" + c.PeakWhere + ")"
			}
		}
		note := c.Note
		if c.Processes != "" {
			note = strings.TrimPrefix(note+"; processes: "+c.Processes, "; ")
		}
		rows = append(rows, []string{r.label(c.Config), paced, micro, rss, note})
	}
	table(b, []string{"configuration", "CPU, paced", "CPU, exec microbenchmark", "peak RSS", "note"}, rows)
}

func (r *Report) writeDecision(b *strings.Builder) {
	if len(r.Decision) == 0 {
		return
	}
	b.WriteString("## Decision latency: first exec of an unknown file\n\n")
	b.WriteString("Each sample execs a file written just before (a tiny static binary padded with random bytes " +
		"to the size: new content every time, so nothing is cached). Under lockdown the time is execve until it " +
		"fails with EPERM: the file is hashed (by the agent on the fanotify path, by the kernel on the LSM path) " +
		"and refused. With no agent the same exec of a fresh file runs: execve until the new image's first " +
		"instruction. p50/p99 over all samples of all rounds.\n\n")
	ms := func(v *float64) string {
		if v == nil {
			return "–"
		}
		return fmt.Sprintf("%.2f ms", *v)
	}
	var rows [][]string
	for _, d := range r.Decision {
		cfg := "–"
		if d.Config != "" {
			cfg = r.label(d.Config)
		}
		base := "–"
		if d.BaselineSamples > 0 {
			base = fmt.Sprintf("%s / %s (%d)", ms(d.BaselineP50), ms(d.BaselineP99), d.BaselineSamples)
		}
		rows = append(rows, []string{orDash(d.Place), d.File, cfg, ms(d.P50), ms(d.P99), base, d.Status})
	}
	table(b, []string{"where", "file", "configuration", "decided p50", "decided p99", "no agent p50 / p99 (samples)", "status"}, rows)
}

func (r *Report) writeWorkload(b *strings.Builder) {
	w := r.Workload
	if w == nil {
		return
	}
	fmt.Fprintf(b, "## Workload: %s\n\n", w.Project)
	fmt.Fprintf(b, "`%s`, %d round(s), the configurations interleaved.", w.Command, w.Rounds)
	if w.Note != "" {
		fmt.Fprintf(b, " %s", w.Note)
	}
	b.WriteString("\n\n")
	if len(w.Results) > 0 {
		var rows [][]string
		for _, res := range w.Results {
			ratio, minRatio := FormatRatio(res.Ratio), FormatRatio(res.MinRatio)
			if res.Config == w.Baseline {
				ratio, minRatio = "baseline", "baseline"
			}
			rows = append(rows, []string{r.label(res.Config), fmt.Sprintf("%.1f s", res.Seconds.Median),
				fmt.Sprintf("%.1f – %.1f s", res.Seconds.Min, res.Seconds.Max), ratio, minRatio})
		}
		table(b, []string{"configuration", "median", "min – max", "ratio of medians", "ratio of fastest"}, rows)
	}
	if len(w.Runs) > 0 {
		var rows [][]string
		for _, run := range w.Runs {
			cpu, ev := "–", "–"
			if run.AgentCPU > 0 {
				cpu = fmt.Sprintf("%.1f%%", run.AgentCPU)
			}
			if run.Events > 0 {
				ev = fmt.Sprintf("%d received, %d lost", run.Events, run.Lost)
			}
			rows = append(rows, []string{fmt.Sprint(run.Round + 1), r.label(run.Config),
				fmt.Sprintf("%.1f s", run.Seconds), cpu, ev})
		}
		table(b, []string{"round", "configuration", "time", "agent CPU (one core)", "agent events"}, rows)
	}
}

func (r *Report) writeAuth(b *strings.Builder) {
	a := r.Auth
	if a == nil {
		return
	}
	b.WriteString("\n## Filter API: AUTH round trip\n\n")
	if a.Reason != "" {
		fmt.Fprintf(b, "Did not run: %s\n", a.Reason)
		return
	}
	fmt.Fprintf(b, "One approved client (examples/clients/scanner -no-scan -no-cache: it answers at once, never cacheable) authorizes every exec "+
		"on the bench's tmpfs while execs are driven at %d/s for %.0f s (%.0f/s achieved, %d execs). "+
		"Latency is the agent's, from sending the request to receiving the answer, per decision record.\n\n",
		a.Rate, a.Seconds, a.Achieved, a.Execs)
	us := func(v float64) string { return fmt.Sprintf("%.0f µs", v) }
	rows := [][]string{{"AUTH round trip (agent ↔ client), " + a.Place, fmt.Sprint(a.Samples), us(a.P50us), us(a.P99us), us(a.MaxUs), fmt.Sprint(a.Missed)}}
	if rt := a.Realtime; rt != nil {
		what := "the same, agent --realtime and client -realtime (SCHED_RR 1)"
		if rt.Reason != "" {
			rows = append(rows, []string{what, "not measured: " + rt.Reason, "", "", "", ""})
		} else {
			rows = append(rows, []string{what, fmt.Sprint(rt.Samples), us(rt.P50us), us(rt.P99us), us(rt.MaxUs), fmt.Sprint(rt.Missed)})
		}
	}
	for _, f := range []struct {
		what string
		l    *Latency
	}{{"floor: two processes, one byte back and forth, idle machine", a.FloorIdle},
		{"floor: the same, under the same exec load, no agent", a.FloorLoaded}} {
		switch {
		case f.l == nil:
		case f.l.Error != "":
			rows = append(rows, []string{f.what, "not measured: " + f.l.Error, "", "", "", ""})
		default:
			rows = append(rows, []string{f.what, fmt.Sprint(f.l.Samples), us(f.l.P50us), us(f.l.P99us), us(f.l.MaxUs), "–"})
		}
	}
	table(b, []string{"what", "samples", "p50", "p99", "max", "deadlines missed"}, rows)
	b.WriteString("\nThe floors are the machine's, not Vigil's: two Go processes on the netpoller pass a byte over a unix socket pair " +
		"at the same rate (bench/harness/pingpong.go). Every AUTH request wakes the client and every answer wakes the agent, " +
		"so the round trip at normal priority cannot beat the floor under the same load; at real-time priority the two wakeups " +
		"no longer wait behind the exec load (internal/sched, docs/filter-api.md).\n")
}

func (r *Report) writeFleet(b *strings.Builder) {
	f := r.Fleet
	if f == nil {
		return
	}
	b.WriteString("\n## Fleet server under load\n\n")
	if f.Reason != "" {
		fmt.Fprintf(b, "Did not run: %s\n", f.Reason)
		return
	}
	b.WriteString("Simulated agents on loopback (in the bench's process, on the same cores as the server) enroll, keep a Watch " +
		"stream open and upload their events once a second; a failed upload is sent again at the next tick. Loss is what the " +
		"server acknowledged but did not store (the approval queue's counts) once the stored count stopped growing, plus what " +
		"it counted lost; \"stored\" is the rate the store kept up over the load and the drain after it (a stream answers " +
		"before it stores), \"pending\" what was still being stored when the drain's time was up; \"unsent\" is what was " +
		"still waiting on the simulated hosts at the end. A fresh server per row.\n\n")
	var rows [][]string
	for _, x := range f.Runs {
		if x.Error != "" {
			rows = append(rows, []string{x.Deployment, fmt.Sprintf("%d × %d/s", x.Hosts, x.EventsPerHost), "error: " + x.Error,
				"", "", "", "", "", "", "", ""})
			continue
		}
		ok := "no"
		if x.Sustained() {
			ok = "yes"
		}
		rows = append(rows, []string{x.Deployment, fmt.Sprintf("%d × %d/s", x.Hosts, x.EventsPerHost),
			fmt.Sprintf("%d in %.1f s (%.0f/s)", x.Enrolled, float64(x.Enrolled)/max(x.EnrollPerSec, 1e-9), x.EnrollPerSec),
			fmt.Sprintf("%.0f of %.0f", x.AckedPerSec, x.GoalPerSec),
			fmt.Sprintf("%.1f / %.1f ms", x.UploadP50ms, x.UploadP99ms),
			fmt.Sprint(x.UploadErrors), fmt.Sprintf("%d (+%d counted by the server)", x.Lost, x.ServerLost),
			fmt.Sprintf("%.0f/s; %.1f s, %d pending", x.StoredPerSec, x.DrainSeconds, x.Pending), fmt.Sprint(x.Unsent),
			fmt.Sprintf("%.0f%%, %.0f MiB", x.ServerCPU, x.ServerHWMMiB), ok})
	}
	table(b, []string{"deployment", "hosts × events/s", "enrolled", "events/s acknowledged", "upload p50 / p99",
		"upload errors", "lost", "stored; drain", "unsent", "server CPU, VmHWM", "sustained"}, rows)
}
