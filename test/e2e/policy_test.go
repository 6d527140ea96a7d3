package e2e

import (
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/kernel"
	"github.com/vigil-hips/vigil/internal/policy"
	"github.com/vigil-hips/vigil/internal/testutil"
	"github.com/vigil-hips/vigil/internal/testworkload"
)

const (
	baselinePolicy  = "../../examples/policies/baseline.yaml"
	hardeningPolicy = "../../examples/policies/hardening.yaml"
)

// forbidden is each action hardening.yaml refuses, with its rule.
var forbidden = map[string]string{
	"wx_mprotect":               "no-wx-anonymous-memory",
	"ptrace_attach_foreign":     "no-injection-outside-own-tree",
	"process_vm_writev_foreign": "no-injection-outside-own-tree",
	"proc_mem_write_foreign":    "no-injection-outside-own-tree",
	"bpf_prog_load":             "no-kernel-code-loads",
	"module_load":               "no-kernel-code-loads",
	"kcore_open":                "no-kernel-memory-access",
	"dev_mem_open":              "no-kernel-memory-access",
	"kprobe_register":           "no-kernel-hooks-through-tracefs",
	"persistence_create":        "persistence-only-by-packages-and-admin-tools",
	"shell_from_server":         "no-shell-from-server",
}

// hardeningSetup makes what the hardening workload acts on: a process
// that is not its descendant, a module, a fake network server.
func hardeningSetup(t *testing.T) testworkload.HardeningTargets {
	t.Helper()
	// Not the workload's descendant: the test's own child, a sibling.
	sleeper, err := testworkload.StartSleeper()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sleeper.Process.Kill(); sleeper.Wait() })
	untrustBusybox(t, hardeningPolicy)

	// /usr/sbin/nginx: a copy of this binary, so a "server" execs a shell.
	server := "/usr/sbin/nginx"
	if _, err := os.Stat(server); err == nil {
		t.Fatalf("%s exists: this test needs a machine without it (the VM)", server)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(server), 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(server, b, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(server) })

	var module string
	filepath.WalkDir("/lib/modules/"+kernel.Release(), func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Name() == "dummy.ko" {
			module = p
			return filepath.SkipAll
		}
		return nil
	})
	if module == "" {
		t.Fatal("no dummy.ko in the VM")
	}
	return testworkload.HardeningTargets{
		ForeignPID: sleeper.Process.Pid,
		Module:     module,
		Preload:    "/etc/ld.so.preload",
		Server:     server,
		Shell:      "/bin/sh",
	}
}

// ruleHitsMetric reads vigil_policy_rule_hits_total{rule=...} from the
// agent's Prometheus endpoint.
func ruleHitsMetric(t *testing.T, addr, rule string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	prefix := `vigil_policy_rule_hits_total{rule="` + rule + `"} `
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, prefix); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metrics line %q: %v", line, err)
			}
			return n
		}
	}
	t.Fatalf("no %s in the metrics", prefix)
	return 0
}

// untrustBusybox removes the VM's busybox applet links that stand in for
// programs a policy's except blocks trust (dpkg, rpm, crontab, ...): they
// resolve to /bin/busybox, which init and every shell of the VM run, so
// everything would look like the package manager.
func untrustBusybox(t *testing.T, policyPath string) {
	t.Helper()
	p, err := policy.Load(policyPath)
	if err != nil {
		t.Fatal(err)
	}
	busybox, err := filepath.EvalSymlinks("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range p.Rules {
		for _, ex := range r.Except {
			for _, path := range slices.Concat(ex.Process.Exe, ex.Process.AncestorExe) {
				if real, err := filepath.EvalSymlinks(path); err == nil && real == busybox && path != busybox {
					if err := os.Remove(path); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
	}
}

func attempts(t *testing.T, targets testworkload.HardeningTargets) (*testworkload.HardeningReport, map[string]testworkload.Attempt) {
	t.Helper()
	r, err := testworkload.RunHardening(targets)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]testworkload.Attempt{}
	for _, a := range r.Attempts {
		m[a.Action] = a
	}
	for action := range forbidden {
		if _, ok := m[action]; !ok {
			t.Fatalf("the workload did not try %s", action)
		}
	}
	return r, m
}

// verdicts returns the verdicts of the events of the workload and of the
// processes it started, by rule.
func (a *agent) verdicts(t *testing.T, since time.Time) []*vigilv1.Event {
	t.Helper()
	var out []*vigilv1.Event
	for _, ev := range a.events("--since", since.Format(time.RFC3339Nano)) {
		if ev.Verdict != nil {
			out = append(out, ev)
		}
	}
	return out
}

func applyPolicy(t *testing.T, a *agent, path string) {
	t.Helper()
	if out, err := a.vigil("policy", "apply", path); err != nil {
		t.Fatalf("vigil policy apply %s: %v\n%s", path, err, out)
	}
}

// TestHardeningPolicyBlocks: under hardening.yaml each forbidden action
// fails with EPERM at the syscall and its event names the rule; under
// baseline.yaml the same actions succeed (so the test fails if the agent
// were off); a malformed policy is refused with file:line and the policy
// in force keeps blocking; in monitor mode everything runs and the
// would-be verdicts are recorded.
func TestHardeningPolicyBlocks(t *testing.T) {
	testutil.RequireBPFLSM(t)
	targets := hardeningSetup(t)
	const metricsAddr = "127.0.0.1:19464" // inside the VM: nothing else listens
	a := startAgent(t, "--policy", baselinePolicy, "--metrics-addr", metricsAddr)
	if st := a.status(); st.GetPolicy().GetName() != "baseline" {
		t.Fatalf("policy in force: %v, want baseline", st.GetPolicy())
	}

	_, got := attempts(t, targets)
	for action := range forbidden {
		if got[action].Result != "ok" {
			t.Errorf("baseline: %s: %s, want it to succeed", action, got[action].Result)
		}
	}

	applyPolicy(t, a, hardeningPolicy)
	since := time.Now()
	r, got := attempts(t, targets)
	for action := range forbidden {
		if got[action].Errno != int(syscall.EPERM) {
			t.Errorf("hardening: %s: %s, want EPERM", action, got[action].Result)
		}
	}
	// Every refusal is an event naming its rule.
	want := map[string]bool{}
	for _, rule := range forbidden {
		want[rule] = true
	}
	deadline := time.Now().Add(30 * time.Second)
	for len(want) > 0 && time.Now().Before(deadline) {
		for _, ev := range a.verdicts(t, since) {
			v := ev.Verdict
			if v.Refused && v.Mode == "enforce" && v.DecidedBy == "lsm" {
				delete(want, v.Rule)
			}
		}
		time.Sleep(300 * time.Millisecond)
	}
	if len(want) > 0 {
		t.Errorf("no refused event naming rules %v (workload pid %d)", want, r.PID)
	}
	// The kernel counts each rule's decisions (kcore and /dev/mem here):
	// in status and in the metrics.
	for _, rh := range a.status().GetPolicy().GetRules() {
		if rh.Rule == "no-kernel-memory-access" && rh.Hits < 2 {
			t.Errorf("status: rule %s: %d hits, want at least 2", rh.Rule, rh.Hits)
		}
	}
	if n := ruleHitsMetric(t, metricsAddr, "no-kernel-memory-access"); n < 2 {
		t.Errorf("metrics: rule no-kernel-memory-access: %v hits, want at least 2", n)
	}

	// A malformed policy is refused with its position; hardening stays.
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("version: 1\nmode: enforce\nrules:\n  - id: x\n    on: [exec]\n    action: maybe\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := a.vigil("policy", "apply", bad)
	if err == nil || !strings.Contains(string(out), bad+":6:") {
		t.Fatalf("malformed policy: err %v, output %q: want a refusal at %s:6", err, out, bad)
	}
	if st := a.status(); st.GetPolicy().GetName() != "hardening" {
		t.Fatalf("after the refused policy, in force: %v, want hardening", st.GetPolicy())
	}
	_, got = attempts(t, targets)
	if got["kcore_open"].Errno != int(syscall.EPERM) || got["wx_mprotect"].Errno != int(syscall.EPERM) {
		t.Fatalf("after the refused policy hardening no longer blocks: %v", got)
	}

	// Monitor mode: everything runs, the would-be verdicts are recorded.
	monitor := filepath.Join(t.TempDir(), "hardening-monitor.yaml")
	src, err := os.ReadFile(hardeningPolicy)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(monitor, []byte(strings.Replace(string(src), "\nmode: enforce\n", "\nmode: monitor\n", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	applyPolicy(t, a, monitor)
	since = time.Now()
	_, got = attempts(t, targets)
	for action := range forbidden {
		if got[action].Result != "ok" {
			t.Errorf("monitor: %s: %s, want it to succeed", action, got[action].Result)
		}
	}
	wouldBe := map[string]bool{}
	for _, rule := range forbidden {
		wouldBe[rule] = true
	}
	deadline = time.Now().Add(30 * time.Second)
	for len(wouldBe) > 0 && time.Now().Before(deadline) {
		for _, ev := range a.verdicts(t, since) {
			if v := ev.Verdict; v.Mode == "monitor" && !v.Refused && v.Action == "deny" {
				delete(wouldBe, v.Rule)
			}
		}
		time.Sleep(300 * time.Millisecond)
	}
	if len(wouldBe) > 0 {
		t.Errorf("monitor: no would-be verdict of %v", wouldBe)
	}
}
