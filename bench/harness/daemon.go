package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// daemonSpec says how to start one daemon.
type daemonSpec struct {
	name string
	argv []string
	// tmpfs, binds ("SRC=DST") and mkdirs make a private mount namespace
	// for the daemon (see ExecIn).
	tmpfs, binds, mkdirs []string
	// forks says the command daemonizes: its first process exits 0 and a
	// child goes on; comm names that child, to find it without cgroups.
	forks bool
	comm  string
}

// daemon is a started daemon: its processes are in group.
type daemon struct {
	name  string
	group *Group
	log   string
	done  chan struct{} // closed when the started process was reaped
	proc  *os.Process   // the started process
	env   *Env
}

// startDaemon starts spec through `vigil-bench exec-in`, in a group of its
// own, in a process group of its own (a Ctrl-C on make reaches the bench,
// which stops the daemon in order, not the daemon directly).
func (e *Env) startDaemon(ctx context.Context, spec daemonSpec) (*daemon, error) {
	n := e.seq.Add(1)
	g, err := e.Acct.NewGroup(fmt.Sprintf("vigil-bench-%d-%s-%d", os.Getpid(), spec.name, n))
	if err != nil {
		return nil, err
	}
	if g.Dir != "" {
		e.Journal.Update(func(s *JournalState) { s.Cgroups = append(s.Cgroups, g.Dir) })
	}
	d := &daemon{name: spec.name, group: g, done: make(chan struct{}), env: e,
		log: filepath.Join(e.Work, fmt.Sprintf("%s-%d.log", spec.name, n))}
	args := []string{"exec-in"}
	if f := g.ProcsFile(); f != "" {
		args = append(args, "-cgroup", f)
	}
	for _, t := range spec.tmpfs {
		args = append(args, "-tmpfs", t)
	}
	for _, b := range spec.binds {
		args = append(args, "-bind", b)
	}
	for _, m := range spec.mkdirs {
		args = append(args, "-mkdir", m)
	}
	args = append(args, "--")
	args = append(args, spec.argv...)
	logf, err := os.Create(d.log)
	if err != nil {
		d.cleanupGroup()
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(e.Self, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		d.cleanupGroup()
		return nil, fmt.Errorf("start %s: %w", spec.name, err)
	}
	e.Log.Debug("daemon started", "name", spec.name, "pid", cmd.Process.Pid, "argv", strings.Join(spec.argv, " "))
	if !e.Acct.Cgroups() {
		d.track(cmd.Process.Pid)
	}
	d.proc = cmd.Process
	waitErr := make(chan error, 1)
	go func() {
		waitErr <- cmd.Wait()
		close(d.done)
	}()
	if e.Acct.Cgroups() {
		// exec-in joins the cgroup before it execs the daemon: wait for
		// that, so the daemon is never seen outside its group.
		for deadline := time.Now().Add(15 * time.Second); !containsInt(g.Pids(), cmd.Process.Pid); {
			select {
			case err := <-waitErr:
				waitErr <- err
			default:
			}
			if isDone(d.done) || time.Now().After(deadline) {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	if !spec.forks {
		if isDone(d.done) {
			d.stop()
			return nil, fmt.Errorf("%s exited at once%s", spec.name, d.logTail())
		}
		return d, nil
	}
	// A forking daemon: its first process must exit 0, leaving the child.
	select {
	case err := <-waitErr:
		if err != nil {
			d.stop()
			return nil, fmt.Errorf("%s: %v%s", spec.name, err, d.logTail())
		}
	case <-time.After(60 * time.Second):
		d.stop()
		return nil, fmt.Errorf("%s did not detach within 60s%s", spec.name, d.logTail())
	case <-ctx.Done():
		d.stop()
		return nil, ctx.Err()
	}
	if !e.Acct.Cgroups() {
		for _, p := range pidsByComm(spec.comm) {
			d.track(p)
		}
	}
	if len(d.group.Pids()) == 0 {
		d.stop()
		return nil, fmt.Errorf("%s exited right after it detached%s", spec.name, d.logTail())
	}
	return d, nil
}

func (d *daemon) track(pid int) {
	d.group.Track(pid)
	start := procStart(pid)
	d.env.Journal.Update(func(s *JournalState) { s.Procs = append(s.Procs, TrackedProc{Pid: pid, Start: start}) })
}

// alive says whether any of the daemon's processes runs.
func (d *daemon) alive() bool { return len(d.group.Pids()) > 0 }

// pids returns the daemon's processes.
func (d *daemon) pids() []int { return d.group.Pids() }

// hwmKB returns the sum of VmHWM over the daemon's processes.
func (d *daemon) hwmKB() uint64 {
	var total uint64
	for _, p := range d.group.Pids() {
		if kb, err := statusKB(p, "VmHWM"); err == nil {
			total += kb
		}
	}
	return total
}

// comms lists the names of the daemon's processes.
func (d *daemon) comms() string {
	seen := map[string]int{}
	var order []string
	for _, p := range d.group.Pids() {
		c := procComm(p)
		if seen[c] == 0 {
			order = append(order, c)
		}
		seen[c]++
	}
	var out []string
	for _, c := range order {
		if seen[c] > 1 {
			c = fmt.Sprintf("%s ×%d", c, seen[c])
		}
		out = append(out, c)
	}
	return strings.Join(out, ", ")
}

// stop stops every process of the daemon (SIGTERM, then SIGKILL after a
// grace period) and removes its group.
func (d *daemon) stop() {
	d.group.StopAll(20 * time.Second)
	if d.proc != nil && !isDone(d.done) {
		// Started but not (or no longer) in the group: kill it directly.
		d.proc.Kill()
	}
	select {
	case <-d.done:
	case <-time.After(5 * time.Second):
	}
	d.cleanupGroup()
}

func isDone(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

func (d *daemon) cleanupGroup() {
	if err := d.group.Remove(); err != nil {
		d.env.Log.Warn("remove cgroup", "dir", d.group.Dir, "err", err)
		return
	}
	d.env.Journal.Update(func(s *JournalState) {
		s.Cgroups = removeString(s.Cgroups, d.group.Dir)
		var keep []TrackedProc
		for _, p := range s.Procs {
			if !containsInt(d.group.pids, p.Pid) {
				keep = append(keep, p)
			}
		}
		s.Procs = keep
	})
}

func containsInt(xs []int, x int) bool {
	for _, y := range xs {
		if x == y {
			return true
		}
	}
	return false
}

// logTail returns the end of the daemon's log, for error messages.
func (d *daemon) logTail() string {
	data, err := os.ReadFile(d.log)
	if err != nil || len(data) == 0 {
		return ""
	}
	s := strings.TrimSpace(string(data))
	if len(s) > 600 {
		s = "…" + s[len(s)-600:]
	}
	return "; its output: " + s
}

// errNotReady is returned when a daemon started but never became ready.
var errNotReady = errors.New("not ready")
