package harness

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/vigil-hips/vigil/bench"
	fleetv1 "github.com/vigil-hips/vigil/api/vigil/fleet/v1"
	"github.com/vigil-hips/vigil/internal/fleet/fleetload"
)

// The fleet phase (issue 9): simulated agents on loopback against `vigil
// server`, one fresh server per deployment and load. Nothing outside the
// bench's work directory is touched; the server listens on loopback and
// dies with the bench (Pdeathsig).

// FleetLoad is one load step.
type FleetLoad struct {
	Hosts, EventsPerHost int
	Duration             time.Duration
}

// FleetDeployments are the server set-ups the phase runs: extra flags of
// `vigil server`.
var FleetDeployments = []struct {
	Name  string
	Flags []string
}{
	{"embedded", nil},
	{"embedded+stream", []string{"--stream", "embedded"}},
}

// fleetLoads: the target (1,000 hosts × 10 events/s) in both modes; the
// full run adds a step on either side of it.
func fleetLoads(quick bool) []FleetLoad {
	if quick {
		return []FleetLoad{{1000, 10, 10 * time.Second}}
	}
	return []FleetLoad{{250, 10, 30 * time.Second}, {1000, 10, 30 * time.Second}, {2000, 10, 30 * time.Second}}
}

func (e *Env) runFleet(ctx context.Context, quick bool) *bench.Fleet {
	f := &bench.Fleet{}
	for _, load := range fleetLoads(quick) {
		for _, d := range FleetDeployments {
			if ctx.Err() != nil {
				return f
			}
			e.Log.Info("fleet", "deployment", d.Name, "hosts", load.Hosts, "events_per_host", load.EventsPerHost)
			run := e.fleetRun(ctx, d.Name, d.Flags, load)
			if run.Error != "" {
				e.errorf("fleet %s %d hosts: %s", d.Name, load.Hosts, run.Error)
			}
			f.Runs = append(f.Runs, run)
		}
	}
	return f
}

func freeLoopbackPort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func (e *Env) fleetRun(ctx context.Context, name string, flags []string, load FleetLoad) bench.FleetRun {
	run := bench.FleetRun{Deployment: name, Hosts: load.Hosts, EventsPerHost: load.EventsPerHost,
		GoalPerSec: float64(load.Hosts * load.EventsPerHost)}
	fail := func(err error) bench.FleetRun { run.Error = shorten(err.Error(), 300); return run }
	dir, err := os.MkdirTemp(e.Work, "fleet-")
	if err != nil {
		return fail(err)
	}
	key := filepath.Join(dir, "admin")
	if out, err := exec.CommandContext(ctx, e.Vigil, "keys", "generate", "--out", key).CombinedOutput(); err != nil {
		return fail(fmt.Errorf("keys generate: %v: %s", err, out))
	}
	b := make([]byte, 24)
	rand.Read(b)
	secretFile, err := fleetload.WriteSecret(dir, hex.EncodeToString(b))
	if err != nil {
		return fail(err)
	}
	addr, err := freeLoopbackPort()
	if err != nil {
		return fail(err)
	}
	state, adminSock := filepath.Join(dir, "state"), filepath.Join(dir, "admin.sock")
	var log bytes.Buffer
	cmd := exec.Command(e.Vigil, append([]string{"server", "--listen", addr, "--state-dir", state, "--admin-socket", adminSock,
		"--signing-key", key + ".key", "--enroll-secret-file", secretFile, "--log-level", "warn"}, flags...)...)
	cmd.Stdout, cmd.Stderr = &log, &log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fail(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	}()
	conn, err := grpc.NewClient("unix://"+adminSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fail(err)
	}
	defer conn.Close()
	admin := fleetv1.NewFleetAdminClient(conn)
	up := false
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline) && ctx.Err() == nil; time.Sleep(200 * time.Millisecond) {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := admin.ListHosts(cctx, &fleetv1.ListHostsRequest{})
		cancel()
		if err == nil {
			up = true
			break
		}
		if isDone(exited) {
			break
		}
	}
	if !up {
		return fail(fmt.Errorf("vigil server did not come up: %s", shorten(log.String(), 500)))
	}
	pid := cmd.Process.Pid
	cpu0, _ := procCPU(pid)
	t0 := time.Now()
	res, err := fleetload.Run(ctx, fleetload.Config{Servers: []string{addr}, CAFile: filepath.Join(state, "ca.pem"),
		SecretFile: secretFile, Admin: admin, Hosts: load.Hosts, EventsPerSec: load.EventsPerHost, Duration: load.Duration})
	cpu1, _ := procCPU(pid)
	if wall := time.Since(t0); wall > 0 {
		run.ServerCPU = 100 * float64(cpu1-cpu0) / float64(wall)
	}
	if kb, err := statusKB(pid, "VmHWM"); err == nil {
		run.ServerHWMMiB = float64(kb) / 1024
	}
	if res != nil {
		run.Seconds, run.Enrolled, run.EnrollPerSec = res.Seconds, res.Enrolled, res.EnrollPerSec
		run.AckedPerSec, run.EventsSent, run.EventsAcked, run.Unsent = res.AckedPerSec, res.EventsSent, res.EventsAcked, res.Unsent
		run.UploadErrors, run.UploadP50ms, run.UploadP99ms = res.UploadErrors, res.UploadP50ms, res.UploadP99ms
		run.Stored, run.Lost, run.ServerLost, run.DrainSeconds, run.WatchStreams = res.Stored, res.Lost, res.ServerLost, res.DrainSeconds, res.WatchStreams
		if len(res.Errors) > 0 {
			e.Log.Warn("fleet load errors", "deployment", name, "errors", res.Errors)
		}
	}
	if err != nil {
		return fail(err)
	}
	if isDone(exited) {
		return fail(fmt.Errorf("vigil server exited during the run: %s", shorten(log.String(), 500)))
	}
	return run
}
