package harness

import (
	"context"
	"fmt"
	"log/slog"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// auditKey tags the audit rules the bench adds, so they (and only they)
// can be removed, also by `vigil-bench cleanup` after a crash.
const auditKey = "vigil-bench"

// auditRule is the one rule of the auditd configuration: every execve.
var auditRule = []string{"-a", "always,exit", "-F", "arch=b64", "-S", "execve", "-k", auditKey}

func auditctl(ctx context.Context, args ...string) (string, error) {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(cctx, "auditctl", args...).CombinedOutput()
	s := strings.TrimSpace(string(out))
	if err != nil {
		return s, fmt.Errorf("auditctl %s: %v: %s", strings.Join(args, " "), err, s)
	}
	return s, nil
}

// parseAuditStatus reads `auditctl -s`: "name value" lines.
func parseAuditStatus(out string) map[string]int {
	m := map[string]int{}
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 {
			if v, err := strconv.Atoi(f[1]); err == nil {
				m[f[0]] = v
			}
		}
	}
	return m
}

func auditStatus(ctx context.Context) (map[string]int, error) {
	out, err := auditctl(ctx, "-s")
	if err != nil {
		return nil, err
	}
	st := parseAuditStatus(out)
	if _, ok := st["enabled"]; !ok {
		return nil, fmt.Errorf("auditctl -s: unexpected output %q", out)
	}
	return st, nil
}

func checkAuditd(ctx context.Context, e *Env) string {
	if r := e.missing("auditd"); r != "" {
		return r
	}
	st, err := auditStatus(ctx)
	if err != nil {
		return "the kernel's audit subsystem is not usable here: " + err.Error()
	}
	if st["enabled"] == 2 {
		return "the audit configuration is locked (enabled 2) until reboot"
	}
	if pid := st["pid"]; pid != 0 {
		return fmt.Sprintf("an audit daemon (pid %d) already runs here; the bench does not take over a running service", pid)
	}
	if p := pidsByComm("auditd"); len(p) > 0 {
		return fmt.Sprintf("auditd (pid %d) already runs here; the bench does not take over a running service", p[0])
	}
	return ""
}

// saveAudit records the audit state before the bench changes it, once.
func (e *Env) saveAudit(ctx context.Context) error {
	st, err := auditStatus(ctx)
	if err != nil {
		return err
	}
	return e.Journal.Update(func(s *JournalState) {
		if s.Audit == nil {
			s.Audit = &AuditSaved{Enabled: st["enabled"], BacklogLimit: st["backlog_limit"],
				BacklogWaitTime: st["backlog_wait_time"], Key: auditKey}
		}
	})
}

// restoreAudit removes the bench's rules and puts the saved state back.
func restoreAudit(ctx context.Context, s AuditSaved, log *slog.Logger) error {
	var errs []string
	if out, err := auditctl(ctx, "-D", "-k", s.Key); err != nil && !strings.Contains(out, "No rules") {
		errs = append(errs, err.Error())
	}
	if s.BacklogLimit > 0 {
		if _, err := auditctl(ctx, "-b", strconv.Itoa(s.BacklogLimit)); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if _, err := auditctl(ctx, "--backlog_wait_time", strconv.Itoa(s.BacklogWaitTime)); err != nil {
		errs = append(errs, err.Error())
	}
	if _, err := auditctl(ctx, "-e", strconv.Itoa(s.Enabled)); err != nil {
		errs = append(errs, err.Error())
	}
	if len(errs) > 0 {
		return fmt.Errorf("restore audit state: %s", strings.Join(errs, "; "))
	}
	log.Debug("audit state restored", "enabled", s.Enabled, "backlog_limit", s.BacklogLimit)
	return nil
}

// primeAudit enables and disables audit once. The kernel gives every new
// task an audit context from the first time audit is enabled until
// reboot, whether or not audit is still on; priming puts every
// configuration, the baseline included, in that same state, so the
// auditd row is the cost of auditd and its rule, not of the order the
// configurations ran in.
func (e *Env) primeAudit(ctx context.Context) error {
	if err := e.saveAudit(ctx); err != nil {
		return err
	}
	st, err := auditStatus(ctx)
	if err != nil {
		return err
	}
	if st["enabled"] != 0 {
		return nil
	}
	if _, err := auditctl(ctx, "-e", "1"); err != nil {
		return err
	}
	_, err = auditctl(ctx, "-e", "0")
	return err
}

func startAuditd(ctx context.Context, e *Env) (*Running, error) {
	if err := e.saveAudit(ctx); err != nil {
		return nil, err
	}
	var saved AuditSaved
	e.Journal.Update(func(s *JournalState) { saved = *s.Audit })
	restore := func(ctx context.Context) error {
		err := restoreAudit(ctx, saved, e.Log)
		if err == nil {
			e.Journal.Update(func(s *JournalState) { s.Audit = nil })
		}
		return err
	}
	// Its log goes to a tmpfs of its own: nothing is left in /var/log.
	d, err := e.startDaemon(ctx, daemonSpec{name: "auditd", argv: []string{"auditd", "-n"},
		tmpfs: []string{"/var/log/audit"}})
	if err != nil {
		restore(ctx)
		return nil, err
	}
	fail := func(err error) (*Running, error) {
		auditctl(ctx, "-D", "-k", auditKey)
		d.stop()
		restore(ctx)
		return nil, err
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := auditStatus(ctx)
		if err == nil && st["pid"] != 0 && containsInt(d.pids(), st["pid"]) {
			break
		}
		if time.Now().After(deadline) || !d.alive() {
			return fail(fmt.Errorf("auditd did not register with the kernel%s", d.logTail()))
		}
		time.Sleep(100 * time.Millisecond)
	}
	// What Debian's /etc/audit/rules.d/audit.rules sets, then the rule.
	for _, args := range [][]string{{"-b", "8192"}, {"--backlog_wait_time", "60000"}, auditRule} {
		if _, err := auditctl(ctx, args...); err != nil {
			return fail(err)
		}
	}
	if out, err := auditctl(ctx, "-l"); err != nil || !strings.Contains(out, auditKey) {
		return fail(fmt.Errorf("the execve rule is not loaded: %s", out))
	}
	return &Running{d: d,
		beforeStop: func(ctx context.Context) error {
			_, err := auditctl(ctx, "-D", "-k", auditKey)
			return err
		},
		afterStop: restore,
	}, nil
}
