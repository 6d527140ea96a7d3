package metrics_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/vigil-hips/vigil/internal/metrics"
)

func TestServe(t *testing.T) {
	m := metrics.New()
	m.Events.WithLabelValues("exec").Add(3)
	m.EventsLost.Add(2)
	m.EventsStored.Add(3)
	m.SensorAttached.Set(1)

	ln, err := metrics.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Serve(ctx, ln) }()

	resp, err := http.Get("http://" + ln.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	for _, want := range []string{
		`vigil_events_total{kind="exec"} 3`,
		"vigil_events_lost_total 2",
		"vigil_events_stored_total 3",
		"vigil_store_errors_total 0",
		"vigil_sensor_attached 1",
		"go_goroutines ",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
}

func TestListenInUse(t *testing.T) {
	ln, err := metrics.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, err := metrics.Listen(ln.Addr().String()); err == nil || !strings.Contains(err.Error(), "metrics: listen on") {
		t.Fatalf("second Listen: %v, want a clear error", err)
	}
}
