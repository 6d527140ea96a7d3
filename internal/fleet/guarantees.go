package fleet

import (
	"fmt"
	"strings"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
)

// Guarantee levels as internal/probe names them, strongest first. They are
// repeated here because the kernel-free CLI and console must not import
// probe (it loads BPF programs).
var guaranteeLevels = []string{"synchronous block", "kill after the fact", "observe only", "not provided"}

// guaranteeRank orders a level: 0 strongest; unknown levels rank as weak as
// "not provided", so a host reporting something new is not shown as strong.
func guaranteeRank(level string) int {
	for i, l := range guaranteeLevels {
		if l == level {
			return i
		}
	}
	return len(guaranteeLevels) - 1
}

// GuaranteeSummary is a host's guarantees in brief: how many controls get
// each level, and the weakest control with its level.
type GuaranteeSummary struct {
	Reported bool
	Counts   []LevelCount // strongest first; levels with none left out
	Weakest  string       // the first control at the weakest level present
	Level    string       // that level
}

// LevelCount is one level and how many controls get it.
type LevelCount struct {
	Level string
	N     int
}

// SummarizeGuarantees summarizes gs (as a host reported them).
func SummarizeGuarantees(gs []*vigilv1.Guarantee) GuaranteeSummary {
	var s GuaranteeSummary
	if len(gs) == 0 {
		return s
	}
	s.Reported = true
	counts := make([]int, len(guaranteeLevels))
	worst := -1
	for _, g := range gs {
		r := guaranteeRank(g.GetLevel())
		counts[r]++
		if r > worst {
			worst, s.Weakest, s.Level = r, g.GetControl(), g.GetLevel()
		}
	}
	for i, n := range counts {
		if n > 0 {
			s.Counts = append(s.Counts, LevelCount{Level: guaranteeLevels[i], N: n})
		}
	}
	return s
}

// String is the summary on one line, e.g.
// "5 synchronous block, 1 observe only; weakest: file_write (observe only)".
func (s GuaranteeSummary) String() string {
	if !s.Reported {
		return "not reported"
	}
	parts := make([]string, len(s.Counts))
	for i, c := range s.Counts {
		parts[i] = fmt.Sprintf("%d %s", c.N, c.Level)
	}
	return fmt.Sprintf("%s; weakest: %s (%s)", strings.Join(parts, ", "), s.Weakest, s.Level)
}
