package harness

import (
	"bytes"
	"os"
	"path/filepath"

	"github.com/vigil-hips/vigil/bench"
)

// WriteReport writes report.md, report.json and chart.svg into dir.
func WriteReport(r *bench.Report, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for name, render := range map[string]func(*bytes.Buffer) error{
		"report.md":   func(b *bytes.Buffer) error { return r.WriteMarkdown(b) },
		"report.json": func(b *bytes.Buffer) error { return r.WriteJSON(b) },
		"chart.svg":   func(b *bytes.Buffer) error { return r.WriteSVG(b) },
	} {
		var b bytes.Buffer
		if err := render(&b); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, name), b.Bytes(), 0o644); err != nil {
			return err
		}
	}
	return nil
}
