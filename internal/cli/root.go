// Package cli is the vigil command line. Every command except `vigil agent`
// talks to a running agent only through the agent API (vigil.v1.Agent over
// the unix socket); the package imports no BPF code — the kernel-facing
// pieces are injected through Options by cmd/vigil.
package cli

import (
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/vigil-hips/vigil/internal/agent"
	"github.com/vigil-hips/vigil/internal/sensor"
)

// Options are what the binary injects into the commands.
type Options struct {
	// Version is this build's version.
	Version string
	// NewSensor creates the sensor `vigil agent` runs. Nil: `vigil agent`
	// fails with an error.
	NewSensor func(cfg agent.Config, logger *slog.Logger) (sensor.Sensor, error)
	// Kernel probes the running kernel for `vigil agent`. Optional.
	Kernel func() agent.Kernel
	// NewGuard starts tamper protection for `vigil agent`. Optional.
	NewGuard func(cfg agent.GuardConfig, logger *slog.Logger) (agent.Guard, error)
}

// globals are the persistent flags.
type globals struct {
	socket string
}

// New returns the root command. Build a new one for every execution (the
// flags keep their values).
func New(opts Options) *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "vigil",
		Short: "Vigil: host intrusion prevention on the kernel's BPF LSM, tracepoints and fanotify",
		// main prints the error once; usage is for --help.
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&g.socket, "socket", agent.DefaultSocket, "path of the agent's API socket")
	root.AddCommand(
		newAgentCmd(opts, g),
		newStatusCmd(g),
		newEventsCmd(g),
		newVersionCmd(opts, g),
		newPolicyCmd(g),
		newTrustCmd(), newKeysCmd(), newCatalogCmd(), newPendingCmd(g), newApproveCmd(g),
		newStopCmd(g),
		newAdminCmd(),
		newFilterCmd(),
		newServerCmd(opts),
		newFleetCmd(),
	)
	return root
}
