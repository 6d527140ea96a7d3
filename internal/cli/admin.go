package cli

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/vigil-hips/vigil/internal/admin"
	"github.com/vigil-hips/vigil/internal/policy"
	"github.com/vigil-hips/vigil/internal/sign"
)

// newAdminCmd is `vigil admin`: signed admin tokens (offline).
func newAdminCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "admin",
		Short: "Signed admin tokens (offline; keys come from `vigil keys generate`)",
	}
	cmd.AddCommand(newAdminSignCmd())
	return cmd
}

func newAdminSignCmd() *cobra.Command {
	var keyFile, action, host, hostFile, policyFile, subject, out string
	ttl := durationFlag(10 * time.Minute)
	cmd := &cobra.Command{
		Use:   "sign --key admin.key --action ACTION [--ttl 10m] [--host ID] --out FILE",
		Short: "Make a signed admin token (stop, apply-policy, unprotect, upgrade) for one host",
		Long: `Make a token the agent on one host accepts once, until it expires: a DSSE
envelope signed by the admin key, naming the action, the host
(/etc/machine-id there), the expiry and a random nonce. An apply-policy
token also names the policy's digest (--policy FILE).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if keyFile == "" || out == "" {
				return errors.New("--key and --out are required")
			}
			a := admin.Action(action)
			if !a.Valid() {
				return fmt.Errorf("--action %q: want stop, apply-policy, approve, unprotect or upgrade", action)
			}
			d := ttl.get()
			if d <= 0 || d > admin.MaxTTL {
				return fmt.Errorf("--ttl %s: want more than 0 and at most %s", d, admin.MaxTTL)
			}
			if host == "" {
				id, err := admin.HostID(hostFile)
				if err != nil {
					return fmt.Errorf("%w (or give --host)", err)
				}
				host = id
			}
			c := admin.Claims{Action: a, Host: host, Expires: time.Now().Add(d).UTC()}
			if a == admin.ActionApplyPolicy {
				if policyFile == "" {
					return errors.New("--action apply-policy needs --policy FILE: the token names that policy")
				}
				p, err := policy.Load(policyFile)
				if err != nil {
					return err
				}
				c.PolicyDigest = p.Digest()
			}
			if a == admin.ActionApprove {
				if subject == "" {
					return errors.New("--action approve needs --subject: sha256:HEX or signer:KEYID (vigil keys id KEY.pub), prefixed deny: for a deny or a revocation")
				}
				c.Subject = subject
			}
			priv, err := sign.LoadPrivateKey(keyFile)
			if err != nil {
				return err
			}
			if c.Nonce, err = admin.NewNonce(); err != nil {
				return err
			}
			tok, err := admin.Sign(cmd.Context(), priv, c)
			if err != nil {
				return err
			}
			if err := os.WriteFile(out, tok, 0o600); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: %s token for host %s, expires %s\n", out, a, host, c.Expires.Format(time.RFC3339))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&keyFile, "key", "", "admin private key")
	f.StringVar(&action, "action", "", "stop, apply-policy, unprotect or upgrade")
	f.Var(ttl, "ttl", "how long the token is valid (at most 24h)")
	f.StringVar(&host, "host", "", "host id the token is for (default: this host's)")
	f.StringVar(&hostFile, "host-id-file", admin.DefaultHostIDFile, "where to read this host's id when --host is not given")
	f.StringVar(&policyFile, "policy", "", "apply-policy: the policy file the token allows")
	f.StringVar(&subject, "subject", "", "approve: the one change the token allows (sha256:HEX, signer:KEYID, or either prefixed deny:)")
	f.StringVar(&out, "out", "", "token file to write")
	return cmd
}
