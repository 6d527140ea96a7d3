package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// The wakeup floor of the auth phase: what one request and its answer
// between two processes cost on this machine with no Vigil code in the
// way. Two Go processes (the same runtime as the agent and the example
// client, both on the netpoller) pass one byte back and forth over a unix
// socket pair at the phase's rate. The AUTH round trip cannot beat it:
// every request wakes the client and every answer wakes the agent. On a
// VM whose idle vCPUs halt (this CI machine: cpuidle haltpoll with
// guest_halt_poll_ns=0) each wakeup is a trip through the hypervisor, and
// that, not the filter path, is most of the round trip.

// EchoPeer is `vigil-bench echo-peer`: answer every byte read on fd 3
// with the same byte, until the other end closes.
func EchoPeer() error {
	f := os.NewFile(3, "echo")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("echo-peer: %w", err)
	}
	defer c.Close()
	b := make([]byte, 1)
	for {
		if _, err := io.ReadFull(c, b); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("echo-peer: %w", err)
		}
		if _, err := c.Write(b); err != nil {
			return fmt.Errorf("echo-peer: %w", err)
		}
	}
}

// pingPong times round trips to an echo peer (`vigil-bench echo-peer`,
// this binary) at rate per second for secs: µs each.
func pingPong(ctx context.Context, rate int, secs float64) ([]float64, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socketpair: %w", err)
	}
	mine, theirs := os.NewFile(uintptr(fds[0]), "ping"), os.NewFile(uintptr(fds[1]), "pong")
	self, err := os.Executable()
	if err != nil {
		mine.Close()
		theirs.Close()
		return nil, err
	}
	peer := exec.CommandContext(ctx, self, "echo-peer")
	peer.ExtraFiles = []*os.File{theirs}
	peer.Stderr = os.Stderr
	err = peer.Start()
	theirs.Close()
	if err != nil {
		mine.Close()
		return nil, fmt.Errorf("start echo peer: %w", err)
	}
	c, err := net.FileConn(mine)
	mine.Close()
	if err != nil {
		peer.Process.Kill()
		peer.Wait()
		return nil, err
	}
	n := int(float64(rate) * secs)
	lat := make([]float64, 0, n)
	b := []byte{'x'}
	tick := time.NewTicker(time.Second / time.Duration(rate))
	var loopErr error
	for range n {
		select {
		case <-ctx.Done():
			loopErr = ctx.Err()
		case <-tick.C:
		}
		if loopErr != nil {
			break
		}
		start := time.Now()
		if _, err := c.Write(b); err != nil {
			loopErr = err
			break
		}
		if _, err := io.ReadFull(c, b); err != nil {
			loopErr = err
			break
		}
		lat = append(lat, float64(time.Since(start).Nanoseconds())/1e3)
	}
	tick.Stop()
	c.Close() // the peer reads EOF and exits
	if err := peer.Wait(); err != nil && loopErr == nil {
		loopErr = fmt.Errorf("echo peer: %w", err)
	}
	if loopErr != nil {
		return nil, fmt.Errorf("ping-pong: %w", loopErr)
	}
	return lat, nil
}
