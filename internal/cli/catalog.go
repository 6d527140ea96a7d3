package cli

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vigil-hips/vigil/internal/sign"
	"github.com/vigil-hips/vigil/internal/trust"
)

// newCatalogCmd returns `vigil catalog`: signed lists of trusted digests.
func newCatalogCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "catalog",
		Short: "Sign, verify and install trust catalogs",
		Long: `A catalog is a named list of SHA-256 digests signed with an admin key (a DSSE
envelope, payload type ` + trust.CatalogPayloadType + `). Every digest in
a catalog installed from an approved signer is trusted; revoking the signer
takes that trust away. Approve a signer with "vigil approve --signer KEY.pub".`,
	}
	cmd.AddCommand(newCatalogSignCmd(), newCatalogVerifyCmd(), newCatalogAddCmd(), newCatalogListCmd())
	return cmd
}

func newCatalogSignCmd() *cobra.Command {
	var keyFile, name, out, digests string
	cmd := &cobra.Command{
		Use:   "sign --key KEY.key [--name NAME] --out CATALOG (FILE... | --digests FILE)",
		Short: "Sign a catalog of the given files' digests",
		Long: `Hash FILEs (or read hex SHA-256 digests, one a line, from --digests; "-" is
stdin; sha256sum's "DIGEST  NAME" lines work too, "#" starts a comment) and
write the catalog signed with KEY.key to CATALOG. The name defaults to
CATALOG's base name without its extension; a newer catalog of the same name
from the same signer replaces the older one where it is installed.`,
		Example: `  vigil catalog sign --key admin.key --out tools.catalog /opt/tools/bin/*
  sha256sum build/* | vigil catalog sign --key admin.key --digests - --out build.catalog`,
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case keyFile == "" || out == "":
				return errors.New("--key and --out are required")
			case len(args) == 0 && digests == "":
				return errors.New("nothing to sign: give FILEs or --digests FILE")
			case len(args) > 0 && digests != "":
				return errors.New("give FILEs or --digests, not both")
			}
			priv, err := sign.LoadPrivateKey(keyFile)
			if err != nil {
				return err
			}
			var ds [][32]byte
			for _, a := range args {
				d, err := trust.HashFile(a)
				if err != nil {
					return err
				}
				ds = append(ds, d)
			}
			if digests != "" {
				if ds, err = readDigests(digests, cmd.InOrStdin()); err != nil {
					return err
				}
			}
			if name == "" {
				name = strings.TrimSuffix(filepath.Base(out), filepath.Ext(out))
			}
			cat := trust.NewCatalog(name, ds, time.Now())
			b, err := trust.SignCatalog(cmd.Context(), priv, cat)
			if err != nil {
				return fmt.Errorf("sign %s: %w", out, err)
			}
			if err := writeAtomic(out, b, 0o644); err != nil {
				return err
			}
			id, err := sign.KeyID(priv.Public().(ed25519.PublicKey))
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: catalog %q, %s, signed by %s\n", out, name, plural(len(cat.Digests), "digest"), id)
			return nil
		},
	}
	cmd.Flags().StringVar(&keyFile, "key", "", "private key file (from vigil keys generate)")
	cmd.Flags().StringVar(&name, "name", "", "catalog name (default: CATALOG's base name)")
	cmd.Flags().StringVar(&out, "out", "", "catalog file to write")
	cmd.Flags().StringVar(&digests, "digests", "", `file of hex SHA-256 digests, one a line ("-": stdin)`)
	return cmd
}

// readDigests reads hex digests, one a line (the first field; "#"
// comments), naming FILE:LINE on error.
func readDigests(path string, stdin io.Reader) ([][32]byte, error) {
	var r io.Reader = stdin
	name := "stdin"
	if path != "-" {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		r, name = bytes.NewReader(b), path
	}
	var out [][32]byte
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		d, err := trust.ParseDigest(strings.TrimPrefix(strings.ToLower(fields[0]), "\\"))
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", name, n, err)
		}
		out = append(out, d)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no digests", name)
	}
	return out, nil
}

// writeAtomic replaces path with b through a temporary file and a rename.
func writeAtomic(path string, b []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

func newCatalogVerifyCmd() *cobra.Command {
	var keyFile string
	cmd := &cobra.Command{
		Use:   "verify --key KEY.pub CATALOG...",
		Short: "Check catalogs' signatures against a public key",
		Long: `Check that each CATALOG is a well-formed catalog signed by KEY.pub. Exit
non-zero, with the reason, for the first one that is not.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if keyFile == "" {
				return errors.New("--key KEY.pub is required")
			}
			pub, err := sign.LoadPublicKey(keyFile)
			if err != nil {
				return err
			}
			keyID, err := sign.KeyID(pub)
			if err != nil {
				return err
			}
			for _, a := range args {
				b, err := os.ReadFile(a)
				if err != nil {
					return err
				}
				vc, err := trust.VerifyCatalog(cmd.Context(), b, pub)
				switch {
				case errors.Is(err, trust.ErrBadSignature):
					return fmt.Errorf("%s: bad signature: it does not verify with %s (key %s)", a, keyFile, keyID)
				case errors.Is(err, trust.ErrUnapprovedSigner):
					return fmt.Errorf("%s: not signed by %s (key %s): %v", a, keyFile, keyID, err)
				case err != nil:
					return fmt.Errorf("%s: %w", a, err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: valid: catalog %q issued %s, %s, signed by %s\n",
					a, vc.Name, vc.Issued.Format(time.RFC3339), plural(len(vc.SHA), "digest"), vc.KeyID)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&keyFile, "key", "", "public key file of the signer")
	return cmd
}

func newCatalogAddCmd() *cobra.Command {
	var dbPath string
	cmd := &cobra.Command{
		Use:   "add CATALOG...",
		Short: "Install catalogs from approved signers in the trust database",
		Long: `Verify each CATALOG against the signers approved in the trust database and
install it: its digests are trusted at once (a running agent reloads). A
catalog with a bad signature, or signed by a key that is not approved, is
refused and trusts nothing; so is one older than the installed catalog of
the same name from the same signer.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			db, err := openTrustDB(cmd.Context(), dbPath, true)
			if err != nil {
				return err
			}
			defer db.Close()
			for _, a := range args {
				b, err := os.ReadFile(a)
				if err != nil {
					return err
				}
				info, err := db.AddCatalog(cmd.Context(), b)
				if err != nil {
					if inner := errors.Unwrap(err); inner != nil {
						err = inner // drop "add catalog:"
					}
					return fmt.Errorf("%s: refused: %w", a, err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: installed catalog %q from signer %s, %s trusted\n",
					a, info.Name, info.KeyID, plural(info.Digests, "digest"))
			}
			return nil
		},
	}
	dbFlag(cmd, &dbPath)
	return cmd
}

func newCatalogListCmd() *cobra.Command {
	var dbPath string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the approved signers and their installed catalogs",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			db, err := openTrustDB(cmd.Context(), dbPath, false)
			if err != nil {
				return err
			}
			defer db.Close()
			return printSigners(cmd.Context(), cmd.OutOrStdout(), db)
		},
	}
	dbFlag(cmd, &dbPath)
	return cmd
}
