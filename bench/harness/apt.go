package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// policyRCD is Debian's hook that decides whether a package's maintainer
// scripts may start its service. While the bench installs auditd and
// fapolicyd it must say no: the bench starts them itself, its own way.
const policyRCD = "/usr/sbin/policy-rc.d"

// installed says whether Debian package p is installed.
func installed(ctx context.Context, p string) bool {
	out, err := exec.CommandContext(ctx, "dpkg-query", "-W", "-f=${db:Status-Status}", p).Output()
	return err == nil && strings.TrimSpace(string(out)) == "installed"
}

// EnsurePackages installs the Debian packages of pkgs that are missing,
// with services kept from starting, and returns the ones that could not
// be installed with the reason.
func (e *Env) EnsurePackages(ctx context.Context, pkgs []string) map[string]string {
	var missing []string
	for _, p := range pkgs {
		if !installed(ctx, p) {
			missing = append(missing, p)
		}
	}
	failed := map[string]string{}
	if len(missing) == 0 {
		return failed
	}
	if e.Opts.NoInstall {
		for _, p := range missing {
			failed[p] = "Debian package " + p + " is not installed (and -no-install)"
		}
		return failed
	}
	e.Log.Info("installing Debian packages", "packages", strings.Join(missing, " "))
	if _, err := os.Stat(policyRCD); errors.Is(err, os.ErrNotExist) {
		if err := os.WriteFile(policyRCD, []byte("#!/bin/sh\n# vigil-bench: no service starts while it installs packages\nexit 101\n"), 0o755); err == nil {
			e.Journal.Update(func(s *JournalState) { s.Files = append(s.Files, policyRCD) })
			defer func() {
				os.Remove(policyRCD)
				e.Journal.Update(func(s *JournalState) { s.Files = removeString(s.Files, policyRCD) })
			}()
		}
	}
	run := func(args ...string) error {
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("apt-get %s: %v: %s", strings.Join(args, " "), err, lastLines(string(out), 5))
		}
		return nil
	}
	install := func(ps []string) error {
		return run(append([]string{"install", "-y", "-q", "--no-install-recommends"}, ps...)...)
	}
	if err := install(missing); err != nil {
		// Maybe the package lists are stale or absent: update once.
		if uerr := run("update", "-q"); uerr != nil {
			e.Log.Warn("apt-get update failed", "err", uerr)
		}
		if err := install(missing); err != nil {
			// One at a time, to know which cannot be had.
			for _, p := range missing {
				if err := install([]string{p}); err != nil {
					failed[p] = err.Error()
				}
			}
		}
	}
	return failed
}

// missing returns why package p is not usable, or "".
func (e *Env) missing(p string) string {
	if r, ok := e.NotInstalled[p]; ok {
		return "could not install Debian's " + p + ": " + r
	}
	return ""
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " / ")
}
