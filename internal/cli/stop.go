package cli

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
)

// newStopCmd is `vigil stop [--token FILE]`.
func newStopCmd(g *globals) *cobra.Command {
	var tokenFile string
	cmd := &cobra.Command{
		Use:   "stop",
		Short: "Stop the running agent",
		Long: `Ask the running agent to stop. An agent with an admin key (always the case
in protected mode) stops only with a valid stop token for this host:
vigil admin sign --key admin.key --action stop --ttl 10m --out token.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var token []byte
			if tokenFile != "" {
				var err error
				if token, err = os.ReadFile(tokenFile); err != nil {
					return err
				}
			}
			c, err := dial(g.socket)
			if err != nil {
				return err
			}
			defer c.Close()
			if _, err := c.Stop(cmd.Context(), &vigilv1.StopRequest{Token: token}); err != nil {
				return c.explain(err)
			}
			fmt.Fprintln(cmd.OutOrStdout(), "agent stopping")
			return nil
		},
	}
	cmd.Flags().StringVar(&tokenFile, "token", "", "signed admin stop token file")
	return cmd
}
