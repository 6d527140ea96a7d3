// Package proc keeps what the agent knows about live processes: executable,
// parent and start time, seeded from /proc at start and kept current from
// exec, fork and exit events. It gives every event its process's
// executable and ancestry.
package proc

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
)

// MaxAncestry bounds the ancestry attached to an event.
const MaxAncestry = 16

// exitLinger is how long an exited process stays known, so that events
// read late from the ring buffer still resolve.
const exitLinger = 30 * time.Second

// Process is one cached process (thread group).
type Process struct {
	PID       uint32
	PPID      uint32
	Exe       string
	StartTime uint64 // CLOCK_BOOTTIME ns (from /proc: clock-tick precision)
	exitedAt  time.Time
}

// Cache maps pid to process. It is safe for concurrent use.
type Cache struct {
	mu    sync.Mutex
	procs map[uint32]*Process
	now   func() time.Time
	// exited lists exits oldest first, so a sweep looks only at the
	// entries that expired instead of the whole map (at 1,000 execs/s,
	// some 30,000 exited processes linger).
	exited []exit
	head   int // exited[:head] are swept
}

// exit is one Exit call: which process, and its exitedAt then.
type exit struct {
	p  *Process
	at time.Time
}

// NewCache returns an empty cache.
func NewCache() *Cache {
	return &Cache{procs: make(map[uint32]*Process), now: time.Now}
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat's starttime; it is 100
// on every Linux architecture Vigil runs on.
const clockTicks = 100

// Seed reads every process under root (normally "/proc").
func (c *Cache) Seed(root string) error {
	entries, err := os.ReadDir(root)
	if err != nil {
		return fmt.Errorf("seed process cache: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range entries {
		pid, err := strconv.ParseUint(e.Name(), 10, 32)
		if err != nil {
			continue
		}
		p, err := readProc(filepath.Join(root, e.Name()))
		if err != nil {
			continue // exited while we read, or a kernel thread
		}
		p.PID = uint32(pid)
		c.procs[p.PID] = p
	}
	return nil
}

// readProc reads one /proc/PID directory.
func readProc(dir string) (*Process, error) {
	stat, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return nil, err
	}
	// The comm field is in parentheses and may itself hold ") ".
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return nil, fmt.Errorf("%s/stat: malformed", dir)
	}
	fields := strings.Fields(string(stat[i+1:]))
	// fields[0] is state (field 3); ppid is field 4, starttime field 22.
	if len(fields) < 20 {
		return nil, fmt.Errorf("%s/stat: %d fields", dir, len(fields))
	}
	ppid, err := strconv.ParseUint(fields[1], 10, 32)
	if err != nil {
		return nil, fmt.Errorf("%s/stat: ppid: %w", dir, err)
	}
	start, err := strconv.ParseUint(fields[19], 10, 64)
	if err != nil {
		return nil, fmt.Errorf("%s/stat: starttime: %w", dir, err)
	}
	exe, _ := os.Readlink(filepath.Join(dir, "exe")) // kernel threads have none
	return &Process{PPID: uint32(ppid), Exe: exe, StartTime: start * (1e9 / clockTicks)}, nil
}

// Exec records that pid now runs exe.
func (c *Cache) Exec(pid, ppid uint32, start uint64, exe string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.procs[pid] = &Process{PID: pid, PPID: ppid, Exe: exe, StartTime: start}
}

// Fork records a new process, which runs its parent's executable until it
// execs.
func (c *Cache) Fork(parent, child uint32, start uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	exe := ""
	if p := c.procs[parent]; p != nil {
		exe = p.Exe
	}
	c.procs[child] = &Process{PID: child, PPID: parent, Exe: exe, StartTime: start}
}

// Exit marks pid as gone; it is forgotten after a while, and expired
// entries are swept here.
func (c *Cache) Exit(pid uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if p := c.procs[pid]; p != nil {
		p.exitedAt = now
		c.exited = append(c.exited, exit{p, now})
	}
	for ; c.head < len(c.exited); c.head++ {
		e := c.exited[c.head]
		if now.Sub(e.at) <= exitLinger {
			break
		}
		// Skip what changed since: the pid reused (another entry), or
		// an exit seen again (a later record in the queue).
		if c.procs[e.p.PID] == e.p && e.p.exitedAt.Equal(e.at) {
			delete(c.procs, e.p.PID)
		}
		c.exited[c.head] = exit{}
	}
	// Reuse the queue's space once half of it is swept.
	if c.head > 0 && c.head*2 >= len(c.exited) {
		n := copy(c.exited, c.exited[c.head:])
		clear(c.exited[n:])
		c.exited = c.exited[:n]
		c.head = 0
	}
}

// Lookup returns a copy of pid's entry.
func (c *Cache) Lookup(pid uint32) (Process, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.procs[pid]
	if p == nil {
		return Process{}, false
	}
	return *p, true
}

// Len is the number of cached processes.
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.procs)
}

// Enrich fills the event's process executable (when the kernel did not
// give one) and ancestry, parent first.
func (c *Cache) Enrich(p *vigilv1.Process) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p.Exe == "" {
		if self := c.procs[p.Pid]; self != nil {
			p.Exe = self.Exe
		}
	}
	// Walk first, then allocate the ancestors in one piece: no map for
	// the loop check (the chain is short), two allocations an event.
	var (
		chain [MaxAncestry]*Process // nil: unknown pid, the walk's end
		pids  [MaxAncestry]uint32
		n     int
	)
	seen := func(pid uint32) bool {
		return pid == p.Pid || slices.Contains(pids[:n], pid)
	}
	next := p.Ppid
	for n < MaxAncestry && next != 0 && !seen(next) {
		a := c.procs[next]
		chain[n], pids[n] = a, next
		n++
		if a == nil {
			break
		}
		next = a.PPID
	}
	p.Ancestry = p.Ancestry[:0]
	if n == 0 {
		return
	}
	p.Ancestry = slices.Grow(p.Ancestry, n)
	slab := make([]vigilv1.Ancestor, n)
	for i, a := range chain[:n] {
		anc := &slab[i]
		if a == nil {
			anc.Pid = pids[i]
		} else {
			anc.Pid, anc.Exe, anc.StartTimeNs = a.PID, a.Exe, a.StartTime
		}
		p.Ancestry = append(p.Ancestry, anc)
	}
}
