package main

import (
	"strings"
	"testing"

	"github.com/vigil-hips/vigil/internal/testutil"
)

func TestMarkerMatchesTestutil(t *testing.T) {
	if BPFLSMMarker != testutil.BPFLSMMarker {
		t.Fatalf("vmtest marker %q != testutil marker %q", BPFLSMMarker, testutil.BPFLSMMarker)
	}
}

func count(out string) Counts {
	c := NewCounter()
	for _, l := range strings.Split(out, "\n") {
		c.Feed(l)
	}
	return c.Finish()
}

func TestCounter(t *testing.T) {
	for _, tc := range []struct {
		name string
		out  string
		want Counts
	}{
		{
			name: "empty",
			want: Counts{},
		},
		{
			name: "pass fail skip",
			out: `=== RUN   TestA
--- PASS: TestA (0.00s)
=== RUN   TestB
    b_test.go:10: boom
--- FAIL: TestB (0.01s)
=== RUN   TestC
    c_test.go:3: needs root
--- SKIP: TestC (0.00s)
FAIL`,
			want: Counts{Ran: 3, Passed: 1, Failed: 1, Skipped: 1},
		},
		{
			name: "subtests count like tests",
			out: `=== RUN   TestT
=== RUN   TestT/one
=== RUN   TestT/two
=== PAUSE TestT/two
=== CONT  TestT/two
--- PASS: TestT (0.00s)
    --- PASS: TestT/one (0.00s)
    --- SKIP: TestT/two (0.00s)
PASS`,
			want: Counts{Ran: 3, Passed: 2, Skipped: 1},
		},
		{
			name: "bpf-lsm tests ran and skipped",
			out: `=== RUN   TestLSM
vmtest: requires bpf-lsm: TestLSM
--- PASS: TestLSM (0.10s)
=== RUN   TestLSM2
vmtest: requires bpf-lsm: TestLSM2
    x_test.go:1: needs BPF LSM
--- SKIP: TestLSM2 (0.00s)
=== RUN   TestLSM3
vmtest: requires bpf-lsm: TestLSM3
--- FAIL: TestLSM3 (0.00s)
=== RUN   TestOther
--- PASS: TestOther (0.00s)`,
			want: Counts{Ran: 4, Passed: 2, Failed: 1, Skipped: 1, BPFLSMRan: 2, BPFLSMSkipped: 1},
		},
		{
			name: "marker glued to earlier output without newline",
			out: `=== RUN   TestX
partial linevmtest: requires bpf-lsm: TestX
--- PASS: TestX (0.00s)`,
			want: Counts{Ran: 1, Passed: 1, BPFLSMRan: 1},
		},
		{
			name: "crash leaves unfinished tests, which fail",
			out: `=== RUN   TestA
--- PASS: TestA (0.00s)
=== RUN   TestB
vmtest: requires bpf-lsm: TestB
=== RUN   TestB/sub
panic: runtime error`,
			want: Counts{Ran: 3, Passed: 1, Failed: 2, BPFLSMRan: 1},
		},
		{
			name: "count=2 counts each run",
			out: `=== RUN   TestA
vmtest: requires bpf-lsm: TestA
--- PASS: TestA (0.00s)
=== RUN   TestA
vmtest: requires bpf-lsm: TestA
--- PASS: TestA (0.00s)`,
			want: Counts{Ran: 2, Passed: 2, BPFLSMRan: 2},
		},
		{
			name: "test2json framing",
			out:  "\x16=== RUN   TestA\n\x16--- PASS: TestA (0.00s)\n    \x16--- SKIP: TestA/b (0.00s)",
			want: Counts{Ran: 2, Passed: 1, Skipped: 1},
		},
		{
			name: "look-alikes are not results",
			out: `    x_test.go:5: --- PASS: is what the log said
=== RUNNING something
--- PASS:`,
			want: Counts{},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := count(tc.out); got != tc.want {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}
