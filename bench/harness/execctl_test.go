package harness

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vigil-hips/vigil/bench"
)

func TestParseDecide(t *testing.T) {
	xs, err := parseDecide([]byte("eperm 12000000\nok 150000\n\nerrno 2 9000\n"))
	if err != nil || len(xs) != 3 {
		t.Fatalf("parseDecide = %v, %v", xs, err)
	}
	if xs[0] != (decideSample{outcome: "eperm", ns: 12e6}) || xs[1] != (decideSample{outcome: "ok", ns: 150000}) ||
		xs[2] != (decideSample{outcome: "errno", errno: 2, ns: 9000}) {
		t.Errorf("parseDecide = %+v", xs)
	}
	for _, bad := range []string{"ok\n", "eperm x\n", "errno 2\n", "what 1\n", "ok -5\n"} {
		if _, err := parseDecide([]byte(bad)); err == nil {
			t.Errorf("parseDecide(%q) accepted", bad)
		}
	}
}

func TestParseAgentFlags(t *testing.T) {
	// The help of issue 4's agent: --policy one file, --fanotify-mark repeatable.
	help := "      --fanotify-mark stringArray     without BPF LSM: ... (repeatable)\n" +
		"      --policy string                 enforce this policy file\n"
	if got := parsePolicyFlag(help); got != (policyFlag{present: true, fanotify: true}) {
		t.Errorf("issue 4's agent: %+v", got)
	}
	// Once --policy is repeatable (cobra's StringArray or StringSlice).
	for _, typ := range []string{"stringArray", "strings"} {
		h := strings.Replace(help, "--policy string ", "--policy "+typ+" ", 1)
		if got := parsePolicyFlag(h); got != (policyFlag{present: true, multi: true, fanotify: true}) {
			t.Errorf("--policy %s: %+v", typ, got)
		}
	}
}

func TestHasRules(t *testing.T) {
	for policy, want := range map[string]bool{
		"version: 1\nmode: enforce\nrules: []\ntrust:\n  mode: lockdown\n": false,
		"rules: [] # none\n": false,
		"mode: enforce\nrules:\n  - id: x\n    on: exec\n":                      true,
		"rules:\n# a comment\n\n- id: x\n":                                      true,
		"rules:\ntrust:\n  mode: lockdown\n":                                    false,
		"trust:\n  rules: [x]\n":                                                false, // not top level
		"rules: [{id: x, on: exec}]\n":                                          true,
		"# rules:\n#  - id: x\nrules: []\n":                                     false,
		"lists:\n  x: []\nrules:\n  - id: no-wx\n    action: deny\ntrust: {}\n": true,
	} {
		if got := hasRules(policy); got != want {
			t.Errorf("hasRules(%q) = %v, want %v", policy, got, want)
		}
	}
}

// The rewrites work on the policies as shipped, and the result still
// says what the original says, plus the bench's changes.
func TestPolicyRewrites(t *testing.T) {
	root := filepath.Join("..", "..", "examples", "policies")
	lock, err := os.ReadFile(filepath.Join(root, "lockdown.yaml"))
	if err != nil {
		t.Skipf("no lockdown.yaml: %v", err)
	}
	if hasRules(string(lock)) {
		t.Error("lockdown.yaml has rules: the host's lockdown configuration would refuse to run it")
	}
	got, err := lockdownFor(string(lock), "/w/agent-1/catalogs", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(got, "  catalog_dir: \"/w/agent-1/catalogs\"\n") || strings.Contains(got, "/etc/vigil/catalogs\n") {
		t.Errorf("catalog_dir not rewritten:\n%s", got)
	}
	if strings.Count(got, "\n") != strings.Count(string(lock), "\n") || strings.Contains(got, "\n  anonymous_exec_allow") {
		t.Errorf("more than catalog_dir changed:\n%s", got)
	}
	got, err = lockdownFor(string(lock), "/c", []string{"/opt/vigil-bench/micro"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(got, "  anonymous_exec: deny\n  anonymous_exec_allow: [\"/opt/vigil-bench/micro\"]\n") {
		t.Errorf("anonymous_exec_allow not added:\n%s", got)
	}
	if _, err := lockdownFor(got, "/c", []string{"/x"}); err == nil {
		t.Error("a second anonymous_exec_allow was added")
	}
	if _, err := lockdownFor("trust:\n  mode: lockdown\n", "/c", nil); err == nil {
		t.Error("a policy without catalog_dir was accepted")
	}

	hard, err := os.ReadFile(filepath.Join(root, "hardening.yaml"))
	if err != nil {
		t.Skipf("no hardening.yaml: %v", err)
	}
	got, err = hardeningWithJIT(string(hard), []string{"/opt/vigil-bench/micro"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(got, "  jit_runtimes:\n    - \"/opt/vigil-bench/micro\"\n    - /usr/bin/node\n") {
		t.Errorf("jit_runtimes not extended:\n%s", got[:min(len(got), 1500)])
	}
	if _, err := hardeningWithJIT("rules: []\n", []string{"/x"}); err == nil {
		t.Error("a policy without jit_runtimes was accepted")
	}
}

func TestScanRoots(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "opt", "b"), 0o755)
	os.WriteFile(filepath.Join(dir, "self"), nil, 0o755)
	got := scanRoots([]string{filepath.Join(dir, "opt"), filepath.Join(dir, "missing"), filepath.Join(dir, "opt", "b"),
		filepath.Join(dir, "self"), filepath.Join(dir, "opt")})
	want := []string{filepath.Join(dir, "opt"), filepath.Join(dir, "self")}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("scanRoots = %v, want %v", got, want)
	}
}

func TestLockdownHostCheck(t *testing.T) {
	c := ConfigByName(LockdownHost)
	if c == nil || c.Places != Host {
		t.Fatal("the fanotify lockdown configuration must be host only")
	}
	vigil := filepath.Join(t.TempDir(), "vigil")
	os.WriteFile(vigil, []byte("#!/bin/sh\n"), 0o755)
	dir := t.TempDir()
	e := &Env{Vigil: vigil, PolicyDirs: []string{dir}}
	ctx := context.Background()
	if r := c.Check(ctx, e); !strings.Contains(r, "issue 4") {
		t.Errorf("without the flags: %q", r)
	}
	e.PolicyFlag = policyFlag{present: true, fanotify: true}
	if r := c.Check(ctx, e); !strings.Contains(r, "lockdown.yaml not found") {
		t.Errorf("without the file: %q", r)
	}
	os.WriteFile(filepath.Join(dir, "lockdown.yaml"), []byte("mode: enforce\nrules:\n  - id: x\n"), 0o644)
	if r := c.Check(ctx, e); !strings.Contains(r, "has rules") {
		t.Errorf("a lockdown policy with rules: %q", r)
	}
	os.WriteFile(filepath.Join(dir, "lockdown.yaml"), []byte("mode: enforce\nrules: []\n"), 0o644)
	// No bench tmpfs: never mark anything else (a plain directory, or
	// a directory of a wider filesystem, is refused).
	e.execFS, e.execFSErr = dir, "mount failed"
	if r := c.Check(ctx, e); !strings.Contains(r, "no bench tmpfs") {
		t.Errorf("a plain directory as the bench tmpfs: %q", r)
	}
	if _, err := c.Start(ctx, e); err == nil || !strings.Contains(err.Error(), "refusing to mark") {
		t.Errorf("Start on a plain directory: %v", err)
	}
	e.InVM = true
	if r := c.Check(ctx, e); r == "" {
		t.Error("ran in the VM")
	}
}

func TestDecisionTargets(t *testing.T) {
	r := &bench.Report{
		Configs: []bench.ConfigStatus{{Name: "vigil", Place: "host", Ran: true}, {Name: LockdownHost, Place: "host", Ran: true}},
		Micro: []bench.MicroSuite{{Place: "host", Baseline: "none", Ops: []bench.OpResult{
			{Op: "exec", Label: "exec", Results: []bench.ConfigResult{{Config: "none", Ratio: 1}, {Config: "vigil", Ratio: 1.10},
				{Config: LockdownHost, Ratio: 1.21}}},
		}}},
		Decision: []bench.Decision{
			bench.DecisionRow("1 MB", 1_000_000, "host", LockdownHost, []float64{1e6, 2e6}, 2, []float64{1e5}),
			bench.DecisionRow("10 MB", 10_000_000, "host", LockdownHost, []float64{10e6, 15e6}, 2, []float64{2e5}),
			bench.DecisionRow("10 MB", 10_000_000, "vm 6.12", "vigil-enforce", []float64{400e6}, 2, nil),
		},
	}
	verdict := map[string]string{}
	for _, tg := range Targets(r) {
		verdict[tg.What] = tg.Verdict + ": " + tg.Measured
	}
	for what, want := range map[string]string{
		"first exec of an unknown 10 MB file decided (host, fanotify)": "met: p50 12.50 ms, p99 14.95 ms over 2 refused execs (no agent: p50 0.20 ms)",
		"decision latency, unknown 1 MB / 10 MB file": "reported: host, 1 MB: p50 1.50 ms, p99 1.99 ms; host, 10 MB: p50 12.50 ms, " +
			"p99 14.95 ms; vm 6.12, 10 MB: p50 400.00 ms, p99 400.00 ms",
		"exec overhead, lockdown on the host (fanotify, approved file, cached path)": "not met: +21.0% (host)",
	} {
		if verdict[what] != want {
			t.Errorf("%s:\n got %q\nwant %q", what, verdict[what], want)
		}
	}
	f := strings.Join(Findings(r), "\n")
	if !strings.Contains(f, "exec control itself adds about +10.0%") || !strings.Contains(f, "only 1 of 2 unknown files were refused") {
		t.Errorf("findings:\n%s", f)
	}
	// Over 20 ms at p99: not met, even with a good median.
	r.Decision[1] = bench.DecisionRow("10 MB", 10_000_000, "host", LockdownHost, []float64{10e6, 10e6, 10e6, 90e6}, 4, nil)
	for _, tg := range Targets(r) {
		if strings.HasPrefix(tg.What, "first exec of an unknown 10 MB") && tg.Verdict != bench.NotMet {
			t.Errorf("p99 over the target: %+v", tg)
		}
	}
	// Nothing measured: said so.
	r.Decision = decisionNotRun("host", "no bench tmpfs")
	for _, tg := range Targets(r) {
		if strings.HasPrefix(tg.What, "first exec of an unknown 10 MB") && (tg.Verdict != bench.NotYet || tg.Measured != "not run: no bench tmpfs") {
			t.Errorf("not run: %+v", tg)
		}
	}
}

func TestParseAuthLatencies(t *testing.T) {
	out := []byte(`{"kind":"exec","verdict":{"rule":"filter-api","clients":[{"client":"b@1","answer":"allow","latency_us":"250"}]}}
{"kind":"exec","verdict":{"rule":"no-exec","refused":true}}
{"kind":"exec","verdict":{"rule":"filter-api","clients":[{"client":"b@1","answer":"missed","latency_us":"50000"}]}}
{"kind":"exec","verdict":{"rule":"filter-api","clients":[{"client":"b@1","answer":"deny","latency_us":"900"}]}}
`)
	lat, missed, err := parseAuthLatencies(out)
	if err != nil || len(lat) != 2 || lat[0] != 250 || lat[1] != 900 || missed != 1 {
		t.Fatalf("parseAuthLatencies: %v %d %v", lat, missed, err)
	}
	r := &bench.Report{Auth: &bench.Auth{Samples: 2, P50us: 250, P99us: 900}}
	if got := authTarget(r); got.Verdict != bench.Met {
		t.Fatalf("target %+v", got)
	}
	r.Auth.P99us = 1500
	if got := authTarget(r); got.Verdict != bench.NotMet {
		t.Fatalf("target %+v", got)
	}
	// The real-time run meets it: met, and the line says by which.
	r.Auth.Realtime = &bench.AuthRun{Samples: 2, P50us: 200, P99us: 400}
	if got := authTarget(r); got.Verdict != bench.Met || !strings.Contains(got.Measured, "met with --realtime only") {
		t.Fatalf("target %+v", got)
	}
	r.Auth.Realtime.Missed = 1
	if got := authTarget(r); got.Verdict != bench.NotMet {
		t.Fatalf("target %+v", got)
	}
	r.Auth.Realtime = &bench.AuthRun{Reason: "no CAP_SYS_NICE"}
	if got := authTarget(r); got.Verdict != bench.NotMet || !strings.Contains(got.Measured, "no CAP_SYS_NICE") {
		t.Fatalf("target %+v", got)
	}
}
