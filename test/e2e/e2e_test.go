// Package e2e runs the real vigil binary: the agent on this kernel, and
// the CLI against it. On the host it exercises the tracepoint backend; in
// the VM suite (BPF LSM on) the lsm backend.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/testutil"
	"github.com/vigil-hips/vigil/internal/testworkload"
)

func TestMain(m *testing.M) {
	testworkload.Main()
	os.Exit(m.Run())
}

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
)

// vigilBin returns the vigil binary under test: $VIGIL_BIN, the one on
// PATH in the VM, or one built from this tree.
func vigilBin(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("VIGIL_BIN"); p != "" {
		return p
	}
	if testutil.InVM() {
		p, err := exec.LookPath("vigil")
		if err != nil {
			t.Fatalf("vigil is not in the VM image: %v", err)
		}
		return p
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "vigil-e2e-bin")
		if err != nil {
			buildErr = err
			return
		}
		builtBin = filepath.Join(dir, "vigil")
		cmd := exec.Command("go", "build", "-o", builtBin, "../../cmd/vigil")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtBin
}

// agent is a running `vigil agent`.
type agent struct {
	t      *testing.T
	bin    string
	socket string
	log    *testutil.SyncBuffer
	cmd    *exec.Cmd
	daemon *testutil.Daemon
}

// stop stops the agent (SIGTERM) and waits for it; the test's cleanup
// does the same for an agent still running.
func (a *agent) stop(t *testing.T) { a.daemon.Stop() }

func startAgent(t *testing.T, extra ...string) *agent {
	t.Helper()
	testutil.RequireRoot(t)
	bin := vigilBin(t)
	dir, err := os.MkdirTemp("/tmp", "vigil-e2e")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	a := &agent{t: t, bin: bin, socket: filepath.Join(dir, "run", "vigil.sock")}
	args := append([]string{"agent", "--socket", a.socket, "--state-dir", filepath.Join(dir, "state"),
		"--jsonl", filepath.Join(dir, "events.jsonl")}, extra...)
	a.cmd = exec.Command(bin, args...)
	a.daemon = testutil.StartDaemon(t, "agent", a.cmd, 30*time.Second, nil)
	a.log = a.daemon.Log
	if out, err := a.vigil("status", "--wait", "150s"); err != nil {
		t.Fatalf("agent did not come up: %v\n%s\nagent log:\n%s", err, out, a.log)
	}
	return a
}

// vigil runs a CLI command against the agent.
func (a *agent) vigil(args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 180*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, a.bin, append(args, "--socket", a.socket)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return append(out, stderr.Bytes()...), fmt.Errorf("vigil %s: %w", strings.Join(args, " "), err)
	}
	return out, nil
}

// events returns the stored events, parsed from `vigil events -o json`.
func (a *agent) events(args ...string) []*vigilv1.Event {
	a.t.Helper()
	out, err := a.vigil(append([]string{"events", "-o", "json"}, args...)...)
	if err != nil {
		a.t.Fatalf("%v\n%s", err, out)
	}
	return parseEvents(a.t, out)
}

func parseEvents(t *testing.T, out []byte) []*vigilv1.Event {
	t.Helper()
	var evs []*vigilv1.Event
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if len(bytes.TrimSpace(sc.Bytes())) == 0 {
			continue
		}
		ev := &vigilv1.Event{}
		if err := protojson.Unmarshal(sc.Bytes(), ev); err != nil {
			t.Fatalf("vigil events -o json: line %q: %v", sc.Text(), err)
		}
		evs = append(evs, ev)
	}
	return evs
}

func (a *agent) status() *vigilv1.StatusResponse {
	a.t.Helper()
	out, err := a.vigil("status", "-o", "json")
	if err != nil {
		a.t.Fatalf("%v\n%s", err, out)
	}
	st := &vigilv1.StatusResponse{}
	if err := protojson.Unmarshal(out, st); err != nil {
		a.t.Fatalf("vigil status -o json: %v\n%s", err, out)
	}
	return st
}

// TestAgentRecordsWorkload: exec, shared library mapping, mprotect to
// PROT_EXEC, ptrace attach, /proc/PID/mem write and process_vm_writev
// each appear in `vigil events -o json` with path, inode, pid, parent and
// ancestry.
func TestAgentRecordsWorkload(t *testing.T) {
	a := startAgent(t)
	st := a.status()
	if !st.SensorsAttached || st.Backend == "" {
		t.Fatalf("status: sensors_attached=%v backend=%q", st.SensorsAttached, st.Backend)
	}
	if testutil.InVM() && st.Backend != "lsm" {
		t.Fatalf("backend %q in the VM, where BPF LSM is on: want lsm", st.Backend)
	}
	r, exps, err := testworkload.RunAndExpect(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		for _, ev := range a.events("--pid", fmt.Sprint(r.PID)) {
			testworkload.Match(exps, ev)
		}
		for _, ev := range a.events("--pid", fmt.Sprint(r.ExecPID)) {
			testworkload.Match(exps, ev)
		}
		if testworkload.AllSeen(exps) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("events never stored: %v", testworkload.Missing(exps))
		}
		time.Sleep(300 * time.Millisecond)
	}
	for _, err := range testworkload.Check(exps) {
		t.Error(err)
	}
	for _, e := range exps {
		if e.Seen.Backend != st.Backend || e.Seen.Seq == 0 {
			t.Errorf("%s: backend %q seq %d, want backend %q and a sequence number", e.Name, e.Seen.Backend, e.Seen.Seq, st.Backend)
		}
	}
}

// TestAgentReportsLoss overflows a one-page ring buffer: the loss is
// counted in status and a gap record is in the stream.
func TestAgentReportsLoss(t *testing.T) {
	a := startAgent(t, "--ringbuf-bytes", fmt.Sprint(os.Getpagesize()))
	if err := testworkload.Burst(20000); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for a.status().GetCounters().GetEventsLost() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no loss counted after overflowing the ring buffer: %v", a.status().GetCounters())
		}
		time.Sleep(200 * time.Millisecond)
	}
	var gaps []*vigilv1.Event
	for time.Now().Before(deadline) {
		if gaps = a.events("--kind", "gap"); len(gaps) > 0 {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if len(gaps) == 0 {
		t.Fatal("loss counted but no gap record in the stream")
	}
	var lost uint64
	for _, g := range gaps {
		if g.Kind != "gap" || g.GetGap().GetLost() == 0 {
			t.Fatalf("bad gap record: %v", g)
		}
		lost += g.GetGap().Lost
	}
	if total := a.status().GetCounters().GetEventsLost(); lost > total {
		t.Errorf("gap records say %d lost, status says %d", lost, total)
	}
}

// TestDoctor: BPF LSM is reported as it is, with what follows from it.
func TestDoctor(t *testing.T) {
	testutil.RequireRoot(t)
	out, err := exec.Command(vigilBin(t), "doctor", "-o", "json").Output()
	if err != nil {
		t.Fatalf("vigil doctor: %v\n%s", err, out)
	}
	d := &vigilv1.DoctorResponse{}
	if err := protojson.Unmarshal(out, d); err != nil {
		t.Fatalf("vigil doctor -o json: %v\n%s", err, out)
	}
	var lsm *vigilv1.Feature
	for _, f := range d.Features {
		if f.Name == "bpf_lsm" {
			lsm = f
		}
	}
	if lsm == nil {
		t.Fatalf("doctor reports no bpf_lsm feature: %v", d)
	}
	wantLSM := testutil.InVM() // the VM boots with lsm=...,bpf; the host refuses LSM programs
	if lsm.Available != wantLSM {
		t.Fatalf("bpf_lsm available=%v, want %v (%s)", lsm.Available, wantLSM, lsm.Detail)
	}
	var execControl *vigilv1.Guarantee
	for _, g := range d.Guarantees {
		if g.Control == "exec control" {
			execControl = g
		}
	}
	if execControl == nil {
		t.Fatalf("doctor has no guarantee for exec control: %v", d)
	}
	if wantLSM && (execControl.Level != "synchronous block" || !strings.Contains(execControl.Why, "lsm/")) {
		t.Errorf("exec control with BPF LSM: %v", execControl)
	}
	if !wantLSM && !strings.Contains(execControl.Why, "BPF LSM is not available") {
		t.Errorf("exec control without BPF LSM does not say why: %v", execControl)
	}
	human, err := exec.Command(vigilBin(t), "doctor").CombinedOutput()
	if err != nil {
		t.Fatalf("vigil doctor: %v\n%s", err, human)
	}
	if wantLSM != strings.Contains(string(human), "BPF LSM: active") {
		t.Errorf("human doctor output disagrees with JSON:\n%s", human)
	}
}
