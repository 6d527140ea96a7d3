package bench

import (
	"math"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestPercentile(t *testing.T) {
	tests := []struct {
		xs   []float64
		p    float64
		want float64
	}{
		{[]float64{5}, 50, 5},
		{[]float64{5}, 99, 5},
		{[]float64{3, 1, 2}, 50, 2},
		{[]float64{4, 1, 3, 2}, 50, 2.5},
		{[]float64{1, 2, 3, 4}, 0, 1},
		{[]float64{1, 2, 3, 4}, 100, 4},
		// h = 0.99*(n-1); 1..101 -> 99th percentile is 100.
		{seq(1, 101), 99, 100},
		// 1..100: h = 98.01 -> 99 + 0.01*(100-99)
		{seq(1, 100), 99, 99.01},
		{[]float64{10, 20}, 25, 12.5},
	}
	for _, tt := range tests {
		if got := Percentile(tt.xs, tt.p); math.Abs(got-tt.want) > 1e-9 {
			t.Errorf("Percentile(%v, %v) = %v, want %v", short(tt.xs), tt.p, got, tt.want)
		}
	}
	if !math.IsNaN(Percentile(nil, 50)) {
		t.Error("Percentile(nil) is not NaN")
	}
}

func seq(from, to int) []float64 {
	var out []float64
	for i := from; i <= to; i++ {
		out = append(out, float64(i))
	}
	return out
}

func short(xs []float64) any {
	if len(xs) > 6 {
		return len(xs)
	}
	return xs
}

func TestSummarizeDoesNotReorder(t *testing.T) {
	xs := []float64{9, 1, 5, 3, 7}
	s := Summarize(xs)
	want := Summary{N: 5, Median: 5, Mean: 5, P99: 8.92, Min: 1, Max: 9}
	if s.N != want.N || s.Median != want.Median || s.Mean != want.Mean || math.Abs(s.P99-want.P99) > 1e-9 || s.Min != want.Min || s.Max != want.Max {
		t.Errorf("Summarize = %+v, want %+v", s, want)
	}
	if !reflect.DeepEqual(xs, []float64{9, 1, 5, 3, 7}) {
		t.Errorf("Summarize reordered its input: %v", xs)
	}
	if (Summarize(nil) != Summary{}) {
		t.Error("Summarize(nil) is not zero")
	}
}

func TestRatio(t *testing.T) {
	if got := Ratio(103, 100); math.Abs(got-1.03) > 1e-12 {
		t.Errorf("Ratio = %v", got)
	}
	for _, base := range []float64{0, -1, math.NaN()} {
		if got := Ratio(1, base); got != 0 {
			t.Errorf("Ratio(1, %v) = %v, want 0", base, got)
		}
	}
}

func TestSchedule(t *testing.T) {
	got := Schedule([]string{"none", "vigil", "auditd"}, 3)
	var order []string
	for _, s := range got {
		order = append(order, s.Config)
	}
	want := []string{"none", "vigil", "auditd", "auditd", "vigil", "none", "none", "vigil", "auditd"}
	if !reflect.DeepEqual(order, want) {
		t.Errorf("Schedule order = %v, want %v", order, want)
	}
	for i, s := range got {
		if s.Round != i/3 {
			t.Errorf("slot %d: round %d, want %d", i, s.Round, i/3)
		}
	}
	// Every configuration runs once per round, and as often as every other.
	count := map[string]int{}
	for _, s := range Schedule([]string{"a", "b"}, 5) {
		count[s.Config]++
	}
	if count["a"] != 5 || count["b"] != 5 {
		t.Errorf("counts = %v", count)
	}
	if len(Schedule(nil, 3)) != 0 || len(Schedule([]string{"a"}, 0)) != 0 {
		t.Error("empty schedule expected")
	}
}

func TestCollectorResults(t *testing.T) {
	var c Collector
	// Round 0: base 100, vigil 110; round 1: base 200, vigil 210.
	c.Add("exec", "none", 0, []float64{100, 100, 100})
	c.Add("exec", "vigil", 0, []float64{110, 110, 110})
	c.Add("exec", "none", 1, []float64{200, 200, 200})
	c.Add("exec", "vigil", 1, []float64{210, 210})
	c.Add("exec", "vigil", 1, []float64{210})
	op := c.Results(OpInfo{Name: "exec", Label: "fork+exec", PerBatch: 1}, []string{"none", "vigil", "absent"}, "none")
	if len(op.Results) != 2 {
		t.Fatalf("results = %+v", op.Results)
	}
	base, v := op.Result("none"), op.Result("vigil")
	if base.Ratio != 1 || base.NS.Median != 150 || base.NS.N != 6 {
		t.Errorf("baseline = %+v", base)
	}
	if math.Abs(v.Ratio-160.0/150) > 1e-12 {
		t.Errorf("vigil ratio = %v", v.Ratio)
	}
	if len(v.RoundRatios) != 2 || math.Abs(v.RoundRatios[0]-1.1) > 1e-12 || math.Abs(v.RoundRatios[1]-1.05) > 1e-12 {
		t.Errorf("round ratios = %v", v.RoundRatios)
	}
	if len(base.RoundRatios) != 0 {
		t.Errorf("baseline has round ratios %v", base.RoundRatios)
	}
	if !reflect.DeepEqual(v.RoundMedians, []float64{110, 210}) {
		t.Errorf("round medians = %v", v.RoundMedians)
	}
	if op.Result("absent") != nil {
		t.Error("a configuration without samples has a result")
	}
}

// TestCollectorMeanRatio: the mean ratio carries what lands on a few
// samples, which the median ratio does not.
func TestCollectorMeanRatio(t *testing.T) {
	var c Collector
	c.Add("exec", "none", 0, []float64{100, 100, 100, 100})
	c.Add("exec", "vigil", 0, []float64{100, 100, 100, 300})
	op := c.Results(OpInfo{Name: "exec", PerBatch: 1}, []string{"none", "vigil"}, "none")
	v := op.Result("vigil")
	if v.Ratio != 1 || v.MeanRatio != 1.5 || v.NS.Mean != 150 {
		t.Errorf("vigil: ratio %v, mean ratio %v, mean %v; want 1, 1.5, 150", v.Ratio, v.MeanRatio, v.NS.Mean)
	}
}

func TestRatioInterval(t *testing.T) {
	// vigil is 4% above the baseline in every round, but the machine's
	// speed changes from slot to slot: the interval must hold 1.04, be
	// wider when two rounds of vigil alone ran slow, and narrow as rounds
	// are added.
	speeds := []float64{100, 130, 95, 160, 100, 110, 90, 140, 105, 100}
	collect := func(rounds int, slow ...int) *Collector {
		var c Collector
		for r := range rounds {
			sp := speeds[r%len(speeds)]
			c.Add("exec", "none", r, []float64{sp - 1, sp, sp + 1})
			v := sp * 1.04
			if slices.Contains(slow, r) {
				v *= 1.5
			}
			c.Add("exec", "vigil", r, []float64{v - 1, v, v + 1})
		}
		return &c
	}
	op := OpInfo{Name: "exec"}
	interval := func(c *Collector) []float64 {
		res := c.Results(op, []string{"none", "vigil"}, "none")
		if res.Result("none").RatioInterval != nil {
			t.Error("the baseline has an interval")
		}
		return res.Result("vigil").RatioInterval
	}
	steady := interval(collect(10))
	if len(steady) != 2 || steady[0] > 1.04 || steady[1] < 1.04 {
		t.Fatalf("steady interval = %v, want it to hold 1.04", steady)
	}
	noisy := interval(collect(10, 3, 7))
	if len(noisy) != 2 || noisy[1] <= steady[1] {
		t.Errorf("noisy interval %v does not reach above the steady %v", noisy, steady)
	}
	long := interval(collect(40))
	if len(long) != 2 || long[1]-long[0] >= steady[1]-steady[0] || long[0] > 1.04 || long[1] < 1.04 {
		t.Errorf("40 rounds: interval %v, 10 rounds: %v; want narrower, holding 1.04", long, steady)
	}
	// The same samples give the same interval (fixed seed).
	if again := interval(collect(10, 3, 7)); !reflect.DeepEqual(again, noisy) {
		t.Errorf("interval not reproducible: %v then %v", noisy, again)
	}
	// Too few rounds: no interval.
	if iv := interval(collect(2)); iv != nil {
		t.Errorf("two rounds gave interval %v", iv)
	}
	if got := FormatInterval([]float64{0.988, 1.074}); got != "-1.2…+7.4%" {
		t.Errorf("FormatInterval = %q", got)
	}
}

func TestControlFindings(t *testing.T) {
	s := MicroSuite{Place: "host", Baseline: "none", Ops: []OpResult{
		{Op: "getpid", Label: "getpid", Control: true, Results: []ConfigResult{
			{Config: "none", Ratio: 1}, {Config: "vigil", Ratio: 1.01}, {Config: "auditd", Ratio: 1.4},
		}},
		{Op: "exec", Label: "exec", Results: []ConfigResult{{Config: "auditd", Ratio: 2}}},
	}}
	got := ControlFindings(s, func(n string) string { return n })
	if len(got) != 1 {
		t.Fatalf("findings = %q", got)
	}
	if want := "host: the control (getpid) is not ~1.0: 1.400× under auditd. "; got[0][:len(want)] != want {
		t.Errorf("finding = %q", got[0])
	}
}

func TestRampAnalyze(t *testing.T) {
	r := Ramp{Steps: []RampStep{
		{Target: 500, Achieved: 499},
		{Target: 1000, Achieved: 998},
		{Target: 2000, Achieved: 1990, Lost: 12},
		{Target: 4000, Achieved: 3900},
		{Target: 0, Achieved: 4200, Lost: 300},
	}}
	r.Analyze()
	if r.MaxZeroLoss != 998 || r.MachineMax != 4200 || r.LossFree {
		t.Errorf("Analyze = zero-loss %v, max %v, loss-free %v", r.MaxZeroLoss, r.MachineMax, r.LossFree)
	}
	r = Ramp{Steps: []RampStep{{Target: 500, Achieved: 500}, {Target: 0, Achieved: 3000}}}
	r.Analyze()
	if !r.LossFree || r.MaxZeroLoss != 3000 || r.MachineMax != 3000 {
		t.Errorf("loss-free ramp: %+v", r)
	}
}

func TestDecisionRow(t *testing.T) {
	d := DecisionRow("10 MB", 10_000_000, "host", "lock", []float64{10e6, 20e6, 30e6}, 3, []float64{1e5, 3e5})
	if d.P50 == nil || *d.P50 != 20 || d.P99 == nil || math.Abs(*d.P99-29.8) > 1e-9 {
		t.Errorf("p50/p99 in ms: %v %v", d.P50, d.P99)
	}
	if *d.BaselineP50 != 0.2 || d.BaselineSamples != 2 || d.Refused != 3 || d.Samples != 3 {
		t.Errorf("baseline/counts: %+v", d)
	}
	if d.Status != "refused (EPERM) 3 of 3" {
		t.Errorf("status %q", d.Status)
	}
	// Some ran: the row says so, and only the refused ones are timed.
	d = DecisionRow("1 MB", 1_000_000, "vm", "lock", []float64{5e6}, 4, nil)
	if !strings.Contains(d.Status, "only 1 of 4 refused") || d.BaselineP50 != nil || d.BaselineSamples != 0 {
		t.Errorf("partial: %+v", d)
	}
	if d := DecisionRow("1 MB", 1, "vm", "lock", nil, 0, nil); d.Status != "not measured" || d.P50 != nil {
		t.Errorf("nothing: %+v", d)
	}
}
