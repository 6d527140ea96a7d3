package cli

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/vigil-hips/vigil/internal/agent"
	"github.com/vigil-hips/vigil/internal/trust"
)

// defaultTrustDB is the trust database the agent opens.
var defaultTrustDB = filepath.Join(agent.DefaultStateDir, trust.FileName)

// maxProblemsShown bounds the per-file warnings a scan prints.
const maxProblemsShown = 20

// newTrustCmd returns `vigil trust`: the trust database, read and written
// directly (the agent sees changes at once through its generation).
func newTrustCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "trust",
		Short: "Scan files into the trust database and query it",
		Long: `The trust database says which file contents (SHA-256) execution control
lets run, and why: explicit verdicts, catalogs from approved signers, dpkg's
records and scanned files (docs/trust.md). These commands open the database
file directly; a running agent picks up changes without a restart.`,
	}
	cmd.AddCommand(newTrustScanCmd(), newTrustListCmd(), newTrustLookupCmd())
	return cmd
}

func dbFlag(cmd *cobra.Command, p *string) {
	cmd.Flags().StringVar(p, "db", defaultTrustDB, "trust database file (the agent's is STATE_DIR/"+trust.FileName+")")
}

func sourcesFlag(cmd *cobra.Command, p *[]string) {
	cmd.Flags().StringSliceVar(p, "sources", []string{"catalogs", "dpkg", "database"},
		"trust sources that count (catalogs, dpkg, database); explicit verdicts always count")
}

// openTrustDB opens the database at path, creating its directory for a
// new one when create is set.
func openTrustDB(ctx context.Context, path string, create bool) (*trust.DB, error) {
	if create {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, fmt.Errorf("trust database %s: %w", path, err)
		}
	} else if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("trust database %s does not exist (create it with `vigil trust scan`)", path)
	}
	return trust.Open(ctx, path)
}

func newTrustScanCmd() *cobra.Command {
	var (
		dbPath, adminDir string
		dpkg             bool
		workers          int
	)
	cmd := &cobra.Command{
		Use:   "scan [--dpkg] [--db PATH] PATH...",
		Short: "Add the code under PATHs to the trust database",
		Long: `Hash the code under each PATH (a directory is walked, a file taken as is)
and record it in the trust database as trusted ("database"). Code is a
regular file with an exec bit or one that starts with an ELF header or "#!".
Symlinks are not followed inside a tree; pseudo filesystems are skipped.

A re-scan reads only files whose dev, inode, size, mtime or ctime changed,
and removes the entries of files under PATHs that are gone. Files that dpkg
installed and that still have dpkg's MD5 are recorded with the source
"dpkg:PACKAGE" (dpkg's database is read from --dpkg-admindir when it
exists); --dpkg also scans every file dpkg lists.`,
		Example: `  vigil trust scan --dpkg /usr/local /opt
  vigil trust scan --db ./trust.db ./build/bin`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 && !dpkg {
				return errors.New("nothing to scan: give PATHs, --dpkg or both")
			}
			var ix *trust.DpkgIndex
			if adminDir != "" {
				var err error
				ix, err = trust.LoadDpkg(adminDir, "/")
				if err != nil {
					if dpkg || !errors.Is(err, fs.ErrNotExist) {
						return err
					}
					ix = nil // no dpkg here
				}
			}
			if dpkg && ix == nil {
				return errors.New("--dpkg: no dpkg database (--dpkg-admindir is empty)")
			}
			db, err := openTrustDB(cmd.Context(), dbPath, true)
			if err != nil {
				return err
			}
			defer db.Close()
			st, err := trust.Scan(cmd.Context(), db, args, trust.ScanOptions{
				Workers:   workers,
				Progress:  cmd.ErrOrStderr(),
				Dpkg:      ix,
				DpkgFiles: dpkg,
			})
			for i, p := range st.Problems {
				if i == maxProblemsShown {
					fmt.Fprintf(cmd.ErrOrStderr(), "warning: %d more files could not be read\n", st.ProblemCount-i)
					break
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: %v\n", p)
			}
			if err != nil {
				return fmt.Errorf("trust scan: %w", err)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "%s: %s (%d hashed, %d unchanged), %d other files, %d entries of gone files removed\n",
				dbPath, plural(st.Code, "code file"), st.Hashed, st.Unchanged, st.NotCode, st.Removed)
			if ix != nil && st.Hashed > 0 {
				fmt.Fprintf(w, "dpkg: of the hashed files, %d as dpkg installed them, %d changed since\n", st.Dpkg, st.DpkgMismatch)
			}
			if st.ProblemCount > 0 {
				fmt.Fprintf(w, "%s could not be read\n", plural(st.ProblemCount, "path"))
			}
			return nil
		},
	}
	dbFlag(cmd, &dbPath)
	cmd.Flags().BoolVar(&dpkg, "dpkg", false, "also scan every file dpkg lists")
	cmd.Flags().StringVar(&adminDir, "dpkg-admindir", trust.DefaultDpkgAdminDir, "dpkg's database directory; empty: ignore dpkg")
	cmd.Flags().IntVar(&workers, "workers", 0, "files hashed in parallel (0: one per CPU)")
	return cmd
}

// trustEntry is one line of `vigil trust list -o json`.
type trustEntry struct {
	SHA256  string   `json:"sha256"`
	Verdict string   `json:"verdict"`
	Source  string   `json:"source"`
	Paths   []string `json:"paths,omitempty"`
}

func newTrustListCmd() *cobra.Command {
	var (
		dbPath, output string
		sources        []string
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the digests the trust database trusts or denies",
		Long: `List every digest the trust database trusts or denies under --sources,
with the source that decided and the scanned files that have that content.
Then the approved signers and their catalogs (text output).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			srcs, err := trust.ParseSources(sources)
			if err != nil {
				return err
			}
			db, err := openTrustDB(cmd.Context(), dbPath, false)
			if err != nil {
				return err
			}
			defer db.Close()
			paths := map[[32]byte][]string{}
			if err := db.Files(cmd.Context(), nil, func(f trust.File) error {
				paths[f.SHA] = append(paths[f.SHA], f.Path)
				return nil
			}); err != nil {
				return err
			}
			var entries []trustEntry
			if err := db.Each(cmd.Context(), srcs, func(sha [32]byte, d trust.Decision) error {
				entries = append(entries, trustEntry{
					SHA256: hex.EncodeToString(sha[:]), Verdict: d.Verdict.String(), Source: d.Source, Paths: paths[sha],
				})
				return nil
			}); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if output == "json" {
				enc := json.NewEncoder(out)
				for _, e := range entries {
					if err := enc.Encode(e); err != nil {
						return err
					}
				}
				return nil
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SHA256\tVERDICT\tSOURCE\tPATH")
			for _, e := range entries {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", e.SHA256, e.Verdict, e.Source, orDash(strings.Join(e.Paths, " ")))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			return printSigners(cmd.Context(), out, db)
		},
	}
	dbFlag(cmd, &dbPath)
	sourcesFlag(cmd, &sources)
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json (one object a line)")
	return cmd
}

func printSigners(ctx context.Context, w io.Writer, db *trust.DB) error {
	signers, err := db.Signers(ctx)
	if err != nil {
		return err
	}
	cats, err := db.Catalogs(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "\n%s approved\n", plural(len(signers), "signer"))
	for _, s := range signers {
		fmt.Fprintf(w, "  %s  %s  %s\n", s.KeyID, plural(s.Catalogs, "catalog"), s.Comment)
		for _, c := range cats {
			if c.KeyID == s.KeyID {
				fmt.Fprintf(w, "    catalog %q issued %s, %s\n", c.Name, c.Issued.Format("2006-01-02T15:04:05Z07:00"), plural(c.Digests, "digest"))
			}
		}
	}
	return nil
}

func newTrustLookupCmd() *cobra.Command {
	var (
		dbPath  string
		sources []string
	)
	cmd := &cobra.Command{
		Use:   "lookup SHA256|FILE...",
		Short: "Say what the trust database decides about digests or files",
		Long: `For each argument — a hex SHA-256, or a file, which is hashed — print the
decision (trusted, denied or unknown) and the source that gave it, under
--sources.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			srcs, err := trust.ParseSources(sources)
			if err != nil {
				return err
			}
			db, err := openTrustDB(cmd.Context(), dbPath, false)
			if err != nil {
				return err
			}
			defer db.Close()
			for _, a := range args {
				sha, name, err := digestArg(a)
				if err != nil {
					return err
				}
				d, err := db.Lookup(cmd.Context(), sha, srcs)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s%x: %s\n", name, sha, d)
			}
			return nil
		},
	}
	dbFlag(cmd, &dbPath)
	sourcesFlag(cmd, &sources)
	return cmd
}

// digestArg takes a hex SHA-256 or a file to hash; name is "FILE " for a
// file.
func digestArg(a string) (sha [32]byte, name string, err error) {
	if len(a) == 64 {
		if sha, err := trust.ParseDigest(a); err == nil {
			return sha, "", nil
		}
	}
	sha, err = trust.HashFile(a)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return sha, "", fmt.Errorf("%s: neither a SHA-256 (64 hex digits) nor an existing file", a)
		}
		return sha, "", err
	}
	return sha, a + " ", nil
}
