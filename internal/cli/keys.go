package cli

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/spf13/cobra"

	"github.com/vigil-hips/vigil/internal/sign"
)

// newKeysCmd returns `vigil keys`: admin signing keys.
func newKeysCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "keys",
		Short: "Generate and inspect admin signing keys (ed25519)",
	}
	cmd.AddCommand(newKeysGenerateCmd(), newKeysIDCmd())
	return cmd
}

func newKeysGenerateCmd() *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "generate --out PREFIX",
		Short: "Generate an ed25519 key pair: PREFIX.key (private, mode 0600) and PREFIX.pub",
		Long: `Generate an ed25519 signing key pair. PREFIX.key holds the private key
(PKCS#8 PEM, mode 0600: keep it off the hosts it signs for) and PREFIX.pub
the public key (PKIX PEM), which hosts approve with
"vigil approve --signer PREFIX.pub". Existing files are never overwritten.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" {
				return errors.New("--out PREFIX is required")
			}
			pub, priv, err := sign.GenerateKey()
			if err != nil {
				return err
			}
			privPEM, err := sign.MarshalPrivateKey(priv)
			if err != nil {
				return err
			}
			pubPEM, err := sign.MarshalPublicKey(pub)
			if err != nil {
				return err
			}
			keyFile, pubFile := out+".key", out+".pub"
			for _, f := range []string{keyFile, pubFile} {
				if _, err := os.Lstat(f); err == nil {
					return fmt.Errorf("%s exists: not overwritten", f)
				} else if !errors.Is(err, fs.ErrNotExist) {
					return err
				}
			}
			if err := writeNew(keyFile, privPEM, 0o600); err != nil {
				return err
			}
			if err := writeNew(pubFile, pubPEM, 0o644); err != nil {
				os.Remove(keyFile)
				return err
			}
			id, err := sign.KeyID(pub)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: private key (keep it secret)\n%s: public key, id %s\n", keyFile, pubFile, id)
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "path prefix of the key files")
	return cmd
}

// writeNew writes a file that must not exist yet.
func writeNew(path string, b []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

func newKeysIDCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "id KEY.pub...",
		Short: "Print the key ID of public keys (SHA256:base64, as catalogs and process.signer name them)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			for _, a := range args {
				pub, err := sign.LoadPublicKey(a)
				if err != nil {
					return err
				}
				id, err := sign.KeyID(pub)
				if err != nil {
					return fmt.Errorf("%s: %w", a, err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: %s\n", a, id)
			}
			return nil
		},
	}
}
