package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/agent"
)

const (
	waitPoll    = 200 * time.Millisecond
	callTimeout = 5 * time.Second
)

func newStatusCmd(g *globals) *cobra.Command {
	var (
		output string
		wait   time.Duration
	)
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the agent's status",
		Long: `Show the agent's status: backend, attached hooks, kernel features and counters.

With --wait, keep asking until the agent answers and its sensors are
attached, up to the given time; exit non-zero if it does not get there.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			var (
				st  *vigilv1.StatusResponse
				err error
			)
			if wait > 0 {
				st, err = waitReady(cmd.Context(), g.socket, wait)
			} else {
				st, err = getStatus(cmd.Context(), g.socket)
			}
			if err != nil {
				return err
			}
			if output == "json" {
				b, err := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true, Multiline: true}.Marshal(st)
				if err != nil {
					return err
				}
				_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s\n", b)
				return err
			}
			return printStatus(cmd.OutOrStdout(), st, g.socket, time.Now())
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	cmd.Flags().DurationVar(&wait, "wait", 0, "wait up to this long for the agent to answer with its sensors attached")
	return cmd
}

func checkOutput(o string) error {
	if o != "text" && o != "json" {
		return fmt.Errorf("--output %q: want text or json", o)
	}
	return nil
}

func getStatus(ctx context.Context, socket string) (*vigilv1.StatusResponse, error) {
	c, err := dial(socket)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	st, err := c.Status(ctx, &vigilv1.StatusRequest{})
	return st, c.explain(err)
}

// waitReady polls the agent until it answers with sensors attached or
// timeout passes. Each try uses a new connection, so the client's
// reconnect backoff never delays noticing the agent.
func waitReady(ctx context.Context, socket string, timeout time.Duration) (*vigilv1.StatusResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		st, err := getStatus(ctx, socket)
		switch {
		case err == nil && st.GetSensorsAttached():
			return st, nil
		case err == nil:
			last = errors.New("the agent answers but its sensors are not attached yet")
		case errors.Is(err, context.Canceled) || ctx.Err() != nil:
			// The wait itself ran out (or was interrupted) during the call.
		default:
			last = err
		}
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				if last == nil {
					last = errors.New("no answer")
				}
				return nil, fmt.Errorf("agent not ready after %s: %w", timeout, last)
			}
			return nil, ctx.Err()
		case <-time.After(waitPoll):
		}
	}
}

func printStatus(w io.Writer, st *vigilv1.StatusResponse, socket string, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, format string, args ...any) {
		fmt.Fprintf(tw, "%s\t%s\n", k, fmt.Sprintf(format, args...))
	}
	started := st.GetStartedAt().AsTime()
	row("Agent:", "running, pid %d, up %s (since %s)", st.GetAgentPid(),
		now.Sub(started).Round(time.Second), started.Local().Format("2006-01-02 15:04:05"))
	row("Socket:", "%s", socket)
	row("Version:", "%s", orDash(st.GetVersion()))
	row("Kernel:", "%s", orDash(st.GetKernelRelease()))
	row("Backend:", "%s", orDash(st.GetBackend()))
	for _, f := range st.GetFeatures() {
		if f.GetName() == agent.FeatureTamperProtection {
			row("Protection:", "%s", f.GetDetail())
		}
	}
	if st.GetSensorsAttached() {
		row("Sensors:", "attached, %d hooks", len(st.GetHooks()))
	} else {
		row("Sensors:", "NOT attached")
	}
	list := func(title string, items []string) {
		if len(items) == 0 {
			return
		}
		for i, it := range items {
			k := ""
			if i == 0 {
				k = title
			}
			row(k, "%s", it)
		}
	}
	list("Hooks:", st.GetHooks())
	list("Missing hooks:", st.GetMissingHooks())
	c := st.GetCounters()
	row("Events:", "%d received, %d lost, %d stored, %d store errors",
		c.GetEventsReceived(), c.GetEventsLost(), c.GetEventsStored(), c.GetStoreErrors())
	if len(c.GetByKind()) > 0 {
		var parts []string
		for _, k := range slices.Sorted(maps.Keys(c.GetByKind())) {
			parts = append(parts, fmt.Sprintf("%s %d", k, c.GetByKind()[k]))
		}
		row("By kind:", "%s", strings.Join(parts, ", "))
	}
	if in := st.GetIntegrity(); in != nil {
		last := "not yet"
		if in.GetLastCheck() != nil {
			last = fmt.Sprintf("%s ago (%s)", now.Sub(in.GetLastCheck().AsTime()).Round(time.Second), orDash(in.GetLastTrigger()))
		}
		row("Integrity:", "%d violations, last check %s, every %s, baseline %s, %d sections unreadable",
			in.GetViolations(), last, in.GetInterval().AsDuration(), in.GetBaseline(), len(in.GetUnreadable()))
	} else {
		row("Integrity:", "watch off")
	}
	if fl := st.GetFleet(); fl != nil {
		contact := "never"
		if fl.GetLastContact() != nil {
			contact = fmt.Sprintf("%s ago", now.Sub(fl.GetLastContact().AsTime()).Round(time.Second))
		}
		bundle := "no bundle"
		if fl.GetAppliedVersion() > 0 {
			bundle = fmt.Sprintf("bundle v%d (%d hash, %d signer, %d policy rules)", fl.GetAppliedVersion(), fl.GetHashes(), fl.GetSigners(), fl.GetPolicies())
			if fl.GetBundleIssued() != nil {
				bundle += ", issued " + fl.GetBundleIssued().AsTime().UTC().Format(time.RFC3339)
			}
		}
		enrolled := "enrolled"
		if !fl.GetEnrolled() {
			enrolled = "not enrolled"
		}
		row("Fleet:", "%s as %s (%s), %s, last contact %s", fl.GetServer(), fl.GetHostId(), enrolled, bundle, contact)
		if fl.GetLastError() != "" {
			row("", "last error: %s", fl.GetLastError())
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(st.GetFeatures()) == 0 {
		return nil
	}
	fmt.Fprintln(w, "\nKernel features:")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, f := range st.GetFeatures() {
		avail := "no"
		if f.GetAvailable() {
			avail = "yes"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", f.GetName(), avail, f.GetDetail())
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
