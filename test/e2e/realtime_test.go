package e2e

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vigil-hips/vigil/internal/sched"
	"github.com/vigil-hips/vigil/internal/testutil"
	"github.com/vigil-hips/vigil/internal/testworkload"
)

// threadPolicies counts a process's threads by scheduling policy; it
// fails on a real-time thread at another priority than sched.Priority.
func threadPolicies(t *testing.T, pid int) (rr, normal, other int) {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		tid, _ := strconv.Atoi(e.Name())
		p, prio, err := sched.Policy(tid)
		if errors.Is(err, unix.ESRCH) {
			continue // the thread ended
		}
		if err != nil {
			t.Fatalf("thread %d of %d: %v", tid, pid, err)
		}
		switch p {
		case unix.SCHED_RR:
			if prio != sched.Priority {
				t.Errorf("thread %d of %d: SCHED_RR %d, want %d", tid, pid, prio, sched.Priority)
			}
			rr++
		case unix.SCHED_NORMAL:
			normal++
		default:
			other++
		}
	}
	return rr, normal, other
}

// TestFilterRealtime: with `vigil agent --realtime` and a client run with
// -realtime (filterclient.Realtime), the agent's threads are SCHED_RR 1
// except the ones storing and decoding events (the ring buffer reader and
// the pipeline), the client's are all SCHED_RR 1, and decisions still
// work: the scanner's deny blocks an exec with EPERM, a clean file runs.
func TestFilterRealtime(t *testing.T) {
	if testutil.InVM() {
		// One emulated vCPU: real-time threads there would only slow the
		// suite; scheduling is the host's concern, and the fanotify path
		// is the same.
		t.Skip("host only: the VM has one emulated CPU")
	}
	scanner := exampleClient(t, "scanner")
	a, sock, mnt := filterSetup(t, []map[string]any{{"name": "scanner", "exe": scanner, "deadline_ms": 5000}}, "--realtime")
	mark := fmt.Sprintf("rt-%d-%d", time.Now().UnixNano(), os.Getpid())
	c, err := startClient(t, scanner, "-socket", sock, "-name", "scanner", "-altitude", "200",
		"-marker", mark, "-path-prefix", mnt, "-realtime")
	if err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	clean, _ := variant(t, exe, filepath.Join(mnt, "clean"))
	marked, _ := variant(t, exe, filepath.Join(mnt, "marked"), []byte(mark)...)
	if err := testworkload.Noop(clean); err != nil {
		t.Fatalf("exec of a clean file: %v\nagent log:\n%s", err, a.log)
	}
	if err := testworkload.Noop(marked); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("exec of a file the scanner denies: %v, want EPERM", err)
	}
	if v := a.filterVerdict(t, marked); !v.Refused || len(v.Clients) != 1 || v.Clients[0].Answer != "deny" {
		t.Fatalf("decision record for %s: %v", marked, v)
	}

	rr, normal, other := threadPolicies(t, a.cmd.Process.Pid)
	t.Logf("agent threads: %d SCHED_RR, %d normal, %d other", rr, normal, other)
	if rr == 0 || other != 0 {
		t.Errorf("agent --realtime: %d SCHED_RR threads, %d of other policies; want the decision path real-time", rr, other)
	}
	// The ring buffer reader and the pipeline each hold a normal thread.
	if normal < 2 {
		t.Errorf("agent --realtime: %d normal threads, want the reader's and the pipeline's (at least 2)", normal)
	}
	rr, normal, other = threadPolicies(t, c.cmd.Process.Pid)
	t.Logf("client threads: %d SCHED_RR, %d normal, %d other", rr, normal, other)
	if rr == 0 || normal != 0 || other != 0 {
		t.Errorf("client -realtime: %d SCHED_RR, %d normal, %d other threads; want all SCHED_RR", rr, normal, other)
	}
}
