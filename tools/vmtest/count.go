package main

import (
	"strings"
)

// BPFLSMMarker is the line prefix testutil.RequireBPFLSM prints (followed by
// the test's name) so the runner can tell which tests exist to exercise BPF
// LSM and check that they did not all skip.
const BPFLSMMarker = "vmtest: requires bpf-lsm: "

// Counts is what one test binary did, as read from its `go test -v` output.
type Counts struct {
	Ran     int `json:"ran"`
	Passed  int `json:"passed"`
	Failed  int `json:"failed"`
	Skipped int `json:"skipped"`
	// BPFLSMRan counts results (pass or fail) of tests that printed the
	// bpf-lsm marker; BPFLSMSkipped those that printed it and then skipped.
	BPFLSMRan     int `json:"bpflsm_ran"`
	BPFLSMSkipped int `json:"bpflsm_skipped"`
}

// Add adds o to c.
func (c *Counts) Add(o Counts) {
	c.Ran += o.Ran
	c.Passed += o.Passed
	c.Failed += o.Failed
	c.Skipped += o.Skipped
	c.BPFLSMRan += o.BPFLSMRan
	c.BPFLSMSkipped += o.BPFLSMSkipped
}

// Counter counts tests from `go test -v` output fed to it line by line.
// Subtests count like tests. A test that started (=== RUN) but never
// reported a result, because the binary crashed or the VM died, counts as
// failed once Finish is called. With -count=N a test is counted N times.
type Counter struct {
	c Counts
	// open is how many runs of each test started and did not finish yet.
	open map[string]int
	// bpf is how many bpf-lsm markers each test printed that no result has
	// consumed yet.
	bpf map[string]int
}

// NewCounter returns an empty Counter.
func NewCounter() *Counter {
	return &Counter{open: map[string]int{}, bpf: map[string]int{}}
}

// Feed reads one line of output, without its line ending.
func (k *Counter) Feed(line string) {
	if i := strings.Index(line, BPFLSMMarker); i >= 0 {
		if name := firstField(line[i+len(BPFLSMMarker):]); name != "" {
			k.bpf[name]++
		}
		return
	}
	// test2json mode (-test.v=test2json) prefixes framing lines with ^V.
	s := strings.TrimLeft(line, " \t\x16")
	switch {
	case strings.HasPrefix(s, "=== RUN "):
		if name := firstField(s[len("=== RUN "):]); name != "" {
			k.open[name]++
		}
	case strings.HasPrefix(s, "--- PASS: "):
		k.result(firstField(s[len("--- PASS: "):]), "pass")
	case strings.HasPrefix(s, "--- FAIL: "):
		k.result(firstField(s[len("--- FAIL: "):]), "fail")
	case strings.HasPrefix(s, "--- SKIP: "):
		k.result(firstField(s[len("--- SKIP: "):]), "skip")
	}
}

func (k *Counter) result(name, outcome string) {
	if name == "" {
		return
	}
	if k.open[name] > 0 {
		k.open[name]--
	}
	k.c.Ran++
	switch outcome {
	case "pass":
		k.c.Passed++
	case "fail":
		k.c.Failed++
	case "skip":
		k.c.Skipped++
	}
	if k.bpf[name] > 0 {
		k.bpf[name]--
		if outcome == "skip" {
			k.c.BPFLSMSkipped++
		} else {
			k.c.BPFLSMRan++
		}
	}
}

// Finish counts the tests that started and never finished as failed (and,
// for bpf-lsm tests, as ran) and returns the totals. Call it once, after
// the last line.
func (k *Counter) Finish() Counts {
	for name, n := range k.open {
		for ; n > 0; n-- {
			k.result(name, "fail")
		}
		delete(k.open, name)
	}
	return k.c
}

// Snapshot returns the counts so far without finishing.
func (k *Counter) Snapshot() Counts { return k.c }

func firstField(s string) string {
	f := strings.Fields(s)
	if len(f) == 0 {
		return ""
	}
	return f[0]
}
