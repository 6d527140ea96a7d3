// Package sched puts a process's decision path ahead of the machine's
// other work: every thread of the process runs SCHED_RR at the lowest
// real-time priority, except the goroutines that do bulk work (storing
// and decoding events), which Background keeps on threads of their own
// at normal priority.
//
// Why: an exec or open held by a fanotify permission event, or by a
// filter API client's AUTH round trip, waits for two processes (the
// agent and the client) to be woken and run. Under load every wakeup
// waits its turn behind whatever the CPU is running, and the tail of that
// wait is the tail of the exec's latency (docs/benchmarks.md: p99 about
// 1 ms for two plain processes passing a byte at 1,000 execs/s on the
// 2-core CI machine, with no agent at all). A nice value or an EEVDF
// slice did not change that tail there; SCHED_RR did. The cost is that
// the process preempts normal work whenever it runs, so what it does per
// event must stay small: bulk work, whose amount the machine's users
// drive, goes to Background threads, and the kernel's real-time
// throttling (sched_rt_runtime_us, 95% by default) still bounds the rest.
//
// The standard library and golang.org/x/sys offer the system calls
// (sched_setattr) but nothing that applies a policy to every thread of a
// Go process or keeps one goroutine off it; that is the little written
// here.
package sched

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Priority is the SCHED_RR priority Realtime sets: the lowest, so that
// the kernel's own real-time threads (and anything an administrator put
// higher) still come first.
const Priority = 1

// realtime: Realtime succeeded in this process.
var realtime atomic.Bool

// setPolicy sets one thread's policy (tid 0: the calling thread):
// SCHED_RR at Priority when rt, else SCHED_OTHER at nice 0.
func setPolicy(tid int, rt bool) error {
	attr := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_NORMAL}
	if rt {
		attr.Policy, attr.Priority = unix.SCHED_RR, Priority
	}
	return unix.SchedSetAttr(tid, &attr, 0)
}

// Realtime puts every thread of this process on SCHED_RR at Priority.
// Threads the Go runtime creates later are cloned from these and inherit
// it. It needs CAP_SYS_NICE (or an RLIMIT_RTPRIO of at least Priority);
// when it fails, the threads it changed are put back to normal priority.
// Call it once, early, before Background.
func Realtime() error {
	if err := eachThread(func(tid int) error { return setPolicy(tid, true) }); err != nil {
		eachThread(func(tid int) error { setPolicy(tid, false); return nil })
		if errors.Is(err, unix.EPERM) {
			return fmt.Errorf("real-time scheduling (SCHED_RR %d): %w (needs CAP_SYS_NICE; with cgroup real-time group scheduling the cgroup also needs cpu.rt_runtime_us)", Priority, err)
		}
		return fmt.Errorf("real-time scheduling (SCHED_RR %d): %w", Priority, err)
	}
	realtime.Store(true)
	return nil
}

// Background keeps the calling goroutine on a thread of its own at normal
// priority (SCHED_OTHER, nice 0) until the returned function is called;
// a no-op unless Realtime was called. Bulk work calls it on entry:
//
//	defer sched.Background(nil)()
//
// If the thread cannot be moved back to normal priority the goroutine
// still runs, on a real-time thread; the error is returned to the log
// through warn (nil: ignored).
func Background(warn func(error)) (done func()) {
	if !realtime.Load() {
		return func() {}
	}
	runtime.LockOSThread()
	if err := setPolicy(0, false); err != nil && warn != nil {
		warn(fmt.Errorf("bulk work stays at real-time priority: %w", err))
	}
	// The thread is normal now: when the goroutine is done with it, the
	// thread must not go back to the runtime's pool, where it would run
	// decisions at normal priority. Ending the goroutine while locked
	// ends the thread; unlocking after putting it back is the other way.
	return func() {
		if setPolicy(0, true) == nil {
			runtime.UnlockOSThread()
		}
		// Otherwise the goroutine stays locked: its thread ends with it.
	}
}

// eachThread calls f for every thread of this process until a pass finds
// no thread it has not seen (a thread created during a pass, by a thread
// not yet changed, is caught by the next one).
func eachThread(f func(tid int) error) error {
	seen := map[int]bool{}
	for {
		ents, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return err
		}
		fresh := 0
		for _, e := range ents {
			tid, err := strconv.Atoi(e.Name())
			if err != nil || seen[tid] {
				continue
			}
			seen[tid] = true
			fresh++
			if err := f(tid); err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("thread %d: %w", tid, err)
			}
		}
		if fresh == 0 {
			return nil
		}
	}
}

// Policy returns a thread's scheduling policy (unix.SCHED_*) and
// real-time priority.
func Policy(tid int) (policy uint32, priority uint32, err error) {
	a, err := unix.SchedGetAttr(tid, 0)
	if err != nil {
		return 0, 0, err
	}
	return a.Policy, a.Priority, nil
}
