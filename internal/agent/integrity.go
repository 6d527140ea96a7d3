package agent

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/integrity"
	"github.com/vigil-hips/vigil/internal/sign"
)

// Integrity watch tuning.
const (
	// integrityDebounce is how long a check waits after a kernel event
	// that changes kernel state, so a burst of loads is one check and the
	// object the LSM hook saw being loaded is in place when it runs.
	integrityDebounce = time.Second
	// integrityRecheck: a check set off by kernel events is made again
	// this much later, for a load still in progress at the first (the LSM
	// hooks see a module or program before it is in place).
	integrityRecheck = 5 * time.Second
	// baselineAtStart names the in-memory baseline in status and logs.
	baselineAtStart = "taken at agent start"
	// kallsymsIntervals: /proc/kallsyms, most of a check's cost, is read
	// again after this many intervals (and at least kallsymsMinTTL), or
	// at once when the modules change or a module_load event comes.
	kallsymsIntervals = 10
	kallsymsMinTTL    = 10 * time.Minute
	// integrityNice is the niceness a collection runs at.
	integrityNice = 10
)

// Integrity event triggers (vigilv1.Integrity.trigger): "start",
// "interval", or the KernelOp.op of the events that set off the check.
const (
	triggerStart    = "start"
	triggerInterval = "interval"
)

// integrityOps are the kernel event ops (KernelOp.op) after which the
// kernel's state is checked at once (debounced).
var integrityOps = map[string]bool{
	"bpf_prog_load": true,
	"module_load":   true,
	"tracefs_write": true,
}

// integrityWatch runs the checks of `vigil integrity check` in the agent:
// at start, every interval, and shortly after a kernel event that changes
// kernel state. Each violation becomes an event of kind "integrity" when it
// appears, and again only when it changes or after it has gone and come
// back.
type integrityWatch struct {
	collect func(context.Context) *integrity.State
	// forget, when set, makes the next collect read everything afresh
	// (kallsyms); called after a module_load event.
	forget   func()
	interval time.Duration
	debounce time.Duration
	recheck  time.Duration
	emit     func(*vigilv1.Event)
	log      *slog.Logger
	gauge    func(float64) // current violations
	ownPID   uint32
	// triggers carries kernel ops from the pipeline (observe) to run;
	// observe never blocks, a full channel already has a check coming.
	triggers chan string

	mu         sync.Mutex
	base       *integrity.State // nil until the in-memory baseline is taken
	baseFrom   string
	reported   map[string]string // violation key -> what was reported
	checks     uint64
	lastCheck  time.Time
	lastTrig   string
	unreadable map[string]string
}

// newIntegrityWatch sets up the watch from cfg; nil when it is off. A
// baseline file is verified with the admin public key here, so an agent
// given a bad baseline does not start.
func newIntegrityWatch(ctx context.Context, cfg Config, log *slog.Logger, emit func(*vigilv1.Event), gauge func(float64)) (*integrityWatch, error) {
	if cfg.IntegrityInterval <= 0 {
		return nil, nil
	}
	w := &integrityWatch{
		interval: cfg.IntegrityInterval,
		debounce: integrityDebounce,
		recheck:  integrityRecheck,
		emit:     emit,
		log:      log,
		gauge:    gauge,
		ownPID:   uint32(os.Getpid()),
		triggers: make(chan string, 16),
		baseFrom: baselineAtStart,
		reported: map[string]string{},
	}
	c := integrity.NewCollector()
	c.OwnPID = os.Getpid()
	c.KallsymsTTL = max(kallsymsIntervals*cfg.IntegrityInterval, kallsymsMinTTL)
	w.collect = func(ctx context.Context) *integrity.State {
		s, _ := c.CollectContext(ctx)
		return s // nil when ctx is done
	}
	w.forget = c.ForgetKallsyms
	if cfg.IntegrityBaseline != "" {
		pub, err := sign.LoadPublicKey(cfg.IntegrityPubKey)
		if err != nil {
			return nil, fmt.Errorf("integrity baseline: %w", err)
		}
		b, err := os.ReadFile(cfg.IntegrityBaseline)
		if err != nil {
			return nil, fmt.Errorf("integrity baseline: %w", err)
		}
		if w.base, err = integrity.OpenBaseline(ctx, pub, b); err != nil {
			return nil, fmt.Errorf("refusing integrity baseline %s: %w", cfg.IntegrityBaseline, err)
		}
		w.baseFrom = cfg.IntegrityBaseline
	}
	return w, nil
}

// observe is the pipeline's hook: a kernel event that changes kernel
// state asks for a check. It never blocks. The agent's own loads (its
// feature probes while listing BPF objects) do not count.
func (w *integrityWatch) observe(ev *vigilv1.Event) {
	op := ev.GetKernel().GetOp()
	if !integrityOps[op] || (ev.GetProcess() != nil && ev.GetProcess().GetPid() == w.ownPID) {
		return
	}
	select {
	case w.triggers <- op:
	default:
	}
}

// run checks at start, every interval and after the triggers, until ctx
// is done.
func (w *integrityWatch) run(ctx context.Context) {
	w.check(ctx, triggerStart)
	tick := time.NewTicker(w.interval)
	defer tick.Stop()
	var debounce, recheck <-chan time.Time
	var recheckTrig string
	pending := map[string]bool{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			w.check(ctx, triggerInterval)
		case op := <-w.triggers:
			// The check coming after the debounce supersedes a recheck.
			recheck = nil
			pending[op] = true
			if debounce == nil {
				debounce = time.After(w.debounce)
			}
		case <-debounce:
			debounce = nil
			if pending["module_load"] && w.forget != nil {
				w.forget()
			}
			recheckTrig = strings.Join(slices.Sorted(maps.Keys(pending)), ",")
			w.check(ctx, recheckTrig)
			clear(pending)
			recheck = time.After(w.recheck)
		case <-recheck:
			recheck = nil
			w.check(ctx, recheckTrig)
		}
	}
}

// check collects the kernel's state, compares it with the baseline and
// emits the violations not reported yet in this form. A check still
// running when ctx is done is abandoned, so the agent stops without
// waiting for it (it can take seconds on a slow machine).
func (w *integrityWatch) check(ctx context.Context, trigger string) {
	w.mu.Lock()
	base := w.base
	w.mu.Unlock()
	type result struct {
		cur *integrity.State
		r   *integrity.Report
	}
	res := make(chan result, 1)
	go func() {
		// The check runs on a thread of its own at a low priority, so it
		// gives way to the machine's work; the thread is never unlocked,
		// so it ends with the goroutine, its priority with it.
		runtime.LockOSThread()
		_ = unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), integrityNice)
		cur := w.collect(ctx)
		if cur == nil {
			res <- result{}
			return
		}
		b := base
		if b == nil {
			b = cur // the in-memory baseline
		}
		res <- result{cur, integrity.Compare(b, cur)}
	}()
	var cur *integrity.State
	var r *integrity.Report
	select {
	case got := <-res:
		cur, r = got.cur, got.r
	case <-ctx.Done():
		return
	}
	if cur == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.base == nil {
		w.base = cur
		w.log.Info("integrity baseline taken", "bpf_programs", len(cur.BPF.Programs), "bpf_maps", len(cur.BPF.Maps),
			"bpf_links", len(cur.BPF.Links), "modules", len(cur.Modules))
	}
	now := map[string]string{}
	for _, f := range r.Findings {
		if f.Severity != integrity.Violation {
			continue
		}
		in := integrityDetail(f, trigger)
		key, form := integrityKey(f, in)
		now[key] = form
		if w.reported[key] == form {
			continue
		}
		w.log.Warn("integrity violation", "check", in.Check, "subject", in.Subject, "detail", in.Detail, "trigger", trigger)
		w.emit(&vigilv1.Event{
			Time:    timestamppb.Now(),
			Kind:    "integrity",
			Backend: "agent",
			Hook:    "integrity_watch",
			Detail:  &vigilv1.Event_Integrity{Integrity: in},
		})
	}
	for key := range w.reported {
		if _, ok := now[key]; !ok {
			w.log.Info("integrity violation gone", "violation", strings.ReplaceAll(key, "\x00", " "))
		}
	}
	w.reported = now
	if !maps.Equal(w.unreadable, cur.Unreadable) {
		for sec, why := range cur.Unreadable {
			if w.unreadable[sec] != why {
				w.log.Info("integrity: this kernel does not let the agent read a section; not a violation by itself",
					"section", sec, "reason", why)
			}
		}
		w.unreadable = maps.Clone(cur.Unreadable)
	}
	w.checks++
	w.lastCheck = time.Now()
	w.lastTrig = trigger
	if w.gauge != nil {
		w.gauge(float64(len(now)))
	}
}

// status is the watch's part of the Status answer.
func (w *integrityWatch) status() *vigilv1.IntegrityStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	st := &vigilv1.IntegrityStatus{
		Interval:    durationpb.New(w.interval),
		Baseline:    w.baseFrom,
		Violations:  uint32(len(w.reported)),
		Checks:      w.checks,
		LastTrigger: w.lastTrig,
		Unreadable:  maps.Clone(w.unreadable),
	}
	if !w.lastCheck.IsZero() {
		st.LastCheck = timestamppb.New(w.lastCheck)
	}
	return st
}

// integrityChecks names a finding's section as vigilv1.Integrity.check.
var integrityChecks = map[string]string{
	integrity.SecModules:  "module",
	integrity.SecHooks:    "hook",
	integrity.SecSyscalls: "syscall_table",
}

func integrityDetail(f integrity.Finding, trigger string) *vigilv1.Integrity {
	check := f.Section
	if c, ok := integrityChecks[check]; ok {
		check = c
	}
	switch {
	case f.Program != nil:
		check = "bpf_prog"
	case f.Map != nil:
		check = "bpf_map"
	case f.Link != nil:
		check = "bpf_link"
	}
	return &vigilv1.Integrity{
		Check:    check,
		Subject:  f.Subject,
		Expected: f.Expected,
		Actual:   f.Actual,
		Detail:   f.Message,
		Trigger:  trigger,
	}
}

// integrityKey is a violation's identity (what it is about) and its form
// (what was said about it); a violation is reported again when its form
// changes. BPF objects are keyed by id as well: two loads of the same
// program are two violations.
func integrityKey(f integrity.Finding, in *vigilv1.Integrity) (key, form string) {
	key = in.Check + "\x00" + in.Subject
	switch {
	case f.Program != nil:
		key += fmt.Sprintf("\x00%d", f.Program.ID)
	case f.Map != nil:
		key += fmt.Sprintf("\x00%d", f.Map.ID)
	case f.Link != nil:
		key += fmt.Sprintf("\x00%d", f.Link.ID)
	}
	return key, in.Expected + "\x00" + in.Actual + "\x00" + in.Detail
}

// startIntegrity starts the integrity watch, if configured, once the
// sensors are attached: Vigil's own BPF objects are then loaded and held.
// It stops when ctx or svcCtx is done; wg waits for it.
func (a *agent) startIntegrity(ctx, svcCtx context.Context, wg *sync.WaitGroup, collect func() *integrity.State) error {
	w, err := newIntegrityWatch(ctx, a.cfg, a.log, a.emit, a.metrics.IntegrityViolations.Set)
	if err != nil || w == nil {
		return err
	}
	if collect != nil {
		w.collect = func(context.Context) *integrity.State { return collect() }
	}
	a.integrity.Store(w)
	a.log.Info("integrity watch on", "interval", w.interval, "baseline", w.baseFrom)
	wctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(svcCtx, cancel)
	wg.Go(func() {
		defer cancel()
		defer stop()
		w.run(wctx)
	})
	return nil
}
