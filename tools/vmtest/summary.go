package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

// resultsFile is the file, inside VMTEST_SUMMARY_DIR, that every run appends
// one JSON object (one line) to. Several VMs may finish at once (go test runs
// packages in parallel), so appends hold an exclusive flock.
const resultsFile = "vmtest-results.jsonl"

// Record is one test binary's run in one VM.
type Record struct {
	Kernel  string `json:"kernel"`
	Release string `json:"release,omitempty"`
	// Package is the test's directory relative to the module root when
	// known, else the binary's name.
	Package string `json:"package"`
	Binary  string `json:"binary"`
	Counts
	// ExitCode is the test binary's exit status inside the VM, or -1 when
	// it never reported one.
	ExitCode int `json:"exit_code"`
	// Error says what went wrong in the runner itself (timeout, the VM
	// died before the result marker), empty when nothing did.
	Error        string  `json:"error,omitempty"`
	BootSeconds  float64 `json:"boot_seconds"`
	TotalSeconds float64 `json:"total_seconds"`
}

// appendRecord appends r to dir's results file.
func appendRecord(dir string, r Record) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("summary dir: %w", err)
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(dir, resultsFile), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("summary file: %w", err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("lock summary file: %w", err)
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("write summary file: %w", err)
	}
	return f.Close()
}

// readRecords reads every record in dir's results file.
func readRecords(dir string) ([]Record, error) {
	f, err := os.Open(filepath.Join(dir, resultsFile))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return decodeRecords(f)
}

func decodeRecords(r io.Reader) ([]Record, error) {
	var out []Record
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		var rec Record
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		out = append(out, rec)
	}
	return out, sc.Err()
}

// KernelSummary is every run on one kernel added up.
type KernelSummary struct {
	Kernel string
	Runs   int
	Counts
	// BadRuns lists the runs that exited non-zero or where the runner
	// failed, as "package: reason".
	BadRuns []string
}

// Problems returns why this kernel's results do not pass, empty if they do.
// The rules: there must be results; no test may fail and no binary may exit
// non-zero; at least one bpf-lsm-requiring test must have run without
// skipping (the VM exists to test BPF LSM, so a suite where every such test
// skipped or none ran proves nothing).
func (s KernelSummary) Problems() []string {
	var p []string
	if s.Runs == 0 {
		return []string{"no results (did the test run for this kernel at all?)"}
	}
	if s.Failed > 0 {
		p = append(p, plural(s.Failed, "test")+" failed")
	}
	for _, b := range s.BadRuns {
		p = append(p, b)
	}
	switch {
	case s.BPFLSMRan == 0 && s.BPFLSMSkipped == 0:
		p = append(p, "no bpf-lsm-requiring test ran (no test called testutil.RequireBPFLSM)")
	case s.BPFLSMRan == 0:
		p = append(p, fmt.Sprintf("all bpf-lsm-requiring tests skipped (%s)", plural(s.BPFLSMSkipped, "test")))
	}
	return p
}

// Line is the one-line summary for this kernel.
func (s KernelSummary) Line() string {
	return fmt.Sprintf("vmtest: kernel %s: %d ran, %d passed, %d failed, %d skipped; bpf-lsm tests: %d ran, %d skipped",
		s.Kernel, s.Ran, s.Passed, s.Failed, s.Skipped, s.BPFLSMRan, s.BPFLSMSkipped)
}

// summarize adds records up per kernel. Every expected kernel gets an entry,
// even without records; kernels with records that were not expected are
// listed after the expected ones, sorted.
func summarize(recs []Record, expected []string) []KernelSummary {
	byKernel := map[string]*KernelSummary{}
	order := slices.Clone(expected)
	get := func(k string) *KernelSummary {
		s, ok := byKernel[k]
		if !ok {
			s = &KernelSummary{Kernel: k}
			byKernel[k] = s
		}
		return s
	}
	for _, k := range expected {
		get(k)
	}
	var extra []string
	for _, r := range recs {
		if !slices.Contains(order, r.Kernel) && !slices.Contains(extra, r.Kernel) {
			extra = append(extra, r.Kernel)
		}
		s := get(r.Kernel)
		s.Runs++
		s.Counts.Add(r.Counts)
		switch {
		case r.Error != "":
			s.BadRuns = append(s.BadRuns, fmt.Sprintf("%s: %s", r.Package, r.Error))
		case r.ExitCode != 0:
			s.BadRuns = append(s.BadRuns, fmt.Sprintf("%s: test binary exited with status %d", r.Package, r.ExitCode))
		}
	}
	slices.Sort(extra)
	order = append(order, extra...)
	out := make([]KernelSummary, 0, len(order))
	for _, k := range order {
		out = append(out, *byKernel[k])
	}
	return out
}

// cmdSummary implements `vmtest summary`.
func cmdSummary(args []string, stdout io.Writer) int {
	fs := flag.NewFlagSet("summary", flag.ContinueOnError)
	dir := fs.String("dir", os.Getenv("VMTEST_SUMMARY_DIR"), "directory the runs wrote their results to (VMTEST_SUMMARY_DIR)")
	kernels := fs.String("kernels", "", "comma-separated kernels that must have passing results, e.g. 6.1,6.12 (default: those with results)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "vmtest summary: -dir is required")
		return 2
	}
	recs, err := readRecords(*dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(os.Stderr, "vmtest summary: %v\n", err)
		return 1
	}
	var expected []string
	for _, k := range strings.Split(*kernels, ",") {
		if k = strings.TrimSpace(k); k != "" {
			expected = append(expected, k)
		}
	}
	sums := summarize(recs, expected)
	if len(sums) == 0 {
		fmt.Fprintf(os.Stderr, "vmtest summary: no results in %s\n", *dir)
		return 1
	}
	ok := true
	for _, s := range sums {
		fmt.Fprintln(stdout, s.Line())
		for _, p := range s.Problems() {
			ok = false
			fmt.Fprintf(stdout, "vmtest: kernel %s: FAIL: %s\n", s.Kernel, p)
		}
	}
	if !ok {
		return 1
	}
	return 0
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
