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

	natsserver "github.com/nats-io/nats-server/v2/server"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	fleetv1 "github.com/vigil-hips/vigil/api/vigil/fleet/v1"
	"github.com/vigil-hips/vigil/bench"
	"github.com/vigil-hips/vigil/internal/fleet/fleetload"
	"github.com/vigil-hips/vigil/internal/testutil/pgtest"
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

// fleetDeployment is a server set-up: how many `vigil server` replicas,
// and what they need (setup returns their extra flags and what undoes it).
type fleetDeployment struct {
	Name     string
	Replicas int
	Setup    func(ctx context.Context, dir string) (flags []string, cleanup func(), err error)
}

// FleetDeployments are the set-ups the phase runs.
var FleetDeployments = []fleetDeployment{
	{"embedded", 1, nil},
	{"embedded+stream", 1, func(context.Context, string) ([]string, func(), error) {
		return []string{"--stream", "embedded"}, func() {}, nil
	}},
	{"scale-out (2 replicas, PostgreSQL + NATS)", 2, scaleOutSetup},
}

// scaleOutSetup runs a private PostgreSQL cluster (Debian's package, as
// the user nobody, on a unix socket; internal/testutil/pgtest) and a NATS
// JetStream server in the bench's process on loopback.
func scaleOutSetup(ctx context.Context, dir string) ([]string, func(), error) {
	pg, err := pgtest.StartCluster(true)
	if err != nil {
		return nil, nil, err
	}
	url, err := pg.NewDB("vigil_fleet")
	if err != nil {
		pg.Stop()
		return nil, nil, err
	}
	ns, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: -1, JetStream: true,
		StoreDir: filepath.Join(dir, "nats"), NoSigs: true, NoLog: true})
	if err != nil {
		pg.Stop()
		return nil, nil, err
	}
	ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		pg.Stop()
		return nil, nil, fmt.Errorf("NATS not ready within 30 s")
	}
	return []string{"--database", url, "--stream", ns.ClientURL()}, func() {
		ns.Shutdown()
		ns.WaitForShutdown()
		pg.Stop()
	}, nil
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
			run := e.fleetRun(ctx, d, load)
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

// fleetServer is one `vigil server` replica of a run.
type fleetServer struct {
	addr, adminSock, state string
	cmd                    *exec.Cmd
	log                    bytes.Buffer
	exited                 chan struct{}
}

func (s *fleetServer) stop() {
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(20 * time.Second):
		s.cmd.Process.Kill()
		<-s.exited
	}
}

func (e *Env) startFleetServer(ctx context.Context, dir string, args []string) (*fleetServer, error) {
	addr, err := freeLoopbackPort()
	if err != nil {
		return nil, err
	}
	s := &fleetServer{addr: addr, adminSock: filepath.Join(dir, "admin.sock"), state: filepath.Join(dir, "state"), exited: make(chan struct{})}
	s.cmd = exec.Command(e.Vigil, append([]string{"server", "--listen", addr, "--state-dir", s.state, "--admin-socket", s.adminSock,
		"--log-level", "warn"}, args...)...)
	s.cmd.Stdout, s.cmd.Stderr = &s.log, &s.log
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { s.cmd.Wait(); close(s.exited) }()
	conn, err := grpc.NewClient("unix://"+s.adminSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		s.stop()
		return nil, err
	}
	defer conn.Close()
	admin := fleetv1.NewFleetAdminClient(conn)
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline) && ctx.Err() == nil && !isDone(s.exited); time.Sleep(200 * time.Millisecond) {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := admin.ListHosts(cctx, &fleetv1.ListHostsRequest{})
		cancel()
		if err == nil {
			return s, nil
		}
	}
	s.stop()
	return nil, fmt.Errorf("vigil server did not come up: %s", shorten(s.log.String(), 500))
}

func (e *Env) fleetRun(ctx context.Context, d fleetDeployment, load FleetLoad) bench.FleetRun {
	run := bench.FleetRun{Deployment: d.Name, Hosts: load.Hosts, EventsPerHost: load.EventsPerHost,
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
	args := []string{"--signing-key", key + ".key", "--enroll-secret-file", secretFile}
	if d.Setup != nil {
		flags, cleanup, err := d.Setup(ctx, dir)
		if err != nil {
			return fail(err)
		}
		defer cleanup()
		args = append(args, flags...)
	}
	var servers []*fleetServer
	defer func() {
		for _, s := range servers {
			s.stop()
		}
	}()
	for i := range d.Replicas {
		rdir := filepath.Join(dir, fmt.Sprintf("replica-%d", i))
		if i > 0 { // replicas share the first one's CA
			if err := os.MkdirAll(filepath.Join(rdir, "state"), 0o700); err != nil {
				return fail(err)
			}
			for _, f := range []string{"ca.pem", "ca.key"} {
				b, err := os.ReadFile(filepath.Join(servers[0].state, f))
				if err != nil {
					return fail(err)
				}
				if err := os.WriteFile(filepath.Join(rdir, "state", f), b, 0o600); err != nil {
					return fail(err)
				}
			}
		} else if err := os.MkdirAll(rdir, 0o700); err != nil {
			return fail(err)
		}
		s, err := e.startFleetServer(ctx, rdir, args)
		if err != nil {
			return fail(err)
		}
		servers = append(servers, s)
	}
	conn, err := grpc.NewClient("unix://"+servers[0].adminSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fail(err)
	}
	defer conn.Close()
	var addrs []string
	for _, s := range servers {
		addrs = append(addrs, s.addr)
	}
	cpu := func() (t time.Duration) {
		for _, s := range servers {
			c, _ := procCPU(s.cmd.Process.Pid)
			t += c
		}
		return t
	}
	cpu0 := cpu()
	t0 := time.Now()
	res, err := fleetload.Run(ctx, fleetload.Config{Servers: addrs, CAFile: filepath.Join(servers[0].state, "ca.pem"),
		SecretFile: secretFile, Admin: fleetv1.NewFleetAdminClient(conn), Hosts: load.Hosts, EventsPerSec: load.EventsPerHost,
		Duration: load.Duration})
	if wall := time.Since(t0); wall > 0 {
		run.ServerCPU = 100 * float64(cpu()-cpu0) / float64(wall)
	}
	for _, s := range servers {
		if kb, err := statusKB(s.cmd.Process.Pid, "VmHWM"); err == nil {
			run.ServerHWMMiB = max(run.ServerHWMMiB, float64(kb)/1024)
		}
	}
	if res != nil {
		run.Seconds, run.Enrolled, run.EnrollPerSec = res.Seconds, res.Enrolled, res.EnrollPerSec
		run.AckedPerSec, run.EventsSent, run.EventsAcked, run.Unsent = res.AckedPerSec, res.EventsSent, res.EventsAcked, res.Unsent
		run.UploadErrors, run.UploadP50ms, run.UploadP99ms = res.UploadErrors, res.UploadP50ms, res.UploadP99ms
		run.Stored, run.Lost, run.ServerLost, run.DrainSeconds, run.WatchStreams = res.Stored, res.Lost, res.ServerLost, res.DrainSeconds, res.WatchStreams
		run.Pending, run.StoredPerSec = res.Pending, res.StoredPerSec
		if len(res.Errors) > 0 {
			e.Log.Warn("fleet load errors", "deployment", d.Name, "errors", res.Errors)
		}
	}
	if err != nil {
		return fail(err)
	}
	for _, s := range servers {
		if isDone(s.exited) {
			return fail(fmt.Errorf("vigil server exited during the run: %s", shorten(s.log.String(), 500)))
		}
	}
	return run
}
