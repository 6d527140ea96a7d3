// Package filter is the agent side of the filter API (vigil.v1.Filter):
// other security programs connect on a unix socket, subscribe to events
// (notify), answer exec authorization requests before a deadline (auth),
// and add deny rules the kernel enforces in a namespace of their own.
//
// Only approved clients are accepted. The administrator approves them in a
// configuration signed with the admin key (DSSE, internal/sign); the agent
// identifies a connecting client by the executable of the peer process
// (SO_PEERCRED, then /proc/PID/exe): by its SHA-256, or by a catalog signer
// that the trust database says vouches for it.
package filter

import (
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/vigil-hips/vigil/internal/sign"
)

// PayloadType is the DSSE payload type of a signed client configuration.
const PayloadType = "application/vnd.vigil.filter-clients+json"

// Defaults of a client's configuration.
const (
	DefaultDeadline = 50 * time.Millisecond
	MaxDeadline     = 5 * time.Second
	FailOpen        = "fail-open"
	FailClosed      = "fail-closed"
	// DefaultMaxMisses is how many deadlines in a row a client may miss
	// before it is disconnected and reported.
	DefaultMaxMisses = 3
)

// Config is the administrator's list of approved clients.
type Config struct {
	Clients []ClientConfig `json:"clients"`
	Issued  time.Time      `json:"issued"`
}

// ClientConfig approves one client.
type ClientConfig struct {
	Name string `json:"name"`
	// SHA256 approves the client's executable by content (hex), or
	// CatalogSigner by a catalog signer's key id (SHA256:...) whose
	// catalog in the trust database lists the executable's digest.
	SHA256        string `json:"sha256,omitempty"`
	CatalogSigner string `json:"catalog_signer,omitempty"`
	// DeadlineMS bounds each authorization answer (default 50).
	DeadlineMS int `json:"deadline_ms,omitempty"`
	// MissMode is what a missed deadline counts as: fail-open (allow,
	// the default) or fail-closed (deny).
	MissMode string `json:"miss_mode,omitempty"`
	// MaxMisses in a row before the client is disconnected (default 3).
	MaxMisses int `json:"max_misses,omitempty"`
	// KernelRules lets the client add deny rules to the kernel.
	KernelRules bool `json:"kernel_rules,omitempty"`
}

// Deadline is the client's answer deadline.
func (c *ClientConfig) Deadline() time.Duration {
	if c.DeadlineMS <= 0 {
		return DefaultDeadline
	}
	return time.Duration(c.DeadlineMS) * time.Millisecond
}

// Validate checks a configuration and fills defaults.
func (cfg *Config) Validate() error {
	seen := map[string]bool{}
	for i := range cfg.Clients {
		c := &cfg.Clients[i]
		switch {
		case c.Name == "":
			return fmt.Errorf("client %d: no name", i+1)
		case seen[c.Name]:
			return fmt.Errorf("client %s: listed twice", c.Name)
		case (c.SHA256 == "") == (c.CatalogSigner == ""):
			return fmt.Errorf("client %s: give exactly one of sha256 and catalog_signer", c.Name)
		case time.Duration(c.DeadlineMS)*time.Millisecond > MaxDeadline:
			return fmt.Errorf("client %s: deadline_ms %d is over %v", c.Name, c.DeadlineMS, MaxDeadline)
		}
		seen[c.Name] = true
		if c.SHA256 != "" {
			if b, err := hex.DecodeString(c.SHA256); err != nil || len(b) != 32 {
				return fmt.Errorf("client %s: sha256 %q is not 64 hex digits", c.Name, c.SHA256)
			}
		}
		switch c.MissMode {
		case "":
			c.MissMode = FailOpen
		case FailOpen, FailClosed:
		default:
			return fmt.Errorf("client %s: miss_mode %q: want %s or %s", c.Name, c.MissMode, FailOpen, FailClosed)
		}
		if c.MaxMisses <= 0 {
			c.MaxMisses = DefaultMaxMisses
		}
	}
	return nil
}

// SignConfig signs a client configuration with the admin key.
func SignConfig(ctx context.Context, priv ed25519.PrivateKey, cfg Config) ([]byte, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Issued.IsZero() {
		cfg.Issued = time.Now().UTC().Truncate(time.Second)
	}
	payload, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	env, err := sign.Sign(ctx, priv, PayloadType, payload)
	if err != nil {
		return nil, err
	}
	return json.MarshalIndent(env, "", "  ")
}

// ErrNoConfig means no client configuration is installed: every client is
// refused.
var ErrNoConfig = errors.New("no approved filter clients")

// LoadConfig reads and verifies a signed client configuration.
func LoadConfig(ctx context.Context, path string, admin ed25519.PublicKey) (*Config, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s does not exist", ErrNoConfig, path)
	}
	if err != nil {
		return nil, err
	}
	if admin == nil {
		return nil, fmt.Errorf("%w: no admin key to verify %s", ErrNoConfig, path)
	}
	env, err := sign.ReadEnvelope(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	payload, err := sign.Verify(ctx, admin, PayloadType, env)
	if err != nil {
		return nil, fmt.Errorf("%s: not signed by the admin key: %w", path, err)
	}
	var cfg Config
	if err := json.Unmarshal(payload, &cfg); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &cfg, nil
}
