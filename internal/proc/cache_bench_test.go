package proc

import (
	"testing"
	"time"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
)

// BenchmarkExecCycle is the cache's work for one short-lived process
// (fork, exec, exit, each event enriched) at 1,000 execs/s steady state:
// with the 30 s linger, about 30,000 exited processes are still known.
func BenchmarkExecCycle(b *testing.B) {
	c := NewCache()
	now := time.Unix(1_000_000, 0)
	c.now = func() time.Time { return now }
	for pid := uint32(100); pid <= 105; pid++ {
		c.Exec(pid, pid-1, uint64(pid), "/usr/bin/bash")
	}
	const parent = 105
	pid := uint32(1000)
	cycle := func() {
		pid++
		if pid > 4_000_000 {
			pid = 1000
		}
		now = now.Add(time.Millisecond) // 1,000 execs/s
		c.Fork(parent, pid, 0)
		c.Enrich(&vigilv1.Process{Pid: parent, Ppid: parent - 1})
		c.Exec(pid, parent, uint64(pid), "/usr/bin/true")
		c.Enrich(&vigilv1.Process{Pid: pid, Ppid: parent})
		c.Enrich(&vigilv1.Process{Pid: pid, Ppid: parent}) // image_load
		c.Enrich(&vigilv1.Process{Pid: pid, Ppid: parent})
		c.Exit(pid)
	}
	for range 31_000 { // reach the steady state
		cycle()
	}
	b.ReportAllocs()
	for b.Loop() {
		cycle()
	}
	b.ReportMetric(float64(c.Len()), "cached")
}
