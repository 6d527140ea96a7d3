package harness

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/vigil-hips/vigil/bench"
)

// TestMain lets the test binary play `vigil-bench echo-peer` for
// TestPingPong (pingPong starts its own executable).
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "echo-peer" {
		if err := EchoPeer(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestPingPong: every round trip to the echo peer is timed, and the peer
// exits when the socket closes (pingPong waits for it).
func TestPingPong(t *testing.T) {
	lat, err := pingPong(context.Background(), 1000, 0.2)
	if err != nil {
		t.Fatal(err)
	}
	if len(lat) != 200 {
		t.Fatalf("%d round trips timed, want 200", len(lat))
	}
	for i, v := range lat {
		if v <= 0 || v > 1e6 {
			t.Fatalf("round trip %d: %v µs", i, v)
		}
	}
	l := bench.NewLatency(lat)
	t.Logf("p50 %.0f µs, p99 %.0f µs", l.P50us, l.P99us)
}
