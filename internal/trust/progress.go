package trust

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/sys/unix"
)

// progress reports hashing progress: a bar on a terminal, plain lines
// otherwise, nothing without a writer.
type progress struct {
	mu               sync.Mutex
	bar              *progressbar.ProgressBar
	w                io.Writer
	files            int
	total, doneBytes int64
	doneFiles        int
	stop             chan struct{}
	wg               sync.WaitGroup
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(interface{ Fd() uintptr })
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

func newProgress(w io.Writer, interval time.Duration, files int, total int64, unchanged int) *progress {
	p := &progress{w: w, files: files, total: total}
	if w == nil {
		return p
	}
	if isTerminal(w) {
		p.bar = progressbar.NewOptions64(total,
			progressbar.OptionSetWriter(w),
			progressbar.OptionSetDescription(fmt.Sprintf("reading %d new or changed files (%d unchanged)", files, unchanged)),
			progressbar.OptionShowBytes(true),
			progressbar.OptionSetWidth(30),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionShowElapsedTimeOnFinish(),
			progressbar.OptionOnCompletion(func() { fmt.Fprintln(w) }),
			progressbar.OptionSetPredictTime(true),
		)
		return p
	}
	if interval <= 0 {
		interval = 5 * time.Second
	}
	fmt.Fprintf(w, "trust scan: %d new or changed files to read (%s), %d unchanged\n", files, formatBytes(total), unchanged)
	p.stop = make(chan struct{})
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-t.C:
				p.line()
			}
		}
	}()
	return p
}

func (p *progress) line() {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, "trust scan: read %d/%d files, %s/%s\n", p.doneFiles, p.files, formatBytes(p.doneBytes), formatBytes(p.total))
}

func (p *progress) add(n int64) {
	p.mu.Lock()
	p.doneBytes += n
	p.doneFiles++
	p.mu.Unlock()
	if p.bar != nil {
		p.bar.Add64(n) //nolint:errcheck // display only
	}
}

func (p *progress) done() {
	if p.bar != nil {
		p.bar.Finish() //nolint:errcheck // display only
		return
	}
	if p.stop != nil {
		close(p.stop)
		p.wg.Wait()
		p.line()
	}
}

func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
