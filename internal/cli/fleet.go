package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	fleetv1 "github.com/vigil-hips/vigil/api/vigil/fleet/v1"
	"github.com/vigil-hips/vigil/internal/fleet"
	"github.com/vigil-hips/vigil/internal/sign"
)

// `vigil fleet`: the fleet server's admin API, on its unix socket.

type fleetOpts struct {
	socket string
	output string
}

func (o *fleetOpts) call(cmd *cobra.Command, fn func(ctx context.Context, c fleetv1.FleetAdminClient) error) error {
	abs, err := filepath.Abs(o.socket)
	if err != nil {
		return err
	}
	if _, err := os.Stat(abs); err != nil {
		return fmt.Errorf("fleet server admin socket: %w (is `vigil server` running? --admin-socket)", err)
	}
	conn, err := grpc.NewClient("unix://"+abs, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
	defer cancel()
	if err := fn(ctx, fleetv1.NewFleetAdminClient(conn)); err != nil {
		if st, ok := status.FromError(err); ok {
			return fmt.Errorf("fleet server: %s", st.Message())
		}
		return err
	}
	return nil
}

func (o *fleetOpts) json() bool { return o.output == "json" }

func printJSON(w io.Writer, m proto.Message) error {
	b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

func fmtTime(t *timestamppb.Timestamp) string {
	if t == nil || t.AsTime().IsZero() || t.AsTime().Unix() == 0 {
		return "-"
	}
	return t.AsTime().Local().Format("2006-01-02 15:04:05")
}

func newFleetCmd() *cobra.Command {
	o := &fleetOpts{}
	cmd := &cobra.Command{
		Use:   "fleet",
		Short: "Administer the fleet server: enrollment secrets, hosts, rules, the approval queue, offline bundle signing",
	}
	cmd.PersistentFlags().StringVar(&o.socket, "admin-socket", defaultAdminSocket, "the fleet server's admin socket")
	cmd.PersistentFlags().StringVarP(&o.output, "output", "o", "text", "output: text or json")
	cmd.AddCommand(fleetSecretCmd(o), fleetHostsCmd(o), fleetTagCmd(o), fleetRevokeCmd(o), fleetQueueCmd(o),
		fleetApproveCmd(o), fleetRulesCmd(o), fleetRuleCmd(o), fleetEventsCmd(o), fleetSignCmd(o))
	return cmd
}

func fleetSecretCmd(o *fleetOpts) *cobra.Command {
	cmd := &cobra.Command{Use: "secret", Short: "Enrollment secrets"}
	var name string
	ttl := durationFlag(0)
	create := &cobra.Command{
		Use:   "create",
		Short: "Make an enrollment secret and print it (agents: --fleet-enroll-secret-file)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &fleetv1.CreateEnrollSecretRequest{Name: name}
			if ttl.get() > 0 {
				req.Expires = timestamppb.New(time.Now().Add(ttl.get()))
			}
			return o.call(cmd, func(ctx context.Context, c fleetv1.FleetAdminClient) error {
				resp, err := c.CreateEnrollSecret(ctx, req)
				if err != nil {
					return err
				}
				if o.json() {
					return printJSON(cmd.OutOrStdout(), resp)
				}
				fmt.Fprintln(cmd.OutOrStdout(), resp.GetSecret())
				return nil
			})
		},
	}
	create.Flags().StringVar(&name, "name", "", "a name for the secret (logged at each enrollment)")
	create.Flags().Var(ttl, "ttl", "the secret expires after this (e.g. 1d; 0: never)")
	cmd.AddCommand(create)
	return cmd
}

func fleetHostsCmd(o *fleetOpts) *cobra.Command {
	return &cobra.Command{
		Use:   "hosts",
		Short: "List the enrolled hosts: last seen, bundle versions, guarantees, event loss",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.call(cmd, func(ctx context.Context, c fleetv1.FleetAdminClient) error {
				resp, err := c.ListHosts(ctx, &fleetv1.ListHostsRequest{})
				if err != nil {
					return err
				}
				if o.json() {
					return printJSON(cmd.OutOrStdout(), resp)
				}
				return printFleetHosts(cmd.OutOrStdout(), resp.GetHosts())
			})
		},
	}
}

// printFleetHosts is `vigil fleet hosts` as a table.
func printFleetHosts(w io.Writer, hosts []*fleetv1.Host) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tHOSTNAME\tTAGS\tLAST SEEN\tBUNDLE\tAPPLIED\tBACKEND\tEXEC\tGUARANTEES\tLOST (UPLOAD/KERNEL)\tSTATE")
	for _, h := range hosts {
		state := "ok"
		if h.GetRevoked() {
			state = "revoked"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\t%d/%d\t%s\n", h.GetId(), h.GetHostname(), strings.Join(h.GetTags(), ","),
			fmtTime(h.GetLastSeen()), h.GetBundleVersion(), h.GetAppliedVersion(), h.GetBackend(), h.GetExecMode(),
			fleet.SummarizeGuarantees(h.GetGuarantees()), h.GetEventsLost(), h.GetKernelLost(), state)
	}
	return tw.Flush()
}

func fleetTagCmd(o *fleetOpts) *cobra.Command {
	var add, remove []string
	cmd := &cobra.Command{
		Use:   "tag HOST",
		Short: "Add or remove a host's tags (rules scoped tag:X follow)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.call(cmd, func(ctx context.Context, c fleetv1.FleetAdminClient) error {
				h, err := c.TagHost(ctx, &fleetv1.TagHostRequest{HostId: args[0], Add: add, Remove: remove})
				if err != nil {
					return err
				}
				if o.json() {
					return printJSON(cmd.OutOrStdout(), h)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: tags %s\n", h.GetId(), strings.Join(h.GetTags(), ","))
				return nil
			})
		},
	}
	cmd.Flags().StringSliceVar(&add, "add", nil, "tags to add")
	cmd.Flags().StringSliceVar(&remove, "remove", nil, "tags to remove")
	return cmd
}

func fleetRevokeCmd(o *fleetOpts) *cobra.Command {
	return &cobra.Command{
		Use:   "revoke HOST",
		Short: "Revoke a host: its certificate is refused from now on",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.call(cmd, func(ctx context.Context, c fleetv1.FleetAdminClient) error {
				h, err := c.RevokeHost(ctx, &fleetv1.RevokeHostRequest{HostId: args[0]})
				if err != nil {
					return err
				}
				if o.json() {
					return printJSON(cmd.OutOrStdout(), h)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: revoked\n", h.GetId())
				return nil
			})
		},
	}
}

func fleetQueueCmd(o *fleetOpts) *cobra.Command {
	return &cobra.Command{
		Use:   "queue",
		Short: "List the approval queue: unknown code seen on the fleet",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.call(cmd, func(ctx context.Context, c fleetv1.FleetAdminClient) error {
				resp, err := c.ListQueue(ctx, &fleetv1.ListQueueRequest{})
				if err != nil {
					return err
				}
				if o.json() {
					return printJSON(cmd.OutOrStdout(), resp)
				}
				w := cmd.OutOrStdout()
				for _, e := range resp.GetEntries() {
					fmt.Fprintf(w, "%s  %d attempts (%d refused) on %d hosts, %s .. %s\n", e.GetSha256(), e.GetCount(), e.GetRefused(),
						len(e.GetHosts()), fmtTime(e.GetFirstSeen()), fmtTime(e.GetLastSeen()))
					for _, p := range e.GetPaths() {
						fmt.Fprintf(w, "    path     %s\n", p)
					}
					for _, p := range e.GetProcesses() {
						fmt.Fprintf(w, "    process  %s\n", p)
					}
					for _, k := range e.GetSigners() {
						fmt.Fprintf(w, "    signer   %s\n", k)
					}
				}
				return nil
			})
		},
	}
}

func fleetApproveCmd(o *fleetOpts) *cobra.Command {
	req := &fleetv1.ApproveRequest{}
	var keyFile string
	cmd := &cobra.Command{
		Use:   "approve (--sha256 HEX | --signer PUBKEY.pem) --scope global|tag:X|host:ID",
		Short: "Approve (or --deny) code by its SHA-256, or approve a catalog signer, for a scope; the hosts get it in their next signed bundle",
		Long: `Approve code by its SHA-256, or approve the catalog signer whose public key
is in --signer: a signer rule for the scope, and every queued digest
that hosts reported as listed by that signer's catalogs leaves the queue
(the queue lists those signers by key id; the key itself comes from the
vendor, as for 'vigil fleet rule add --kind signer').`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if (req.GetSha256() == "") == (keyFile == "") {
				return fmt.Errorf("give exactly one of --sha256 and --signer")
			}
			if keyFile != "" {
				b, err := os.ReadFile(keyFile)
				if err != nil {
					return err
				}
				req.SignerKey = string(b)
			}
			return o.call(cmd, func(ctx context.Context, c fleetv1.FleetAdminClient) error {
				r, err := c.Approve(ctx, req)
				if err != nil {
					return err
				}
				if o.json() {
					return printJSON(cmd.OutOrStdout(), r)
				}
				what := r.GetValue()
				if r.GetKind() == fleet.KindSigner {
					what = "signer " + keyFile
				}
				fmt.Fprintf(cmd.OutOrStdout(), "rule %d: %s %s for %s\n", r.GetId(), r.GetVerdict(), what, r.GetScope())
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&req.Sha256, "sha256", "", "the code's SHA-256 (hex)")
	cmd.Flags().StringVar(&keyFile, "signer", "", "approve the catalog signer with this public key (PEM file) instead")
	cmd.Flags().StringVar(&req.Scope, "scope", "global", "global, tag:NAME or host:ID")
	cmd.Flags().BoolVar(&req.Deny, "deny", false, "deny instead of approve (--sha256 only)")
	cmd.Flags().StringVar(&req.Comment, "comment", "", "why")
	return cmd
}

func fleetRulesCmd(o *fleetOpts) *cobra.Command {
	return &cobra.Command{
		Use:   "rules",
		Short: "List the server's rules",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.call(cmd, func(ctx context.Context, c fleetv1.FleetAdminClient) error {
				resp, err := c.ListRules(ctx, &fleetv1.ListRulesRequest{})
				if err != nil {
					return err
				}
				if o.json() {
					return printJSON(cmd.OutOrStdout(), resp)
				}
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tKIND\tVERDICT\tSCOPE\tROLLOUT\tHOSTS\tVALUE\tCOMMENT")
				for _, r := range resp.GetRules() {
					v := r.GetValue()
					if r.GetKind() != fleet.KindSHA256 {
						v = fmt.Sprintf("(%d bytes)", len(v))
					}
					fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d/%d\t%s\t%s\n", r.GetId(), r.GetKind(), r.GetVerdict(), r.GetScope(),
						RolloutString(r.GetRollout()), r.GetRolloutHosts(), r.GetScopeHosts(), v, r.GetComment())
				}
				return tw.Flush()
			})
		},
	}
}

func fleetRuleCmd(o *fleetOpts) *cobra.Command {
	cmd := &cobra.Command{Use: "rule", Short: "Add or delete a rule"}
	r := &fleetv1.Rule{}
	var file string
	add := &cobra.Command{
		Use:   "add --kind sha256|signer|policy ...",
		Short: "Add a rule: a hash verdict, a catalog signer (--file PUBKEY) or a behavior policy (--file YAML)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file != "" {
				b, err := os.ReadFile(file)
				if err != nil {
					return err
				}
				r.Value = string(b)
			}
			return o.call(cmd, func(ctx context.Context, c fleetv1.FleetAdminClient) error {
				out, err := c.AddRule(ctx, r)
				if err != nil {
					return err
				}
				return printRule(cmd, o, out)
			})
		},
	}
	f := add.Flags()
	ro := &fleetv1.Rollout{}
	var preview bool
	add.PreRunE = func(cmd *cobra.Command, _ []string) error {
		if ro.Percent > 0 || ro.Tag != "" || preview {
			ro.Stage = fleet.StageStaged
			if preview {
				ro.Stage = fleet.StagePreview
			}
			r.Rollout = ro
		}
		return nil
	}
	f.Uint32Var(&ro.Percent, "rollout-percent", 0, "staged rollout: only this percentage of the hosts in scope (chosen by host id)")
	f.StringVar(&ro.Tag, "rollout-tag", "", "staged rollout: and the hosts with this tag")
	f.BoolVar(&preview, "preview", false, "staged rollout in monitor mode: policies recorded, hash denies would-block")
	f.StringVar(&r.Kind, "kind", fleet.KindSHA256, "sha256, signer or policy")
	f.StringVar(&r.Value, "value", "", "the SHA-256 (kind sha256)")
	f.StringVar(&file, "file", "", "the signer's public key or the policy YAML")
	f.StringVar(&r.Verdict, "verdict", "", "allow or deny (sha256); allow (signer)")
	f.StringVar(&r.Scope, "scope", "global", "global, tag:NAME or host:ID")
	f.StringVar(&r.Comment, "comment", "", "why; the policy's name for kind policy")
	del := &cobra.Command{
		Use:   "delete ID",
		Short: "Delete a rule",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := strconv.ParseUint(args[0], 10, 64)
			if err != nil {
				return fmt.Errorf("rule id %q: %w", args[0], err)
			}
			return o.call(cmd, func(ctx context.Context, c fleetv1.FleetAdminClient) error {
				_, err := c.DeleteRule(ctx, &fleetv1.DeleteRuleRequest{Id: id})
				return err
			})
		},
	}
	cmd.AddCommand(add, del, fleetRolloutCmd(o), fleetPromoteCmd(o))
	return cmd
}

// RolloutString is a rule's rollout state for people: full, or "preview
// 10% tag:canary".
func RolloutString(r *fleetv1.Rollout) string {
	return fleet.Rollout{Stage: r.GetStage(), Percent: r.GetPercent(), Tag: r.GetTag()}.String()
}

func printRule(cmd *cobra.Command, o *fleetOpts, r *fleetv1.Rule) error {
	if o.json() {
		return printJSON(cmd.OutOrStdout(), r)
	}
	fmt.Fprintf(cmd.OutOrStdout(), "rule %d: %s %s for %s, rollout %s\n", r.GetId(), r.GetKind(), r.GetVerdict(), r.GetScope(), RolloutString(r.GetRollout()))
	return nil
}

func parseRuleID(s string) (uint64, error) {
	id, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("rule id %q: %w", s, err)
	}
	return id, nil
}

func fleetRolloutCmd(o *fleetOpts) *cobra.Command {
	ro := &fleetv1.Rollout{}
	var full bool
	cmd := &cobra.Command{
		Use:   "rollout ID --stage preview|staged --percent N [--tag T] | --full",
		Short: "Set a rule's staged rollout (docs/fleet.md)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseRuleID(args[0])
			if err != nil {
				return err
			}
			if full {
				ro = &fleetv1.Rollout{}
			} else if ro.GetStage() == "" {
				return fmt.Errorf("give --stage preview|staged, or --full")
			}
			return o.call(cmd, func(ctx context.Context, c fleetv1.FleetAdminClient) error {
				r, err := c.UpdateRollout(ctx, &fleetv1.UpdateRolloutRequest{Id: id, Rollout: ro})
				if err != nil {
					return err
				}
				return printRule(cmd, o, r)
			})
		},
	}
	cmd.Flags().StringVar(&ro.Stage, "stage", "", "preview (monitor mode) or staged (as written)")
	cmd.Flags().Uint32Var(&ro.Percent, "percent", 0, "percentage of the hosts in scope (chosen by host id)")
	cmd.Flags().StringVar(&ro.Tag, "tag", "", "and the hosts with this tag")
	cmd.Flags().BoolVar(&full, "full", false, "every host in the scope")
	return cmd
}

func fleetPromoteCmd(o *fleetOpts) *cobra.Command {
	return &cobra.Command{
		Use:   "promote ID",
		Short: "Promote a rule's rollout: preview -> staged -> full",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseRuleID(args[0])
			if err != nil {
				return err
			}
			return o.call(cmd, func(ctx context.Context, c fleetv1.FleetAdminClient) error {
				r, err := c.UpdateRollout(ctx, &fleetv1.UpdateRolloutRequest{Id: id, Promote: true})
				if err != nil {
					return err
				}
				return printRule(cmd, o, r)
			})
		},
	}
}

func fleetEventsCmd(o *fleetOpts) *cobra.Command {
	req := &fleetv1.ListEventsRequest{}
	cmd := &cobra.Command{
		Use:   "events",
		Short: "Show the newest events the hosts uploaded",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.call(cmd, func(ctx context.Context, c fleetv1.FleetAdminClient) error {
				resp, err := c.ListEvents(ctx, req)
				if err != nil {
					return err
				}
				if o.json() {
					return printJSON(cmd.OutOrStdout(), resp)
				}
				for _, e := range resp.GetEvents() {
					ev := e.GetEvent()
					fmt.Fprintf(cmd.OutOrStdout(), "%s  %s  %-10s pid %d %s  %s\n", fmtTime(ev.GetTime()), e.GetHostId(), ev.GetKind(),
						ev.GetProcess().GetPid(), ev.GetProcess().GetExe(), ev.GetVerdict().GetAction())
				}
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&req.HostId, "host", "", "only this host")
	cmd.Flags().StringVar(&req.Kind, "kind", "", "only events of this kind")
	cmd.Flags().StringVar(&req.Verdict, "verdict", "", "only events with this verdict: refused, would-block, deny, kill, alert, allow, trusted, unknown, denied")
	cmd.Flags().Uint32Var(&req.Offset, "offset", 0, "skip this many of the newest matching events")
	cmd.Flags().Uint32Var(&req.Limit, "limit", 100, "at most this many, the newest")
	return cmd
}

func fleetSignCmd(o *fleetOpts) *cobra.Command {
	var keyPath string
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "sign-bundle --key ADMIN.KEY",
		Short: "Sign the bundles waiting for a signature (a server without --signing-key) and hand them back",
		Long: `Fetch the bundle payloads the server made but could not sign, check them,
print what each gives its host, sign them with the administrator key and
store them on the server, which pushes them to the hosts. Read what is
printed: the key vouches for exactly that.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			priv, err := sign.LoadPrivateKey(keyPath)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			return o.call(cmd, func(ctx context.Context, c fleetv1.FleetAdminClient) error {
				resp, err := c.UnsignedBundles(ctx, &fleetv1.UnsignedBundlesRequest{})
				if err != nil {
					return err
				}
				if len(resp.GetBundles()) == 0 {
					fmt.Fprintln(w, "no bundle waits for a signature")
					return nil
				}
				for _, ub := range resp.GetBundles() {
					b, err := fleet.ParsePayload(ub.GetPayload())
					if err != nil {
						return fmt.Errorf("bundle for %s: %w", ub.GetHostId(), err)
					}
					if b.Host != ub.GetHostId() || b.Version != ub.GetVersion() {
						return fmt.Errorf("bundle for %s v%d: its payload says %s v%d", ub.GetHostId(), ub.GetVersion(), b.Host, b.Version)
					}
					fmt.Fprintf(w, "host %s version %d: %d hash rules, %d signers, %d policies\n", b.Host, b.Version, len(b.Hashes), len(b.Signers), len(b.Policies))
					for _, h := range b.Hashes {
						fmt.Fprintf(w, "    %-5s %s  (%s, rule %d)\n", h.Verdict, h.SHA256, h.Scope, h.Rule)
					}
					if dryRun {
						continue
					}
					env, err := fleet.SignPayload(ctx, priv, ub.GetPayload())
					if err != nil {
						return err
					}
					if _, err := c.PutBundle(ctx, &fleetv1.PutBundleRequest{Envelope: env}); err != nil {
						return fmt.Errorf("bundle for %s v%d: %w", b.Host, b.Version, err)
					}
					fmt.Fprintf(w, "    signed\n")
				}
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&keyPath, "key", "", "the administrator's ed25519 private key")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "show what would be signed, sign nothing")
	cmd.MarkFlagRequired("key") //nolint:errcheck // the flag exists
	return cmd
}
