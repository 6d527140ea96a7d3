package harness

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// startVigil returns the Start of a Vigil agent configuration with the
// given policy files (none: observe only). The agent gets its own state
// directory and socket under the bench's work directory, so it never
// touches an installed agent's.
func startVigil(policies ...string) func(ctx context.Context, e *Env) (*Running, error) {
	return func(ctx context.Context, e *Env) (*Running, error) {
		dir, err := os.MkdirTemp(e.Work, "agent-")
		if err != nil {
			return nil, err
		}
		var paths []string
		for _, p := range policies {
			paths = append(paths, e.findPolicy(p))
		}
		return e.startAgent(ctx, dir, paths, nil)
	}
}

// startAgent starts `vigil agent` with its state directory and socket in
// dir, the policy files (--policy FILE, repeated) and more flags, and
// returns once `vigil status --wait` says it is ready.
func (e *Env) startAgent(ctx context.Context, dir string, policies, extra []string) (*Running, error) {
	sock := filepath.Join(dir, "vigil.sock")
	argv := []string{e.Vigil, "agent", "--state-dir", filepath.Join(dir, "state"), "--socket", sock,
		"--log-format", "json"}
	if e.InVM {
		// The point of the VM is the LSM backend: refuse to measure
		// anything else there.
		argv = append(argv, "--backend", "lsm")
	}
	for _, p := range policies {
		argv = append(argv, "--policy", p)
	}
	argv = append(argv, extra...)
	d, err := e.startDaemon(ctx, daemonSpec{name: "vigil", argv: argv})
	if err != nil {
		return nil, err
	}
	a := &agentClient{bin: e.Vigil, sock: sock}
	// Wait for the sensors, but not for an agent that already died.
	// Under TCG on a busy 2-core machine, loading and attaching the BPF
	// programs of a policy with many rules has taken over a minute.
	ready := 60 * time.Second
	if e.InVM {
		ready = 4 * time.Minute
	}
	wctx, cancel := context.WithTimeout(ctx, ready+30*time.Second)
	defer cancel()
	go func() {
		select {
		case <-d.done:
			cancel()
		case <-wctx.Done():
		}
	}()
	out, err := exec.CommandContext(wctx, e.Vigil, "status", "--socket", sock, "--wait", ready.String()).CombinedOutput()
	if err != nil {
		msg := strings.TrimSpace(string(out))
		if isDone(d.done) {
			msg = "the agent exited"
		}
		tail := d.logTail()
		d.stop()
		return nil, fmt.Errorf("vigil agent not ready: %s%s", msg, tail)
	}
	st, err := a.status(ctx)
	if err != nil {
		d.stop()
		return nil, err
	}
	return &Running{d: d, agent: a, Backend: st.Backend}, nil
}

// agentClient speaks to an agent through the vigil CLI, as a user would.
type agentClient struct {
	bin, sock string
}

// flexU64 reads a protojson uint64, which is a JSON string, or a number.
type flexU64 uint64

func (f *flexU64) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	if s == "" || s == "null" {
		*f = 0
		return nil
	}
	v, err := strconv.ParseUint(s, 10, 64)
	*f = flexU64(v)
	return err
}

// agentStatus is the part of `vigil status -o json` the bench reads.
type agentStatus struct {
	AgentPid        int      `json:"agent_pid"`
	Backend         string   `json:"backend"`
	SensorsAttached bool     `json:"sensors_attached"`
	Hooks           []string `json:"hooks"`
	Counters        struct {
		Received flexU64            `json:"events_received"`
		Lost     flexU64            `json:"events_lost"`
		Stored   flexU64            `json:"events_stored"`
		ByKind   map[string]flexU64 `json:"by_kind"`
	} `json:"counters"`
}

func parseStatus(data []byte) (*agentStatus, error) {
	var st agentStatus
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("vigil status -o json: %w", err)
	}
	return &st, nil
}

func (a *agentClient) status(ctx context.Context) (*agentStatus, error) {
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(cctx, a.bin, "status", "--socket", a.sock, "-o", "json").Output()
	if err != nil {
		return nil, fmt.Errorf("vigil status: %w", err)
	}
	return parseStatus(out)
}

// drainQuiet is the most events a drain poll may see for the agent to
// count as drained: every poll is itself an exec of the vigil CLI (a few
// events), and other work on the machine adds its own.
const drainQuiet = 250

// drain waits until the agent's received counter stops moving (it has
// taken what the ring buffer held) — moves by at most drainQuiet events
// over two polls half a second apart — up to limit, and returns the last
// status and how long after the call the counter last moved.
func (a *agentClient) drain(ctx context.Context, limit time.Duration) (*agentStatus, time.Duration, error) {
	start := time.Now()
	last, err := a.status(ctx)
	if err != nil {
		return nil, 0, err
	}
	quiet := 0
	moved := start
	for time.Since(start) < limit && quiet < 2 {
		select {
		case <-ctx.Done():
			return last, time.Since(start), ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
		st, err := a.status(ctx)
		if err != nil {
			return last, time.Since(start), err
		}
		if st.Counters.Received-last.Counters.Received > drainQuiet || st.Counters.Lost != last.Counters.Lost {
			moved = time.Now()
			quiet = 0
		} else {
			quiet++
		}
		last = st
	}
	return last, moved.Sub(start), nil
}

// gaps counts the gap records in the agent's store and the events they
// say were lost.
func (a *agentClient) gaps(ctx context.Context) (records int, lost uint64, err error) {
	cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(cctx, a.bin, "events", "--socket", a.sock, "--kind", "gap", "-o", "json").Output()
	if err != nil {
		return 0, 0, fmt.Errorf("vigil events --kind gap: %w", err)
	}
	return parseGaps(out)
}

func parseGaps(out []byte) (records int, lost uint64, err error) {
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var ev struct {
			Kind string `json:"kind"`
			Gap  struct {
				Lost flexU64 `json:"lost"`
			} `json:"gap"`
		}
		if err := json.Unmarshal(line, &ev); err != nil {
			return records, lost, fmt.Errorf("gap record: %w", err)
		}
		if ev.Kind == "gap" {
			records++
			lost += uint64(ev.Gap.Lost)
		}
	}
	return records, lost, sc.Err()
}

// policyFlag is what `vigil agent --help` says of --policy.
type policyFlag struct {
	present bool
	// multi says the flag takes several files (a stringArray or strings
	// flag); a plain string flag keeps only the last one given.
	multi bool
	// fanotify says the agent has --fanotify-mark (exec control without
	// BPF LSM, issue 4).
	fanotify bool
}

// agentPolicyFlag reads `vigil agent --help`.
func agentPolicyFlag(ctx context.Context, vigil string) policyFlag {
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(cctx, vigil, "agent", "--help").CombinedOutput()
	return parsePolicyFlag(string(out))
}

func parsePolicyFlag(help string) policyFlag {
	var pf policyFlag
	for _, l := range strings.Split(help, "\n") {
		f := strings.Fields(l)
		for i, w := range f {
			name, _, _ := strings.Cut(strings.TrimRight(w, ","), "=")
			switch name {
			case "--fanotify-mark":
				pf.fanotify = true
			case "--policy":
				pf.present = true
				if i+1 < len(f) {
					switch f[i+1] {
					case "stringArray", "strings", "stringSlice":
						pf.multi = true
					}
				}
			}
		}
	}
	return pf
}
