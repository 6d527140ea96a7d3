package ocsf

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"time"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
)

// Config says where events go; at least one of File and Webhook.
type Config struct {
	File    string // append JSON lines here
	Webhook string // POST JSON arrays here (http or https)
	Product Product
	// Webhook tuning; zero: the defaults.
	Batch      int           // events per POST (default 100)
	FlushEvery time.Duration // send a partial batch after this (default 2s)
	Retries    int           // attempts per batch (default 5), backoff doubling from 500ms
	Queue      int           // events waiting, at most (default 10000); beyond, dropped and counted
	Client     *http.Client
}

// Validate checks the config.
func (c Config) Validate() error {
	if c.File == "" && c.Webhook == "" {
		return errors.New("ocsf: no file and no webhook")
	}
	if c.Webhook != "" {
		u, err := url.Parse(c.Webhook)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("ocsf webhook %q: want an http or https URL", c.Webhook)
		}
	}
	return nil
}

// Exporter maps events and sends them to the file and the webhook. Export
// never blocks: a full queue drops and counts (Dropped).
type Exporter struct {
	cfg  Config
	log  *slog.Logger
	file *os.File

	fmu sync.Mutex // file writes

	qmu     sync.RWMutex // closed guards queue against Export after Close
	closed  bool
	queue   chan []byte
	dropped atomic.Uint64
	sent    atomic.Uint64
	done    chan struct{}
	cancel  context.CancelFunc
}

// New opens the file (created 0600 if missing, appended to) and starts the
// webhook sender; Close flushes and stops it.
func New(cfg Config, log *slog.Logger) (*Exporter, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 100
	}
	if cfg.FlushEvery <= 0 {
		cfg.FlushEvery = 2 * time.Second
	}
	if cfg.Retries <= 0 {
		cfg.Retries = 5
	}
	if cfg.Queue <= 0 {
		cfg.Queue = 10000
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: 10 * time.Second}
	}
	e := &Exporter{cfg: cfg, log: log, done: make(chan struct{})}
	if cfg.File != "" {
		f, err := os.OpenFile(cfg.File, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return nil, fmt.Errorf("ocsf file: %w", err)
		}
		e.file = f
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	if cfg.Webhook != "" {
		e.queue = make(chan []byte, cfg.Queue)
		go e.send(ctx)
	} else {
		close(e.done)
	}
	return e, nil
}

// Export maps and sends the events of host; events of kinds with no OCSF
// class are skipped. It returns how many were exported.
func (e *Exporter) Export(host Host, evs []*vigilv1.Event) (int, error) {
	var lines [][]byte
	for _, ev := range evs {
		m, ok := Map(ev, host, e.cfg.Product)
		if !ok {
			continue
		}
		b, err := json.Marshal(m)
		if err != nil {
			return 0, fmt.Errorf("ocsf: %w", err)
		}
		lines = append(lines, b)
	}
	if len(lines) == 0 {
		return 0, nil
	}
	e.qmu.RLock()
	defer e.qmu.RUnlock()
	if e.closed {
		return 0, errors.New("ocsf: exporter closed")
	}
	var err error
	if e.file != nil {
		var buf bytes.Buffer
		for _, l := range lines {
			buf.Write(l)
			buf.WriteByte('\n')
		}
		e.fmu.Lock()
		_, err = e.file.Write(buf.Bytes())
		e.fmu.Unlock()
		if err != nil {
			err = fmt.Errorf("ocsf file: %w", err)
		}
	}
	if e.queue != nil {
		for _, l := range lines {
			select {
			case e.queue <- l:
			default:
				e.dropped.Add(1)
			}
		}
	}
	return len(lines), err
}

// Dropped is how many events the webhook lost: the queue was full, or a
// batch failed every retry.
func (e *Exporter) Dropped() uint64 { return e.dropped.Load() }

// Sent is how many events the webhook accepted.
func (e *Exporter) Sent() uint64 { return e.sent.Load() }

func (e *Exporter) send(ctx context.Context) {
	defer close(e.done)
	tick := time.NewTicker(e.cfg.FlushEvery)
	defer tick.Stop()
	var batch [][]byte
	flush := func() {
		if len(batch) > 0 {
			e.post(ctx, batch)
			batch = nil
		}
	}
	for {
		select {
		case l, ok := <-e.queue:
			if !ok {
				flush()
				return
			}
			batch = append(batch, l)
			if len(batch) >= e.cfg.Batch {
				flush()
			}
		case <-tick.C:
			flush()
		}
	}
}

// post sends one batch as a JSON array, retrying with backoff on a
// network error or a 5xx/429 answer; a 4xx other than 429 is not retried.
func (e *Exporter) post(ctx context.Context, batch [][]byte) {
	body := append([]byte{'['}, bytes.Join(batch, []byte{','})...)
	body = append(body, ']')
	backoff := 500 * time.Millisecond
	var last error
	for attempt := 1; attempt <= e.cfg.Retries; attempt++ {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.cfg.Webhook, bytes.NewReader(body))
		if err != nil {
			last = err
			break
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := e.cfg.Client.Do(req)
		if err == nil {
			io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<16))
			resp.Body.Close()
			if resp.StatusCode/100 == 2 {
				e.sent.Add(uint64(len(batch)))
				return
			}
			err = fmt.Errorf("HTTP %s", resp.Status)
			if resp.StatusCode/100 == 4 && resp.StatusCode != http.StatusTooManyRequests {
				last = err
				break
			}
		}
		last = err
		if attempt == e.cfg.Retries {
			break
		}
		select {
		case <-ctx.Done():
			attempt = e.cfg.Retries
		case <-time.After(backoff):
		}
		backoff *= 2
	}
	e.dropped.Add(uint64(len(batch)))
	if e.log != nil {
		e.log.Error("ocsf webhook: batch dropped", "events", len(batch), "err", last, "dropped_total", e.dropped.Load())
	}
}

// Close sends what is queued (giving up after timeout) and closes the
// file.
func (e *Exporter) Close(timeout time.Duration) error {
	e.qmu.Lock()
	if e.closed {
		e.qmu.Unlock()
		return nil
	}
	e.closed = true
	e.qmu.Unlock()
	if e.queue != nil {
		close(e.queue)
		select {
		case <-e.done:
		case <-time.After(timeout):
			e.cancel()
			<-e.done
		}
	}
	e.cancel()
	if e.file != nil {
		return e.file.Close()
	}
	return nil
}
