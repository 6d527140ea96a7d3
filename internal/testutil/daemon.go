package testutil

import (
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vigil-hips/vigil/internal/syncbuf"
)

// SyncBuffer is an io.Writer a process's output can go to while a test
// reads it.
type SyncBuffer = syncbuf.Buffer

// Daemon is a long-running process a test started (an agent, a server).
// Its output is kept in Log and shown when the test fails; it is stopped
// when the test ends.
type Daemon struct {
	Name string
	Cmd  *exec.Cmd
	Log  *SyncBuffer
	done chan struct{}
	err  error
	stop func()
}

// StartDaemon starts cmd, its output in the daemon's Log. At Stop, and
// when the test ends, the daemon is asked to stop by ask (nil: SIGTERM)
// and given grace to exit; then it is killed, which fails the test.
func StartDaemon(t testing.TB, name string, cmd *exec.Cmd, grace time.Duration, ask func()) *Daemon {
	t.Helper()
	d := &Daemon{Name: name, Cmd: cmd, Log: &SyncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = d.Log, d.Log
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() {
		d.err = cmd.Wait()
		close(d.done)
	}()
	if ask == nil {
		ask = func() { cmd.Process.Signal(syscall.SIGTERM) }
	}
	d.stop = sync.OnceFunc(func() {
		if d.Running() {
			ask()
			select {
			case <-d.done:
			case <-time.After(grace):
				t.Errorf("%s (pid %d) did not stop within %v: killed", name, cmd.Process.Pid, grace)
				cmd.Process.Kill()
				select {
				case <-d.done:
				case <-time.After(5 * time.Second):
					// A protected agent refuses even SIGKILL.
					t.Errorf("%s (pid %d) survived SIGKILL", name, cmd.Process.Pid)
				}
			}
		}
		if t.Failed() {
			t.Logf("%s log:\n%s", name, d.Log)
		}
	})
	t.Cleanup(d.stop)
	return d
}

// Stop stops the daemon as the test's end would, once.
func (d *Daemon) Stop() { d.stop() }

// Done is closed once the process has exited.
func (d *Daemon) Done() <-chan struct{} { return d.done }

// Err is the process's exit status once Done is closed.
func (d *Daemon) Err() error {
	<-d.done
	return d.err
}

// Running says whether the process has not exited yet.
func (d *Daemon) Running() bool {
	select {
	case <-d.done:
		return false
	default:
		return true
	}
}

// WaitExit waits up to timeout for the process to exit and says whether
// it did.
func (d *Daemon) WaitExit(timeout time.Duration) bool {
	select {
	case <-d.done:
		return true
	case <-time.After(timeout):
		return false
	}
}
