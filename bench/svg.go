package bench

import (
	"fmt"
	"html"
	"io"
	"math"
	"strings"
)

// palette colours configurations in the order of Report.Configs, so a
// configuration has the same colour in every panel.
var palette = []string{"#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#9c755f"}

// chartPanel is one bar group chart: groups on the x axis, one bar per
// series, values in percent overhead.
type chartPanel struct {
	title  string
	groups []string
	series []string
	// values[g][s]; NaN for a missing bar.
	values [][]float64
}

// panels turns the micro suites (and the workload, on the host) into
// chart panels of overhead in percent against the baseline.
func (r *Report) panels() []chartPanel {
	var out []chartPanel
	for _, s := range r.Micro {
		var series []string
		for _, c := range s.Configs {
			if c != s.Baseline {
				series = append(series, c)
			}
		}
		if len(series) == 0 || len(s.Ops) == 0 {
			continue
		}
		p := chartPanel{title: s.Place, series: series}
		for _, op := range s.Ops {
			row := make([]float64, len(series))
			for i, c := range series {
				row[i] = math.NaN()
				if res := op.Result(c); res != nil && res.Ratio > 0 {
					row[i] = (res.Ratio - 1) * 100
				}
			}
			p.groups = append(p.groups, chartLabel(op))
			p.values = append(p.values, row)
		}
		if w := r.Workload; w != nil && s.Place == "host" && len(w.Results) > 0 {
			row := make([]float64, len(series))
			for i, c := range series {
				row[i] = math.NaN()
				for _, wr := range w.Results {
					if wr.Config == c && wr.Ratio > 0 {
						row[i] = (wr.Ratio - 1) * 100
					}
				}
			}
			p.groups = append(p.groups, "build")
			p.values = append(p.values, row)
		}
		out = append(out, p)
	}
	return out
}

// niceStep returns a round tick step for a span of about n ticks.
func niceStep(span float64, n int) float64 {
	if span <= 0 {
		return 1
	}
	raw := span / float64(n)
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if raw <= m*mag {
			return m * mag
		}
	}
	return 10 * mag
}

// WriteSVG draws the overhead of every configuration against no agent as
// grouped bars, one panel per place, with the 3% and 5% targets dashed.
func (r *Report) WriteSVG(w io.Writer) error {
	const (
		width  = 980.0
		panelH = 300.0
		left   = 64.0
		right  = 24.0
		top    = 34.0
		bottom = 58.0
		header = 80.0
	)
	panels := r.panels()
	colour := map[string]string{}
	for _, c := range r.Configs {
		if _, ok := colour[c.Name]; !ok {
			colour[c.Name] = palette[len(colour)%len(palette)]
		}
	}
	colourOf := func(name string) string {
		if c, ok := colour[name]; ok {
			return c
		}
		colour[name] = palette[len(colour)%len(palette)]
		return colour[name]
	}
	height := header + float64(max(len(panels), 1))*panelH + 10
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="12">`+"\n",
		width, height, width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%.0f" y="22" font-size="16" font-weight="bold">%s</text>`+"\n", left,
		html.EscapeString("Overhead against no agent, same run (median time per operation), %"))

	// Legend: every configuration that has a bar somewhere.
	seen := map[string]bool{}
	var legend []string
	for _, p := range panels {
		for _, s := range p.series {
			if !seen[s] {
				seen[s] = true
				legend = append(legend, s)
			}
		}
	}
	x, ly := left, 34.0
	for _, s := range legend {
		label := r.label(s)
		w := 16 + 7*float64(len([]rune(label))) + 18
		if x+w > width-right {
			x, ly = left, ly+16
		}
		fmt.Fprintf(&b, `<rect x="%.1f" y="%.0f" width="12" height="12" fill="%s"/>`, x, ly, colourOf(s))
		fmt.Fprintf(&b, `<text x="%.1f" y="%.0f">%s</text>`+"\n", x+16, ly+10, html.EscapeString(label))
		x += w
	}
	if x+150 > width-right {
		x, ly = left, ly+16
	}
	fmt.Fprintf(&b, `<line x1="%.1f" y1="%.0f" x2="%.1f" y2="%.0f" stroke="#888" stroke-dasharray="4 3"/>`, x, ly+6, x+24, ly+6)
	fmt.Fprintf(&b, `<text x="%.1f" y="%.0f">targets 3%% / 5%%</text>`+"\n", x+28, ly+10)

	if len(panels) == 0 {
		fmt.Fprintf(&b, `<text x="%.0f" y="%.0f">no results</text>`+"\n", left, header+40)
	}
	for pi, p := range panels {
		y0 := header + float64(pi)*panelH
		plotTop, plotBottom := y0+top, y0+panelH-bottom
		plotW := width - left - right
		lo, hi := 0.0, 6.0
		for _, row := range p.values {
			for _, v := range row {
				if !math.IsNaN(v) {
					lo, hi = math.Min(lo, v), math.Max(hi, v)
				}
			}
		}
		clipped := hi > chartClip || lo < -chartClip
		hi, lo = math.Min(hi, chartClip), math.Max(lo, -chartClip)
		span := hi - lo
		step := niceStep(span, 5)
		lo = math.Floor(lo/step) * step
		hi = math.Ceil(hi*1.08/step) * step
		yOf := func(v float64) float64 { return plotBottom - (v-lo)/(hi-lo)*(plotBottom-plotTop) }

		title := p.title
		if clipped {
			title += fmt.Sprintf(" (axis cut at ±%.0f%%: ✂ bars are taller)", chartClip)
		}
		fmt.Fprintf(&b, `<text x="%.0f" y="%.1f" font-size="14" font-weight="bold">%s</text>`+"\n", left, y0+top-10, html.EscapeString(title))
		for t := lo; t <= hi+step/2; t += step {
			y := yOf(t)
			fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#e4e4e4"/>`, left, y, width-right, y)
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="end">%s%%</text>`+"\n", left-6, y+4, trimFloat(t))
		}
		for _, target := range []float64{3, 5} {
			if target > lo && target < hi {
				y := yOf(target)
				fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#888" stroke-dasharray="4 3"/>`+"\n", left, y, width-right, y)
			}
		}
		zero := yOf(0)
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#333"/>`+"\n", left, zero, width-right, zero)

		groupW := plotW / float64(len(p.groups))
		barW := groupW * 0.78 / float64(len(p.series))
		for gi, g := range p.groups {
			gx := left + float64(gi)*groupW + groupW*0.11
			for si, s := range p.series {
				v := p.values[gi][si]
				if math.IsNaN(v) {
					continue
				}
				bx := gx + float64(si)*barW
				shown := math.Max(math.Min(v, hi), lo)
				y1, y2 := yOf(math.Max(shown, 0)), yOf(math.Min(shown, 0))
				fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s</title></rect>`,
					bx, y1, math.Max(barW-2, 1), math.Max(y2-y1, 0.5), colourOf(s),
					html.EscapeString(fmt.Sprintf("%s, %s: %+.1f%%", r.label(s), g, v)))
				ly := y1 - 3
				if v < 0 {
					ly = y2 + 11
				}
				mark := ""
				if shown != v {
					mark = " ✂" // cut at the axis
					if v > 0 {
						ly = y1 + 11
					} else {
						ly = y2 - 3
					}
				}
				fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle" font-size="10">%+.1f%s</text>`+"\n",
					bx+(barW-2)/2, ly, v, mark)
			}
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n",
				left+float64(gi)*groupW+groupW/2, plotBottom+20, html.EscapeString(g))
		}
	}
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

// chartLabel is an operation's short name under its bar group.
func chartLabel(op OpResult) string {
	if op.Control {
		return op.Op + " (control)"
	}
	return op.Op
}

// chartClip is the largest overhead, in percent, the axis shows: taller
// bars are cut at the top (their label still gives the value), so one
// large overhead does not flatten all the others.
const chartClip = 100.0

func trimFloat(v float64) string {
	if math.Abs(v) < 1e-9 {
		return "0"
	}
	s := fmt.Sprintf("%.2f", v)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	return s
}
