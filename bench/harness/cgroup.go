package harness

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Accounting is how the bench measures a daemon's CPU: a cgroup of its
// own when the machine lets us make one (every process the daemon forks
// stays in it), else the daemon's processes' /proc/PID/stat.
type Accounting struct {
	// Method is "cgroup v2", "cgroup v1 cpuacct" or "/proc/PID/stat".
	Method string
	// root is the parent directory new groups are made in; v1 also needs
	// the controller name to read.
	root string
	v1   bool
}

// DetectAccounting picks the best CPU accounting this machine allows,
// trying to make (and remove) a group to be sure.
func DetectAccounting() Accounting {
	try := func(root string, v1 bool, method string) (Accounting, bool) {
		if _, err := os.Stat(root); err != nil {
			return Accounting{}, false
		}
		dir := filepath.Join(root, fmt.Sprintf("vigil-bench-probe-%d", os.Getpid()))
		if err := os.Mkdir(dir, 0o755); err != nil {
			return Accounting{}, false
		}
		defer os.Remove(dir)
		file := "cpu.stat"
		if v1 {
			file = "cpuacct.usage"
		}
		if _, err := os.Stat(filepath.Join(dir, file)); err != nil {
			return Accounting{}, false
		}
		return Accounting{Method: method, root: root, v1: v1}, true
	}
	// A pure v2 hierarchy, then the v2 part of a hybrid one (cpu.stat's
	// usage_usec needs no controller there), then v1's cpuacct.
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		if a, ok := try("/sys/fs/cgroup", false, "cgroup v2 cpu.stat"); ok {
			return a
		}
	}
	if a, ok := try("/sys/fs/cgroup/unified", false, "cgroup v2 cpu.stat (hybrid hierarchy)"); ok {
		return a
	}
	for _, d := range []string{"/sys/fs/cgroup/cpuacct", "/sys/fs/cgroup/cpu,cpuacct"} {
		if a, ok := try(d, true, "cgroup v1 cpuacct"); ok {
			return a
		}
	}
	return Accounting{Method: "/proc/PID/stat (utime+stime; cgroups not usable here)"}
}

// Cgroups says whether groups are made; otherwise processes are tracked
// one by one.
func (a Accounting) Cgroups() bool { return a.root != "" }

// Group is one daemon's processes.
type Group struct {
	acct Accounting
	// Dir is the cgroup directory ("" without cgroups).
	Dir string
	// pids are tracked processes without cgroups.
	pids []int
}

// NewGroup makes a group named name (a fresh cgroup when usable).
func (a Accounting) NewGroup(name string) (*Group, error) {
	g := &Group{acct: a}
	if !a.Cgroups() {
		return g, nil
	}
	g.Dir = filepath.Join(a.root, name)
	if err := os.Mkdir(g.Dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("cgroup: %w", err)
	}
	return g, nil
}

// ProcsFile is the file a process writes its pid to to join the group,
// or "" without cgroups.
func (g *Group) ProcsFile() string {
	if g.Dir == "" {
		return ""
	}
	return filepath.Join(g.Dir, "cgroup.procs")
}

// Track adds pid to the group (without cgroups: remembers it).
func (g *Group) Track(pid int) error {
	if g.Dir == "" {
		g.pids = append(g.pids, pid)
		return nil
	}
	return os.WriteFile(g.ProcsFile(), []byte(strconv.Itoa(pid)), 0o644)
}

// Pids returns the live processes of the group.
func (g *Group) Pids() []int {
	if g.Dir == "" {
		var live []int
		for _, p := range g.pids {
			if syscall.Kill(p, 0) == nil && !isZombie(p) {
				live = append(live, p)
			}
		}
		return live
	}
	return readPids(g.ProcsFile())
}

func readPids(file string) []int {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil
	}
	var out []int
	for _, f := range strings.Fields(string(data)) {
		if p, err := strconv.Atoi(f); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// CPU returns the CPU time the group used so far.
func (g *Group) CPU() (time.Duration, error) {
	if g.Dir == "" {
		var total time.Duration
		for _, p := range g.pids {
			d, err := procCPU(p)
			if err == nil {
				total += d
			}
		}
		return total, nil
	}
	if g.acct.v1 {
		data, err := os.ReadFile(filepath.Join(g.Dir, "cpuacct.usage"))
		if err != nil {
			return 0, err
		}
		ns, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
		return time.Duration(ns), err
	}
	data, err := os.ReadFile(filepath.Join(g.Dir, "cpu.stat"))
	if err != nil {
		return 0, err
	}
	return parseCPUStat(data)
}

// parseCPUStat reads usage_usec from a cgroup v2 cpu.stat.
func parseCPUStat(data []byte) (time.Duration, error) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), " ")
		if ok && k == "usage_usec" {
			us, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return time.Duration(us) * time.Microsecond, err
		}
	}
	return 0, errors.New("cpu.stat: no usage_usec")
}

// Signal sends sig to every process of the group.
func (g *Group) Signal(sig syscall.Signal) {
	for _, p := range g.Pids() {
		syscall.Kill(p, sig)
	}
}

// StopAll asks every process to stop (SIGTERM), waits up to grace, then
// kills what is left and waits for it to go.
func (g *Group) StopAll(grace time.Duration) {
	g.Signal(syscall.SIGTERM)
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) && len(g.Pids()) > 0 {
		time.Sleep(50 * time.Millisecond)
	}
	for i := 0; i < 100 && len(g.Pids()) > 0; i++ {
		g.Signal(syscall.SIGKILL)
		time.Sleep(50 * time.Millisecond)
	}
}

// Remove deletes the cgroup (its processes must be gone).
func (g *Group) Remove() error {
	if g.Dir == "" {
		return nil
	}
	var err error
	for i := 0; i < 40; i++ {
		if err = os.Remove(g.Dir); err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return err
}
