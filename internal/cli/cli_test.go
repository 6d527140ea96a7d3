package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/agent"
	"github.com/vigil-hips/vigil/internal/agent/agenttest"
	"github.com/vigil-hips/vigil/internal/cli"
	"github.com/vigil-hips/vigil/internal/sensor"
	"github.com/vigil-hips/vigil/internal/syncbuf"
)

type env struct {
	t       *testing.T
	dir     string
	socket  string
	jsonl   string
	metrics string
	sensor  *agenttest.Sensor
}

func (e *env) options() cli.Options {
	return cli.Options{
		Version: "test",
		NewSensor: func(cfg agent.Config, _ *slog.Logger) (sensor.Sensor, error) {
			if cfg.Backend != "tracepoint" || cfg.RingBufBytes != 1<<20 {
				return nil, errors.New("flags did not reach the sensor config")
			}
			return e.sensor, nil
		},
		Kernel: func() agent.Kernel {
			return agent.Kernel{Release: "6.18.0-test", Features: []*vigilv1.Feature{
				{Name: "tp_btf", Available: true, Detail: "attaches"},
				{Name: "bpf_lsm", Available: false, Detail: "not active"},
			}}
		},
	}
}

// run executes one vigil command line in-process and returns its stdout.
func (e *env) run(ctx context.Context, out io.Writer, args ...string) error {
	root := cli.New(e.options())
	root.SetArgs(append(args, "--socket", e.socket))
	root.SetOut(out)
	root.SetErr(io.Discard)
	return root.ExecuteContext(ctx)
}

func (e *env) mustRun(args ...string) string {
	e.t.Helper()
	var out bytes.Buffer
	if err := e.run(context.Background(), &out, args...); err != nil {
		e.t.Fatalf("vigil %s: %v", strings.Join(args, " "), err)
	}
	return out.String()
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func jsonLines(t *testing.T, s string) []*vigilv1.Event {
	t.Helper()
	var out []*vigilv1.Event
	for i, line := range strings.Split(strings.TrimSpace(s), "\n") {
		if line == "" {
			continue
		}
		ev := new(vigilv1.Event)
		if err := protojson.Unmarshal([]byte(line), ev); err != nil {
			t.Fatalf("line %d %q: %v", i+1, line, err)
		}
		out = append(out, ev)
	}
	return out
}

func TestAgentAndCommands(t *testing.T) {
	dir := t.TempDir()
	e := &env{
		t:       t,
		dir:     dir,
		socket:  filepath.Join(dir, "run", "vigil.sock"),
		jsonl:   filepath.Join(dir, "events.jsonl"),
		metrics: freePort(t),
		sensor: agenttest.New(sensor.Info{
			Backend:      sensor.BackendTracepoint,
			Hooks:        []string{"tp_btf/sched_process_exec", "tp_btf/sched_process_exit"},
			MissingHooks: []string{"tracepoint/syscalls/sys_enter_kexec_load: not offered"},
		}),
	}

	// No agent yet: status fails clearly, at once and after --wait.
	err := e.run(context.Background(), io.Discard, "status")
	if err == nil || !strings.Contains(err.Error(), "no agent is running") {
		t.Fatalf("status without agent: %v", err)
	}
	err = e.run(context.Background(), io.Discard, "status", "--wait", "300ms")
	if err == nil || !strings.Contains(err.Error(), "agent not ready after 300ms") {
		t.Fatalf("status --wait without agent: %v", err)
	}

	// Start the agent, its sensor slow to attach.
	release := e.sensor.HoldStart()
	agentCtx, stopAgent := context.WithCancel(context.Background())
	defer stopAgent()
	agentDone := make(chan error, 1)
	go func() {
		agentDone <- e.run(agentCtx, io.Discard, "agent",
			"--state-dir", filepath.Join(dir, "state"),
			"--jsonl", e.jsonl,
			"--metrics-addr", e.metrics,
			"--backend", "tracepoint",
			"--ringbuf-bytes", "1048576",
			"--retention-max-age", "7d",
			"--log-level", "debug")
	}()
	waitFor(t, "the agent socket", func() bool { _, err := os.Stat(e.socket); return err == nil })
	err = e.run(context.Background(), io.Discard, "status", "--wait", "300ms")
	if err == nil || !strings.Contains(err.Error(), "sensors are not attached yet") {
		t.Fatalf("status --wait before attach: %v", err)
	}
	out := e.mustRun("status")
	if !strings.Contains(out, "NOT attached") {
		t.Fatalf("status before attach:\n%s", out)
	}
	release()

	out = e.mustRun("status", "--wait", "10s")
	for _, want := range []string{
		"running, pid", "Version:", "test", "6.18.0-test", "tracepoint", "attached, 2 hooks",
		"tp_btf/sched_process_exit", "sys_enter_kexec_load: not offered", "bpf_lsm", "not active",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}

	var st vigilv1.StatusResponse
	if err := protojson.Unmarshal([]byte(e.mustRun("status", "-o", "json")), &st); err != nil {
		t.Fatal(err)
	}
	if !st.GetSensorsAttached() || st.GetBackend() != "tracepoint" || st.GetAgentPid() != uint32(os.Getpid()) ||
		st.GetVersion() != "test" || len(st.GetFeatures()) != 3 { // the kernel's two and tamper_protection
		t.Fatalf("status -o json: %v", &st)
	}

	// Events, a gap among them.
	now := time.Now()
	evs := []*vigilv1.Event{
		{Seq: 1, Kind: "exec", Time: timestamppb.New(now), Backend: "tracepoint", Hook: "tp_btf/sched_process_exec",
			Process: &vigilv1.Process{Pid: 100, Ppid: 1, StartTimeNs: 5, Exe: "/usr/bin/curl", Comm: "curl"},
			Detail:  &vigilv1.Event_Exec{Exec: &vigilv1.Exec{Filename: "/usr/bin/curl", Argv: []string{"curl", "-s", "http://x y"}}}},
		{Seq: 2, Kind: "fork", Time: timestamppb.New(now), Process: &vigilv1.Process{Pid: 100, Exe: "/usr/bin/curl"},
			Detail: &vigilv1.Event_Fork{Fork: &vigilv1.Fork{ChildPid: 101}}},
		{Seq: 8, Kind: "gap", Time: timestamppb.New(now), Backend: "agent",
			Detail: &vigilv1.Event_Gap{Gap: &vigilv1.Gap{Lost: 5, AfterSeq: 2, LostTotal: 5}}},
	}
	e.sensor.AddLost(5)
	if !e.sensor.Emit(evs...) {
		t.Fatal("sensor stopped")
	}
	waitFor(t, "3 stored events", func() bool {
		return len(jsonLines(t, e.mustRun("events", "-o", "json"))) == 3
	})

	out = e.mustRun("events", "-o", "json")
	got := jsonLines(t, out)
	if got[0].GetKind() != "exec" || got[1].GetKind() != "fork" || got[2].GetKind() != "gap" ||
		got[2].GetGap().GetLost() != 5 || got[0].GetId() != 1 || got[2].GetId() != 3 {
		t.Fatalf("events -o json:\n%s", out)
	}
	// Proto field names, one compact object a line.
	for _, want := range []string{`"start_time_ns":"5"`, `"child_pid":101`, `"after_seq":"2"`, `"lost_total":"5"`, `"id":"1"`} {
		if !strings.Contains(out, want) {
			t.Errorf("events -o json lacks %s:\n%s", want, out)
		}
	}
	var obj map[string]any
	if err := json.Unmarshal([]byte(strings.SplitN(out, "\n", 2)[0]), &obj); err != nil {
		t.Fatal(err)
	}

	out = e.mustRun("events")
	for _, want := range []string{"KIND", "exec", `curl -s "http://x y"`, "child 101", "LOST 5 events after seq 2"} {
		if !strings.Contains(out, want) {
			t.Errorf("events output lacks %q:\n%s", want, out)
		}
	}
	if out := e.mustRun("events", "--kind", "gap", "-o", "json"); len(jsonLines(t, out)) != 1 {
		t.Errorf("events --kind gap:\n%s", out)
	}
	if out := e.mustRun("events", "--pid", "100", "--limit", "1", "-o", "json"); len(jsonLines(t, out)) != 1 ||
		jsonLines(t, out)[0].GetKind() != "fork" {
		t.Errorf("events --pid 100 --limit 1 (the latest):\n%s", out)
	}
	if out := e.mustRun("events", "--after-id", "1", "--limit", "1", "-o", "json"); jsonLines(t, out)[0].GetId() != 2 {
		t.Errorf("events --after-id 1 --limit 1:\n%s", out)
	}
	if out := e.mustRun("events", "--since", "1h", "-o", "json"); len(jsonLines(t, out)) != 3 {
		t.Errorf("events --since 1h:\n%s", out)
	}
	if out := e.mustRun("events", "--since", now.Add(time.Hour).Format(time.RFC3339), "-o", "json"); strings.TrimSpace(out) != "" {
		t.Errorf("events --since (future):\n%s", out)
	}
	err = e.run(context.Background(), io.Discard, "events", "--kind", "exce")
	if err == nil || !strings.Contains(err.Error(), `unknown event kind "exce"`) {
		t.Errorf("events --kind exce: %v", err)
	}

	// Follow: the stored events, then a new one.
	followCtx, stopFollow := context.WithCancel(context.Background())
	defer stopFollow()
	var followOut syncbuf.Buffer
	followDone := make(chan error, 1)
	go func() {
		followDone <- e.run(followCtx, &followOut, "events", "--follow", "-o", "json", "--kind", "exec,gap")
	}()
	waitFor(t, "follow to print the stored events", func() bool { return strings.Count(followOut.String(), "\n") == 2 })
	if !e.sensor.Emit(&vigilv1.Event{Seq: 9, Kind: "exec", Time: timestamppb.Now(),
		Process: &vigilv1.Process{Pid: 200, Exe: "/usr/bin/id"},
		Detail:  &vigilv1.Event_Exec{Exec: &vigilv1.Exec{Argv: []string{"id"}}}},
		&vigilv1.Event{Seq: 10, Kind: "exit", Time: timestamppb.Now(), Process: &vigilv1.Process{Pid: 200}}) {
		t.Fatal("sensor stopped")
	}
	waitFor(t, "follow to print the new event", func() bool { return strings.Count(followOut.String(), "\n") == 3 })
	stopFollow()
	if err := <-followDone; err != nil {
		t.Fatalf("events --follow: %v", err)
	}
	followed := jsonLines(t, followOut.String())
	if followed[2].GetSeq() != 9 || followed[2].GetId() != 4 {
		t.Fatalf("followed:\n%s", followOut.String())
	}

	// Metrics.
	waitFor(t, "5 stored events", func() bool { return len(jsonLines(t, e.mustRun("events", "-o", "json"))) == 5 })
	resp, err := http.Get("http://" + e.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`vigil_events_total{kind="exec"} 2`,
		`vigil_events_total{kind="gap"} 1`,
		"vigil_events_lost_total 5",
		"vigil_events_stored_total 5",
		"vigil_store_errors_total 0",
		"vigil_sensor_attached 1",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	st.Reset()
	if err := protojson.Unmarshal([]byte(e.mustRun("status", "-o", "json")), &st); err != nil {
		t.Fatal(err)
	}
	if c := st.GetCounters(); c.GetEventsReceived() != 5 || c.GetEventsLost() != 5 || c.GetEventsStored() != 5 || c.GetByKind()["exec"] != 2 {
		t.Errorf("status counters: %v", c)
	}

	if out := e.mustRun("version"); !strings.Contains(out, "vigil test") || !strings.Contains(out, "agent: test (pid") {
		t.Errorf("version:\n%s", out)
	}

	// A follower when the agent stops: told so.
	var lateOut syncbuf.Buffer
	lateDone := make(chan error, 1)
	go func() { lateDone <- e.run(context.Background(), &lateOut, "events", "-f", "-o", "json") }()
	waitFor(t, "the second follower", func() bool { return strings.Count(lateOut.String(), "\n") == 5 })

	stopAgent()
	if err := <-agentDone; err != nil {
		t.Fatalf("vigil agent: %v", err)
	}
	if err := <-lateDone; err == nil || !strings.Contains(err.Error(), "agent ended the event stream") {
		t.Errorf("follower at agent stop: %v", err)
	}

	// The JSON-lines file holds what `events -o json` showed, line for line.
	jl, err := os.ReadFile(e.jsonl)
	if err != nil {
		t.Fatal(err)
	}
	if string(jl) != lateOut.String() {
		t.Errorf("jsonl file differs from events -o json:\n%s\nvs\n%s", jl, lateOut.String())
	}
	if _, err := os.Stat(e.socket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left after stop: %v", err)
	}
	err = e.run(context.Background(), io.Discard, "status")
	if err == nil || !strings.Contains(err.Error(), "no agent is running") {
		t.Fatalf("status after stop: %v", err)
	}
}

func TestAgentFlagErrors(t *testing.T) {
	e := &env{t: t, socket: "relative.sock", sensor: agenttest.New(sensor.Info{})}
	err := e.run(context.Background(), io.Discard, "agent", "--state-dir", t.TempDir(), "--backend", "kprobe", "--retention-max-age", "-1d")
	if err == nil {
		t.Fatal("agent with bad flags ran")
	}
	err = e.run(context.Background(), io.Discard, "agent", "--state-dir", t.TempDir(), "--backend", "kprobe")
	if err == nil || !strings.Contains(err.Error(), `backend "kprobe"`) || !strings.Contains(err.Error(), "must be an absolute path") {
		t.Fatalf("agent with bad flags: %v", err)
	}
}
