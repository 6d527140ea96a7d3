// Package agent runs the Vigil agent: it attaches the sensors and carries
// their events to the event store, the JSON-lines file, the metrics and the
// API's followers, and serves the API.
//
// The pipeline is one goroutine: events are batched, each batch is stored
// (one transaction, which assigns the ids), then written to the JSON-lines
// file and published to followers. Publishing only stored events is what
// lets a follower that falls behind catch up from the store.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/timestamppb"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/admin"
	"github.com/vigil-hips/vigil/internal/filter"
	"github.com/vigil-hips/vigil/internal/integrity"
	"github.com/vigil-hips/vigil/internal/metrics"
	"github.com/vigil-hips/vigil/internal/ocsf"
	"github.com/vigil-hips/vigil/internal/probe"
	"github.com/vigil-hips/vigil/internal/sched"
	"github.com/vigil-hips/vigil/internal/sensor"
	"github.com/vigil-hips/vigil/internal/server"
	"github.com/vigil-hips/vigil/internal/store"
	"github.com/vigil-hips/vigil/internal/trust"
)

// Pipeline tuning.
const (
	// A store transaction costs a fixed ~0.5 ms (commit, WAL frames) and
	// each event's rows less when there are more of them (BenchmarkAppend:
	// 15 µs of CPU an event in batches of 150, 11 µs at 512, 9 µs at 1,024).
	// At 1,000 execs/s (3,000 events/s) a 250 ms tick fills about 750 of
	// 1,024; agent CPU for 6,000 execs fell by about 12% from 512/100 ms.
	// Events reach the store, `vigil events` and subscribers up to this
	// much (plus the reader's 50 ms poll) after they happen; no decision
	// waits on them.
	batchSize     = 1024                   // events per store transaction, at most
	flushInterval = 250 * time.Millisecond // longest an event waits for its batch
	drainTimeout  = 5 * time.Second        // on stop, how long to wait for the sensor to close its channel
	stopTimeout   = 5 * time.Second        // on stop, how long API calls may take to finish
	storeTimeout  = 30 * time.Second       // one store operation
	localQueue    = 4096                   // events from the agent's own sources waiting for the pipeline
	gatherDelay   = 5 * time.Millisecond   // after a sensor event, how long the pipeline lets others queue before taking them
)

// Kernel is what the kernel offers, for Status.
type Kernel struct {
	Release  string // uname -r; filled in by the agent when empty
	Features []*vigilv1.Feature
	// Guarantees are what the kernel lets an agent guarantee at best, per
	// control (internal/probe).
	Guarantees []*vigilv1.Guarantee
	// GuaranteesFor, when set, is what this kernel guarantees for an
	// agent that runs as run says (probe.Report.GuaranteesFor). The fleet
	// server is told those, not the kernel's best.
	GuaranteesFor func(run probe.Running) []*vigilv1.Guarantee
}

// Deps are the agent's collaborators.
type Deps struct {
	// NewSensor creates the (not yet started) sensor. Required.
	NewSensor func() (sensor.Sensor, error)
	// Kernel probes the kernel once at start. Optional.
	Kernel func() Kernel
	// Logger receives the agent's logs. Optional.
	Logger *slog.Logger
	// Version is reported by Status.
	Version string
	// Integrity reads the kernel's state for the integrity watch.
	// Optional: the real kernel, the agent's own BPF objects marked.
	Integrity func() *integrity.State
	// NewGuard starts tamper protection. Optional: nil, the agent does
	// not protect itself.
	NewGuard func(GuardConfig) (Guard, error)
}

// Run runs the agent until ctx is done or the sensor fails. The API socket
// is served before the sensor is attached, so `vigil status` can tell an
// agent that is starting from one that is not running; Status reports
// sensors_attached once it is. On return everything is flushed and closed.
func Run(ctx context.Context, cfg Config, deps Deps) (err error) {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("agent config: %w", err)
	}
	if deps.NewSensor == nil {
		return errors.New("agent: no sensor constructor")
	}
	log := deps.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// Before any goroutine of the agent starts: threads made later
	// inherit the policy, and bulk work moves itself off it.
	if cfg.Realtime {
		if err := sched.Realtime(); err != nil {
			return fmt.Errorf("--realtime: %w", err)
		}
		log.Info("decision path at real-time priority", "policy", "SCHED_RR", "priority", sched.Priority)
	}
	a := &agent{
		cfg:     cfg,
		log:     log,
		version: deps.Version,
		started: time.Now(),
		metrics: metrics.New(),
		broker:  server.NewBroker(),
		local:   make(chan *vigilv1.Event, localQueue),
	}
	// Stop (the API call) ends the agent like ctx does.
	ctx, a.stop = context.WithCancel(ctx)
	defer a.stop()
	var cleanups []func() error
	defer func() {
		for _, c := range slices.Backward(cleanups) {
			err = errors.Join(err, c())
		}
	}()

	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	lock, err := lockStateDir(cfg.StateDir)
	if err != nil {
		return err
	}
	cleanups = append(cleanups, lock.Close)

	dbPath := filepath.Join(cfg.StateDir, "events.db")
	a.store, err = store.Open(ctx, dbPath)
	if err != nil {
		return err
	}
	cleanups = append(cleanups, a.store.Close)

	if err := a.openTrust(ctx); err != nil {
		return err
	}
	cleanups = append(cleanups, a.xc.db.Close)

	if cfg.JSONLPath != "" {
		a.jsonl, err = openJSONL(cfg.JSONLPath)
		if err != nil {
			return err
		}
		cleanups = append(cleanups, a.jsonl.close)
	}
	if cfg.OCSFPath != "" {
		a.ocsf, err = ocsf.New(ocsf.Config{File: cfg.OCSFPath, Product: ocsf.Product{Name: "Vigil agent", Version: deps.Version}}, log)
		if err != nil {
			return err
		}
		a.ocsfHost.Hostname, _ = os.Hostname()
		a.ocsfHost.ID, _ = admin.HostID(cfg.HostIDFile)
		cleanups = append(cleanups, func() error { return a.ocsf.Close(time.Second) })
	}

	// Background services (API, metrics, pruning) stop when svcCtx is
	// cancelled, after the pipeline has flushed.
	svcCtx, stopServices := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	svcErr := make(chan error, 4)
	cleanups = append(cleanups, func() error {
		stopServices()
		wg.Wait()
		close(svcErr)
		var errs []error
		for e := range svcErr {
			errs = append(errs, e)
		}
		return errors.Join(errs...)
	})

	if cfg.MetricsAddr != "" {
		ln, err := metrics.Listen(cfg.MetricsAddr)
		if err != nil {
			return err
		}
		wg.Go(func() {
			if err := a.metrics.Serve(svcCtx, ln); err != nil {
				svcErr <- err
			}
		})
	}

	if err := a.loadFleet(ctx); err != nil {
		return err
	}

	// Probed once, before the API serves Status.
	if deps.Kernel != nil {
		a.kernel = deps.Kernel()
	}
	if a.kernel.Release == "" {
		a.kernel.Release = unameRelease()
	}

	a.metrics.CollectRuleHits(a.ruleHits)
	srv, err := server.New(server.Config{Store: a.store, Broker: a.broker, Status: a.status,
		ApplyPolicy: a.applyPolicy, BadPolicy: ErrBadPolicy,
		Pending:         a.fleetPending(trust.PendingHandler(a.xc.db, a.policySources)),
		Approve:         trust.ApproveHandler(a.xc.db, a.reloadExecControl),
		AuthorizePolicy: a.authorizePolicy, AuthorizeApprove: a.authorizeApprove, StopAgent: a.stopAgent})
	if err != nil {
		return err
	}
	ln, err := server.Listen(cfg.Socket)
	if err != nil {
		return err
	}
	wg.Go(func() {
		if err := srv.Serve(ln); err != nil {
			svcErr <- err
		}
	})
	wg.Go(func() {
		<-svcCtx.Done()
		// Followers end when the broker closes; then calls drain.
		a.broker.Close()
		sctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
		defer cancel()
		srv.Shutdown(sctx)
	})
	wg.Go(func() { a.pruneLoop(svcCtx) })
	wg.Go(func() { a.trustLoop(svcCtx) })
	wg.Go(func() { a.pendingLoop(svcCtx) })
	log.Info("agent serving", "socket", cfg.Socket, "state_dir", cfg.StateDir,
		"metrics_addr", cfg.MetricsAddr, "jsonl", cfg.JSONLPath, "pid", os.Getpid(), "version", deps.Version)

	s, err := deps.NewSensor()
	if err != nil {
		return fmt.Errorf("sensor: %w", err)
	}
	cleanups = append(cleanups, func() error {
		if err := s.Close(); err != nil {
			return fmt.Errorf("sensor close: %w", err)
		}
		return nil
	})
	if err := s.Start(ctx); err != nil {
		if ctx.Err() != nil {
			log.Info("agent stopped while attaching the sensors")
			return nil
		}
		return fmt.Errorf("sensor start: %w", err)
	}
	a.sensor.Store(&s)
	info := s.Info()
	log.Info("sensors attached", "backend", info.Backend, "hooks", len(info.Hooks), "missing_hooks", len(info.MissingHooks))
	// The policy is in force before the agent says it is ready.
	if err := a.startPolicy(); err != nil {
		return err
	}
	if h, ok := s.(sensor.Handover); ok {
		if err := h.FinishHandover(); err != nil {
			return fmt.Errorf("sensor handover: %w", err)
		}
	}
	unprotect, err := a.startProtection(ctx, deps.NewGuard, s)
	if err != nil {
		return err
	}
	if unprotect != nil {
		cleanups = append(cleanups, unprotect)
	}
	// The filter API, once the policy is in force: its clients' kernel
	// rules are merged into it.
	fsrv, err := a.startFilter(ctx)
	if err != nil {
		return err
	}
	fln, err := server.Listen(a.filterSocket())
	if err != nil {
		return fmt.Errorf("filter API: %w", err)
	}
	a.filter.Store(fsrv)
	if au, ok := s.(sensor.Authorizer); ok {
		au.SetAuthorizer(a.authorizeFile)
	}
	wg.Go(func() {
		if err := fsrv.Serve(fln); err != nil {
			svcErr <- err
		}
	})
	wg.Go(func() {
		<-svcCtx.Done()
		fsrv.Shutdown()
	})
	a.setAttached(true)
	if a.fleet != nil {
		wg.Go(func() { a.runFleet(svcCtx) })
	}
	if err := a.startIntegrity(ctx, svcCtx, &wg, deps.Integrity); err != nil {
		return err
	}
	if err := sdNotify("READY=1"); err != nil {
		log.Warn("systemd notification failed", "err", err)
	}

	err = a.pipeline(ctx, s)
	a.setAttached(false)
	if nerr := sdNotify("STOPPING=1"); nerr != nil {
		log.Warn("systemd notification failed", "err", nerr)
	}
	if err != nil {
		log.Error("agent stopping", "err", err)
	} else {
		log.Info("agent stopping")
	}
	return err
}

// agent is the running agent's state shared by the pipeline, the pruner
// and the API.
type agent struct {
	cfg     Config
	log     *slog.Logger
	version string
	started time.Time
	kernel  Kernel

	store    *store.Store
	jsonl    *jsonlWriter
	ocsf     *ocsf.Exporter // nil: no OCSF file
	ocsfHost ocsf.Host
	metrics  *metrics.Metrics
	broker   *server.Broker

	sensor    atomic.Pointer[sensor.Sensor]
	policy    policyState
	xc        *execState // set before the API serves
	filter    atomic.Pointer[filter.Server]
	attached  atomic.Bool
	stored    atomic.Uint64
	storeErrs atomic.Uint64
	// local carries events the agent makes itself (integrity watch,
	// tamper reports, execution control) into the pipeline; see emit.
	local     chan *vigilv1.Event
	localLost atomic.Uint64
	// integrity is the kernel integrity watch, nil when off; set before
	// the pipeline starts.
	integrity atomic.Pointer[integrityWatch]
	lastLost  uint64 // pipeline goroutine only
	storeBad  bool   // pipeline goroutine only: the last append failed
	jsonlBad  bool   // pipeline goroutine only: the last write failed
	ocsfBad   bool   // pipeline goroutine only: the last OCSF write failed

	// Tamper protection and administration (tamper.go).
	prot           atomic.Pointer[protection]
	stop           context.CancelFunc // ends Run, for the Stop call
	stopAuthorized atomic.Bool        // Stop was called (with a valid token when needed)
	adminKeyPath   string             // the admin key in use

	fleet *fleetState // nil: not a fleet member (fleet.go)
}

func (a *agent) setAttached(v bool) {
	a.attached.Store(v)
	if v {
		a.metrics.SensorAttached.Set(1)
	} else {
		a.metrics.SensorAttached.Set(0)
	}
}

// emit queues an event the agent made itself (not read from the kernel)
// for the pipeline, which stores and publishes it like a sensor event. It
// never blocks: when the queue is full the event is counted as lost
// (localLost) and logged.
func (a *agent) emit(ev *vigilv1.Event) {
	select {
	case a.local <- ev:
	default:
		a.localLost.Add(1)
		a.log.Warn("agent event queue full, event dropped", "kind", ev.GetKind())
	}
}

// pipeline carries events from s until ctx is done (then drains what the
// sensor still delivers) or the sensor's channel closes on its own (an
// error).
func (a *agent) pipeline(ctx context.Context, s sensor.Sensor) error {
	defer sched.Background(a.warnSched)()
	events := s.Events()
	batch := make([]*vigilv1.Event, 0, batchSize)
	tick := time.NewTicker(flushInterval)
	defer tick.Stop()
	// The counter of each kind, looked up once rather than hashed on
	// every event; there are a dozen kinds.
	kindCounters := make(map[string]prometheus.Counter)
	add := func(ev *vigilv1.Event) {
		if ev.GetTime() == nil {
			ev.Time = timestamppb.Now()
		}
		if fixEventUTF8(ev) {
			a.log.Debug("event had invalid UTF-8, replaced", "seq", ev.GetSeq(), "kind", ev.GetKind())
		}
		byKind, ok := kindCounters[ev.GetKind()]
		if !ok {
			byKind = a.metrics.Events.WithLabelValues(ev.GetKind())
			kindCounters[ev.GetKind()] = byKind
		}
		byKind.Inc()
		a.noteClaims(ev)
		a.notePending(ev)
		a.fleetPreview(ev)
		if w := a.integrity.Load(); w != nil {
			w.observe(ev) // never blocks
		}
		batch = append(batch, ev)
		if len(batch) == batchSize {
			a.flush(s, batch)
			batch = make([]*vigilv1.Event, 0, batchSize)
		}
	}
	take := func(ev *vigilv1.Event) { // an event from the sensor
		add(ev)
		if t := a.sensorTamper(ev); t != nil {
			add(t)
		}
	}
	flush := func() {
		if len(batch) > 0 {
			a.flush(s, batch)
			batch = make([]*vigilv1.Event, 0, batchSize)
		}
		a.updateLost(s)
	}

	for {
		select {
		case ev, ok := <-events:
			if !ok {
				flush()
				if ctx.Err() != nil {
					return nil
				}
				return errors.New("sensor stopped delivering events")
			}
			take(ev)
			// Events come from the ring buffer one at a time; waking for
			// each costs more than handling it. Let the next ones queue for
			// a moment, then take those queued without blocking.
			time.Sleep(gatherDelay)
		gather:
			for range cap(events) {
				select {
				case ev, ok := <-events:
					if !ok {
						break gather // the select above sees it closed
					}
					take(ev)
				default:
					break gather
				}
			}
		case ev := <-a.local:
			add(ev)
		case <-tick.C:
			flush()
		case <-ctx.Done():
			// The sensor closes its channel once it sees ctx done; take
			// what it still has.
			drain := time.NewTimer(drainTimeout)
			defer drain.Stop()
			for {
				select {
				case ev, ok := <-events:
					if !ok {
						flush()
						return nil
					}
					add(ev)
				case ev := <-a.local:
					add(ev)
				case <-tick.C:
					flush()
				case <-drain.C:
					flush()
					a.log.Warn("sensor did not close its event channel in time", "timeout", drainTimeout)
					return nil
				}
			}
		}
	}
}

// flush stores batch, then writes it to the JSON-lines file and publishes
// it. Events that could not be stored (id 0) still go to both.
func (a *agent) flush(s sensor.Sensor, batch []*vigilv1.Event) {
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	err := a.store.Append(ctx, batch)
	cancel()
	if err != nil {
		a.storeErrs.Add(1)
		a.metrics.StoreErrors.Inc()
		if !a.storeBad {
			a.log.Error("storing events failed; events go on to followers and the jsonl file unstored",
				"err", err, "events", len(batch))
		}
	} else {
		a.stored.Add(uint64(len(batch)))
		a.metrics.EventsStored.Add(float64(len(batch)))
		if a.storeBad {
			a.log.Info("storing events works again", "store_errors", a.storeErrs.Load())
		}
	}
	a.storeBad = err != nil

	if a.jsonl != nil {
		err := a.jsonl.write(batch)
		if err != nil && !a.jsonlBad {
			a.log.Error("writing the jsonl output failed", "err", err, "path", a.cfg.JSONLPath)
		} else if err == nil && a.jsonlBad {
			a.log.Info("writing the jsonl output works again", "path", a.cfg.JSONLPath)
		}
		a.jsonlBad = err != nil
	}
	if a.ocsf != nil {
		_, err := a.ocsf.Export(a.ocsfHost, batch)
		if err != nil && !a.ocsfBad {
			a.log.Error("writing the OCSF output failed", "err", err, "path", a.cfg.OCSFPath)
		} else if err == nil && a.ocsfBad {
			a.log.Info("writing the OCSF output works again", "path", a.cfg.OCSFPath)
		}
		a.ocsfBad = err != nil
	}
	a.broker.Publish(batch)
	if f := a.filter.Load(); f != nil {
		f.Publish(batch)
	}
}

// updateLost moves the lost-events counter to the sensor's count.
func (a *agent) updateLost(s sensor.Sensor) {
	lost := s.Stats().Lost
	if lost > a.lastLost {
		a.metrics.EventsLost.Add(float64(lost - a.lastLost))
		a.lastLost = lost
	}
}

// warnSched logs that bulk work could not leave real-time priority.
func (a *agent) warnSched(err error) { a.log.Warn("scheduling", "err", err) }

// pruneLoop prunes the store to the retention bounds, at start and every
// PruneInterval.
func (a *agent) pruneLoop(ctx context.Context) {
	defer sched.Background(a.warnSched)()
	r := a.cfg.Retention
	if r.MaxAge <= 0 && r.MaxRows <= 0 {
		return
	}
	t := time.NewTicker(a.cfg.PruneInterval)
	defer t.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, storeTimeout)
		n, err := a.store.Prune(pctx, r, time.Now())
		cancel()
		switch {
		case err != nil && ctx.Err() == nil:
			a.storeErrs.Add(1)
			a.metrics.StoreErrors.Inc()
			a.log.Error("pruning the event store failed", "err", err, "pruned", n)
		case n > 0:
			a.log.Debug("pruned the event store", "pruned", n,
				"max_age", r.MaxAge, "max_rows", r.MaxRows)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// status answers the API's Status call.
func (a *agent) status(context.Context) *vigilv1.StatusResponse {
	r := &vigilv1.StatusResponse{
		Version:         a.version,
		AgentPid:        uint32(os.Getpid()),
		StartedAt:       timestamppb.New(a.started),
		SensorsAttached: a.attached.Load(),
		KernelRelease:   a.kernel.Release,
		Features:        append(slices.Clip(a.kernel.Features), a.protectionFeature()),
		Counters: &vigilv1.Counters{
			EventsStored: a.stored.Load(),
			StoreErrors:  a.storeErrs.Load(),
		},
	}
	if p := a.sensor.Load(); p != nil {
		s := *p
		info, stats := s.Info(), s.Stats()
		r.Backend = info.Backend
		r.Hooks = info.Hooks
		r.MissingHooks = info.MissingHooks
		r.Counters.EventsReceived = stats.Received
		r.Counters.EventsLost = stats.Lost
		r.Counters.ByKind = maps.Clone(stats.ByKind)
	}
	r.Policy = a.policyStatus()
	if w := a.integrity.Load(); w != nil {
		r.Integrity = w.status()
	}
	r.Fleet = a.fleetStatus()
	return r
}

func unameRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}
