package sched

import (
	"os"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

func threads(t *testing.T) []int {
	t.Helper()
	var tids []int
	if err := eachThread(func(tid int) error { tids = append(tids, tid); return nil }); err != nil {
		t.Fatal(err)
	}
	return tids
}

// The test process itself is put on SCHED_RR 1 for the length of the test
// and back afterwards (nothing else on the machine is touched).
func TestRealtimeAndBackground(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs CAP_SYS_NICE (run as root)")
	}
	if realtime.Load() {
		t.Fatal("real-time before Realtime")
	}
	if done := Background(nil); done == nil {
		t.Fatal("Background returned nil")
	} else {
		done() // a no-op before Realtime
	}
	// More threads than the runtime starts with.
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() { unix.Nanosleep(&unix.Timespec{Nsec: 1e6}, nil) })
	}
	wg.Wait()
	if err := Realtime(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		eachThread(func(tid int) error { return setPolicy(tid, false) })
		realtime.Store(false)
	})
	if !realtime.Load() {
		t.Fatal("not real-time after Realtime")
	}
	for _, tid := range threads(t) {
		p, prio, err := Policy(tid)
		if err != nil {
			t.Fatal(err)
		}
		if p != unix.SCHED_RR || prio != Priority {
			t.Errorf("thread %d: policy %d priority %d, want SCHED_RR %d", tid, p, prio, Priority)
		}
	}

	// A goroutine in Background runs on a normal thread of its own while
	// the others stay real-time, and its thread is real-time again (and
	// back in the pool) when it is done.
	type seen struct {
		tid              int
		policy, prio     uint32
		after, afterPrio uint32
	}
	res := make(chan seen)
	go func() {
		done := Background(func(err error) { t.Error(err) })
		var s seen
		s.tid = unix.Gettid()
		s.policy, s.prio, _ = Policy(0)
		done()
		s.after, s.afterPrio, _ = Policy(s.tid)
		res <- s
	}()
	s := <-res
	if s.policy != unix.SCHED_NORMAL {
		t.Errorf("Background thread %d: policy %d, want SCHED_NORMAL", s.tid, s.policy)
	}
	if s.after != unix.SCHED_RR || s.afterPrio != Priority {
		t.Errorf("thread %d after Background's done: policy %d priority %d, want SCHED_RR %d", s.tid, s.after, s.afterPrio, Priority)
	}
	// A thread created after Realtime inherits it.
	var mu sync.Mutex
	var tids []int
	for range 4 {
		wg.Go(func() {
			unix.Nanosleep(&unix.Timespec{Nsec: 2e6}, nil)
			mu.Lock()
			tids = append(tids, unix.Gettid())
			mu.Unlock()
		})
	}
	wg.Wait()
	for _, tid := range threads(t) {
		p, _, err := Policy(tid)
		if err == nil && p != unix.SCHED_RR {
			t.Errorf("thread %d (of %v) created after Realtime: policy %d, want SCHED_RR", tid, tids, p)
		}
	}
}
