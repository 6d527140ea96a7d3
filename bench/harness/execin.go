package harness

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

// ExecIn is `vigil-bench exec-in`: join cgroups, optionally enter a
// private mount namespace with tmpfs and bind mounts over some paths, then
// exec the command. It is how the bench starts a daemon (auditd,
// fapolicyd) with its state and configuration in throwaway places, so the
// host's own files are never changed, and in a cgroup from its first
// instruction, so all its CPU is counted.
//
//	vigil-bench exec-in [-cgroup FILE]... [-tmpfs DIR]... [-bind SRC=DST]... [-mkdir DIR]... -- CMD [ARGS...]
func ExecIn(args []string) error {
	fs := flag.NewFlagSet("exec-in", flag.ContinueOnError)
	var cgroups, tmpfs, binds, mkdirs listFlag
	fs.Var(&cgroups, "cgroup", "cgroup.procs file to join (repeatable)")
	fs.Var(&tmpfs, "tmpfs", "mount a fresh tmpfs on this directory, in a private mount namespace (repeatable)")
	fs.Var(&binds, "bind", "SRC=DST: bind-mount SRC on DST, in a private mount namespace (repeatable)")
	fs.Var(&mkdirs, "mkdir", "create this directory after the mounts (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	argv := fs.Args()
	if len(argv) == 0 {
		return errors.New("exec-in: no command")
	}
	// Namespaces belong to the thread: unshare and exec on the same one.
	runtime.LockOSThread()
	for _, f := range cgroups {
		if err := os.WriteFile(f, []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
			return fmt.Errorf("exec-in: join %s: %w", f, err)
		}
	}
	if len(tmpfs)+len(binds) > 0 {
		if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
			return fmt.Errorf("exec-in: unshare mount namespace: %w", err)
		}
		// Nothing mounted here may propagate back to the host.
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			return fmt.Errorf("exec-in: make mounts private: %w", err)
		}
		for _, d := range tmpfs {
			if err := unix.Mount("tmpfs", d, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755"); err != nil {
				return fmt.Errorf("exec-in: tmpfs on %s: %w", d, err)
			}
		}
		for _, b := range binds {
			src, dst, ok := strings.Cut(b, "=")
			if !ok {
				return fmt.Errorf("exec-in: -bind %q: want SRC=DST", b)
			}
			if err := unix.Mount(src, dst, "", unix.MS_BIND, ""); err != nil {
				return fmt.Errorf("exec-in: bind %s on %s: %w", src, dst, err)
			}
		}
	}
	for _, d := range mkdirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("exec-in: %w", err)
		}
	}
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return fmt.Errorf("exec-in: %w", err)
	}
	return syscall.Exec(path, argv, os.Environ())
}
