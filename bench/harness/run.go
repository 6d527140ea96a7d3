// Package harness is the part of Vigil's benchmark suite that touches the
// machine: it installs what the benchmarks need, starts and stops each
// configuration of the table (Configs), runs the microbenchmarks,
// throughput ramps, cost measurements, the build workload and the VM
// suite, and fills a bench.Report. Everything it changes outside its work
// directory is recorded in a Journal and put back, also after a crash
// (`vigil-bench cleanup`).
package harness

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vigil-hips/vigil/bench"
)

// Options are the inputs of a host run.
type Options struct {
	// Vigil, VMTest and Self are the binaries: the agent, tools/vmtest,
	// and this program (static, for exec-in and the VM guest).
	Vigil, VMTest, Self string
	// Out is the results directory (report.md, report.json, chart.svg).
	Out string
	// Journal is the undo journal's path (DefaultJournal).
	Journal string
	// Cache keeps downloads between runs (the workload's sources).
	Cache string
	// Root is the repository, where policy files are looked for.
	Root string
	// Phases limits the run to some of: micro, cost, throughput,
	// workload, decision, auth, fleet, vm (empty: all).
	Phases []string
	// VMKernels overrides the kernels of the VM suite.
	VMKernels []string
	// Configs limits the host configurations to these names (empty: all).
	Configs []string
	// NoInstall keeps the bench from running apt-get.
	NoInstall bool
	// Keep keeps the work directory (daemon logs) after the run.
	Keep bool
}

// Env is a run's state, shared by the phases (and by the guest side in
// the VM).
type Env struct {
	Opts  Options
	P     Params
	Log   *slog.Logger
	Vigil string
	Self  string
	Work  string
	Tools Tools
	Acct  Accounting
	// Journal records what to undo.
	Journal *Journal
	// InVM is set on the guest side.
	InVM bool
	// PolicyFlag says `vigil agent` has --policy; PolicyDirs is where
	// policy files are looked for.
	PolicyFlag policyFlag
	PolicyDirs []string
	// execFS is the bench's own tmpfs (host), the only filesystem an
	// agent may mark; execFSErr says why there is none.
	execFS, execFSErr string
	// trustDB is the guest's trust database, scanned once.
	trustDB string
	// NotInstalled maps Debian packages that could not be installed to
	// why.
	NotInstalled map[string]string

	seq        atomic.Int64
	peaks      map[string]peakRSS
	microCost  map[string]*costAcc
	paced      map[string]pacedCost
	backends   map[string]string
	startTimes map[string][]float64
	broken     map[string]string
	errs       []string
}

func newEnv(p Params, log *slog.Logger) *Env {
	return &Env{P: p, Log: log, NotInstalled: map[string]string{}, peaks: map[string]peakRSS{},
		microCost: map[string]*costAcc{}, paced: map[string]pacedCost{}, backends: map[string]string{}, startTimes: map[string][]float64{}, broken: map[string]string{}}
}

func (e *Env) errorf(format string, a ...any) {
	msg := fmt.Sprintf(format, a...)
	e.Log.Error(msg)
	e.errs = append(e.errs, msg)
}

// hostPackages are the Debian packages the host run needs: a C compiler
// and libc's static archive for the helpers, and the two products the
// agent is compared with.
var hostPackages = []string{"gcc", "libc6-dev", "auditd", "fapolicyd"}

func (o Options) phase(name string) bool {
	return len(o.Phases) == 0 || slices.Contains(o.Phases, name)
}

// Run is `vigil-bench run`: the whole suite on the host (and in the VM),
// then the report. Whatever happens, what the run changed on the machine
// is put back before it returns.
func Run(ctx context.Context, opts Options, p Params, log *slog.Logger) (rep *bench.Report, err error) {
	e := newEnv(p, log)
	e.Opts, e.Vigil, e.Self = opts, opts.Vigil, opts.Self
	if opts.Journal == "" {
		opts.Journal = DefaultJournal
	}
	if len(opts.VMKernels) > 0 {
		e.P.VMKernels = opts.VMKernels
	}
	lock, err := TryLock(opts.Journal)
	if err != nil {
		return nil, err
	}
	defer lock.Unlock()
	if err := Cleanup(ctx, opts.Journal, log); err != nil {
		return nil, fmt.Errorf("an earlier run left changes that could not be undone: %w", err)
	}
	if e.Journal, err = OpenJournal(opts.Journal); err != nil {
		return nil, err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Minute)
		defer cancel()
		if cerr := Cleanup(cctx, opts.Journal, log); cerr != nil {
			log.Error("cleanup", "err", cerr)
			if err == nil {
				err = cerr
			}
		}
	}()
	e.Work, err = os.MkdirTemp("", "vigil-bench-")
	if err != nil {
		return nil, err
	}
	if !opts.Keep {
		e.Journal.Update(func(s *JournalState) { s.Dirs = append(s.Dirs, e.Work) })
	} else {
		log.Info("work directory kept", "dir", e.Work)
	}

	rep = &bench.Report{Title: "Vigil benchmarks", Mode: p.Mode, Started: time.Now()}
	rep.Machine = machineInfo()
	e.Acct = DetectAccounting()
	rep.Machine.CPUAccounting = e.Acct.Method
	rep.Machine.Notes = append(rep.Machine.Notes, busyNotes()...)

	e.NotInstalled = e.EnsurePackages(ctx, hostPackages)
	if r := e.missing("gcc"); r != "" {
		return nil, fmt.Errorf("%s: the helpers cannot be built", r)
	}
	if e.Tools, err = BuildTools(ctx, filepath.Join(e.Work, "tools")); err != nil {
		return nil, err
	}
	e.PolicyFlag = agentPolicyFlag(ctx, e.Vigil)
	e.PolicyDirs = policyDirs(opts.Root)
	e.setupExecFS()

	// Which configurations run on the host.
	var hostCfgs []*Config
	for i := range Configs {
		c := &Configs[i]
		st := bench.ConfigStatus{Name: c.Name, Label: c.Label, Place: "host", Notes: c.Notes}
		reason := ""
		switch {
		case c.Places&Host == 0:
			reason = c.PlaceNote
		case c.Check != nil:
			reason = c.Check(ctx, e)
		}
		if len(opts.Configs) > 0 && !slices.Contains(opts.Configs, c.Name) && c.Name != Baseline && reason == "" {
			reason = "left out of this run (-configs)"
		}
		if reason != "" {
			st.Reason = reason
			st.Notes = nil
		} else {
			st.Ran = true
			hostCfgs = append(hostCfgs, c)
		}
		rep.Configs = append(rep.Configs, st)
	}
	if slices.ContainsFunc(hostCfgs, func(c *Config) bool { return c.Name == "auditd" }) {
		if err := e.primeAudit(ctx); err != nil {
			e.errorf("prime audit: %v", err)
		} else {
			rep.Machine.Notes = append(rep.Machine.Notes, "The kernel gives new tasks an audit context from the first "+
				"time audit is enabled until reboot. The bench enabled and disabled audit once before measuring, so every "+
				"configuration (no agent included) ran in that state; the auditd column is auditd and its rule on top.")
		}
	}

	if opts.phase("micro") {
		rep.Micro = append(rep.Micro, e.runSuite(ctx, "host", hostCfgs, p.Rounds, p.BatchScale))
	}
	var agent *Config
	for _, c := range hostCfgs {
		if c.Name == "vigil" {
			agent = c
		}
	}
	if opts.phase("cost") && ctx.Err() == nil {
		e.runCost(ctx, hostCfgs)
	}
	if opts.phase("throughput") && agent != nil && ctx.Err() == nil {
		t, err := e.runThroughput(ctx, agent)
		if err != nil {
			e.errorf("throughput: %v", err)
		}
		rep.Throughput = t
	}
	if opts.phase("workload") && agent != nil && ctx.Err() == nil {
		w, err := e.runWorkload(ctx, agent)
		if err != nil {
			e.errorf("workload: %v", err)
		}
		rep.Workload = w
	}
	if opts.phase("decision") && ctx.Err() == nil {
		if c := findConfig(hostCfgs, LockdownHost); c != nil {
			rep.Decision = append(rep.Decision, e.runDecision(ctx, "host", c, e.execFS, p.DecisionRounds, p.DecisionSamples)...)
		} else {
			rep.Decision = append(rep.Decision, decisionNotRun("host", LockdownHost+": "+configReason(rep.Configs, LockdownHost, "host"))...)
		}
	}
	if opts.phase("auth") && ctx.Err() == nil {
		secs := 20.0
		if p.Mode == "quick" {
			secs = 5
		}
		rep.Auth = e.runAuth(ctx, secs)
	}
	if opts.phase("fleet") && ctx.Err() == nil {
		rep.Fleet = e.runFleet(ctx, p.Mode == "quick")
	}
	if opts.phase("vm") && ctx.Err() == nil {
		for _, k := range e.P.VMKernels {
			if ctx.Err() != nil {
				break
			}
			suite, statuses, decision, err := e.runVM(ctx, k, opts.phase("decision"))
			if err != nil {
				e.errorf("vm %s: %v", k, err)
			}
			rep.Configs = append(rep.Configs, statuses...)
			if len(suite.Ops) > 0 {
				rep.Micro = append(rep.Micro, suite)
			}
			if opts.phase("decision") {
				if len(decision) == 0 {
					why := "the VM suite did not run"
					if err != nil {
						why += ": " + err.Error()
					}
					decision = decisionNotRun("vm "+k, shorten(why, 200))
				}
				rep.Decision = append(rep.Decision, decision...)
			}
		}
	}

	// Host configurations that failed at some point say so.
	for i := range rep.Configs {
		st := &rep.Configs[i]
		if why, ok := e.broken[st.Name]; ok && st.Place == "host" {
			st.Reason = why
			st.Ran = len(rep.Micro) > 0 && slices.Contains(rep.Micro[0].Configs, st.Name)
		}
		if st.Place == "host" && st.Ran {
			st.Notes = append(st.Notes, e.runNotes(st.Name)...)
		}
	}
	rep.Cost = e.costs(rep.Cost)
	if ctx.Err() != nil {
		e.errorf("interrupted: %v", ctx.Err())
	}
	rep.Errors = e.errs
	rep.Machine.LoadEnd = loadAvg()
	rep.Finished = time.Now()
	rep.Seconds = rep.Finished.Sub(rep.Started).Seconds()
	rep.Targets = Targets(rep)
	rep.Findings = Findings(rep)
	return rep, nil
}

// policyDirs are where policy files (baseline.yaml, ...) are looked for.
func policyDirs(root string) []string {
	if root == "" {
		root, _ = os.Getwd()
	}
	var out []string
	for _, d := range []string{"examples/policies", "policies", "deploy/policies"} {
		out = append(out, filepath.Join(root, d))
	}
	return out
}

func machineInfo() bench.Machine {
	var u unix.Utsname
	unix.Uname(&u)
	return bench.Machine{
		Kernel:    unix.ByteSliceToString(u.Release[:]),
		CPU:       cpuModel(),
		Cores:     numCPU(),
		MemoryGiB: memoryGiB(),
		LoadStart: loadAvg(),
	}
}

func numCPU() int {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err == nil {
		return set.Count()
	}
	return 0
}

// busyNotes says what else runs on the machine that could disturb the
// measurements: VMs, other Vigil agents, a high load.
func busyNotes() []string {
	var notes []string
	if q := len(pidsByComm("qemu-system-x86")); q > 0 {
		notes = append(notes, fmt.Sprintf("%d qemu process(es) were running when the bench started (other work on this machine).", q))
	}
	if v := len(pidsByComm("vigil")); v > 0 {
		notes = append(notes, fmt.Sprintf("%d other vigil process(es) were running when the bench started: their sensors "+
			"add to every configuration, the baseline included.", v))
	}
	if l := loadAvg(); l > 0.5 {
		notes = append(notes, fmt.Sprintf("The machine was not idle when the bench started (load average %.2f): expect noise.", l))
	}
	return notes
}

// findConfig returns the configuration name among cfgs, or nil.
func findConfig(cfgs []*Config, name string) *Config {
	for _, c := range cfgs {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// configReason says why configuration name did not run at place.
func configReason(sts []bench.ConfigStatus, name, place string) string {
	for _, st := range sts {
		if st.Name == name && st.Place == place && st.Reason != "" {
			return st.Reason
		}
	}
	return "not run"
}

// runNotes says how a configuration behaved in this run: its backend and
// how long it took to be ready.
func (e *Env) runNotes(name string) []string {
	var out []string
	if b := e.backends[name]; b != "" {
		out = append(out, "backend "+b)
	}
	if ts := e.startTimes[name]; len(ts) > 0 {
		out = append(out, fmt.Sprintf("ready %.1f s after start (median of %d starts)", bench.Median(ts), len(ts)))
	}
	return out
}
