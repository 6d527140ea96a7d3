package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/sign"
	"github.com/vigil-hips/vigil/internal/trust"
)

// approveTimeout bounds an Approve call: the agent updates its kernel
// verdict cache before it answers.
const approveTimeout = 30 * time.Second

func newPendingCmd(g *globals) *cobra.Command {
	var (
		output string
		limit  uint32
	)
	cmd := &cobra.Command{
		Use:   "pending [--limit N] [-o json]",
		Short: "List unknown code that execution control refused or recorded",
		Long: `List the code (by SHA-256) that no trust source knew when it was executed or
mapped, most recently seen first: how often it was tried, how often refused
(lockdown), the names it had and the processes that tried. Approve it with
"vigil approve --sha256 DIGEST"; approved or otherwise trusted code leaves
the list.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			c, err := dial(g.socket)
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), callTimeout)
			defer cancel()
			resp, err := c.Pending(ctx, &vigilv1.PendingRequest{Limit: limit})
			if err != nil {
				return c.explain(err)
			}
			out := cmd.OutOrStdout()
			if output == "json" {
				for _, p := range resp.GetItems() {
					b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(p)
					if err != nil {
						return err
					}
					if _, err := fmt.Fprintf(out, "%s\n", b); err != nil {
						return err
					}
				}
				return nil
			}
			return printPending(out, resp.GetItems())
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json (one object a line)")
	cmd.Flags().Uint32Var(&limit, "limit", 0, "at most this many (0: all)")
	return cmd
}

func printPending(w io.Writer, items []*vigilv1.PendingCode) error {
	if len(items) == 0 {
		_, err := fmt.Fprintln(w, "no pending code")
		return err
	}
	const layout = "2006-01-02 15:04:05"
	for _, p := range items {
		fmt.Fprintf(w, "%s  %s, %d refused, first %s, last %s\n", p.GetSha256(), plural(int(p.GetCount()), "attempt"),
			p.GetRefused(), p.GetFirstSeen().AsTime().Local().Format(layout), p.GetLastSeen().AsTime().Local().Format(layout))
		fmt.Fprintf(w, "  paths: %s\n", orDash(strings.Join(p.GetPaths(), ", ")))
		fmt.Fprintf(w, "  by:    %s\n", orDash(strings.Join(p.GetProcesses(), ", ")))
	}
	_, err := fmt.Fprintf(w, "\n%s; approve with: vigil approve --sha256 DIGEST\n", plural(len(items), "pending digest"))
	return err
}

func newApproveCmd(g *globals) *cobra.Command {
	var (
		sha, file, signer, comment, token string
		deny                              bool
	)
	cmd := &cobra.Command{
		Use:   "approve (--sha256 HEX | --file FILE | --signer KEY.pub) [--deny] [--comment TEXT]",
		Short: "Trust (or deny) code by digest, or approve a signer, in the running agent",
		Long: `Tell the running agent to trust a content digest (--sha256, or --file to hash
a file here) or to approve a signing key (--signer): catalogs from an
approved signer are trusted (install them with "vigil catalog add"). The
change is in force when the command returns, without a restart.

--deny denies the digest explicitly (before every other source), or, with
--signer, revokes the signer and the trust its catalogs gave.`,
		Example: `  vigil approve --sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 --comment "build tool"
  vigil approve --signer release.pub
  vigil approve --file /tmp/miner --deny`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			n := 0
			for _, s := range []string{sha, file, signer} {
				if s != "" {
					n++
				}
			}
			if n != 1 {
				return errors.New("give exactly one of --sha256, --file and --signer")
			}
			req := &vigilv1.ApproveRequest{Comment: comment, Deny: deny}
			switch {
			case sha != "":
				d, err := trust.ParseDigest(sha)
				if err != nil {
					return fmt.Errorf("--sha256: %w", err)
				}
				req.Sha256 = fmt.Sprintf("%x", d)
			case file != "":
				d, err := trust.HashFile(file)
				if err != nil {
					return err
				}
				req.Sha256 = fmt.Sprintf("%x", d)
			default:
				b, err := os.ReadFile(signer)
				if err != nil {
					return err
				}
				if _, err := sign.ParsePublicKey(b); err != nil {
					return fmt.Errorf("%s: %w", signer, err)
				}
				req.SignerKey = b
			}
			if token != "" {
				b, err := os.ReadFile(token)
				if err != nil {
					return err
				}
				req.Token = b
			}
			c, err := dial(g.socket)
			if err != nil {
				return err
			}
			defer c.Close()
			ctx, cancel := context.WithTimeout(cmd.Context(), approveTimeout)
			defer cancel()
			resp, err := c.Approve(ctx, req)
			if err != nil {
				if st, ok := status.FromError(err); ok && (st.Code() == codes.InvalidArgument || st.Code() == codes.NotFound) {
					return errors.New(st.Message())
				}
				return c.explain(err)
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), resp.GetDetail())
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&sha, "sha256", "", "hex SHA-256 of the content to trust")
	f.StringVar(&file, "file", "", "a file whose content to trust (hashed here)")
	f.StringVar(&signer, "signer", "", "public key file of a signer to approve")
	f.BoolVar(&deny, "deny", false, "deny the digest, or revoke the signer")
	f.StringVar(&comment, "comment", "", "why, kept with the verdict")
	f.StringVar(&token, "token", "", "signed admin token (vigil admin sign --action approve --subject ...), needed by a protected agent")
	return cmd
}
