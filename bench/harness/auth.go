package harness

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/vigil-hips/vigil/bench"
	"github.com/vigil-hips/vigil/internal/syncbuf"
)

// The auth phase (issue 7): the filter API's round trip. One approved
// client (examples/clients/scanner, answering allow at once without
// reading the file, every verdict uncacheable) answers the
// exec authorization of every exec on the bench's tmpfs while execs are
// driven at a fixed rate; the agent records each client's latency in the
// decision record (verdict.clients[].latency_us), which is read back from
// the event store. It runs twice: at normal priority, and with the agent
// (--realtime) and the client (-realtime) at SCHED_RR 1. Host only:
// fanotify marks the bench's tmpfs, nothing else.

// AuthRate is the exec rate the auth phase drives.
const AuthRate = 1000

// runAuth measures the AUTH round trip on the host.
func (e *Env) runAuth(ctx context.Context, secs float64) *bench.Auth {
	res := &bench.Auth{Place: "host", Rate: AuthRate, Seconds: secs}
	fail := func(why string) *bench.Auth {
		res.Reason = why
		e.errorf("auth: %s", why)
		return res
	}
	if err := isBenchTmpfs(e.execFS); err != nil {
		return fail("no bench tmpfs to mark: " + e.execFSErr)
	}
	dir, err := os.MkdirTemp(e.Work, "auth-")
	if err != nil {
		return fail(err.Error())
	}
	scanner := filepath.Join(dir, "vigil-scanner")
	build := exec.CommandContext(ctx, "go", "build", "-o", scanner, "./examples/clients/scanner")
	build.Dir = e.Opts.Root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return fail(fmt.Sprintf("build the example client: %v: %s", err, out))
	}
	key := filepath.Join(dir, "admin")
	if out, err := exec.CommandContext(ctx, e.Vigil, "keys", "generate", "--out", key).CombinedOutput(); err != nil {
		return fail(fmt.Sprintf("keys generate: %v: %s", err, out))
	}
	cfg, _ := json.Marshal(map[string]any{"clients": []map[string]any{
		{"name": "bench", "exe": scanner, "deadline_ms": 50, "miss_mode": "fail-open", "max_misses": 1000000},
	}})
	cfgFile, signed, hostID := filepath.Join(dir, "clients.json"), filepath.Join(dir, "filter-clients.json"), filepath.Join(dir, "machine-id")
	os.WriteFile(cfgFile, cfg, 0o644)
	os.WriteFile(hostID, []byte("vigil-bench\n"), 0o644)
	if out, err := exec.CommandContext(ctx, e.Vigil, "filter", "sign", "--key", key+".key", "--out", signed, cfgFile).CombinedOutput(); err != nil {
		return fail(fmt.Sprintf("filter sign: %v: %s", err, out))
	}
	// The floors, before the agent starts: idle, then under the same exec
	// load with no agent.
	res.FloorIdle = e.floor(ctx, secs, nil)
	res.FloorLoaded = e.floor(ctx, secs, func() error {
		_, err := runRate(ctx, e.Tools, "exec", AuthRate, secs, 2, e.Tools.Target)
		return err
	})
	def := e.authRun(ctx, filepath.Join(dir, "default"), key, signed, hostID, scanner, secs, false)
	if def.Reason != "" {
		return fail(def.Reason)
	}
	res.Execs, res.Achieved, res.Samples, res.Missed = def.Execs, def.Achieved, def.Samples, def.Missed
	res.P50us, res.P99us, res.MaxUs = def.P50us, def.P99us, def.MaxUs
	res.Realtime = e.authRun(ctx, filepath.Join(dir, "realtime"), key, signed, hostID, scanner, secs, true)
	if why := res.Realtime.Reason; why != "" {
		e.errorf("auth, real-time: %s", why)
	}
	return res
}

// authRun starts an agent in dir and the example client, drives execs at
// AuthRate for secs and reads the client's latencies back; realtime runs
// both at SCHED_RR 1 (agent --realtime, client -realtime).
func (e *Env) authRun(ctx context.Context, dir, key, signed, hostID, scanner string, secs float64, realtime bool) *bench.AuthRun {
	res := &bench.AuthRun{}
	fail := func(why string) *bench.AuthRun {
		res.Reason = why
		return res
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fail(err.Error())
	}
	args := []string{"--backend", "tracepoint", "--fanotify-mark", e.execFS,
		"--admin-key", key + ".pub", "--protect=false", "--host-id-file", hostID, "--filter-clients", signed}
	cargs := []string{"-socket", filepath.Join(dir, "filter.sock"), "-name", "bench", "-altitude", "100",
		"-path-prefix", e.execFS, "-no-cache", "-no-scan"}
	if realtime {
		args = append(args, "--realtime")
		cargs = append(cargs, "-realtime")
	}
	r, err := e.startAgent(ctx, dir, nil, args)
	if err != nil {
		return fail(err.Error())
	}
	defer r.Stop(ctx)
	client := exec.CommandContext(ctx, scanner, cargs...)
	var out syncbuf.Buffer // read below while the client writes
	client.Stdout, client.Stderr = &out, &out
	if err := client.Start(); err != nil {
		return fail(err.Error())
	}
	exited := make(chan struct{})
	go func() { client.Wait(); close(exited) }()
	defer func() { client.Process.Kill(); <-exited }()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(out.String(), "connected as") {
		if time.Now().After(deadline) || isDone(exited) {
			return fail("the client did not connect: " + out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	rr, err := runRate(ctx, e.Tools, "exec", AuthRate, secs, 2, e.Tools.Target)
	if err != nil {
		return fail(err.Error())
	}
	res.Execs = rr.Ops
	res.Achieved = rr.Rate()
	// Let the pipeline store the last decisions.
	time.Sleep(2 * time.Second)
	lat, missed, err := authLatencies(ctx, e.Vigil, filepath.Join(dir, "vigil.sock"))
	if err != nil {
		return fail(err.Error())
	}
	res.Samples, res.Missed = len(lat), missed
	if len(lat) == 0 {
		return fail("no decision records with the client's latency")
	}
	res.P50us = bench.Percentile(lat, 50)
	res.P99us = bench.Percentile(lat, 99)
	res.MaxUs = bench.Percentile(lat, 100)
	return res
}

// authLatencies reads the filter API decision records from the agent.
func authLatencies(ctx context.Context, vigil, sock string) ([]float64, int, error) {
	cmd := exec.CommandContext(ctx, vigil, "events", "--socket", sock, "--kind", "exec", "-o", "json")
	out, err := cmd.Output()
	if err != nil {
		return nil, 0, fmt.Errorf("vigil events: %w", err)
	}
	return parseAuthLatencies(out)
}

// parseAuthLatencies takes the per-client latencies (µs) of filter API
// verdicts from `vigil events -o json` lines; missed deadlines are counted,
// not timed.
func parseAuthLatencies(out []byte) ([]float64, int, error) {
	var lat []float64
	missed := 0
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var ev struct {
			Verdict struct {
				Rule    string `json:"rule"`
				Clients []struct {
					Answer    string `json:"answer"`
					LatencyUs string `json:"latency_us"` // vigil events -o json: proto names
				} `json:"clients"`
			} `json:"verdict"`
		}
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return nil, 0, fmt.Errorf("event line: %w", err)
		}
		if ev.Verdict.Rule != "filter-api" {
			continue
		}
		for _, c := range ev.Verdict.Clients {
			switch c.Answer {
			case "missed", "gone":
				missed++
			case "allow", "deny":
				if c.LatencyUs == "" { // protojson leaves out a zero
					lat = append(lat, 0)
					continue
				}
				v, err := strconv.ParseFloat(c.LatencyUs, 64)
				if err != nil {
					return nil, 0, errors.New("latencyUs: " + err.Error())
				}
				lat = append(lat, v)
			}
		}
	}
	return lat, missed, sc.Err()
}

// floor measures the two-process wakeup floor (pingPong) at AuthRate for
// secs, while load runs (nil: idle).
func (e *Env) floor(ctx context.Context, secs float64, load func() error) *bench.Latency {
	var loadErr error
	done := make(chan struct{})
	if load != nil {
		go func() { defer close(done); loadErr = load() }()
	} else {
		close(done)
	}
	lat, err := pingPong(ctx, AuthRate, secs)
	<-done
	if err == nil {
		err = loadErr
	}
	if err != nil {
		e.errorf("auth floor: %v", err)
		return &bench.Latency{Error: err.Error()}
	}
	return bench.NewLatency(lat)
}
