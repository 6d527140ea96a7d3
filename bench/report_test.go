package bench

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"io"
	"strings"
	"testing"
	"time"
)

func sampleReport() *Report {
	var c Collector
	c.Add("exec", "none", 0, []float64{1000, 1000})
	c.Add("exec", "vigil", 0, []float64{1030, 1030})
	c.Add("exec", "auditd", 0, []float64{1500, 1500})
	c.Add("getpid", "none", 0, []float64{100})
	c.Add("getpid", "vigil", 0, []float64{100})
	c.Add("getpid", "auditd", 0, []float64{150})
	cfgs := []string{"none", "vigil", "auditd"}
	host := MicroSuite{Place: "host", Baseline: "none", Rounds: 1, Configs: cfgs, Absolute: true, Ops: []OpResult{
		c.Results(OpInfo{Name: "exec", Label: "fork+exec", PerBatch: 1}, cfgs, "none"),
		c.Results(OpInfo{Name: "getpid", Label: "getpid (control)", PerBatch: 1000, Control: true}, cfgs, "none"),
	}}
	vm := host
	vm.Place, vm.Absolute, vm.Configs = "vm 6.12", false, []string{"none", "vigil"}
	vm.BPF = []BPFTime{{Op: "exec", Config: "none", Ops: 50},
		{Op: "exec", Config: "vigil", Ops: 50, NSPerOp: 12_500, RunsPerOp: 8, Share: 0.0125,
			Programs: map[string]float64{"sched_process_exec": 6000, "sched_process_fork": 3000, "lsm_file_open": 3000, "x": 500}}}
	host.BPFNote = "in-kernel time not measured: BPF run-time statistics: operation not permitted"
	r := &Report{
		Mode:    "quick",
		Started: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		Seconds: 190,
		Machine: Machine{Kernel: "6.18", Cores: 2, MemoryGiB: 24, CPUAccounting: "cgroup v1 cpuacct"},
		Configs: []ConfigStatus{
			{Name: "none", Label: "no agent", Place: "host", Ran: true},
			{Name: "vigil", Label: "vigil agent", Place: "host", Ran: true},
			{Name: "vigil-monitor", Label: "vigil + baseline.yaml (monitor)", Place: "host", Reason: "not yet available: needs issue 3/4"},
			{Name: "auditd", Label: "auditd + execve rule", Place: "host", Ran: true},
		},
		Micro: []MicroSuite{host, vm},
		Throughput: &Throughput{Config: "vigil", StepSeconds: 4, Ramps: []Ramp{{
			Name: "exec", Label: "exec rate", Unit: "execs/s",
			Steps: []RampStep{{Target: 1000, Achieved: 999, Events: 3000}, {Target: 0, Achieved: 4000, Events: 12000, Lost: 5}},
		}}},
		Cost: []Cost{{Config: "vigil", PacedRate: 1000, PacedCPU: 1.5, PeakRSSMiB: 40}},
		Decision: []Decision{
			{File: "unknown 1 MB", Place: "vm 6.12", Status: "not run: needs issue 4"},
			DecisionRow("unknown 10 MB", 10_000_000, "host", "vigil-monitor", []float64{9e6, 11e6, 30e6}, 3, []float64{2e5, 3e5}),
		},
		Workload: &Workload{Project: "bash 5.2", Command: "./configure && make -j2", Rounds: 1, Baseline: "none",
			Results: []WorkloadResult{{Config: "none", Seconds: Summary{Median: 50, Min: 50, Max: 50}, Ratio: 1},
				{Config: "vigil", Seconds: Summary{Median: 51, Min: 51, Max: 51}, Ratio: 1.02}}},
		Targets:  []Target{{What: "agent CPU at 1,000 execs/s", Goal: "≤ 2% of one core", Measured: "1.5%", Verdict: Met}},
		Findings: []string{"something to know"},
	}
	r.Throughput.Ramps[0].Analyze()
	return r
}

func TestWriteMarkdown(t *testing.T) {
	var b bytes.Buffer
	if err := sampleReport().WriteMarkdown(&b); err != nil {
		t.Fatal(err)
	}
	md := b.String()
	for _, want := range []string{
		"# Vigil benchmarks",
		"| operation | no agent | vigil agent | auditd + execve rule |",
		"| fork+exec | 1.00 µs | 1.030× (+3.0%) | 1.500× (+50.0%) |",
		"| getpid (control) | 1.000×", // VM suite: no absolute times
		"**not run:** not yet available: needs issue 3/4",
		"| workload: bash 5.2 | 50.0 s | 1.020× (+2.0%) | – |",
		"Highest rate with zero loss: **999 execs/s**",
		"| vm 6.12 | unknown 1 MB | – | – | – | – | not run: needs issue 4 |",
		"| host | unknown 10 MB | vigil + baseline.yaml (monitor) | 11.00 ms | 29.62 ms | 0.25 ms / 0.30 ms (2) | refused (EPERM) 3 of 3 |",
		"| agent CPU at 1,000 execs/s | ≤ 2% of one core | 1.5% | met |",
		"- something to know",
		"1.50% at 1.0k execs/s",
		"In-kernel time of the BPF programs: in-kernel time not measured: BPF run-time statistics: operation not permitted.",
		"| fork+exec | 0 ns (0.0 runs) | 12.5 µs (8.0 runs) [+1.25%] |",
		// Longest first, ties by name; at most four.
		"- exec under vigil agent, by program: sched_process_exec 6.00 µs, lsm_file_open 3.00 µs, sched_process_fork 3.00 µs, x 500 ns",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q", want)
		}
	}
	if strings.Contains(md, "| fork+exec | 1.00 µs |") && strings.Count(md, "### vm 6.12") != 2 {
		t.Errorf("want the VM suite in the summary and the details:\n%s", md)
	}
}

func TestWriteSVG(t *testing.T) {
	var b bytes.Buffer
	if err := sampleReport().WriteSVG(&b); err != nil {
		t.Fatal(err)
	}
	// Well-formed XML with one bar per (place, operation, non-baseline
	// configuration) plus the workload bars on the host.
	dec := xml.NewDecoder(&b)
	rects, titles := 0, 0
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("chart is not well-formed XML: %v", err)
		}
		if se, ok := tok.(xml.StartElement); ok {
			switch se.Name.Local {
			case "rect":
				rects++
			case "title":
				titles++
			}
		}
	}
	// host: 2 ops x 2 configs + build x 1 (auditd has no workload);
	// vm: 2 ops x 1 config.
	if titles != 4+1+2 {
		t.Errorf("bars = %d, want 7", titles)
	}
	if rects < titles {
		t.Errorf("rects = %d", rects)
	}
}

func TestWriteSVGEmpty(t *testing.T) {
	var b bytes.Buffer
	if err := (&Report{}).WriteSVG(&b); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "no results") {
		t.Error("an empty chart does not say so")
	}
}

func TestWriteJSONRoundTrip(t *testing.T) {
	var b bytes.Buffer
	r := sampleReport()
	if err := r.WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(b.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if back.Micro[0].OverheadOf("exec", "vigil") != r.Micro[0].OverheadOf("exec", "vigil") || back.Mode != "quick" {
		t.Errorf("round trip lost data: %+v", back.Micro[0])
	}
}

func TestFormat(t *testing.T) {
	for _, tt := range []struct {
		got, want string
	}{
		{FormatNS(412), "412 ns"},
		{FormatNS(4123), "4.12 µs"},
		{FormatNS(41234), "41.2 µs"},
		{FormatNS(412345), "412 µs"},
		{FormatNS(2123456), "2.12 ms"},
		{FormatNS(0), "–"},
		{FormatRatio(0.98), "0.980× (-2.0%)"},
		{FormatRatio(0), "–"},
		{FormatRate(999), "999"},
		{FormatRate(4200), "4.2k"},
		{FormatRate(250000), "250k"},
		{FormatRate(1.5e6), "1.50M"},
	} {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}
