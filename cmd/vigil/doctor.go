package main

import (
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/probe"
)

// newDoctorCmd is `vigil doctor`. It probes the kernel itself (it needs
// no running agent), so it lives here rather than in the BPF-free cli
// package.
func newDoctorCmd() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Say what this kernel allows and which guarantee each control can give",
		Long: `Probe the running kernel by loading and attaching trivial programs (BPF LSM,
tp_btf), opening a fanotify group and reading securityfs and tracefs, then
say for each kind of control whether it can block synchronously, only kill
after the fact, or only observe on this kernel, and why. Needs root.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r := probe.Run()
			resp := &vigilv1.DoctorResponse{
				KernelRelease: r.KernelRelease,
				Features:      r.Features,
				Guarantees:    r.Guarantees,
			}
			switch output {
			case "json":
				b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(resp)
				if err != nil {
					return err
				}
				_, err = fmt.Fprintln(cmd.OutOrStdout(), string(b))
				return err
			case "", "text":
				return printDoctor(cmd.OutOrStdout(), resp, r.BPFLSM)
			}
			return fmt.Errorf("output %q: want text or json", output)
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	return cmd
}

func printDoctor(w io.Writer, d *vigilv1.DoctorResponse, lsm bool) error {
	state := "not available: synchronous in-kernel blocking is not possible on this kernel"
	if lsm {
		state = "active: every block is a synchronous in-kernel deny"
	}
	fmt.Fprintf(w, "Kernel %s\nBPF LSM: %s\n\nFeatures\n", d.KernelRelease, state)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	for _, f := range d.Features {
		mark := "no"
		if f.Available {
			mark = "yes"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", f.Name, mark, f.Detail)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "\nGuarantees\n")
	tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	for _, g := range d.Guarantees {
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", g.Control, g.Level, g.Why)
	}
	return tw.Flush()
}
