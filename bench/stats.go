// Package bench holds the pure half of Vigil's benchmark suite: statistics,
// the interleaving schedule, the report model and its renderings (markdown,
// JSON, SVG). Nothing here touches the kernel or starts a process; the
// harness that does is bench/harness, the command bench/cmd/vigil-bench.
package bench

import (
	"fmt"
	"math"
	"slices"
)

// Summary describes a set of samples.
type Summary struct {
	N      int     `json:"n"`
	Median float64 `json:"median"`
	// Mean is the samples' mean: unlike the median it carries work that
	// lands on a few samples only (on one CPU, an agent's batch).
	Mean float64 `json:"mean"`
	P99  float64 `json:"p99"`
	Min  float64 `json:"min"`
	Max  float64 `json:"max"`
}

// Summarize returns the median, 99th percentile and range of samples. An
// empty slice gives the zero Summary. samples is not modified.
func Summarize(samples []float64) Summary {
	if len(samples) == 0 {
		return Summary{}
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	return Summary{
		N:      len(s),
		Median: percentileSorted(s, 50),
		Mean:   mean(s),
		P99:    percentileSorted(s, 99),
		Min:    s[0],
		Max:    s[len(s)-1],
	}
}

// Median returns the median of xs (the mean of the two middle values for
// an even count); NaN for an empty slice.
func Median(xs []float64) float64 {
	return Percentile(xs, 50)
}

// Percentile returns the p-th percentile of xs (0 <= p <= 100) by linear
// interpolation between the closest ranks (the "R-7" definition used by
// NumPy and most spreadsheets); NaN for an empty slice.
func Percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return percentileSorted(s, p)
}

func percentileSorted(s []float64, p float64) float64 {
	p = min(max(p, 0), 100)
	h := p / 100 * float64(len(s)-1)
	lo := math.Floor(h)
	i := int(lo)
	if i >= len(s)-1 {
		return s[len(s)-1]
	}
	return s[i] + (h-lo)*(s[i+1]-s[i])
}

// Ratio returns a/base, or 0 when base is not positive (no baseline).
func Ratio(a, base float64) float64 {
	if base <= 0 || math.IsNaN(base) || math.IsNaN(a) {
		return 0
	}
	return a / base
}

// Slot is one run in a schedule: configuration Config in round Round.
type Slot struct {
	Round  int
	Config string
}

// Schedule interleaves configs over rounds: every round runs each
// configuration once, and odd rounds run them in reverse order (A B C,
// C B A, A B C, ...). Interleaving spreads slow drifts of the machine
// (thermal, page cache, other load) over every configuration instead of
// charging them to whichever ran last; reversing every other round
// cancels a linear drift between neighbours as well.
func Schedule(configs []string, rounds int) []Slot {
	var out []Slot
	for r := 0; r < rounds; r++ {
		order := slices.Clone(configs)
		if r%2 == 1 {
			slices.Reverse(order)
		}
		for _, c := range order {
			out = append(out, Slot{Round: r, Config: c})
		}
	}
	return out
}

// DecisionRow summarizes the decision-latency samples of one file size:
// refused are the times (ns) of the execs refused under the
// configuration, tried how many were tried, baseline the times (ns) of
// the same exec with no agent. Status says what is missing when a side
// has no samples.
func DecisionRow(file string, size int64, place, config string, refused []float64, tried int, baseline []float64) Decision {
	d := Decision{File: file, Size: size, Place: place, Config: config, Samples: tried, Refused: len(refused),
		BaselineSamples: len(baseline)}
	ms := func(ns float64) *float64 { v := ns / 1e6; return &v }
	if len(refused) > 0 {
		s := Summarize(refused)
		d.P50, d.P99 = ms(s.Median), ms(s.P99)
	}
	if len(baseline) > 0 {
		s := Summarize(baseline)
		d.BaselineP50, d.BaselineP99 = ms(s.Median), ms(s.P99)
	}
	switch {
	case tried == 0:
		d.Status = "not measured"
	case len(refused) == tried:
		d.Status = fmt.Sprintf("refused (EPERM) %d of %d", len(refused), tried)
	default:
		d.Status = fmt.Sprintf("only %d of %d refused: the others ran (not decided as unknown)", len(refused), tried)
	}
	return d
}

// mean returns the mean of xs (NaN for an empty slice).
func mean(xs []float64) float64 {
	sum := 0.0
	for _, x := range xs {
		sum += x
	}
	return sum / float64(len(xs))
}
