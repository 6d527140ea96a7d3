package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/vigil-hips/vigil/internal/integrity"
	"github.com/vigil-hips/vigil/internal/sign"
)

// exitViolation is the exit status of `vigil integrity check` when it
// found a violation (1 stays "the check could not run").
const exitViolation = 2

// newIntegrityCmd is `vigil integrity`: it reads the kernel itself (no
// running agent needed), so it lives here rather than in the cli package.
func newIntegrityCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "integrity",
		Short: "Baseline and check the kernel's integrity (lockdown, LSMs, taint, modules, hooks, BPF programs)",
	}
	cmd.AddCommand(newIntegrityBaselineCmd(), newIntegrityCheckCmd())
	return cmd
}

func newIntegrityBaselineCmd() *cobra.Command {
	var out, key string
	cmd := &cobra.Command{
		Use:   "baseline -o FILE --key ADMIN_KEY",
		Short: "Record the kernel's current state as a baseline signed with an admin key",
		Long: `Read the kernel's security state and write it to FILE as a DSSE envelope
signed with the ed25519 admin key (PKCS#8 PEM, raw 64-byte key or 32-byte
seed). Every BPF program loaded now becomes expected (by type, name and
tag); Vigil's own programs are always expected. Needs root.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if out == "" || key == "" {
				return errors.New("baseline needs -o FILE and --key ADMIN_KEY")
			}
			priv, err := sign.LoadPrivateKey(key)
			if err != nil {
				return err
			}
			st := integrity.NewCollector().Collect()
			b, err := integrity.SignBaseline(cmd.Context(), priv, st)
			if err != nil {
				return err
			}
			if err := os.WriteFile(out, append(b, '\n'), 0o600); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "baseline written to %s: %d BPF programs, %d modules, %d sections unreadable\n",
				out, len(st.BPF.Programs), len(st.Modules), len(st.Unreadable))
			return nil
		},
	}
	cmd.Flags().StringVarP(&out, "output", "o", "", "baseline file to write")
	cmd.Flags().StringVar(&key, "key", "", "admin private key (ed25519)")
	return cmd
}

func newIntegrityCheckCmd() *cobra.Command {
	var baseline, pubkey, output string
	cmd := &cobra.Command{
		Use:   "check [--baseline FILE --pubkey ADMIN_PUB] [-o json]",
		Short: "Compare the kernel's state with a signed baseline; exit 2 on a violation",
		Long: `Read the kernel's security state and compare it with the baseline, whose
signature is verified with the admin public key first. Without a baseline,
only what is a violation by itself (a hidden module) is reported. What the
kernel does not let Vigil read is listed, and is not a violation by itself.
Exit status: 0 clean, 2 violations found, 1 the check could not run.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "text" && output != "json" {
				return fmt.Errorf("output %q: want text or json", output)
			}
			var base *integrity.State
			if baseline != "" {
				if pubkey == "" {
					return errors.New("--baseline needs --pubkey ADMIN_PUB to verify it")
				}
				pub, err := sign.LoadPublicKey(pubkey)
				if err != nil {
					return err
				}
				b, err := os.ReadFile(baseline)
				if err != nil {
					return err
				}
				base, err = integrity.OpenBaseline(cmd.Context(), pub, b)
				if err != nil {
					if errors.Is(err, sign.ErrBadSignature) {
						return fmt.Errorf("refusing baseline %s: %w", baseline, err)
					}
					return fmt.Errorf("%s: %w", baseline, err)
				}
			}
			r := integrity.Compare(base, integrity.NewCollector().Collect())
			w := cmd.OutOrStdout()
			if output == "json" {
				enc := json.NewEncoder(w)
				enc.SetIndent("", "  ")
				if err := enc.Encode(r); err != nil {
					return err
				}
			} else {
				printIntegrity(w, r, base != nil)
			}
			if n := r.Violations(); n > 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "vigil: integrity: %d violation(s)\n", n)
				os.Exit(exitViolation)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&baseline, "baseline", "", "signed baseline file")
	cmd.Flags().StringVar(&pubkey, "pubkey", "", "admin public key (ed25519) that signed the baseline")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	return cmd
}

func printIntegrity(w io.Writer, r *integrity.Report, haveBase bool) {
	s := r.Current
	orNA := func(v string) string {
		if v == "" {
			return "-"
		}
		return v
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "kernel\t%s\n", s.KernelRelease)
	fmt.Fprintf(tw, "lockdown\t%s\n", orNA(s.Lockdown))
	fmt.Fprintf(tw, "LSMs\t%s\n", orNA(strings.Join(s.LSMs, ",")))
	fmt.Fprintf(tw, "taint\t%d %s\n", s.Taint, strings.Join(s.TaintFlags, " "))
	fmt.Fprintf(tw, "secure boot\t%s\n", s.SecureBoot)
	names := make([]string, 0, len(s.Sysctls))
	for n := range s.Sysctls {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(tw, "%s\t%s\n", n, s.Sysctls[n])
	}
	fmt.Fprintf(tw, "modules\t%d\n", len(s.Modules))
	fmt.Fprintf(tw, "ftrace hooks\t%d (touched since boot: %d)\n", len(s.Hooks.Ftrace), len(s.Hooks.Touched))
	fmt.Fprintf(tw, "kprobes\t%d registered, %d kprobe events, %d uprobe events\n", len(s.Hooks.Kprobes), len(s.Hooks.KprobeEvents), len(s.Hooks.UprobeEvents))
	fmt.Fprintf(tw, "BPF\t%d programs, %d links, %d maps\n", len(s.BPF.Programs), len(s.BPF.Links), len(s.BPF.Maps))
	fmt.Fprintf(tw, "syscall entries\t%d\n", len(s.Syscalls))
	tw.Flush()
	if len(s.BPF.Programs) > 0 {
		fmt.Fprintln(w, "\nBPF programs")
		tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tTYPE\tNAME\tTAG\tATTACH\tDANGEROUS HELPERS\tVIGIL")
		for _, p := range s.BPF.Programs {
			own := ""
			if integrity.IsVigilProgram(p.Type, p.Name) {
				own = "yes"
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", p.ID, p.Type, orNA(p.Name), p.Tag,
				orNA(strings.Join(p.Attach, ",")), orNA(strings.Join(p.Dangerous, " ")), own)
		}
		tw.Flush()
	}
	if len(s.Unreadable) > 0 {
		fmt.Fprintln(w, "\nNot readable on this kernel (not a violation by itself)")
		secs := make([]string, 0, len(s.Unreadable))
		for k := range s.Unreadable {
			secs = append(secs, k)
		}
		sort.Strings(secs)
		for _, k := range secs {
			fmt.Fprintf(w, "  %s: %s\n", k, s.Unreadable[k])
		}
	}
	if !haveBase {
		fmt.Fprintln(w, "\nNo baseline given: only violations that need none (hidden modules) are checked.")
	}
	if len(r.Findings) == 0 {
		fmt.Fprintln(w, "\nFindings: none")
		return
	}
	fmt.Fprintln(w, "\nFindings")
	tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SEVERITY\tSECTION\tSUBJECT\tDETAIL")
	for _, f := range r.Findings {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", f.Severity, f.Section, f.Subject, f.Message)
	}
	tw.Flush()
}
