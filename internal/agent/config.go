package agent

import (
	"errors"
	"fmt"
	"math/bits"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/vigil-hips/vigil/internal/store"
)

// Defaults.
const (
	DefaultStateDir      = "/var/lib/vigil"
	DefaultSocket        = "/run/vigil/vigil.sock"
	DefaultPruneInterval = time.Minute
	DefaultBackend       = "auto"
	// DefaultIntegrityInterval is how often the integrity watch checks
	// the kernel's state.
	DefaultIntegrityInterval = time.Minute
	// DefaultAdminKey is the admin public key set at install.
	DefaultAdminKey = "/etc/vigil/admin.pub"
	// DefaultSensorPinDir is where the sensor pins its BPF objects.
	DefaultSensorPinDir = "/sys/fs/bpf/vigil/sensor"
	// DefaultFilterClients is the signed list of approved filter API
	// clients (vigil filter sign-clients).
	DefaultFilterClients = "/etc/vigil/filter-clients.json"
)

// maxSocketPath is the longest path a unix socket address holds
// (sizeof(sun_path) - 1 on Linux).
const maxSocketPath = 107

// Config configures the agent. Start from DefaultConfig; Run validates.
type Config struct {
	// StateDir holds the event store (events.db) and the agent lock.
	StateDir string
	// Socket is the path of the API unix socket.
	Socket string
	// Retention bounds the event store; zero fields mean no bound.
	Retention store.Retention
	// PruneInterval is how often the store is pruned to Retention.
	PruneInterval time.Duration
	// JSONLPath, when set, is a file every event is appended to, as one
	// JSON object a line (the same form as `vigil events -o json`).
	JSONLPath string
	// OCSFPath, when set, is a file every event of a kind OCSF has a
	// class for is appended to, as one OCSF JSON object a line
	// (internal/ocsf).
	OCSFPath string
	// MetricsAddr, when set, is the host:port Prometheus metrics are served
	// on at /metrics.
	MetricsAddr string
	// Backend is the sensor backend: auto, lsm or tracepoint.
	Backend string
	// RingBufBytes is the kernel ring buffer size: 0 for the sensor's
	// default, else a power of two and a multiple of the page size.
	RingBufBytes int
	// SensorPinDir is where the sensor pins its BPF maps and links (BPF
	// LSM only) so that enforcement outlives the agent's userspace; empty:
	// not pinned.
	SensorPinDir string
	// FilterSocket is the filter API's unix socket; empty: filter.sock
	// next to Socket.
	FilterSocket string
	// FilterClients is the signed configuration of approved filter API
	// clients; empty: DefaultFilterClients.
	FilterClients string
	// PolicyPaths are policy files to enforce from the start, merged in
	// order (policy.Merge). Empty: the last policy applied (kept in
	// StateDir), if any.
	PolicyPaths []string
	// FanotifyMarks are paths whose filesystems get exec control by
	// fanotify when BPF LSM is not available.
	FanotifyMarks []string
	// IntegrityInterval is how often the kernel integrity watch runs the
	// checks of `vigil integrity check` (it also runs after kernel events
	// that change kernel state); 0 turns the watch off.
	IntegrityInterval time.Duration
	// IntegrityBaseline is a signed baseline (`vigil integrity baseline`)
	// to compare with, verified with the admin public key IntegrityPubKey.
	// Empty: the watch's first check, at agent start, is the baseline,
	// held in memory.
	IntegrityBaseline string
	IntegrityPubKey   string
	// Realtime runs the agent's decision path (fanotify permission
	// events, the filter API's AUTH round trips, the API) at SCHED_RR 1;
	// storing and decoding events stay at normal priority
	// (internal/sched). An exec held for a decision then waits less
	// behind the machine's other work.
	Realtime bool
	// Protect turns tamper protection on where BPF LSM is active and an
	// admin key is set (internal/tamper, docs/tamper.md).
	Protect bool
	// AdminKeyPath is the admin ed25519 public key that signs stop,
	// upgrade, unprotect and apply-policy tokens. Empty: DefaultAdminKey
	// if it exists.
	AdminKeyPath string
	// HostIDFile names this host in admin tokens and to the fleet server.
	HostIDFile string
	// FleetServer, when set, is the `vigil server` (host:port) this agent
	// is a member of (docs/fleet.md); FleetCA is that server's CA, pinned.
	FleetServer string
	FleetCA     string
	// FleetEnrollSecretFile holds the enrollment secret, needed until
	// the agent has enrolled (its credential stays in StateDir/fleet).
	FleetEnrollSecretFile string
	// FleetTags are tags the host asks for at enrollment.
	FleetTags []string
	// FleetPoll is how often the agent syncs besides the Watch stream.
	FleetPoll time.Duration
	// FleetUploadKinds are event kinds uploaded besides blocked and
	// would-be-blocked events.
	FleetUploadKinds []string
}

// DefaultConfig returns the default configuration.
func DefaultConfig() Config {
	return Config{
		StateDir: DefaultStateDir,
		Socket:   DefaultSocket,
		Retention: store.Retention{
			MaxAge:  store.DefaultMaxAge,
			MaxRows: store.DefaultMaxRows,
		},
		PruneInterval:     DefaultPruneInterval,
		Backend:           DefaultBackend,
		IntegrityInterval: DefaultIntegrityInterval,
		Protect:           true,
		HostIDFile:        "/etc/machine-id",
		SensorPinDir:      DefaultSensorPinDir,
		FleetPoll:         DefaultFleetPoll,
		FleetUploadKinds:  DefaultFleetUploadKinds,
	}
}

// Validate reports every problem with c.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	if c.StateDir == "" {
		bad("state dir: must be set")
	} else if !filepath.IsAbs(c.StateDir) {
		bad("state dir %q: must be an absolute path", c.StateDir)
	}
	switch {
	case c.Socket == "":
		bad("socket: must be set")
	case !filepath.IsAbs(c.Socket):
		bad("socket %q: must be an absolute path", c.Socket)
	case len(c.Socket) > maxSocketPath:
		bad("socket %q: longer than %d bytes, the limit of a unix socket path", c.Socket, maxSocketPath)
	}
	if c.Retention.MaxAge < 0 {
		bad("retention max age %s: must not be negative (0 keeps events of any age)", c.Retention.MaxAge)
	}
	if c.Retention.MaxRows < 0 {
		bad("retention max rows %d: must not be negative (0 keeps any number)", c.Retention.MaxRows)
	}
	if (c.Retention.MaxAge > 0 || c.Retention.MaxRows > 0) && c.PruneInterval < time.Second {
		bad("prune interval %s: must be at least 1s when a retention bound is set", c.PruneInterval)
	}
	if c.JSONLPath != "" && !filepath.IsAbs(c.JSONLPath) {
		bad("jsonl path %q: must be an absolute path", c.JSONLPath)
	}
	if c.OCSFPath != "" && !filepath.IsAbs(c.OCSFPath) {
		bad("ocsf path %q: must be an absolute path", c.OCSFPath)
	}
	if c.MetricsAddr != "" {
		if _, _, err := net.SplitHostPort(c.MetricsAddr); err != nil {
			bad("metrics address %q: want host:port (e.g. 127.0.0.1:9090): %v", c.MetricsAddr, err)
		}
	}
	switch c.Backend {
	case "auto", "lsm", "tracepoint":
	default:
		bad("backend %q: want auto, lsm or tracepoint", c.Backend)
	}
	if n := c.RingBufBytes; n != 0 {
		page := os.Getpagesize()
		if n < 0 || bits.OnesCount(uint(n)) != 1 || n%page != 0 {
			bad("ring buffer size %d: want 0 (default) or a power of two that is a multiple of the page size (%d)", n, page)
		}
	}
	switch {
	case c.IntegrityInterval < 0:
		bad("integrity interval %s: must not be negative (0 turns the watch off)", c.IntegrityInterval)
	case c.IntegrityInterval > 0 && c.IntegrityInterval < time.Second:
		bad("integrity interval %s: must be at least 1s (0 turns the watch off)", c.IntegrityInterval)
	}
	switch {
	case c.IntegrityBaseline != "" && c.IntegrityPubKey == "":
		bad("integrity baseline %q: needs the admin public key to verify it", c.IntegrityBaseline)
	case c.IntegrityBaseline == "" && c.IntegrityPubKey != "":
		bad("integrity public key %q: given without a baseline", c.IntegrityPubKey)
	case c.IntegrityBaseline != "" && c.IntegrityInterval == 0:
		bad("integrity baseline %q: given with the watch off (integrity interval 0)", c.IntegrityBaseline)
	}
	if c.FleetServer != "" {
		if _, _, err := net.SplitHostPort(c.FleetServer); err != nil {
			bad("fleet server %q: want host:port: %v", c.FleetServer, err)
		}
		if c.FleetCA == "" {
			bad("fleet server %q: needs the server's CA (--fleet-ca)", c.FleetServer)
		}
		if c.FleetPoll < time.Second {
			bad("fleet poll %s: must be at least 1s", c.FleetPoll)
		}
	} else if c.FleetCA != "" || c.FleetEnrollSecretFile != "" || len(c.FleetTags) > 0 {
		bad("fleet CA, enrollment secret or tags given without a fleet server")
	}
	return errors.Join(errs...)
}
