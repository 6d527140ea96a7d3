package cli

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/vigil-hips/vigil/internal/filter"
	"github.com/vigil-hips/vigil/internal/sign"
	"github.com/vigil-hips/vigil/internal/trust"
)

func newFilterCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "filter",
		Short: "The filter API: approve the security programs that may plug into the agent",
		Long: `Other security programs connect to the agent's filter API (its own unix
socket, default /run/vigil/filter.sock) to watch events, answer exec
authorization requests and add kernel deny rules (docs/filter-api.md). The
agent accepts only the clients listed in a configuration signed with the
admin key (default /etc/vigil/filter-clients.json).`,
	}
	cmd.AddCommand(newFilterSignCmd())
	return cmd
}

func newFilterSignCmd() *cobra.Command {
	var keyFile, out string
	cmd := &cobra.Command{
		Use:   "sign --key ADMIN.key --out SIGNED CONFIG.json",
		Short: "Sign the list of approved filter clients with the admin key",
		Long: `CONFIG.json lists the approved clients:

  {"clients": [
    {"name": "scanner", "exe": "/opt/scanner/bin/scanner", "deadline_ms": 50,
     "miss_mode": "fail-closed", "kernel_rules": true},
    {"name": "jsonl", "sha256": "HEX"},
    {"name": "edr", "catalog_signer": "SHA256:KEYID"}
  ]}

A client is identified by its executable: "exe" is hashed now and replaced
by its "sha256"; "catalog_signer" approves whatever executable a catalog of
that (approved) signer lists. miss_mode is what a missed deadline counts as
(fail-open, the default, or fail-closed). The signed file goes where the
agent reads it (--filter-clients); the agent reads it at start.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if keyFile == "" || out == "" {
				return errors.New("--key and --out are required")
			}
			priv, err := sign.LoadPrivateKey(keyFile)
			if err != nil {
				return err
			}
			raw, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			var in struct {
				Clients []struct {
					filter.ClientConfig
					Exe string `json:"exe"`
				} `json:"clients"`
			}
			if err := json.Unmarshal(raw, &in); err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			var cfg filter.Config
			for _, c := range in.Clients {
				if c.Exe != "" {
					if c.SHA256 != "" {
						return fmt.Errorf("%s: client %s: give exe or sha256, not both", args[0], c.Name)
					}
					sha, err := trust.HashFile(c.Exe)
					if err != nil {
						return fmt.Errorf("%s: client %s: %w", args[0], c.Name, err)
					}
					c.SHA256 = hex.EncodeToString(sha[:])
				}
				cfg.Clients = append(cfg.Clients, c.ClientConfig)
			}
			signed, err := filter.SignConfig(cmd.Context(), priv, cfg)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			if err := os.WriteFile(out, append(signed, '\n'), 0o644); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: %d approved filter client(s), signed\n", out, len(cfg.Clients))
			return nil
		},
	}
	cmd.Flags().StringVar(&keyFile, "key", "", "the admin private key (vigil keys generate)")
	cmd.Flags().StringVar(&out, "out", "", "where to write the signed configuration")
	return cmd
}
