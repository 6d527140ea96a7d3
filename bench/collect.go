package bench

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
)

// OpInfo names an operation of the microbenchmarks.
type OpInfo struct {
	Name     string
	Label    string
	PerBatch int
	Control  bool
}

type sampleKey struct {
	op, config string
	round      int
}

// Collector gathers the samples of an interleaved run: per operation,
// configuration and round.
type Collector struct {
	samples map[sampleKey][]float64
	rounds  int
}

// Add records samples of op under config in round.
func (c *Collector) Add(op, config string, round int, samples []float64) {
	if c.samples == nil {
		c.samples = map[sampleKey][]float64{}
	}
	k := sampleKey{op, config, round}
	c.samples[k] = append(c.samples[k], samples...)
	c.rounds = max(c.rounds, round+1)
}

// Rounds returns the number of rounds seen.
func (c *Collector) Rounds() int { return c.rounds }

// Results summarizes op for every configuration in configs that has
// samples, with ratios to baseline: pooled over rounds for the median,
// and round by round for the spread.
func (c *Collector) Results(op OpInfo, configs []string, baseline string) OpResult {
	out := OpResult{Op: op.Name, Label: op.Label, PerBatch: op.PerBatch, Control: op.Control}
	base := c.pooled(op.Name, baseline)
	baseMedian, baseMean := math.NaN(), math.NaN()
	if len(base) > 0 {
		baseMedian, baseMean = Median(base), mean(base)
	}
	for _, cfg := range configs {
		all := c.pooled(op.Name, cfg)
		if len(all) == 0 {
			continue
		}
		res := ConfigResult{Config: cfg, NS: Summarize(all), Ratio: Ratio(Median(all), baseMedian)}
		res.MeanRatio = Ratio(res.NS.Mean, baseMean)
		if cfg != baseline {
			res.RatioInterval = c.ratioInterval(op.Name, cfg, baseline)
		}
		for r := 0; r < c.rounds; r++ {
			xs := c.samples[sampleKey{op.Name, cfg, r}]
			if len(xs) == 0 {
				continue
			}
			m := Median(xs)
			res.RoundMedians = append(res.RoundMedians, m)
			if b := c.samples[sampleKey{op.Name, baseline, r}]; len(b) > 0 && cfg != baseline {
				res.RoundRatios = append(res.RoundRatios, Ratio(m, Median(b)))
			}
		}
		out.Results = append(out.Results, res)
	}
	return out
}

// Bootstrap settings of ratioInterval: resamples, and the fixed seed that
// makes a report's interval reproducible from its samples.
const (
	bootstrapResamples = 400
	bootstrapSeed      = 0x5eed
)

// ratioInterval is the 90% bootstrap interval of config's pooled-median
// ratio to baseline: each configuration's rounds are drawn with
// replacement, independently, so the interval carries the machine's drift
// from one slot to the next as well as the scatter within a batch. The
// draws are not paired by round: on the machine this was built on the
// speed changes within seconds, faster than a round, so two slots of one
// round share no more of the drift than any two. Nil with fewer than
// three rounds on either side.
func (c *Collector) ratioInterval(op, config, baseline string) []float64 {
	have := func(cfg string) [][]float64 {
		var out [][]float64
		for r := 0; r < c.rounds; r++ {
			if xs := c.samples[sampleKey{op, cfg, r}]; len(xs) > 0 {
				out = append(out, xs)
			}
		}
		return out
	}
	cr, br := have(config), have(baseline)
	if len(cr) < 3 || len(br) < 3 {
		return nil
	}
	rng := rand.New(rand.NewPCG(bootstrapSeed, uint64(len(cr))<<32|uint64(len(br))))
	var buf []float64
	median := func(rounds [][]float64) float64 {
		buf = buf[:0]
		for range rounds {
			buf = append(buf, rounds[rng.IntN(len(rounds))]...)
		}
		slices.Sort(buf)
		return percentileSorted(buf, 50)
	}
	ratios := make([]float64, 0, bootstrapResamples)
	for range bootstrapResamples {
		ratios = append(ratios, Ratio(median(cr), median(br)))
	}
	slices.Sort(ratios)
	return []float64{percentileSorted(ratios, 5), percentileSorted(ratios, 95)}
}

func (c *Collector) pooled(op, config string) []float64 {
	var all []float64
	for r := 0; r < c.rounds; r++ {
		all = append(all, c.samples[sampleKey{op, config, r}]...)
	}
	return all
}

// ControlTolerance is how far a control operation's ratio may stray from
// 1.0 before the report calls it out.
const ControlTolerance = 0.05

// ControlFindings returns a finding for a suite whose control operations
// have a ratio more than ControlTolerance away from 1.0 under some
// configuration: that configuration adds cost to every syscall, or the
// machine was that noisy.
func ControlFindings(s MicroSuite, label func(string) string) []string {
	var out []string
	for _, op := range s.Ops {
		if !op.Control {
			continue
		}
		var off []string
		for _, res := range op.Results {
			if res.Config == s.Baseline || res.Ratio == 0 {
				continue
			}
			if math.Abs(res.Ratio-1) > ControlTolerance {
				off = append(off, fmt.Sprintf("%.3f× under %s", res.Ratio, label(res.Config)))
			}
		}
		if len(off) > 0 {
			out = append(out, fmt.Sprintf("%s: the control (%s) is not ~1.0: %s. Either the configuration adds cost "+
				"to every syscall (attached syscall tracepoints and audit syscall rules do) or the machine was that noisy; "+
				"read the other ratios with that margin.", s.Place, op.Label, strings.Join(off, ", ")))
		}
	}
	return out
}

// OverheadOf returns the ratio of config for op in suite, or 0.
func (s *MicroSuite) OverheadOf(op, config string) float64 {
	if r := s.ResultOf(op, config); r != nil {
		return r.Ratio
	}
	return 0
}

// ResultOf returns the result of config for op in suite, or nil.
func (s *MicroSuite) ResultOf(op, config string) *ConfigResult {
	i := slices.IndexFunc(s.Ops, func(o OpResult) bool { return o.Op == op })
	if i < 0 {
		return nil
	}
	return s.Ops[i].Result(config)
}
