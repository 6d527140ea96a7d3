// Command vigil is the Vigil agent and its command line: `vigil agent` runs
// the agent; the other commands talk to it over its API socket.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/vigil-hips/vigil/internal/agent"
	"github.com/vigil-hips/vigil/internal/cli"
	"github.com/vigil-hips/vigil/internal/probe"
	"github.com/vigil-hips/vigil/internal/sensor"
	"github.com/vigil-hips/vigil/internal/sensor/bpfsensor"
	"github.com/vigil-hips/vigil/internal/tamper"
)

// version is set at link time: -ldflags "-X main.version=v1.2.3".
var version string

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := cli.New(cli.Options{
		Version: buildVersion(),
		NewSensor: func(cfg agent.Config, logger *slog.Logger) (sensor.Sensor, error) {
			return bpfsensor.New(bpfsensor.Config{
				Backend:       cfg.Backend,
				RingBufBytes:  cfg.RingBufBytes,
				FanotifyMarks: cfg.FanotifyMarks,
				PinDir:        cfg.SensorPinDir,
				Logger:        logger,
			})
		},
		NewGuard: func(c agent.GuardConfig, logger *slog.Logger) (agent.Guard, error) {
			return tamper.Start(ctx, tamper.Config{AgentPID: c.AgentPID, Files: c.Files, Dirs: c.Dirs,
				PinDir: tamper.DefaultPinDir, Logger: logger})
		},
		Kernel: func() agent.Kernel {
			r := probe.Run()
			return agent.Kernel{Release: r.KernelRelease, Features: r.Features, Guarantees: r.Guarantees, GuaranteesFor: r.GuaranteesFor}
		},
	})
	root.AddCommand(newDoctorCmd())
	root.AddCommand(newIntegrityCmd())
	if err := root.ExecuteContext(ctx); err != nil {
		if errors.Is(err, context.Canceled) {
			os.Exit(130)
		}
		fmt.Fprintf(os.Stderr, "vigil: %v\n", err)
		os.Exit(1)
	}
}

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}
