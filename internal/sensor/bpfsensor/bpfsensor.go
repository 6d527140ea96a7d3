// Package bpfsensor is the BPF implementation of sensor.Sensor, with two
// backends: BPF LSM hooks (when the kernel has BPF LSM active) and
// tracepoints (otherwise). One object file holds both; the loader keeps
// the programs of the chosen backend (programs.go).
package bpfsensor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/timestamppb"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/fanotify"
	"github.com/vigil-hips/vigil/internal/kernel"
	"github.com/vigil-hips/vigil/internal/policy"
	"github.com/vigil-hips/vigil/internal/probe"
	"github.com/vigil-hips/vigil/internal/proc"
	"github.com/vigil-hips/vigil/internal/sched"
	"github.com/vigil-hips/vigil/internal/sensor"
)

// DefaultRingBufBytes is the kernel ring buffer size when none is given.
// The reader drains it every readerPoll; 4 MiB holds about two seconds of
// a 1,000 execs/s load (about 2 MB/s of records) should the agent stall,
// and costs 8 MiB of resident memory once written through (its data pages
// are mapped twice). --ringbuf-bytes raises it for busier machines.
const DefaultRingBufBytes = 4 << 20

// Config selects and sizes the sensor.
type Config struct {
	// Backend is "auto", "lsm" or "tracepoint".
	Backend string
	// RingBufBytes is the kernel ring buffer size: a power of two, a
	// multiple of the page size. 0 means DefaultRingBufBytes.
	RingBufBytes int
	Logger       *slog.Logger
	// ProcRoot is where the process cache is seeded from ("/proc").
	ProcRoot string
	// PinDir, when set, is where the LSM backend pins its maps and links
	// so that enforcement outlives the agent (pin.go). Empty: no pins.
	PinDir string
	// FanotifyMarks are paths whose filesystems get exec permission
	// control by fanotify (tracepoint backend only: with BPF LSM the
	// kernel decides). Empty: none.
	FanotifyMarks []string
}

// Validate checks the config and fills defaults.
func (c *Config) Validate() error {
	switch c.Backend {
	case "", "auto", sensor.BackendLSM, sensor.BackendTracepoint:
	default:
		return fmt.Errorf("backend %q: want auto, lsm or tracepoint", c.Backend)
	}
	if c.RingBufBytes == 0 {
		c.RingBufBytes = DefaultRingBufBytes
	}
	page := os.Getpagesize()
	if c.RingBufBytes < page || c.RingBufBytes&(c.RingBufBytes-1) != 0 {
		return fmt.Errorf("ring buffer size %d: want a power of two of at least the page size (%d)", c.RingBufBytes, page)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.ProcRoot == "" {
		c.ProcRoot = "/proc"
	}
	return nil
}

// Sensor is the BPF sensor.
type Sensor struct {
	cfg     Config
	backend string
	log     *slog.Logger
	cache   *proc.Cache

	objs       *ebpf.Collection
	links      []link.Link
	reader     *ringbuf.Reader
	out        chan *vigilv1.Event
	done       chan struct{} // closed by Close
	readerDone chan struct{} // closed when read returns

	fan        *fanotify.Guard                // tracepoint backend with marks
	userPolicy atomic.Pointer[policy.Policy]  // decides fanotify events
	userXC     atomic.Pointer[userXC]         // execution control on fanotify events
	authorizer atomic.Pointer[execAuthorizer] // filter API clients, on fanotify events

	linkByProg map[string]link.Link // this agent's links, by program
	handover   map[string]link.Link // the previous agent's pinned links, until detached
	started    atomic.Bool          // Start succeeded

	xcMu sync.Mutex // serializes SetExecControl
	xc   *execState // execution control in force (LSM backend)

	policyMu sync.Mutex // serializes ApplyPolicy
	version  uint32     // of the last policy applied

	mu        sync.Mutex
	policies  map[uint32]loadedPolicy // by version, for decoding verdicts
	info      sensor.Info
	received  uint64
	lost      uint64 // in the kernel
	userLost  uint64 // made in userspace, dropped (emitUser)
	byKind    map[string]uint64
	closeOnce sync.Once
}

// New returns a sensor for this kernel. It does not attach; Start does.
func New(cfg Config) (sensor.Sensor, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("bpf sensor: %w", err)
	}
	backend := cfg.Backend
	lsmErr := probe.BPFLSM()
	switch backend {
	case "", "auto":
		backend = sensor.BackendTracepoint
		if lsmErr == nil {
			backend = sensor.BackendLSM
		}
	case sensor.BackendLSM:
		if lsmErr != nil {
			return nil, fmt.Errorf("bpf sensor: lsm backend: %w: %w", sensor.ErrNotSupported, lsmErr)
		}
	}
	return &Sensor{
		cfg:        cfg,
		backend:    backend,
		log:        cfg.Logger.With("component", "sensor", "backend", backend),
		cache:      proc.NewCache(),
		out:        make(chan *vigilv1.Event, 4096),
		done:       make(chan struct{}),
		readerDone: make(chan struct{}),
		byKind:     make(map[string]uint64),
		policies:   make(map[uint32]loadedPolicy),
	}, nil
}

// Start loads and attaches the backend's programs and starts reading.
func (s *Sensor) Start(ctx context.Context) error {
	if err := rlimit.RemoveMemlock(); err != nil {
		return fmt.Errorf("bpf sensor: remove memlock limit: %w", err)
	}
	kernel.MountFilesystems()

	spec, err := loadSensor()
	if err != nil {
		return fmt.Errorf("bpf sensor: load spec: %w", err)
	}
	if err := spec.Variables[sensorVarAgentTgid].Set(uint32(os.Getpid())); err != nil {
		return fmt.Errorf("bpf sensor: set agent_tgid: %w", err)
	}
	lsm := uint32(0)
	if s.backend == sensor.BackendLSM {
		lsm = 1
	}
	if err := spec.Variables[sensorVarLsmBackend].Set(lsm); err != nil {
		return fmt.Errorf("bpf sensor: set lsm_backend: %w", err)
	}
	spec.Maps[sensorMapEvents].MaxEntries = uint32(s.cfg.RingBufBytes)
	wanted := selectPrograms(s.backend)
	keep := make(map[string]bool, len(wanted))
	for _, p := range wanted {
		keep[p.name] = true
	}
	for name := range spec.Programs {
		if !keep[name] {
			delete(spec.Programs, name)
		}
	}
	if s.backend != sensor.BackendLSM {
		// Only LSM programs use it, and the map type needs BPF LSM.
		delete(spec.Maps, sensorMapXcCache)
	}
	var opts ebpf.CollectionOptions
	pinning := s.cfg.PinDir != "" && s.backend == sensor.BackendLSM
	if pinning {
		if err := s.preparePins(spec, &opts, false); err != nil {
			return fmt.Errorf("bpf sensor: %w", err)
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, opts)
	reused := pinning
	if pinning && errors.Is(err, ebpf.ErrMapIncompatible) {
		s.log.Warn("pinned maps are another version's: starting with fresh maps; the previous programs stay attached until the policy is applied",
			"pin_dir", s.cfg.PinDir)
		if err := s.preparePins(spec, &opts, true); err != nil {
			return fmt.Errorf("bpf sensor: %w", err)
		}
		coll, err = ebpf.NewCollectionWithOptions(spec, opts)
		reused = false
	}
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return fmt.Errorf("bpf sensor: load programs: %w\n%+v", err, ve)
		}
		return fmt.Errorf("bpf sensor: load programs: %w", err)
	}
	s.objs = coll

	var info sensor.Info
	info.Backend = s.backend
	if pinning {
		s.handover = s.oldLinks()
	}
	s.linkByProg = map[string]link.Link{}
	for _, p := range wanted {
		hook := spec.Programs[p.name].SectionName
		l, err := attach(coll.Programs[p.name], hook)
		if err != nil {
			if p.required {
				s.closeKernel()
				return fmt.Errorf("bpf sensor: attach %s: %w", hook, err)
			}
			info.MissingHooks = append(info.MissingHooks, fmt.Sprintf("%s: %v", hook, err))
			s.log.Warn("hook not available", "hook", hook, "err", err)
			continue
		}
		s.links = append(s.links, l)
		s.linkByProg[p.name] = l
		info.Hooks = append(info.Hooks, hook)
	}
	if pinning && reused {
		// The new programs decide from the same maps: the old ones can go.
		s.detachOld()
		if err := s.pinLinks(); err != nil {
			s.closeKernel()
			return fmt.Errorf("bpf sensor: %w", err)
		}
	}

	// Seed after attaching: a process that starts in between is then seen
	// by both, never by neither.
	if err := s.cache.Seed(s.cfg.ProcRoot); err != nil {
		s.log.Warn("process cache not seeded", "err", err)
	}

	rd, err := ringbuf.NewReader(coll.Maps[sensorMapEvents])
	if err != nil {
		s.closeKernel()
		return fmt.Errorf("bpf sensor: ring buffer reader: %w", err)
	}
	s.reader = rd
	s.mu.Lock()
	s.info = info
	s.mu.Unlock()
	s.log.Info("sensor attached", "hooks", len(info.Hooks), "missing", len(info.MissingHooks),
		"processes", s.cache.Len())

	// With BPF LSM the kernel decides Vigil's own verdicts; fanotify marks
	// then serve the filter API clients' authorization only.
	if len(s.cfg.FanotifyMarks) > 0 {
		if err := s.startFanotify(); err != nil {
			rd.Close()
			s.closeKernel()
			return fmt.Errorf("bpf sensor: %w", err)
		}
		info.Hooks = append(info.Hooks, "fanotify/FAN_OPEN_EXEC_PERM")
		s.mu.Lock()
		s.info = info
		s.mu.Unlock()
	}
	s.started.Store(true)
	go s.read(ctx)
	go func() {
		select {
		case <-ctx.Done():
			s.Close()
		case <-s.done:
		}
	}()
	return nil
}

// attach attaches prog according to its ELF section name.
func attach(prog *ebpf.Program, section string) (link.Link, error) {
	kind, target, _ := strings.Cut(section, "/")
	switch kind {
	case "tp_btf":
		return link.AttachTracing(link.TracingOptions{Program: prog})
	case "lsm", "lsm.s":
		return link.AttachLSM(link.LSMOptions{Program: prog})
	case "tracepoint":
		group, name, _ := strings.Cut(target, "/")
		return link.Tracepoint(group, name, prog, nil)
	}
	return nil, fmt.Errorf("section %q: unknown attach kind", section)
}

// readerPoll is how often the reader collects records. The BPF side never
// wakes it (BPF_RB_NO_WAKEUP, sensor.bpf.c), and the reader never blocks in
// the kernel: it drains what is there, then sleeps on a Go timer. Waking
// for each record cost an irq_work and two context switches per event, and
// a thread parked in epoll_wait kept the Go runtime's sysmon polling every
// 20 µs; together they were most of the agent's CPU under exec load. An
// event reaches the agent within readerPoll; the ring buffer (4 MiB by
// default) holds far more than that at any event rate seen (25,000
// events/s: about 400 KB in 50 ms). 50 ms rather than 10: the agent's CPU
// for 6,000 execs at 1,000/s, three alternating runs, 48/57/60 → 36/49/49
// ticks, context switches halved. Nothing waits on the stream: decisions
// are made in the kernel or on fanotify's own events, and a process the
// cache does not know yet (procOf) is read from /proc.
const readerPoll = 50 * time.Millisecond

// readerBurst bounds the decoded events the reader holds before handing
// them on (read): a full ring is handed on in parts as it is decoded.
const readerBurst = 256

// read drains the ring buffer until closed. Loss is checked after every
// record and at every readerPoll.
func (s *Sensor) read(ctx context.Context) {
	defer close(s.readerDone)
	// Decoding is bulk work: off the real-time threads (internal/sched).
	defer sched.Background(func(err error) { s.log.Warn("ring buffer reader", "err", err) })()
	defer func() {
		if s.fan != nil {
			s.fan.Close() // no more fanotify events into s.out
		}
		close(s.out)
	}()
	dec := &decoder{backend: s.backend, bootToWall: bootToWall(), ruleOf: s.ruleOf}
	var lastLost, maxSeq uint64
	checkLoss := func() {
		var lost uint64
		if err := s.objs.Variables[sensorVarLostEvents].Get(&lost); err != nil {
			return
		}
		if lost == lastLost {
			return
		}
		gap := &vigilv1.Event{
			Seq:     maxSeq,
			Time:    timestamppb.Now(),
			Kind:    "gap",
			Backend: s.backend,
			Detail: &vigilv1.Event_Gap{Gap: &vigilv1.Gap{
				Lost: lost - lastLost, AfterSeq: maxSeq, LostTotal: lost,
			}},
		}
		lastLost = lost
		s.mu.Lock()
		s.lost = lost
		s.mu.Unlock()
		s.log.Warn("events lost in the kernel", "lost", gap.GetGap().Lost, "lost_total", lost)
		s.emit(ctx, gap)
	}
	tick := time.NewTicker(readerPoll)
	defer tick.Stop()
	// A deadline in the past: ReadInto polls without waiting, returns what
	// the ring holds, then os.ErrDeadlineExceeded.
	s.reader.SetDeadline(time.Unix(0, 1))
	// Decoded events are handed on in bursts, not one by one: sent one at
	// a time, each woke the agent's pipeline goroutine (parked again by
	// the time the next was decoded), and the Go scheduler's wakeups cost
	// more CPU than the events.
	var (
		rec   ringbuf.Record
		burst []*vigilv1.Event
	)
	handOn := func() {
		for i, ev := range burst {
			s.emit(ctx, ev)
			burst[i] = nil
		}
		burst = burst[:0]
		checkLoss()
	}
	for {
		err := s.reader.ReadInto(&rec)
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			handOn()
			<-tick.C
			continue
		case errors.Is(err, ringbuf.ErrClosed):
			handOn()
			return
		case err != nil:
			handOn()
			s.log.Error("ring buffer read", "err", err)
			return
		}
		ev, err := dec.decode(rec.RawSample)
		if err != nil {
			s.log.Warn("undecodable record", "err", err)
			continue
		}
		s.track(ev)
		if ev.Seq > maxSeq {
			maxSeq = ev.Seq
		}
		if burst = append(burst, ev); len(burst) == readerBurst {
			handOn()
		}
	}
}

// track updates the process cache and counters, and enriches ev.
func (s *Sensor) track(ev *vigilv1.Event) {
	p := ev.Process
	switch d := ev.Detail.(type) {
	case *vigilv1.Event_Exec:
		if before, ok := s.cache.Lookup(p.Pid); ok {
			d.Exec.CallerExe = before.Exe
		}
		// Decisions made before the exec (refused ones, execution
		// control's) are not the exec: sched_process_exec reports that.
		if !ev.GetVerdict().GetRefused() && ev.Trust == nil {
			s.cache.Exec(p.Pid, p.Ppid, p.StartTimeNs, p.Exe)
		}
	case *vigilv1.Event_Fork:
		s.cache.Fork(p.Pid, d.Fork.ChildPid, 0)
	}
	s.cache.Enrich(p)
	if in := ev.GetInject(); in != nil && in.TargetPid != 0 {
		if t, ok := s.cache.Lookup(in.TargetPid); ok {
			in.TargetExe = t.Exe
			in.TargetStartTimeNs = t.StartTime
		}
	}
	if _, ok := ev.Detail.(*vigilv1.Event_Exit); ok {
		s.cache.Exit(p.Pid)
	}
	s.mu.Lock()
	s.received++
	s.byKind[ev.Kind]++
	s.mu.Unlock()
}

// emitUser delivers an event made in userspace (a fanotify decision). It
// never waits: the decision it reports is held by the kernel until
// answered, so a full channel drops the event and counts it as lost.
func (s *Sensor) emitUser(ev *vigilv1.Event) {
	select {
	case s.out <- ev:
		s.mu.Lock()
		s.received++
		s.byKind[ev.Kind]++
		s.mu.Unlock()
	case <-s.done:
	default:
		s.mu.Lock()
		s.userLost++
		s.mu.Unlock()
		s.log.Warn("event dropped: the agent is not keeping up", "kind", ev.Kind, "hook", ev.Hook)
	}
}

// emit delivers ev unless the sensor is closing.
func (s *Sensor) emit(ctx context.Context, ev *vigilv1.Event) {
	select {
	case s.out <- ev:
	case <-ctx.Done():
	case <-s.done:
	}
}

// Events implements sensor.Sensor.
func (s *Sensor) Events() <-chan *vigilv1.Event { return s.out }

// Info implements sensor.Sensor.
func (s *Sensor) Info() sensor.Info {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.info
}

// Stats implements sensor.Sensor.
func (s *Sensor) Stats() sensor.Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	by := make(map[string]uint64, len(s.byKind))
	for k, v := range s.byKind {
		by[k] = v
	}
	return sensor.Stats{Received: s.received, Lost: s.lost + s.userLost, ByKind: by}
}

// Close detaches everything. The event channel closes once the reader
// has stopped.
func (s *Sensor) Close() error {
	s.closeOnce.Do(func() {
		if s.fan != nil {
			s.fan.Close()
		}
		close(s.done)
		if s.reader != nil {
			s.reader.Close()
			<-s.readerDone
		}
		if s.started.Load() && len(s.handover) == 0 {
			// A clean stop: enforcement ends with the agent.
			s.unpinAll()
		}
		for _, l := range s.handover {
			l.Close() // still pinned: the previous agent's enforcement stays
		}
		s.closeKernel()
	})
	return nil
}

func (s *Sensor) closeKernel() {
	for _, l := range s.links {
		l.Close()
	}
	s.links = nil
	if s.objs != nil {
		s.objs.Close()
	}
}

// bootToWall is the offset from CLOCK_BOOTTIME to wall-clock time.
func bootToWall() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return time.Duration(time.Now().UnixNano() - ts.Nano())
}
