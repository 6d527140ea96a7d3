package bpfsensor

import (
	"context"
	"os"
	"testing"
	"time"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/probe"
	"github.com/vigil-hips/vigil/internal/sensor"
	"github.com/vigil-hips/vigil/internal/testutil"
	"github.com/vigil-hips/vigil/internal/testworkload"
)

func TestMain(m *testing.M) {
	testworkload.Main()
	os.Exit(m.Run())
}

func startSensor(t *testing.T, cfg Config) *Sensor {
	t.Helper()
	testutil.RequireRoot(t)
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := s.Start(ctx); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); s.Close() })
	return s.(*Sensor)
}

// TestSensorAutoBackend: auto picks lsm exactly where LSM programs load.
func TestSensorAutoBackend(t *testing.T) {
	s := startSensor(t, Config{})
	want := sensor.BackendTracepoint
	if probe.BPFLSM() == nil {
		want = sensor.BackendLSM
	}
	if s.Info().Backend != want {
		t.Fatalf("backend %s, want %s", s.Info().Backend, want)
	}
}

// TestTracepointBackend runs everywhere, the VM included.
func TestTracepointBackend(t *testing.T) {
	s := startSensor(t, Config{Backend: sensor.BackendTracepoint})
	seesWorkload(t, s, map[string]string{
		"image_load":     "tracepoint/syscalls/sys_enter_mmap",
		"mem_exec":       "tracepoint/syscalls/sys_enter_mprotect",
		"proc_mem_write": "tracepoint/syscalls/sys_exit_openat",
	})
}

// TestLSMBackend needs BPF LSM: it skips on the host and must run in the VM.
func TestLSMBackend(t *testing.T) {
	testutil.RequireBPFLSM(t)
	s := startSensor(t, Config{Backend: sensor.BackendLSM})
	seesWorkload(t, s, map[string]string{
		"image_load":     "lsm/mmap_file",
		"mem_exec":       "lsm/file_mprotect",
		"proc_mem_write": "lsm/file_open",
	})
}

// seesWorkload runs the workload and checks every event it must cause,
// and that the named events came from the named hooks.
func seesWorkload(t *testing.T, s *Sensor, hooks map[string]string) {
	t.Helper()
	exe, lib, err := testworkload.Prepare(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	r, err := testworkload.Run(lib)
	if err != nil {
		t.Fatal(err)
	}
	exps := r.Expect(exe, lib)
	deadline := time.After(20 * time.Second)
	for !testworkload.AllSeen(exps) {
		select {
		case ev, ok := <-s.Events():
			if !ok {
				t.Fatal("event stream closed")
			}
			testworkload.Match(exps, ev)
		case <-deadline:
			t.Fatalf("missing events: %v", testworkload.Missing(exps))
		}
	}
	for _, err := range testworkload.Check(exps) {
		t.Error(err)
	}
	for _, e := range exps {
		if want, ok := hooks[e.Name]; ok && e.Seen.Hook != want {
			t.Errorf("%s came from %s, want %s", e.Name, e.Seen.Hook, want)
		}
		if e.Seen.Backend != s.Info().Backend {
			t.Errorf("%s: backend %q, want %q", e.Name, e.Seen.Backend, s.Info().Backend)
		}
	}
}

// TestSensorReportsLoss overflows a one-page ring buffer and expects the
// loss to be counted and a gap record in the stream.
func TestSensorReportsLoss(t *testing.T) {
	s := startSensor(t, Config{RingBufBytes: os.Getpagesize()})
	if err := testworkload.Burst(20000); err != nil {
		t.Fatal(err)
	}
	var gap *vigilv1.Event
	var lastSeq uint64
	holes := 0
	// Read until the stream is quiet: the hole can show before or after the
	// gap record, which is emitted as soon as the loss counter moves.
	deadline := time.After(15 * time.Second)
	quiet := time.NewTimer(time.Second)
	for done := false; !done; {
		select {
		case ev := <-s.Events():
			quiet.Reset(time.Second)
			if ev.Kind == "gap" {
				if gap == nil {
					gap = ev
				}
				continue
			}
			if lastSeq != 0 && ev.Seq > lastSeq+1 {
				holes++
			}
			lastSeq = ev.Seq
		case <-quiet.C:
			done = true
		case <-deadline:
			done = true
		}
	}
	if gap == nil {
		t.Fatalf("no gap record; stats %+v", s.Stats())
	}
	g := gap.GetGap()
	if g.Lost == 0 || g.LostTotal < g.Lost {
		t.Fatalf("gap %v: want lost > 0", g)
	}
	if st := s.Stats(); st.Lost < g.Lost {
		t.Fatalf("stats lost %d < gap's %d", st.Lost, g.Lost)
	}
	if holes == 0 {
		t.Fatalf("no hole in the sequence numbers")
	}
	t.Logf("gap %v, %d sequence holes", g, holes)
}
