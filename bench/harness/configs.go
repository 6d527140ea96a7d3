package harness

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Place is where a configuration can run.
type Place int

const (
	// Host is the machine `make bench` runs on.
	Host Place = 1 << iota
	// VM is the qemu guest of tools/vmtest, with BPF LSM.
	VM
)

// Config is one row of the configuration table. Adding a configuration
// (a new policy, another product to compare with) is one entry in
// Configs: a name, where it may run, what it needs, and how to start it.
type Config struct {
	Name  string
	Label string
	// Places says where it may run at all.
	Places Place
	// PlaceNote says why a place is missing from Places (e.g. enforce
	// never runs on the host).
	PlaceNote string
	// Check returns why the configuration cannot run here, or "".
	Check func(ctx context.Context, e *Env) string
	// Start brings it up and returns once it is ready; nil means nothing
	// runs (the baseline).
	Start func(ctx context.Context, e *Env) (*Running, error)
	// Agent says the configuration is a Vigil agent: the throughput and
	// workload phases use it.
	Agent bool
	// Notes are shown with the configuration in the report.
	Notes []string
}

// Baseline is the configuration every ratio is taken against.
const Baseline = "none"

// LockdownHost is the host's lockdown configuration: exec control by
// fanotify on the bench's tmpfs.
const LockdownHost = "vigil-lockdown-fanotify"

// Configs is the configuration table, in column order.
var Configs = []Config{
	{
		Name: Baseline, Label: "no agent", Places: Host | VM,
	},
	{
		Name: "vigil", Label: "vigil agent (observe)", Places: Host | VM, Agent: true,
		Check: needVigil,
		Start: startVigil(),
		Notes: []string{"the agent as it is today: sensors attached, every event stored, no policy"},
	},
	{
		Name: "vigil-monitor", Label: "vigil + baseline.yaml (monitor)", Places: Host | VM, Agent: true,
		Check: needPolicy("needs issue 3", "baseline.yaml"),
		Start: startVigil("baseline.yaml"),
		Notes: []string{"examples/policies/baseline.yaml: every rule an alert, nothing refused"},
	},
	{
		Name: "vigil-enforce", Label: "vigil + hardening.yaml + lockdown.yaml (enforce)", Places: VM, Agent: true,
		PlaceNote: "VM only: enforce arms host-wide denies, which the bench never does outside a VM",
		Check:     needPolicy("needs issue 3/4", "hardening.yaml", "lockdown.yaml"),
		Notes: []string{"the cached path: the system directories and the bench's programs are trust-scanned " +
			"before the agent starts; the timing helper is listed as a JIT runtime (its mprotect RW→RX row)"},
		Start: startEnforce,
	},
	{
		Name: LockdownHost, Label: "vigil + lockdown.yaml (fanotify, bench tmpfs)", Places: Host, Agent: true,
		PlaceNote: "host only: in the VM the LSM backend decides every exec (vigil-enforce)",
		Check:     checkLockdownFanotify,
		Start:     startLockdownFanotify,
		Notes: []string{"lockdown decides execs only on the bench's own tmpfs (--fanotify-mark), where the exec " +
			"target lives for every host configuration; the target is trust-scanned before the agent starts " +
			"(the cached path); dlopen, mprotect and other files are not under exec control on this path"},
	},
	{
		Name: "auditd", Label: "auditd + execve rule", Places: Host,
		PlaceNote: "host only: the VM image has no auditd",
		Check:     checkAuditd,
		Start:     startAuditd,
		Notes:     []string{"Debian's auditd, `-a always,exit -F arch=b64 -S execve`, backlog 8192 as Debian's rules.d sets it; its log on a tmpfs"},
	},
	{
		Name: "fapolicyd", Label: "fapolicyd, default rules (permissive)", Places: Host,
		PlaceNote: "host only: the VM image has no fapolicyd",
		Check:     checkFapolicyd,
		Start:     startFapolicyd,
		Notes: []string{"Debian's fapolicyd and its default rules (deny_audit perm=execute all : all), " +
			"permissive so nothing is denied on this host; filesystem marks; run as root " +
			"(see the fapolicyd section of docs/benchmarks.md)"},
	},
}

// ConfigByName returns the table entry name, or nil.
func ConfigByName(name string) *Config {
	for i := range Configs {
		if Configs[i].Name == name {
			return &Configs[i]
		}
	}
	return nil
}

// Running is a started configuration.
type Running struct {
	Config string
	d      *daemon
	// agent is set for a Vigil agent.
	agent *agentClient
	// Backend is the agent's sensor backend.
	Backend string
	// beforeStop runs before the daemon is stopped (audit rules out).
	beforeStop func(ctx context.Context) error
	// afterStop runs after it (audit state restored).
	afterStop func(ctx context.Context) error
}

// CPU returns the CPU the configuration's processes used so far (0 for
// the baseline).
func (r *Running) CPU() time.Duration {
	if r == nil || r.d == nil {
		return 0
	}
	d, _ := r.d.group.CPU()
	return d
}

// HWMKB returns the peak RSS of its processes so far, in KiB.
func (r *Running) HWMKB() uint64 {
	if r == nil || r.d == nil {
		return 0
	}
	return r.d.hwmKB()
}

// Stop stops the configuration and puts back what it changed.
func (r *Running) Stop(ctx context.Context) error {
	if r == nil || r.d == nil {
		return nil
	}
	var errs []string
	if r.beforeStop != nil {
		if err := r.beforeStop(ctx); err != nil {
			errs = append(errs, err.Error())
		}
	}
	r.d.stop()
	if r.afterStop != nil {
		if err := r.afterStop(ctx); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("stop %s: %s", r.Config, strings.Join(errs, "; "))
	}
	return nil
}

func needVigil(ctx context.Context, e *Env) string {
	if _, err := os.Stat(e.Vigil); err != nil {
		return fmt.Sprintf("no vigil binary at %s (make build)", e.Vigil)
	}
	return ""
}

// needPolicy is the check of a Vigil configuration with policy files:
// it needs `vigil agent --policy` (issues 3 and 4), the files, a flag that
// takes them all, and on the host, policies that only monitor.
func needPolicy(issue string, files ...string) func(ctx context.Context, e *Env) string {
	return func(ctx context.Context, e *Env) string {
		if r := needVigil(ctx, e); r != "" {
			return r
		}
		if !e.PolicyFlag.present {
			return "not yet available: " + issue + " (`vigil agent` has no --policy yet)"
		}
		var missing []string
		for _, f := range files {
			p := e.findPolicy(f)
			if p == "" {
				missing = append(missing, f)
				continue
			}
			if !e.InVM {
				data, err := os.ReadFile(p)
				if err != nil {
					return err.Error()
				}
				if enforces(string(data)) {
					return f + " enforces: the bench runs enforcing policies only in the VM"
				}
			}
		}
		if len(missing) > 0 {
			return fmt.Sprintf("not yet available: %s not found in %s (%s)", strings.Join(missing, ", "),
				strings.Join(e.PolicyDirs, ", "), issue)
		}
		if len(files) > 1 && !e.PolicyFlag.multi {
			return "not yet available: `vigil agent --policy` takes one file, this configuration needs " +
				strings.Join(files, " + ")
		}
		return ""
	}
}

// enforces says whether a policy file sets enforce mode anywhere (the
// policy's mode or a rule's).
func enforces(policy string) bool {
	for _, l := range strings.Split(policy, "\n") {
		l = strings.TrimSpace(l)
		if i := strings.Index(l, "#"); i >= 0 {
			l = strings.TrimSpace(l[:i])
		}
		k, v, ok := strings.Cut(l, ":")
		if ok && strings.TrimSpace(k) == "mode" && strings.Trim(strings.TrimSpace(v), `"'`) == "enforce" {
			return true
		}
	}
	return false
}

// findPolicy returns the path of a policy file in PolicyDirs, or "".
func (e *Env) findPolicy(name string) string {
	for _, d := range e.PolicyDirs {
		p := filepath.Join(d, name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}
