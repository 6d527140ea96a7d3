package filter

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/pkg/filterclient"
)

// realClient serves a filter server on a unix socket and connects this
// process to it with the SDK, as the approved client "rt" (this test
// binary), answering with answer.
func realClient(tb testing.TB, deadline time.Duration, answer func(*vigilv1.Event) filterclient.Verdict) (*Server, *filterclient.Client) {
	tb.Helper()
	_, sha, err := identify(int32(os.Getpid()))
	if err != nil {
		tb.Fatal(err)
	}
	cfg := &Config{Clients: []ClientConfig{{Name: "rt", SHA256: hex.EncodeToString(sha[:]),
		DeadlineMS: int(deadline / time.Millisecond), MissMode: FailClosed, MaxMisses: 1 << 20}}}
	s := NewServer(Options{Config: cfg})
	sock := filepath.Join(tb.TempDir(), "filter.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		tb.Fatal(err)
	}
	go s.Serve(ln)
	tb.Cleanup(s.Shutdown)
	ctx, cancel := context.WithCancel(context.Background())
	tb.Cleanup(cancel)
	c, err := filterclient.Connect(ctx, filterclient.Options{Socket: sock, Name: "rt", Altitude: 7,
		Auth: &filterclient.Subscription{Kinds: []string{"exec", "open"}}, OnAuth: answer})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	go c.Run()
	return s, c
}

// The whole round trip through gRPC: request, the SDK's answer, reply.
func TestAuthorizeRoundTrip(t *testing.T) {
	s, c := realClient(t, 5*time.Second, func(ev *vigilv1.Event) filterclient.Verdict {
		p := filterclient.Path(ev)
		return filterclient.Verdict{Allow: !strings.Contains(p, "bad"), Cacheable: ev.Kind == "open", Reason: ev.Kind + " " + p}
	})
	d := s.Authorize(execEvent("/srv/bad"), "k")
	if d.Allow || len(d.Clients) != 1 || d.Clients[0].Answer != "deny" || d.Clients[0].Reason != "exec /srv/bad" {
		t.Fatalf("exec of a bad file: %+v", d)
	}
	d = s.Authorize(openEvent(1, "/bin/cat", "/srv/good"), "k")
	if !d.Allow || !d.Cacheable || d.Clients[0].Reason != "open /srv/good" {
		t.Fatalf("open of a good file: %+v", d)
	}
	// This process is the client: its own opens are not asked about.
	d = s.Authorize(openEvent(uint32(os.Getpid()), "/x", "/srv/bad"), "k2")
	if !d.Allow || len(d.Clients) != 0 {
		t.Fatalf("the client's own open: %+v", d)
	}
	// Ending the session unregisters the client.
	c.Close()
	for deadline := time.Now().Add(5 * time.Second); len(s.Clients()) > 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the client closed its session, still registered: %v", s.Clients())
		}
	}
}

// BenchmarkAuthorizeRoundTrip times one client's answer through gRPC
// (what the decision record's latency_us measures): p50 and p99 in µs.
func BenchmarkAuthorizeRoundTrip(b *testing.B) {
	s, _ := realClient(b, time.Second, func(*vigilv1.Event) filterclient.Verdict {
		return filterclient.Verdict{Allow: true}
	})
	ev := execEvent("/srv/x")
	ev.Process = &vigilv1.Process{Pid: 1, Exe: "/bin/sh", Ancestry: []*vigilv1.Ancestor{{Pid: 1, Exe: "/sbin/init"}}}
	lat := make([]float64, 0, b.N)
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		if d := s.Authorize(ev, ""); !d.Allow || d.Clients[0].Answer != "allow" {
			b.Fatalf("%+v", d)
		}
		lat = append(lat, float64(time.Since(start).Microseconds()))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(lat[len(lat)/2], "p50-µs")
	b.ReportMetric(lat[len(lat)*99/100], "p99-µs")
}

// BenchmarkAuthorizeRoundTripProcess is BenchmarkAuthorizeRoundTrip with
// the client in a process of its own (examples/clients/scanner -no-scan,
// built for the benchmark), back to back or, with VIGIL_BENCH_PACE=1ms,
// at most 1,000 times a second: the filter path's own latency between two
// processes, without the load of the execs the bench's auth phase drives.
func BenchmarkAuthorizeRoundTripProcess(b *testing.B) {
	dir := b.TempDir()
	bin := filepath.Join(dir, "scanner")
	build := exec.Command("go", "build", "-o", bin, "../../examples/clients/scanner")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		b.Skipf("go build the example client: %v\n%s", err, out)
	}
	content, err := os.ReadFile(bin)
	if err != nil {
		b.Fatal(err)
	}
	sha := sha256.Sum256(content)
	cfg := &Config{Clients: []ClientConfig{{Name: "rt", SHA256: hex.EncodeToString(sha[:]), DeadlineMS: 1000, MissMode: FailOpen, MaxMisses: 1 << 20}}}
	s := NewServer(Options{Config: cfg})
	sock := filepath.Join(dir, "filter.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	go s.Serve(ln)
	b.Cleanup(s.Shutdown)
	client := exec.Command(bin, "-socket", sock, "-name", "rt", "-altitude", "7", "-no-scan", "-no-cache")
	if err := client.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { client.Process.Kill(); client.Wait() })
	for deadline := time.Now().Add(30 * time.Second); len(s.Clients()) == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatal("the client did not connect")
		}
	}
	ev := execEvent("/srv/x")
	ev.Process = &vigilv1.Process{Pid: 1, Exe: "/bin/sh", Ancestry: []*vigilv1.Ancestor{{Pid: 1, Exe: "/sbin/init"}}}
	lat := make([]float64, 0, b.N)
	var tick <-chan time.Time // paced: VIGIL_BENCH_PACE=1ms
	if pace, err := time.ParseDuration(os.Getenv("VIGIL_BENCH_PACE")); err == nil {
		t := time.NewTicker(pace)
		defer t.Stop()
		tick = t.C
	}
	b.ResetTimer()
	for range b.N {
		if tick != nil {
			<-tick
		}
		d := s.Authorize(ev, "")
		if !d.Allow || d.Clients[0].Answer != "allow" {
			b.Fatalf("%+v", d)
		}
		lat = append(lat, float64(d.Clients[0].LatencyUs))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(lat[len(lat)/2], "p50-µs")
	b.ReportMetric(lat[len(lat)*99/100], "p99-µs")
}
