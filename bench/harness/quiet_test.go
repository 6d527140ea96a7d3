package harness

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestParseSystemBusy(t *testing.T) {
	// user nice system idle iowait irq softirq steal guest guest_nice
	stat := "cpu  100 5 50 9000 300 7 8 10 40 2\ncpu0 50 2 25 4500 150 3 4 5 20 1\n"
	got, err := parseSystemBusy(stat)
	if err != nil {
		t.Fatal(err)
	}
	// 100+5+50+7+8+10 ticks; idle, iowait and guest (inside user) left out.
	if want := 180 * time.Second / clockTicks; got != want {
		t.Errorf("busy = %v, want %v", got, want)
	}
	for _, bad := range []string{"", "intr 1 2 3\n", "cpu 1 2 x 4 5\n"} {
		if _, err := parseSystemBusy(bad); err == nil {
			t.Errorf("parseSystemBusy(%q): no error", bad)
		}
	}
}

func TestWaitIdle(t *testing.T) {
	ctx := context.Background()
	const window = 20 * time.Millisecond
	// Busy (a full CPU) for the first three windows, then idle.
	calls := 0
	var total time.Duration
	busyThenIdle := func() (time.Duration, error) {
		calls++
		if calls <= 4 {
			total += window
		}
		return total, nil
	}
	waited, quiet, err := waitIdle(ctx, busyThenIdle, window, 0.02, 10*time.Second)
	if err != nil || !quiet {
		t.Fatalf("quiet=%v err=%v, want quiet", quiet, err)
	}
	if calls != 5 || waited < 4*window {
		t.Errorf("returned after %d reads and %v; want the first quiet window, the 4th", calls, waited)
	}

	// Never quiet: gives up at the limit.
	var always time.Duration
	busy := func() (time.Duration, error) { always += window; return always, nil }
	waited, quiet, err = waitIdle(ctx, busy, window, 0.02, 5*window)
	if err != nil || quiet {
		t.Fatalf("quiet=%v err=%v, want busy", quiet, err)
	}
	if waited < 5*window || waited > 5*time.Second {
		t.Errorf("waited %v, want about the limit %v", waited, 5*window)
	}

	// An unreadable counter is an error, not quiet.
	bad := errors.New("no stat")
	if _, quiet, err := waitIdle(ctx, func() (time.Duration, error) { return 0, bad }, window, 0.02, time.Second); !errors.Is(err, bad) || quiet {
		t.Errorf("quiet=%v err=%v, want the counter's error", quiet, err)
	}
}
