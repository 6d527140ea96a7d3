package cli

import (
	"context"
	"fmt"
	"runtime"
	"time"

	"github.com/spf13/cobra"
)

func newVersionCmd(opts Options, g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Show the version of this program and of the running agent",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "vigil %s (%s, %s/%s)\n", orDash(opts.Version), runtime.Version(), runtime.GOOS, runtime.GOARCH)
			ctx, cancel := context.WithTimeout(cmd.Context(), time.Second)
			defer cancel()
			st, err := getStatus(ctx, g.socket)
			if err != nil {
				fmt.Fprintf(out, "agent: not reachable (%v)\n", err)
				return nil
			}
			fmt.Fprintf(out, "agent: %s (pid %d)\n", orDash(st.GetVersion()), st.GetAgentPid())
			return nil
		},
	}
}
