package cli

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/spf13/cobra"

	"github.com/vigil-hips/vigil/internal/agent"
	"github.com/vigil-hips/vigil/internal/sensor"
)

func newAgentCmd(opts Options, g *globals) *cobra.Command {
	cfg := agent.DefaultConfig()
	maxAge := durationFlag(cfg.Retention.MaxAge)
	pruneEvery := durationFlag(cfg.PruneInterval)
	var logLevel, logFormat string
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the agent in the foreground",
		Long: `Run the agent in the foreground: attach the sensors, store their events,
and serve the API on the socket. Stops on SIGINT or SIGTERM.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.Socket = g.socket
			cfg.Retention.MaxAge = maxAge.get()
			cfg.PruneInterval = pruneEvery.get()
			if err := cfg.Validate(); err != nil {
				return err
			}
			logger, err := newLogger(cmd.ErrOrStderr(), logLevel, logFormat)
			if err != nil {
				return err
			}
			if opts.NewSensor == nil {
				return errors.New("this build has no sensor")
			}
			return agent.Run(cmd.Context(), cfg, agent.Deps{
				NewSensor: func() (sensor.Sensor, error) { return opts.NewSensor(cfg, logger) },
				Kernel:    opts.Kernel,
				Logger:    logger,
				Version:   opts.Version,
				NewGuard:  newGuard(opts, logger),
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.StateDir, "state-dir", cfg.StateDir, "directory of the event store, the policy in force and the agent lock")
	f.StringArrayVar(&cfg.PolicyPaths, "policy", nil, "enforce this policy file from the start; repeatable: the files' rules are merged in order, one of them may have a trust block (default: the last policy applied, if any)")
	f.StringVar(&cfg.SensorPinDir, "sensor-pin-dir", cfg.SensorPinDir, "with BPF LSM: pin the sensor's programs and maps here so enforcement outlives the agent (empty: do not pin)")
	f.StringVar(&cfg.FilterSocket, "filter-socket", "", "the filter API's unix socket (default: filter.sock next to --socket)")
	f.StringVar(&cfg.FilterClients, "filter-clients", agent.DefaultFilterClients, "the approved filter API clients, signed with the admin key (vigil filter sign)")
	f.StringArrayVar(&cfg.FanotifyMarks, "fanotify-mark", nil, "without BPF LSM: put the filesystem holding this path under exec control by fanotify (repeatable)")
	f.Var(maxAge, "retention-max-age", "prune events older than this (e.g. 7d, 12h; 0: no age limit)")
	f.Int64Var(&cfg.Retention.MaxRows, "retention-max-rows", cfg.Retention.MaxRows, "keep at most this many events (0: no limit)")
	f.Var(pruneEvery, "prune-interval", "how often to prune the event store")
	f.StringVar(&cfg.JSONLPath, "jsonl", "", "also append every event to this file, one JSON object a line")
	f.StringVar(&cfg.OCSFPath, "ocsf-file", "", "also append events as OCSF (process, module, memory, kernel extension and file system activity) to this file, one JSON object a line")
	f.StringVar(&cfg.MetricsAddr, "metrics-addr", "", "serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464)")
	f.StringVar(&cfg.Backend, "backend", cfg.Backend, "sensor backend: auto, lsm or tracepoint")
	f.IntVar(&cfg.RingBufBytes, "ringbuf-bytes", 0, "kernel ring buffer size in bytes, a power of two (0: the sensor's default)")
	f.DurationVar(&cfg.IntegrityInterval, "integrity-interval", cfg.IntegrityInterval, "run the kernel integrity checks this often, and after each BPF program load, module load or tracefs control write (0: off)")
	f.StringVar(&cfg.IntegrityBaseline, "integrity-baseline", "", "compare the kernel with this signed baseline (vigil integrity baseline); default: the state at agent start, held in memory")
	f.StringVar(&cfg.IntegrityPubKey, "integrity-pubkey", "", "admin public key (ed25519) that verifies --integrity-baseline")
	f.BoolVar(&cfg.Realtime, "realtime", false, "run the decision path (fanotify permission events, filter API round trips) at real-time priority, SCHED_RR 1; event storage stays at normal priority (see docs/filter-api.md)")
	f.BoolVar(&cfg.Protect, "protect", cfg.Protect, "protect the agent from root (needs BPF LSM and an admin key; see docs/tamper.md)")
	f.StringVar(&cfg.AdminKeyPath, "admin-key", "", "admin ed25519 public key that signs stop/apply-policy tokens (default "+agent.DefaultAdminKey+" if present)")
	f.StringVar(&cfg.HostIDFile, "host-id-file", cfg.HostIDFile, "file naming this host in admin tokens")
	f.StringVar(&cfg.FleetServer, "fleet-server", "", "join the fleet of this `vigil server` (host:port); see docs/fleet.md")
	f.StringVar(&cfg.FleetCA, "fleet-ca", "", "the fleet server's CA certificate (its state dir's ca.pem), pinned")
	f.StringVar(&cfg.FleetEnrollSecretFile, "fleet-enroll-secret-file", "", "file holding the enrollment secret (needed until the agent has enrolled)")
	f.StringSliceVar(&cfg.FleetTags, "fleet-tag", nil, "tag to ask for at enrollment (repeatable)")
	f.DurationVar(&cfg.FleetPoll, "fleet-poll", cfg.FleetPoll, "sync with the fleet server this often besides its push stream")
	f.StringSliceVar(&cfg.FleetUploadKinds, "fleet-upload-kinds", cfg.FleetUploadKinds, "event kinds uploaded to the fleet server besides blocked and would-be-blocked events")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn or error")
	f.StringVar(&logFormat, "log-format", "text", "log format: text or json")
	return cmd
}

func newGuard(opts Options, logger *slog.Logger) func(agent.GuardConfig) (agent.Guard, error) {
	if opts.NewGuard == nil {
		return nil
	}
	return func(c agent.GuardConfig) (agent.Guard, error) { return opts.NewGuard(c, logger) }
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: want debug, info, warn or error", level)
	}
	hopts := &slog.HandlerOptions{Level: lv}
	switch strings.ToLower(format) {
	case "text":
		return slog.New(slog.NewTextHandler(w, hopts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, hopts)), nil
	}
	return nil, fmt.Errorf("log format %q: want text or json", format)
}
