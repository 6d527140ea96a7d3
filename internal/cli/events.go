package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/timestamppb"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/agent"
)

func newEventsCmd(g *globals) *cobra.Command {
	var (
		output   string
		follow   bool
		kinds    []string
		pid      uint32
		limit    uint32
		since    string
		afterID  uint64
		afterSeq uint64
	)
	cmd := &cobra.Command{
		Use:   "events",
		Short: "Show stored events, and follow new ones",
		Long: `Show the events the agent stored, oldest first; with --follow, then show
new events as they arrive (until interrupted).

--limit N shows the most recent N matching events; with --after-id it shows
the first N after that id instead (to page through the store).

-o json prints one JSON object a line, with the field names of the API's
Event message (the same form as the agent's --jsonl file).`,
		Example: `  vigil events --limit 20
  vigil events --follow --kind exec --kind image_load
  vigil events --since 10m --pid 1234 -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			req := &vigilv1.EventsRequest{
				Kinds:    kinds,
				Pid:      pid,
				AfterId:  afterID,
				AfterSeq: afterSeq,
				Limit:    limit,
				Latest:   limit > 0 && afterID == 0,
				Follow:   follow,
			}
			if since != "" {
				t, err := parseSince(since, time.Now())
				if err != nil {
					return err
				}
				req.Since = timestamppb.New(t)
			}
			return streamEvents(cmd.Context(), cmd.OutOrStdout(), g.socket, req, output == "json")
		},
	}
	f := cmd.Flags()
	f.StringVarP(&output, "output", "o", "text", "output format: text or json (one object a line)")
	f.BoolVarP(&follow, "follow", "f", false, "after the stored events, show new ones as they arrive")
	f.StringSliceVar(&kinds, "kind", nil, "only events of this kind (repeatable or comma-separated): exec, fork, exit, image_load, mem_exec, inject, kernel, file_modify, open, integrity, tamper, filter, gap")
	f.Uint32Var(&pid, "pid", 0, "only events of this process (thread group id)")
	f.Uint32Var(&limit, "limit", 0, "at most this many stored events: the most recent ones (0: all)")
	f.StringVar(&since, "since", "", "only events at or after this time: a duration back (10m, 2h, 1d) or a time (RFC 3339, or 2006-01-02 15:04)")
	f.Uint64Var(&afterID, "after-id", 0, "only events with a store id above this")
	f.Uint64Var(&afterSeq, "after-seq", 0, "only events with a kernel sequence number above this")
	return cmd
}

func streamEvents(ctx context.Context, out io.Writer, socket string, req *vigilv1.EventsRequest, asJSON bool) error {
	c, err := dial(socket)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.Events(ctx, req)
	if err != nil {
		return c.explain(err)
	}
	w := bufio.NewWriter(out)
	defer w.Flush()
	if !asJSON {
		fmt.Fprintf(w, "%8s  %-23s  %-10s  %7s  %s\n", "ID", "TIME", "KIND", "PID", "EXE / DETAIL")
	}
	var buf []byte
	for {
		ev, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			if req.GetFollow() {
				return errors.New("the agent ended the event stream (it is stopping)")
			}
			return nil
		}
		if err != nil {
			err = c.explain(err)
			if errors.Is(err, context.Canceled) && req.GetFollow() {
				return nil // interrupted: the normal end of --follow
			}
			return err
		}
		if asJSON {
			buf, err = agent.AppendEventJSON(buf[:0], ev)
			if err != nil {
				return err
			}
			w.Write(buf)
			w.WriteByte('\n')
		} else {
			w.WriteString(formatEvent(ev))
		}
		// Following: show each event as it comes; else write in blocks.
		if req.GetFollow() {
			if err := w.Flush(); err != nil {
				return err
			}
		}
	}
}

// formatEvent is the one-line human form of an event.
func formatEvent(ev *vigilv1.Event) string {
	var b strings.Builder
	t := "-"
	if ev.GetTime() != nil {
		t = ev.GetTime().AsTime().Local().Format("2006-01-02 15:04:05.000")
	}
	id := "-"
	if ev.GetId() != 0 {
		id = strconv.FormatUint(ev.GetId(), 10)
	}
	fmt.Fprintf(&b, "%8s  %-23s  %-10s  %7d  ", id, t, ev.GetKind(), ev.GetProcess().GetPid())
	exe := ev.GetProcess().GetExe()
	if exe == "" {
		exe = ev.GetProcess().GetComm()
	}
	detail := eventDetail(ev)
	switch {
	case exe != "" && detail != "":
		b.WriteString(exe + "  " + detail)
	default:
		b.WriteString(exe + detail)
	}
	if v := ev.GetVerdict(); v != nil {
		fmt.Fprintf(&b, "  [%s by rule %s, %s, %s]", v.GetAction(), orDash(v.GetRule()), v.GetMode(), v.GetDecidedBy())
	}
	b.WriteByte('\n')
	return b.String()
}

func eventDetail(ev *vigilv1.Event) string {
	switch d := ev.GetDetail().(type) {
	case *vigilv1.Event_Exec:
		s := quoteArgv(d.Exec.GetArgv())
		if d.Exec.GetArgvTruncated() {
			s += " …"
		}
		if fn := d.Exec.GetFilename(); fn != "" && fn != d.Exec.GetFile().GetPath() {
			s += " (as " + fn + ")"
		}
		return s
	case *vigilv1.Event_FileModify:
		s := d.FileModify.GetOp() + " " + d.FileModify.GetFile().GetPath()
		if np := d.FileModify.GetNewPath(); np != "" {
			s += " → " + np
		}
		return s
	case *vigilv1.Event_FileOpen:
		return "open " + d.FileOpen.GetFile().GetPath()
	case *vigilv1.Event_Fork:
		return fmt.Sprintf("child %d", d.Fork.GetChildPid())
	case *vigilv1.Event_Exit:
		switch {
		case d.Exit.GetSignal() != 0 && d.Exit.GetCoreDumped():
			return fmt.Sprintf("killed by signal %d (core dumped)", d.Exit.GetSignal())
		case d.Exit.GetSignal() != 0:
			return fmt.Sprintf("killed by signal %d", d.Exit.GetSignal())
		}
		return fmt.Sprintf("exit code %d", d.Exit.GetCode())
	case *vigilv1.Event_ImageLoad:
		return "maps " + d.ImageLoad.GetFile().GetPath()
	case *vigilv1.Event_MemExec:
		m := d.MemExec
		s := fmt.Sprintf("%s addr 0x%x len %d prot 0x%x", m.GetSyscall(), m.GetAddr(), m.GetLen(), m.GetProt())
		if m.GetAnonymous() {
			s += " anonymous"
		} else if p := m.GetFile().GetPath(); p != "" {
			s += " file " + p
		}
		return s
	case *vigilv1.Event_Inject:
		s := fmt.Sprintf("%s → pid %d", d.Inject.GetMethod(), d.Inject.GetTargetPid())
		if te := d.Inject.GetTargetExe(); te != "" {
			s += " " + te
		}
		return s
	case *vigilv1.Event_Kernel:
		k := d.Kernel
		s := k.GetOp()
		if p := k.GetFile().GetPath(); p != "" {
			s += " " + p
		}
		if n := k.GetBpfProgName(); n != "" {
			s += " prog " + n
		}
		if dt := k.GetDetail(); dt != "" {
			s += " (" + dt + ")"
		}
		return s
	case *vigilv1.Event_Integrity:
		in := d.Integrity
		s := fmt.Sprintf("%s %s: %s", in.GetCheck(), in.GetSubject(), in.GetDetail())
		if tr := in.GetTrigger(); tr != "" {
			s += " [" + tr + "]"
		}
		return s
	case *vigilv1.Event_Gap:
		return fmt.Sprintf("LOST %d events after seq %d (%d lost since the agent started)",
			d.Gap.GetLost(), d.Gap.GetAfterSeq(), d.Gap.GetLostTotal())
	}
	return ""
}

// quoteArgv joins argv, quoting arguments a shell would split or mangle.
func quoteArgv(argv []string) string {
	parts := make([]string, len(argv))
	for i, a := range argv {
		if a == "" || strings.ContainsFunc(a, func(r rune) bool {
			return r <= ' ' || r == 0x7f || strings.ContainsRune(`"'\$`+"`", r)
		}) {
			a = strconv.Quote(a)
		}
		parts[i] = a
	}
	return strings.Join(parts, " ")
}
