package agent

import (
	"context"
	"log/slog"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/agent/agenttest"
	"github.com/vigil-hips/vigil/internal/metrics"
	"github.com/vigil-hips/vigil/internal/sensor"
	"github.com/vigil-hips/vigil/internal/server"
	"github.com/vigil-hips/vigil/internal/store"
)

// benchEvents returns n events in the mix one exec makes (fork, exec,
// image_load, exit), shaped as the sensor delivers them: process with an
// ancestry 6 deep, paths, argv; no time (the pipeline sets none: the
// sensor does, so it is set here).
func benchEvents(n int) []*vigilv1.Event {
	evs := make([]*vigilv1.Event, n)
	now := time.Now()
	for i := range evs {
		pid := uint32(10_000 + i/4)
		p := &vigilv1.Process{Pid: pid, Tid: pid, Ppid: 4242, Uid: 1000, Euid: 1000, Gid: 1000,
			StartTimeNs: 12_000_000_000 + uint64(i), Comm: "grep", CgroupId: 7777, Exe: "/usr/bin/grep"}
		for d := range 6 {
			p.Ancestry = append(p.Ancestry, &vigilv1.Ancestor{Pid: 4242 - uint32(d), Exe: "/usr/bin/bash", StartTimeNs: 1_000_000 + uint64(d)})
		}
		ev := &vigilv1.Event{Seq: uint64(i + 1), Time: timestamppb.New(now.Add(time.Duration(i))),
			Backend: "tracepoint", Process: p}
		switch i % 4 {
		case 0:
			ev.Kind, ev.Hook = "fork", "tp_btf/sched_process_fork"
			ev.Detail = &vigilv1.Event_Fork{Fork: &vigilv1.Fork{ChildPid: pid + 1}}
		case 1:
			ev.Kind, ev.Hook = "exec", "tp_btf/sched_process_exec"
			ev.Detail = &vigilv1.Event_Exec{Exec: &vigilv1.Exec{
				File:     &vigilv1.File{Path: "/usr/bin/grep", Dev: 0x801, Inode: 1_234_567},
				Filename: "/usr/bin/grep", Argv: []string{"grep", "--color=auto", "-rn", "TODO", "/home/user/src/project"},
				Cwd: "/home/user/src/project", CallerExe: "/usr/bin/bash"}}
		case 2:
			ev.Kind, ev.Hook = "image_load", "tracepoint/syscalls/sys_enter_mmap"
			ev.Detail = &vigilv1.Event_ImageLoad{ImageLoad: &vigilv1.ImageLoad{
				File: &vigilv1.File{Path: "/usr/lib/x86_64-linux-gnu/libc.so.6", Dev: 0x801, Inode: 2_345_678},
				Prot: 5, Flags: 0x802}}
		case 3:
			ev.Kind, ev.Hook = "exit", "tp_btf/sched_process_exit"
			ev.Detail = &vigilv1.Event_Exit{Exit: &vigilv1.Exit{}}
		}
		evs[i] = ev
	}
	return evs
}

// BenchmarkPipeline is the agent's cost per event from the sensor's
// channel to stored (SQLite) and published (one follower), with and
// without the JSON-lines output. One op is one event.
func BenchmarkPipeline(b *testing.B) {
	for _, jsonl := range []bool{false, true} {
		name := "store"
		if jsonl {
			name = "store+jsonl"
		}
		b.Run(name, func(b *testing.B) { benchPipeline(b, jsonl) })
	}
}

func benchPipeline(b *testing.B, jsonl bool) {
	dir := b.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := store.Open(ctx, filepath.Join(dir, "events.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	a := &agent{
		log:     slog.New(slog.DiscardHandler),
		metrics: metrics.New(),
		broker:  server.NewBroker(),
		local:   make(chan *vigilv1.Event, localQueue),
		store:   st,
	}
	if jsonl {
		a.cfg.JSONLPath = filepath.Join(dir, "events.jsonl")
		if a.jsonl, err = openJSONL(a.cfg.JSONLPath); err != nil {
			b.Fatal(err)
		}
		defer a.jsonl.close()
	}
	sub := a.broker.Subscribe()
	defer sub.Close()
	s := agenttest.New(sensor.Info{Backend: sensor.BackendTracepoint})
	if err := s.Start(ctx); err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.pipeline(ctx, s) }()

	evs := benchEvents(b.N)
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	go s.Emit(evs...)
	for range b.N {
		<-sub.C()
	}
	b.StopTimer()
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
	if sub.TakeLagged() {
		b.Log("follower lagged")
	}
	cancel()
	<-done
}

// cpuTime is the process's user+system CPU time in ns: on a shared
// machine it says more than the wall clock.
func cpuTime() int64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}
