package store

import (
	"context"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
)

// benchEvents returns n events in the mix one exec makes (fork, exec,
// image_load, exit), shaped as the sensor delivers them: process with an
// ancestry 6 deep, paths, argv.
func benchEvents(n int, seq0 uint64) []*vigilv1.Event {
	evs := make([]*vigilv1.Event, n)
	now := time.Now()
	for i := range evs {
		pid := uint32(10_000 + i/4)
		p := &vigilv1.Process{Pid: pid, Tid: pid, Ppid: 4242, Uid: 1000, Euid: 1000, Gid: 1000,
			StartTimeNs: 12_000_000_000 + uint64(i), Comm: "grep", CgroupId: 7777, Exe: "/usr/bin/grep"}
		for d := range 6 {
			p.Ancestry = append(p.Ancestry, &vigilv1.Ancestor{Pid: 4242 - uint32(d), Exe: "/usr/bin/bash", StartTimeNs: 1_000_000 + uint64(d)})
		}
		ev := &vigilv1.Event{Seq: seq0 + uint64(i), Time: timestamppb.New(now.Add(time.Duration(i))),
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

// BenchmarkAppend stores batches of 512 events (the agent's batches are up
// to 1,024; at 1,000 execs/s about 750).
func BenchmarkAppend(b *testing.B) {
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(b.TempDir(), "events.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	const batch = 512
	batches := make([][]*vigilv1.Event, 64)
	for i := range batches {
		batches[i] = benchEvents(batch, uint64(i*batch))
	}
	b.ReportAllocs()
	i := 0
	cpu0 := cpuTime()
	for b.Loop() {
		evs := batches[i%len(batches)]
		for _, ev := range evs {
			ev.Id = 0
		}
		if err := s.Append(ctx, evs); err != nil {
			b.Fatal(err)
		}
		i++
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch), "ns/event")
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N*batch), "cpu-ns/event")
}

// cpuTime is the process's user+system CPU time in ns: on a shared
// machine it says more than the wall clock.
func cpuTime() int64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}
