package harness

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultJournal is where a run records what it must undo. It lives in
// /run, a tmpfs: after a reboot there is nothing left to undo either.
const DefaultJournal = "/run/vigil-bench/journal.json"

// JournalState is everything a run changed on the machine and has not yet
// put back. `vigil-bench cleanup` undoes it after a run that died (the
// Makefile calls it from a trap); a run that ends normally undoes it
// itself.
type JournalState struct {
	// Cgroups made for daemons: their processes are killed and the
	// groups removed.
	Cgroups []string `json:"cgroups,omitempty"`
	// Procs are daemons tracked without cgroups.
	Procs []TrackedProc `json:"procs,omitempty"`
	// Audit is the kernel audit state before the bench touched it.
	Audit *AuditSaved `json:"audit,omitempty"`
	// Mounts the bench made (the exec-control tmpfs): unmounted before
	// the directories are removed.
	Mounts []string `json:"mounts,omitempty"`
	// Files the bench created outside its work directory.
	Files []string `json:"files,omitempty"`
	// Dirs are work directories to remove.
	Dirs []string `json:"dirs,omitempty"`
}

// TrackedProc identifies a process across pid reuse.
type TrackedProc struct {
	Pid   int    `json:"pid"`
	Start uint64 `json:"start_ticks"`
}

// AuditSaved is the audit state to restore, and the key of the rules the
// bench added.
type AuditSaved struct {
	Enabled         int    `json:"enabled"`
	BacklogLimit    int    `json:"backlog_limit"`
	BacklogWaitTime int    `json:"backlog_wait_time"`
	Key             string `json:"key"`
}

// Journal is the on-disk JournalState, rewritten on every change.
type Journal struct {
	path string
	mu   sync.Mutex
	s    JournalState
}

// OpenJournal starts a journal at path. A journal left by an earlier run
// must have been cleaned up first (see Cleanup).
func OpenJournal(path string) (*Journal, error) {
	if _, err := os.Stat(path); err == nil {
		return nil, fmt.Errorf("journal %s exists: an earlier run did not clean up; run `vigil-bench cleanup` first", path)
	}
	j := &Journal{path: path}
	return j, j.save()
}

// Update changes the state and writes it out.
func (j *Journal) Update(f func(*JournalState)) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	f(&j.s)
	return j.save()
}

func (j *Journal) save() error {
	if err := os.MkdirAll(filepath.Dir(j.path), 0o700); err != nil {
		return err
	}
	data, err := json.MarshalIndent(&j.s, "", "  ")
	if err != nil {
		return err
	}
	tmp := j.path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, j.path)
}

// Path returns the journal's file.
func (j *Journal) Path() string { return j.path }

func removeString(xs []string, s string) []string {
	out := xs[:0]
	for _, x := range xs {
		if x != s {
			out = append(out, x)
		}
	}
	return out
}

// Cleanup undoes what the journal at path records, then removes it. It is
// safe to call any number of times and with no journal.
func Cleanup(ctx context.Context, path string, log *slog.Logger) error {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var s JournalState
	if err := json.Unmarshal(data, &s); err != nil {
		return fmt.Errorf("journal %s: %w", path, err)
	}
	var errs []error
	for _, dir := range s.Cgroups {
		g := &Group{Dir: dir}
		if pids := g.Pids(); len(pids) > 0 {
			log.Warn("cleanup: stopping leftover daemon processes", "cgroup", dir, "pids", pids)
		}
		g.StopAll(5 * time.Second)
		if err := g.Remove(); err != nil {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", dir, err))
		}
	}
	for _, p := range s.Procs {
		if procStart(p.Pid) == p.Start && !isZombie(p.Pid) {
			log.Warn("cleanup: stopping leftover daemon process", "pid", p.Pid)
			syscall.Kill(p.Pid, syscall.SIGTERM)
			for i := 0; i < 100 && !isZombie(p.Pid) && procStart(p.Pid) == p.Start; i++ {
				time.Sleep(50 * time.Millisecond)
			}
			if procStart(p.Pid) == p.Start {
				syscall.Kill(p.Pid, syscall.SIGKILL)
			}
		}
	}
	if s.Audit != nil {
		if err := restoreAudit(ctx, *s.Audit, log); err != nil {
			errs = append(errs, err)
		}
	}
	for _, m := range s.Mounts {
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", m, err))
		}
	}
	for _, f := range s.Files {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	for _, d := range s.Dirs {
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if err := os.Remove(path); err != nil {
		return err
	}
	os.Remove(filepath.Dir(path)) // only if empty: the lock file keeps it while a run holds it
	return nil
}

// Lock is held by a run (and by cleanup) so that two runs never share a
// journal or fight over auditd and fapolicyd.
type Lock struct{ f *os.File }

// TryLock takes the lock next to the journal at path, or fails at once if
// another run holds it.
func TryLock(path string) (*Lock, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(filepath.Dir(path), "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("another vigil-bench run holds %s: %w", f.Name(), err)
	}
	return &Lock{f: f}, nil
}

// Unlock releases the lock and removes its file.
func (l *Lock) Unlock() {
	os.Remove(l.f.Name())
	l.f.Close()
	os.Remove(filepath.Dir(l.f.Name())) // only if empty
}
