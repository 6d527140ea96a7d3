package agent_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/agent"
	"github.com/vigil-hips/vigil/internal/agent/agenttest"
	"github.com/vigil-hips/vigil/internal/sensor"
	"github.com/vigil-hips/vigil/internal/store"
)

func testConfig(t *testing.T) agent.Config {
	t.Helper()
	dir := t.TempDir()
	cfg := agent.DefaultConfig()
	cfg.StateDir = filepath.Join(dir, "state")
	cfg.Socket = filepath.Join(dir, "run", "vigil.sock")
	cfg.JSONLPath = filepath.Join(dir, "log", "events.jsonl")
	// The integrity watch reads the real kernel; its tests turn it on.
	cfg.IntegrityInterval = 0
	return cfg
}

var testInfo = sensor.Info{Backend: sensor.BackendTracepoint, Hooks: []string{"tp_btf/sched_process_exec"}}

type running struct {
	cfg    agent.Config
	sensor *agenttest.Sensor
	cancel context.CancelFunc
	done   chan error
	client vigilv1.AgentClient
}

// start runs the agent with a fake sensor and waits until its sensors are
// attached.
func start(t *testing.T, cfg agent.Config) *running {
	t.Helper()
	return startDeps(t, cfg, func(*agent.Deps) {})
}

// startDeps is start with the agent's collaborators adjusted by set.
func startDeps(t *testing.T, cfg agent.Config, set func(*agent.Deps)) *running {
	t.Helper()
	r := &running{cfg: cfg, sensor: agenttest.New(testInfo), done: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	deps := agent.Deps{
		NewSensor: func() (sensor.Sensor, error) { return r.sensor, nil },
		Kernel: func() agent.Kernel {
			return agent.Kernel{Release: "6.18.0-test", Features: []*vigilv1.Feature{{Name: "tp_btf", Available: true}}}
		},
		Version: "test",
	}
	set(&deps)
	go func() {
		r.done <- agent.Run(ctx, cfg, deps)
	}()
	// Connect once the socket exists: a failed first connection would
	// make the client back off for a second.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(cfg.Socket); err == nil {
			break
		}
		select {
		case err := <-r.done:
			t.Fatalf("agent stopped while starting: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("agent socket did not appear")
		}
	}
	conn, err := grpc.NewClient("unix://"+cfg.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		r.stop(t)
	})
	r.client = vigilv1.NewAgentClient(conn)
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := r.client.Status(context.Background(), &vigilv1.StatusRequest{})
		if err == nil && st.GetSensorsAttached() {
			return r
		}
		select {
		case err := <-r.done:
			t.Fatalf("agent stopped while starting: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent not ready: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop stops the agent and returns Run's error; later calls return nil.
func (r *running) stop(t *testing.T) error {
	t.Helper()
	if r.cancel == nil {
		return nil
	}
	r.cancel()
	r.cancel = nil
	select {
	case err := <-r.done:
		return err
	case <-time.After(15 * time.Second):
		t.Fatal("agent did not stop")
		return nil
	}
}

func exec(seq uint64, pid uint32, argv ...string) *vigilv1.Event {
	return &vigilv1.Event{
		Seq: seq, Kind: "exec", Backend: "tracepoint", Time: timestamppb.Now(),
		Process: &vigilv1.Process{Pid: pid, Exe: "/usr/bin/true"},
		Detail:  &vigilv1.Event_Exec{Exec: &vigilv1.Exec{Argv: argv}},
	}
}

func TestConfigValidate(t *testing.T) {
	ok := agent.DefaultConfig()
	if err := ok.Validate(); err != nil {
		t.Fatalf("default config: %v", err)
	}
	tests := []struct {
		name   string
		modify func(*agent.Config)
		want   string
	}{
		{"relative state dir", func(c *agent.Config) { c.StateDir = "state" }, "state dir"},
		{"no socket", func(c *agent.Config) { c.Socket = "" }, "socket: must be set"},
		{"long socket", func(c *agent.Config) { c.Socket = "/" + strings.Repeat("s", 120) }, "limit of a unix socket path"},
		{"negative age", func(c *agent.Config) { c.Retention.MaxAge = -time.Hour }, "max age"},
		{"negative rows", func(c *agent.Config) { c.Retention.MaxRows = -1 }, "max rows"},
		{"tiny prune interval", func(c *agent.Config) { c.PruneInterval = time.Millisecond }, "prune interval"},
		{"relative jsonl", func(c *agent.Config) { c.JSONLPath = "x.jsonl" }, "jsonl path"},
		{"bad metrics addr", func(c *agent.Config) { c.MetricsAddr = "9090" }, "metrics address"},
		{"bad backend", func(c *agent.Config) { c.Backend = "kprobe" }, `backend "kprobe"`},
		{"ringbuf not power of two", func(c *agent.Config) { c.RingBufBytes = 3 * 4096 }, "ring buffer size"},
		{"ringbuf below page", func(c *agent.Config) { c.RingBufBytes = 1024 }, "ring buffer size"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := agent.DefaultConfig()
			tt.modify(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate() = %v, want an error containing %q", err, tt.want)
			}
		})
	}
	// No retention bound: no prune interval needed.
	c := agent.DefaultConfig()
	c.Retention, c.PruneInterval, c.RingBufBytes = store.Retention{}, 0, 1<<20
	if err := c.Validate(); err != nil {
		t.Fatalf("no retention: %v", err)
	}
}

func TestRunStoresEverythingAndFlushesOnStop(t *testing.T) {
	cfg := testConfig(t)
	r := start(t, cfg)
	st, err := r.client.Status(context.Background(), &vigilv1.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetVersion() != "test" || st.GetKernelRelease() != "6.18.0-test" || st.GetBackend() != "tracepoint" ||
		len(st.GetHooks()) != 1 || len(st.GetFeatures()) != 2 || st.GetAgentPid() != uint32(os.Getpid()) {
		t.Fatalf("status = %v", st)
	}

	const n = 2000 // several batches; the last ones are still in flight at stop
	for i := range n {
		if !r.sensor.Emit(exec(uint64(i+1), 42, "true", "\xff\xfe")) {
			t.Fatal("sensor stopped")
		}
	}
	if err := r.stop(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if !r.sensor.Closed() {
		t.Error("sensor not closed")
	}
	if _, err := os.Lstat(cfg.Socket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind: %v", err)
	}

	s, err := store.Open(context.Background(), filepath.Join(cfg.StateDir, "events.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	evs, err := s.Query(context.Background(), store.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != n {
		t.Fatalf("stored %d events, want %d", len(evs), n)
	}
	for i, ev := range evs {
		if ev.GetId() != uint64(i+1) || ev.GetSeq() != uint64(i+1) {
			t.Fatalf("event %d: id %d seq %d", i, ev.GetId(), ev.GetSeq())
		}
	}
	// Invalid UTF-8 from the kernel was replaced, not a reason to drop.
	if got := evs[0].GetExec().GetArgv()[1]; got != "\uFFFD" && got != "\uFFFD\uFFFD" {
		t.Errorf("argv[1] = %q, want replacement characters", got)
	}

	f, err := os.Open(cfg.JSONLPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	lines := 0
	for sc.Scan() {
		var ev vigilv1.Event
		if err := protojson.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("jsonl line %d: %v", lines+1, err)
		}
		lines++
		if ev.GetId() != uint64(lines) {
			t.Fatalf("jsonl line %d: id %d", lines, ev.GetId())
		}
	}
	if lines != n {
		t.Fatalf("jsonl has %d lines, want %d", lines, n)
	}
}

func TestRunRefusesASecondAgent(t *testing.T) {
	cfg := testConfig(t)
	start(t, cfg)

	// Same state dir.
	err := agent.Run(context.Background(), cfg, agent.Deps{
		NewSensor: func() (sensor.Sensor, error) { return agenttest.New(testInfo), nil },
	})
	if err == nil || !strings.Contains(err.Error(), "is already running with state directory") ||
		!strings.Contains(err.Error(), "pid") {
		t.Fatalf("second agent, same state dir: %v", err)
	}

	// Another state dir, same socket.
	other := cfg
	other.StateDir = filepath.Join(t.TempDir(), "state")
	other.JSONLPath = ""
	err = agent.Run(context.Background(), other, agent.Deps{
		NewSensor: func() (sensor.Sensor, error) { return agenttest.New(testInfo), nil },
	})
	if err == nil || !strings.Contains(err.Error(), "another agent is already listening") {
		t.Fatalf("second agent, same socket: %v", err)
	}
}

func TestRunRemovesStaleSocket(t *testing.T) {
	cfg := testConfig(t)
	os.MkdirAll(filepath.Dir(cfg.Socket), 0o700)
	ln, err := net.Listen("unix", cfg.Socket)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	r := start(t, cfg)
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
}

func TestRunSensorFailures(t *testing.T) {
	t.Run("constructor", func(t *testing.T) {
		cfg := testConfig(t)
		err := agent.Run(context.Background(), cfg, agent.Deps{
			NewSensor: func() (sensor.Sensor, error) {
				return nil, errors.New("bpf sensor: " + sensor.ErrNotSupported.Error())
			},
		})
		if err == nil || !strings.Contains(err.Error(), "sensor: bpf sensor") {
			t.Fatalf("Run = %v", err)
		}
		if _, err := os.Lstat(cfg.Socket); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket left behind: %v", err)
		}
	})
	t.Run("stream ends", func(t *testing.T) {
		cfg := testConfig(t)
		r := start(t, cfg)
		r.sensor.Emit(exec(1, 1, "x"))
		r.sensor.Fail()
		select {
		case err := <-r.done:
			r.cancel()
			r.cancel = nil
			if err == nil || !strings.Contains(err.Error(), "sensor stopped delivering events") {
				t.Fatalf("Run = %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("agent kept running after its sensor failed")
		}
	})
	t.Run("bad config", func(t *testing.T) {
		cfg := testConfig(t)
		cfg.Backend = "nope"
		err := agent.Run(context.Background(), cfg, agent.Deps{
			NewSensor: func() (sensor.Sensor, error) { return agenttest.New(testInfo), nil },
		})
		if err == nil || !strings.Contains(err.Error(), "agent config") {
			t.Fatalf("Run = %v", err)
		}
	})
}

func TestRunPrunes(t *testing.T) {
	cfg := testConfig(t)
	cfg.Retention = store.Retention{MaxRows: 5}
	cfg.PruneInterval = time.Second
	r := start(t, cfg)
	for i := range 20 {
		r.sensor.Emit(exec(uint64(i+1), 1, "x"))
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		s, err := r.client.Events(context.Background(), &vigilv1.EventsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		var ids []uint64
		for {
			ev, err := s.Recv()
			if err != nil {
				break
			}
			ids = append(ids, ev.GetId())
		}
		if len(ids) == 5 && ids[0] == 16 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("store not pruned to 5 rows: ids %v", ids)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestRunNotifiesSystemd(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	r := start(t, testConfig(t))
	read := func() string {
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 256)
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("no notification: %v", err)
		}
		return string(buf[:n])
	}
	if got := read(); got != "READY=1" {
		t.Fatalf("first notification %q, want READY=1", got)
	}
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	if got := read(); got != "STOPPING=1" {
		t.Fatalf("notification at stop %q, want STOPPING=1", got)
	}
}

// TestAgentOCSFFile: with --ocsf-file every event of a kind OCSF has a
// class for is appended as one OCSF object a line, with the host's id;
// kinds without a class are left out.
func TestAgentOCSFFile(t *testing.T) {
	cfg := testConfig(t)
	cfg.OCSFPath = filepath.Join(t.TempDir(), "ocsf.jsonl")
	cfg.HostIDFile = filepath.Join(t.TempDir(), "machine-id")
	marker := fmt.Sprintf("host-%d", time.Now().UnixNano())
	os.WriteFile(cfg.HostIDFile, []byte(marker+"\n"), 0o644)
	r := start(t, cfg)
	const n = 50
	for i := range n {
		r.sensor.Emit(exec(uint64(2*i+1), 42, "true", marker))
		r.sensor.Emit(&vigilv1.Event{Seq: uint64(2*i + 2), Kind: "fork", Time: timestamppb.Now(), Process: &vigilv1.Process{Pid: 42},
			Detail: &vigilv1.Event_Fork{Fork: &vigilv1.Fork{}}})
	}
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(cfg.OCSFPath)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != n {
		t.Fatalf("%d OCSF lines, want %d (the forks left out)", len(lines), n)
	}
	for i, l := range lines {
		var m struct {
			ClassUID int `json:"class_uid"`
			TypeUID  int `json:"type_uid"`
			Device   struct {
				UID string `json:"uid"`
			} `json:"device"`
			Process struct {
				CmdLine string `json:"cmd_line"`
			} `json:"process"`
		}
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("line %d: %v", i+1, err)
		}
		if m.ClassUID != 1007 || m.TypeUID != 100701 || m.Device.UID != marker || m.Process.CmdLine != "true "+marker {
			t.Fatalf("line %d: %s", i+1, l)
		}
	}
}
