package syncbuf

import (
	"os/exec"
	"strings"
	"testing"
	"time"
)

// A process writes while the test reads: run with -race, a plain
// bytes.Buffer here is reported as a data race.
func TestReadWhileAProcessWrites(t *testing.T) {
	var b Buffer
	cmd := exec.Command("sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do echo line $i; sleep 0.01; done; echo done")
	cmd.Stdout, cmd.Stderr = &b, &b
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(b.String(), "done") {
		if time.Now().After(deadline) {
			t.Fatalf("never saw the end: %q", b.String())
		}
		time.Sleep(time.Millisecond)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if got := strings.Count(b.String(), "line "); got != 10 {
		t.Errorf("%d lines in %q, want 10", got, b.String())
	}
}
