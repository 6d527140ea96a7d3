package main

import (
	"bytes"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
)

func TestSummaryRules(t *testing.T) {
	ok := Record{Kernel: "6.1", Package: "a", Counts: Counts{Ran: 3, Passed: 3, BPFLSMRan: 2}}
	for _, tc := range []struct {
		name     string
		recs     []Record
		expected []string
		problems map[string]int // kernel → number of problems
	}{
		{
			name:     "all good",
			recs:     []Record{ok, {Kernel: "6.12", Package: "a", Counts: Counts{Ran: 1, Passed: 1, BPFLSMRan: 1}}},
			expected: []string{"6.1", "6.12"},
			problems: map[string]int{"6.1": 0, "6.12": 0},
		},
		{
			name:     "expected kernel without results",
			recs:     []Record{ok},
			expected: []string{"6.1", "6.12"},
			problems: map[string]int{"6.1": 0, "6.12": 1},
		},
		{
			name:     "failed tests",
			recs:     []Record{{Kernel: "6.1", Package: "a", ExitCode: 1, Counts: Counts{Ran: 2, Passed: 1, Failed: 1, BPFLSMRan: 1}}},
			expected: []string{"6.1"},
			problems: map[string]int{"6.1": 2}, // the failure and the exit status
		},
		{
			name:     "bpf-lsm tests all skipped",
			recs:     []Record{{Kernel: "6.1", Package: "a", Counts: Counts{Ran: 2, Passed: 1, Skipped: 1, BPFLSMSkipped: 1}}},
			expected: []string{"6.1"},
			problems: map[string]int{"6.1": 1},
		},
		{
			name:     "no bpf-lsm tests at all",
			recs:     []Record{{Kernel: "6.1", Package: "a", Counts: Counts{Ran: 2, Passed: 2}}},
			expected: []string{"6.1"},
			problems: map[string]int{"6.1": 1},
		},
		{
			name:     "bpf-lsm ran in one package, skipped in another: fine",
			recs:     []Record{ok, {Kernel: "6.1", Package: "b", Counts: Counts{Ran: 1, Skipped: 1, BPFLSMSkipped: 1}}},
			problems: map[string]int{"6.1": 0},
		},
		{
			name:     "runner error (timeout) fails the kernel",
			recs:     []Record{ok, {Kernel: "6.1", Package: "b", ExitCode: -1, Error: "timeout"}},
			expected: []string{"6.1"},
			problems: map[string]int{"6.1": 1},
		},
		{
			name:     "unexpected kernel is reported and judged too",
			recs:     []Record{ok, {Kernel: "5.10", Package: "a"}},
			expected: []string{"6.1"},
			problems: map[string]int{"6.1": 0, "5.10": 1},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sums := summarize(tc.recs, tc.expected)
			got := map[string]int{}
			for _, s := range sums {
				got[s.Kernel] = len(s.Problems())
			}
			if !reflect.DeepEqual(got, tc.problems) {
				for _, s := range sums {
					t.Logf("%s: %q", s.Line(), s.Problems())
				}
				t.Errorf("problems per kernel = %v, want %v", got, tc.problems)
			}
		})
	}
}

func TestSummaryLineAndOrder(t *testing.T) {
	recs := []Record{
		{Kernel: "6.12", Package: "a", Counts: Counts{Ran: 5, Passed: 4, Skipped: 1, BPFLSMRan: 3}},
		{Kernel: "6.1", Package: "a", Counts: Counts{Ran: 5, Passed: 4, Skipped: 1, BPFLSMRan: 3}},
		{Kernel: "6.1", Package: "b", Counts: Counts{Ran: 7, Passed: 7, BPFLSMRan: 4, BPFLSMSkipped: 0}},
	}
	sums := summarize(recs, []string{"6.1", "6.12"})
	want := []string{
		"vmtest: kernel 6.1: 12 ran, 11 passed, 0 failed, 1 skipped; bpf-lsm tests: 7 ran, 0 skipped",
		"vmtest: kernel 6.12: 5 ran, 4 passed, 0 failed, 1 skipped; bpf-lsm tests: 3 ran, 0 skipped",
	}
	var got []string
	for _, s := range sums {
		got = append(got, s.Line())
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestRecordsRoundTripAndSummaryCommand(t *testing.T) {
	dir := t.TempDir()
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k := "6.1"
			if i%2 == 1 {
				k = "6.12"
			}
			if err := appendRecord(dir, Record{Kernel: k, Package: "p", Counts: Counts{Ran: 1, Passed: 1, BPFLSMRan: 1}}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	recs, err := readRecords(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 20 {
		t.Fatalf("read %d records, want 20", len(recs))
	}
	var out bytes.Buffer
	if rc := cmdSummary([]string{"-dir", dir, "-kernels", "6.1,6.12"}, &out); rc != 0 {
		t.Fatalf("summary rc=%d:\n%s", rc, out.String())
	}
	if want := "vmtest: kernel 6.12: 10 ran, 10 passed, 0 failed, 0 skipped; bpf-lsm tests: 10 ran, 0 skipped\n"; !strings.Contains(out.String(), want) {
		t.Errorf("summary output:\n%s\nlacks %q", out.String(), want)
	}
	out.Reset()
	if rc := cmdSummary([]string{"-dir", dir, "-kernels", "6.1,6.12,6.6"}, &out); rc == 0 {
		t.Errorf("summary passed with a missing kernel:\n%s", out.String())
	}
	out.Reset()
	if rc := cmdSummary([]string{"-dir", filepath.Join(dir, "none"), "-kernels", "6.1"}, &out); rc == 0 {
		t.Errorf("summary passed without results:\n%s", out.String())
	}
}
