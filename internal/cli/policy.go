package cli

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/policy"
	"github.com/vigil-hips/vigil/internal/trust"
)

// newPolicyCmd returns `vigil policy`: policy files checked and tried on
// events offline, and applied to the running agent.
func newPolicyCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Check, try and apply policy files",
		Long: `Check policy files and try them on recorded events (offline: no agent
needed), and apply one to the running agent. The language is described in
docs/policy.md.`,
	}
	cmd.AddCommand(newPolicyCheckCmd(), newPolicyTestCmd(), newPolicyApplyCmd(g))
	return cmd
}

// newPolicyApplyCmd is `vigil policy apply FILE`.
func newPolicyApplyCmd(g *globals) *cobra.Command {
	var tokenFile string
	cmd := &cobra.Command{
		Use:   "apply FILE",
		Short: "Make FILE the policy the running agent enforces",
		Long: `Send FILE to the running agent, which parses, validates and compiles it and
then swaps it in atomically. A policy that is refused (reported with
file:line:column) changes nothing: the policy in force stays in force.
The agent keeps the policy applied and enforces it again after a restart.
A protected agent needs --token: an apply-policy token for this policy
(vigil admin sign --action apply-policy --policy FILE).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			content, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			c, err := dial(g.socket)
			if err != nil {
				return err
			}
			defer c.Close()
			var token []byte
			if tokenFile != "" {
				if token, err = os.ReadFile(tokenFile); err != nil {
					return err
				}
			}
			resp, err := c.ApplyPolicy(cmd.Context(), &vigilv1.ApplyPolicyRequest{Name: args[0], Content: content, Token: token})
			if err != nil {
				if st, ok := status.FromError(err); ok && st.Code() == codes.InvalidArgument {
					return errors.New(st.Message())
				}
				return c.explain(err)
			}
			p := resp.GetPolicy()
			fmt.Fprintf(cmd.OutOrStdout(), "%s: in force (%s, mode %s, digest %s)\n",
				args[0], plural(len(p.GetRules()), "rule"), p.GetMode(), p.GetDigest())
			for _, w := range p.GetWarnings() {
				fmt.Fprintf(cmd.OutOrStdout(), "warning: %s\n", w)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&tokenFile, "token", "", "signed admin token file (needed by a protected agent)")
	return cmd
}

func newPolicyCheckCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "check FILE...",
		Short: "Validate policy files",
		Long: `Validate policy files. For a valid file, print its number of rules, its mode
and its digest (the SHA-256 of its canonical form, which names the policy in
force); otherwise print every error as FILE:LINE:COL: MESSAGE, and exit
non-zero.`,
		Example: `  vigil policy check /etc/vigil/policy.yaml`,
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			failed := 0
			for _, file := range args {
				p, err := policy.Load(file)
				var list *policy.ErrorList
				switch {
				case errors.As(err, &list):
					fmt.Fprintln(cmd.ErrOrStderr(), list)
					failed++
				case err != nil:
					return err
				default:
					fmt.Fprintf(cmd.OutOrStdout(), "%s: ok (%s, mode %s, digest %s)\n", file, plural(len(p.Rules), "rule"), p.Mode, p.Digest())
				}
			}
			if failed > 0 {
				return fmt.Errorf("%d of %s invalid", failed, plural(len(args), "policy file"))
			}
			return nil
		},
	}
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return strconv.Itoa(n) + " " + what + "s"
}

func newPolicyTestCmd() *cobra.Command {
	var (
		eventFile, output string
		hashes, cgroups   []string
		ancestries        []string
		signers           []string
		trustDB           string
	)
	cmd := &cobra.Command{
		Use:   "test FILE --event JSON",
		Short: "Show what a policy decides about recorded events",
		Long: `Evaluate a policy on events and print, for each, the verdict and the rule
that decided it. The events are in the JSON form of "vigil events -o json":
one or more objects, from a file or "-" for stdin.

What an event does not carry is taken from the flags, else from this host:
  - the SHA-256 of a process's executable: --sha256 PATH=HEX, else the
    file at that path on this host (if the event gives its dev and inode,
    only when they match);
  - a cgroup's path (the event has its id): --cgroup ID=PATH;
  - an inject target's ancestry: --ancestry PID=PPID,GRANDPARENT,..., else
    the ancestry of the process with that pid in another of the events;
  - the signers of a process's executable (process.signer): --signer
    PATH=KEYID,..., else the catalogs of the trust database (--trust-db, if
    it exists) that list the executable's SHA-256 and verify with the key
    of an approved signer the policy names.
Unknown facts make the conditions that need them not hold; an unknown
ancestry is not a descendant's. An exec event records the new image, not
the caller's executable: process conditions other than uid, cgroup and
ancestor_exe do not hold for it.`,
		Example: `  vigil policy test hardening.yaml --event event.json
  vigil events --kind inject -o json | vigil policy test hardening.yaml --event - -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			p, err := policy.Load(args[0])
			if err != nil {
				return err
			}
			events, err := readEvents(cmd.InOrStdin(), eventFile)
			if err != nil {
				return err
			}
			env, err := newTestEnv(hashes, cgroups, ancestries, events)
			if err != nil {
				return err
			}
			if err := env.addSigners(cmd.Context(), signers, trustDB, p.Signers()); err != nil {
				return err
			}
			w := bufio.NewWriter(cmd.OutOrStdout())
			defer w.Flush()
			for _, ev := range events {
				in, err := policy.FromEvent(ev)
				var v *policy.Verdict
				if err == nil {
					verdict := p.Evaluate(in, env)
					v = &verdict
				}
				if output == "json" {
					if err := writeVerdictJSON(w, ev, v, p, err); err != nil {
						return err
					}
					continue
				}
				w.WriteString(formatEvent(ev))
				if err != nil {
					fmt.Fprintf(w, "  → not decided: %v\n", err)
				} else {
					fmt.Fprintf(w, "  → %s\n", verdictText(*v, p))
				}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&eventFile, "event", "", `file of events in the JSON form of "vigil events -o json" ("-": stdin)`)
	f.StringVarP(&output, "output", "o", "text", "output format: text or json (one object an event)")
	f.StringArrayVar(&hashes, "sha256", nil, "PATH=HEX: the SHA-256 of the executable at PATH (repeatable)")
	f.StringArrayVar(&cgroups, "cgroup", nil, "ID=PATH: the path of the cgroup with this id, e.g. 1234=/system.slice/nginx.service (repeatable)")
	f.StringArrayVar(&ancestries, "ancestry", nil, "PID=PPID,...: the ancestry of process PID, parent first (repeatable)")
	f.StringArrayVar(&signers, "signer", nil, "PATH=KEYID,...: the signers whose catalogs list the executable at PATH (repeatable)")
	f.StringVar(&trustDB, "trust-db", defaultTrustDB, "trust database whose catalogs decide process.signer (ignored if it does not exist)")
	cmd.MarkFlagRequired("event")
	return cmd
}

func verdictText(v policy.Verdict, p *policy.Policy) string {
	if v.Rule == "" {
		return fmt.Sprintf("allow: no rule matched (the default; mode %s)", v.Mode)
	}
	s := fmt.Sprintf("%s by rule %s", v.Action, v.Rule)
	switch {
	case v.Enforced && v.Action == policy.Kill:
		s += " (enforced: the operation is refused and the process killed)"
	case v.Enforced:
		s += " (enforced: the operation is refused)"
	case v.Action == policy.Deny || v.Action == policy.Kill:
		s += " (monitor: a would-be verdict, not enforced)"
	default:
		s += fmt.Sprintf(" (mode %s: the operation goes on)", v.Mode)
	}
	if r := ruleByID(p, v.Rule); r != nil && r.Description != "" {
		s += ": " + r.Description
	}
	return s
}

func ruleByID(p *policy.Policy, id string) *policy.Rule {
	for _, r := range p.Rules {
		if r.ID == id {
			return r
		}
	}
	return nil
}

func writeVerdictJSON(w io.Writer, ev *vigilv1.Event, v *policy.Verdict, p *policy.Policy, decideErr error) error {
	out := struct {
		ID              uint64          `json:"id,omitempty"`
		Seq             uint64          `json:"seq,omitempty"`
		Kind            string          `json:"kind"`
		Pid             uint32          `json:"pid,omitempty"`
		Verdict         *policy.Verdict `json:"verdict,omitempty"`
		RuleDescription string          `json:"rule_description,omitempty"`
		NotDecided      string          `json:"not_decided,omitempty"`
	}{ID: ev.GetId(), Seq: ev.GetSeq(), Kind: ev.GetKind(), Pid: ev.GetProcess().GetPid(), Verdict: v}
	if decideErr != nil {
		out.NotDecided = decideErr.Error()
	} else if r := ruleByID(p, v.Rule); r != nil {
		out.RuleDescription = r.Description
	}
	b, err := json.Marshal(out)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// readEvents reads one or more JSON events, one after the other (JSON
// lines, or indented objects).
func readEvents(stdin io.Reader, name string) ([]*vigilv1.Event, error) {
	r := stdin
	if name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	dec := json.NewDecoder(r)
	var events []*vigilv1.Event
	for {
		var raw json.RawMessage
		if err := dec.Decode(&raw); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, fmt.Errorf("%s: event %d: %w", name, len(events)+1, err)
		}
		ev := new(vigilv1.Event)
		if err := protojson.Unmarshal(raw, ev); err != nil {
			return nil, fmt.Errorf("%s: event %d: %w", name, len(events)+1, err)
		}
		events = append(events, ev)
	}
	if len(events) == 0 {
		return nil, fmt.Errorf("%s: no event", name)
	}
	return events, nil
}

// testEnv is policy.Env for `vigil policy test`: the flags, the other
// events, and this host's files.
type testEnv struct {
	hashes    map[string]string
	signers   map[string][]string // by path, from --signer
	signed    map[string][]string // by digest, from the trust database
	cgroups   map[uint64]string
	ancestry  map[uint32][]policy.Ancestor
	hashFiles func(policy.File) (string, bool)
}

func newTestEnv(hashes, cgroups, ancestries []string, events []*vigilv1.Event) (*testEnv, error) {
	env := &testEnv{hashes: map[string]string{}, cgroups: map[uint64]string{}, ancestry: map[uint32][]policy.Ancestor{}, hashFiles: hashLocalFile}
	for _, ev := range events {
		if in, err := policy.FromEvent(ev); err == nil && len(in.Process.Ancestry) > 0 {
			env.ancestry[in.Process.Pid] = in.Process.Ancestry
		}
	}
	for _, h := range hashes {
		path, hx, ok := strings.Cut(h, "=")
		if _, err := hex.DecodeString(hx); !ok || err != nil || len(hx) != 64 {
			return nil, fmt.Errorf("--sha256 %q: want PATH=HEX (64 hex digits)", h)
		}
		env.hashes[path] = strings.ToLower(hx)
	}
	for _, c := range cgroups {
		id, path, ok := strings.Cut(c, "=")
		n, err := strconv.ParseUint(id, 10, 64)
		if !ok || err != nil || !strings.HasPrefix(path, "/") {
			return nil, fmt.Errorf("--cgroup %q: want ID=PATH, e.g. 1234=/system.slice/nginx.service", c)
		}
		env.cgroups[n] = path
	}
	for _, a := range ancestries {
		pid, list, ok := strings.Cut(a, "=")
		n, err := strconv.ParseUint(pid, 10, 32)
		if !ok || err != nil {
			return nil, fmt.Errorf("--ancestry %q: want PID=PPID,GRANDPARENT,...", a)
		}
		var anc []policy.Ancestor
		for _, s := range strings.Split(list, ",") {
			m, err := strconv.ParseUint(s, 10, 32)
			if err != nil {
				return nil, fmt.Errorf("--ancestry %q: want PID=PPID,GRANDPARENT,...", a)
			}
			anc = append(anc, policy.Ancestor{Pid: uint32(m)})
		}
		env.ancestry[uint32(n)] = anc
	}
	return env, nil
}

func (e *testEnv) SHA256(f policy.File) (string, bool) {
	if h, ok := e.hashes[f.Path]; ok {
		return h, true
	}
	return e.hashFiles(f)
}

// addSigners takes the --signer flags and, for the keys the policy
// names, the digests of their catalogs in the trust database at db.
func (e *testEnv) addSigners(ctx context.Context, flags []string, db string, keys []string) error {
	e.signers, e.signed = map[string][]string{}, map[string][]string{}
	for _, s := range flags {
		path, ids, ok := strings.Cut(s, "=")
		if !ok || !strings.HasPrefix(path, "/") || ids == "" {
			return fmt.Errorf("--signer %q: want PATH=KEYID,... (key IDs as vigil keys id prints them)", s)
		}
		e.signers[path] = append(e.signers[path], strings.Split(ids, ",")...)
	}
	if len(keys) == 0 || db == "" {
		return nil
	}
	if _, err := os.Stat(db); err != nil {
		return nil
	}
	tdb, err := trust.Open(ctx, db)
	if err != nil {
		return fmt.Errorf("process.signer: %w", err)
	}
	defer tdb.Close()
	signed, _, err := tdb.SignedDigests(ctx, keys)
	if err != nil {
		return fmt.Errorf("process.signer: %w", err)
	}
	for id, ds := range signed {
		for _, d := range ds {
			h := hex.EncodeToString(d[:])
			e.signed[h] = append(e.signed[h], id)
		}
	}
	return nil
}

// Signers: the --signer flags, else the trust database's catalogs that
// list the executable's digest.
func (e *testEnv) Signers(f policy.File) ([]string, bool) {
	if ids, ok := e.signers[f.Path]; ok {
		return ids, true
	}
	h, ok := e.SHA256(f)
	if !ok {
		return nil, false
	}
	return e.signed[strings.ToLower(h)], true
}

func (e *testEnv) CgroupPath(id uint64) (string, bool) {
	p, ok := e.cgroups[id]
	return p, ok
}

func (e *testEnv) Ancestry(pid uint32, _ uint64) ([]policy.Ancestor, bool) {
	a, ok := e.ancestry[pid]
	return a, ok
}

// hashLocalFile hashes the regular file at f.Path on this host, if it is
// the same file (dev and inode, when f has them).
func hashLocalFile(f policy.File) (string, bool) {
	fi, err := os.Stat(f.Path)
	if err != nil || !fi.Mode().IsRegular() {
		return "", false
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && f.Inode != 0 && (st.Ino != f.Inode || st.Dev != f.Dev) {
		return "", false
	}
	file, err := os.Open(f.Path)
	if err != nil {
		return "", false
	}
	defer file.Close()
	h := sha256.New()
	if _, err := io.Copy(h, file); err != nil {
		return "", false
	}
	return hex.EncodeToString(h.Sum(nil)), true
}
