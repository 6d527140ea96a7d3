// Package fleetload simulates many agents against a fleet server, for the
// load benchmark (`vigil-bench run -phases fleet`, docs/benchmarks.md):
// each simulated host enrolls with the enrollment secret, keeps a Watch
// stream open, and uploads its events once a second as the agent does
// (fleetUploadEvery), numbering them as the agent's event store does. A
// failed upload is sent again at the next tick, from the host's cursor,
// as the agent does. Every event is about unknown code (execution control
// verdict unknown) with one of a few digests made at run time, so the
// server's approval queue counts exactly the events it stored: loss is
// the events sent minus the queue's counts.
package fleetload

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	fleetv1 "github.com/vigil-hips/vigil/api/vigil/fleet/v1"
	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/fleet"
)

// Config is one load run.
type Config struct {
	// Servers are the replicas' addresses (host:port); host i enrolls
	// and uploads through Servers[i % len].
	Servers    []string
	CAFile     string
	SecretFile string
	Admin      fleetv1.FleetAdminClient // to read the queue and hosts afterwards

	Hosts        int
	EventsPerSec int // per host
	Duration     time.Duration
	// EnrollConcurrency bounds enrollments in flight (default 32).
	EnrollConcurrency int
	// Drain bounds the wait for the server to store what it accepted
	// (a stream applies after it answers): the wait ends when everything
	// is stored, when the stored count has not grown for Stall (default
	// 15 s: what is missing then is lost), or after Drain (default 5
	// minutes: what is missing then is still Pending, being stored).
	Drain, Stall time.Duration
}

// Validate reports what is wrong with c.
func (c Config) Validate() error {
	var errs []error
	if len(c.Servers) == 0 || c.CAFile == "" || c.SecretFile == "" || c.Admin == nil {
		errs = append(errs, errors.New("servers, CA file, secret file and admin client are required"))
	}
	if c.Hosts <= 0 || c.EventsPerSec <= 0 || c.Duration <= 0 {
		errs = append(errs, fmt.Errorf("hosts %d, events/s %d, duration %s: all must be positive", c.Hosts, c.EventsPerSec, c.Duration))
	}
	return errors.Join(errs...)
}

// Result is what a run measured.
type Result struct {
	Hosts            int      `json:"hosts"`
	Enrolled         int      `json:"enrolled"`
	EnrollSeconds    float64  `json:"enroll_seconds"`
	EnrollPerSec     float64  `json:"enroll_per_sec"`
	EventsPerSecGoal float64  `json:"events_per_sec_goal"` // hosts × events/s
	Seconds          float64  `json:"seconds"`             // the upload phase
	EventsSent       uint64   `json:"events_sent"`         // made by the simulated hosts
	EventsAcked      uint64   `json:"events_acked"`        // in uploads the server answered
	AckedPerSec      float64  `json:"acked_per_sec"`
	Uploads          uint64   `json:"uploads"`
	UploadErrors     uint64   `json:"upload_errors"` // sent again at the next tick
	UploadP50ms      float64  `json:"upload_p50_ms"`
	UploadP99ms      float64  `json:"upload_p99_ms"`
	Unsent           uint64   `json:"unsent"`           // made but not acknowledged when the run ended
	Stored           uint64   `json:"stored"`           // the queue's counts after the drain
	Lost             int64    `json:"lost"`             // acknowledged, not stored, and the stored count stopped growing
	Pending          int64    `json:"pending"`          // acknowledged, not stored yet at the end of the drain, still growing
	StoredPerSec     float64  `json:"stored_per_sec"`   // stored ÷ (upload phase + drain): the rate the store kept up
	ServerLost       uint64   `json:"server_lost"`      // the hosts' events_lost as the server counts them
	DrainSeconds     float64  `json:"drain_seconds"`    // until the stored count stopped short or matched
	WatchStreams     int      `json:"watch_streams"`    // open at the end
	Errors           []string `json:"errors,omitempty"` // first few distinct errors
}

type host struct {
	id      string
	conn    *grpc.ClientConn
	c       fleetv1.FleetClient
	nextID  uint64 // the next event id to make
	cursor  uint64 // the server holds everything through this id
	pending []*vigilv1.Event
}

type errList struct {
	mu   sync.Mutex
	seen map[string]bool
	list []string
}

func (e *errList) add(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.seen == nil {
		e.seen = map[string]bool{}
	}
	s := err.Error()
	if len(s) > 200 {
		s = s[:200]
	}
	if !e.seen[s] && len(e.list) < 8 {
		e.seen[s] = true
		e.list = append(e.list, s)
	}
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// Run runs the load and measures it.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("fleet load: %w", err)
	}
	if cfg.EnrollConcurrency <= 0 {
		cfg.EnrollConcurrency = 32
	}
	if cfg.Drain <= 0 {
		cfg.Drain = 5 * time.Minute
	}
	if cfg.Stall <= 0 {
		cfg.Stall = 15 * time.Second
	}
	res := &Result{Hosts: cfg.Hosts, EventsPerSecGoal: float64(cfg.Hosts * cfg.EventsPerSec)}
	var errs errList
	run := randHex(4)
	digests := make([]string, 16)
	for i := range digests {
		digests[i] = randHex(32)
	}

	// Enrollment.
	hosts := make([]*host, cfg.Hosts)
	sem := make(chan struct{}, cfg.EnrollConcurrency)
	var wg sync.WaitGroup
	t0 := time.Now()
	for i := range hosts {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			addr := cfg.Servers[i%len(cfg.Servers)]
			id := fmt.Sprintf("load-%s-%05d", run, i)
			cred, err := fleet.Enroll(ctx, fleet.Enrollment{Server: addr, CAFile: cfg.CAFile, SecretFile: cfg.SecretFile,
				HostID: id, Hostname: id, Tags: []string{"load"}})
			if err != nil {
				errs.add(fmt.Errorf("enroll: %w", err))
				return
			}
			conn, err := fleet.Dial(addr, cfg.CAFile, cred)
			if err != nil {
				errs.add(err)
				return
			}
			hosts[i] = &host{id: id, conn: conn, c: fleetv1.NewFleetClient(conn), nextID: 1}
		})
	}
	wg.Wait()
	res.EnrollSeconds = time.Since(t0).Seconds()
	hosts = slices.DeleteFunc(hosts, func(h *host) bool { return h == nil })
	res.Enrolled = len(hosts)
	if res.EnrollSeconds > 0 {
		res.EnrollPerSec = float64(res.Enrolled) / res.EnrollSeconds
	}
	defer func() {
		for _, h := range hosts {
			h.conn.Close()
		}
	}()
	if len(hosts) == 0 {
		res.Errors = errs.list
		return res, errors.New("fleet load: no host enrolled")
	}

	// Watch streams, open for the whole run.
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	var watching atomic.Int64
	var wwg sync.WaitGroup
	for _, h := range hosts {
		w, err := h.c.Watch(wctx, &fleetv1.WatchRequest{})
		if err != nil {
			errs.add(fmt.Errorf("watch: %w", err))
			continue
		}
		wwg.Go(func() {
			watching.Add(1)
			defer watching.Add(-1)
			for {
				if _, err := w.Recv(); err != nil {
					return
				}
			}
		})
	}

	// Uploads: each host once a second, start times spread over the first
	// second.
	var (
		sent, acked, uploads, upErrs atomic.Uint64
		latMu                        sync.Mutex
		lat                          []float64
	)
	lctx, lcancel := context.WithTimeout(ctx, cfg.Duration)
	defer lcancel()
	t1 := time.Now()
	for i, h := range hosts {
		wg.Go(func() {
			offset := time.Duration(int64(time.Second) * int64(i) / int64(len(hosts)))
			select {
			case <-lctx.Done():
				return
			case <-time.After(offset):
			}
			tick := time.NewTicker(time.Second)
			defer tick.Stop()
			for {
				now := timestamppb.Now()
				for range cfg.EventsPerSec {
					d := digests[int(h.nextID)%len(digests)]
					h.pending = append(h.pending, &vigilv1.Event{Id: h.nextID, Kind: "exec", Time: now,
						Process: &vigilv1.Process{Pid: uint32(1000 + h.nextID%50), Exe: "/usr/bin/bash"},
						Detail:  &vigilv1.Event_Exec{Exec: &vigilv1.Exec{File: &vigilv1.File{Path: "/srv/app/" + d[:12]}}},
						Trust:   &vigilv1.Trust{Sha256: d, Verdict: "unknown", Mode: "lockdown"},
						Verdict: &vigilv1.Verdict{Action: "deny", Refused: true}})
					h.nextID++
				}
				sent.Add(uint64(cfg.EventsPerSec))
				req := &fleetv1.UploadEventsRequest{AfterId: h.cursor, ThroughId: h.nextID - 1, Events: h.pending}
				cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				s := time.Now()
				resp, err := h.c.UploadEvents(cctx, req)
				cancel()
				uploads.Add(1)
				if err != nil {
					upErrs.Add(1)
					errs.add(fmt.Errorf("upload: %w", err))
				} else {
					latMu.Lock()
					lat = append(lat, float64(time.Since(s).Microseconds())/1000)
					latMu.Unlock()
					acked.Add(uint64(len(h.pending)))
					h.cursor = max(resp.GetLastEventId(), req.ThroughId)
					h.pending = h.pending[:0]
				}
				select {
				case <-lctx.Done():
					return
				case <-tick.C:
				}
			}
		})
	}
	wg.Wait()
	res.Seconds = time.Since(t1).Seconds()
	res.EventsSent, res.EventsAcked, res.Uploads, res.UploadErrors = sent.Load(), acked.Load(), uploads.Load(), upErrs.Load()
	res.Unsent = res.EventsSent - res.EventsAcked
	if res.Seconds > 0 {
		res.AckedPerSec = float64(res.EventsAcked) / res.Seconds
	}
	slices.Sort(lat)
	res.UploadP50ms, res.UploadP99ms = quantile(lat, 0.5), quantile(lat, 0.99)
	res.WatchStreams = int(watching.Load())

	// Drain: what the server acknowledged must end up stored.
	t2 := time.Now()
	grew, stalled := t2, false
	for {
		n, lost, err := stored(ctx, cfg.Admin, digests, run)
		if err != nil {
			errs.add(err)
		} else {
			if n > res.Stored {
				grew = time.Now()
			}
			res.Stored, res.ServerLost = n, lost
		}
		if err == nil && n >= res.EventsAcked {
			break
		}
		if stalled = time.Since(grew) > cfg.Stall; stalled || time.Since(t2) > cfg.Drain || ctx.Err() != nil {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	res.DrainSeconds = time.Since(t2).Seconds()
	// More stored than acknowledged: uploads the server stored after the
	// simulated host gave up waiting (sent again, skipped as duplicates).
	if missing := int64(res.EventsAcked) - int64(res.Stored); missing > 0 && !stalled {
		res.Pending = missing
	} else if missing > 0 {
		res.Lost = missing
	}
	res.StoredPerSec = float64(res.Stored) / (res.Seconds + res.DrainSeconds)
	wcancel()
	wwg.Wait()
	res.Errors = errs.list
	return res, nil
}

// stored sums the queue's counts of the run's digests and the run's
// hosts' events_lost.
func stored(ctx context.Context, admin fleetv1.FleetAdminClient, digests []string, run string) (uint64, uint64, error) {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	q, err := admin.ListQueue(cctx, &fleetv1.ListQueueRequest{})
	if err != nil {
		return 0, 0, fmt.Errorf("queue: %w", err)
	}
	var n uint64
	for _, e := range q.GetEntries() {
		if slices.Contains(digests, e.GetSha256()) {
			n += e.GetCount()
		}
	}
	hs, err := admin.ListHosts(cctx, &fleetv1.ListHostsRequest{})
	if err != nil {
		return 0, 0, fmt.Errorf("hosts: %w", err)
	}
	var lost uint64
	prefix := "load-" + run + "-"
	for _, h := range hs.GetHosts() {
		if len(h.GetId()) > len(prefix) && h.GetId()[:len(prefix)] == prefix {
			lost += h.GetEventsLost()
		}
	}
	return n, lost, nil
}

func quantile(sorted []float64, q float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// WriteSecret writes secret to a file in dir for Config.SecretFile.
func WriteSecret(dir, secret string) (string, error) {
	p := filepath.Join(dir, "load.secret")
	return p, os.WriteFile(p, []byte(secret), 0o600)
}
