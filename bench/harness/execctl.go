package harness

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/vigil-hips/vigil/bench"
)

// Execution control (issue 4) in the bench.
//
// On the host, where the kernel refuses BPF LSM, lockdown decides execs
// only on the filesystems given with --fanotify-mark. The bench mounts a
// tmpfs of its own under its work directory (execFS), puts the exec target
// there for every host configuration (so the baseline execs the same file
// on the same filesystem), and the lockdown configuration marks that tmpfs
// and nothing else: the host is also CI's machine. In the VM the LSM
// backend decides every exec (vigil-enforce), after a trust scan of
// everything the bench runs there.

// execFSSource names the bench's tmpfs in the mount table.
const execFSSource = "vigil-bench-xc"

// mountExecFS mounts the bench's tmpfs at WORK/xc (journaled, so a
// killed run unmounts it too) and returns its path.
func (e *Env) mountExecFS() (string, error) {
	dir := filepath.Join(e.Work, "xc")
	if err := os.Mkdir(dir, 0o755); err != nil {
		return "", err
	}
	e.Journal.Update(func(s *JournalState) { s.Mounts = append(s.Mounts, dir) })
	if err := unix.Mount(execFSSource, dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "size=128m,mode=0755"); err != nil {
		return "", fmt.Errorf("mount a tmpfs on %s: %w", dir, err)
	}
	return dir, isBenchTmpfs(dir)
}

// isBenchTmpfs checks that dir is a tmpfs mounted at dir itself, not a
// directory of a wider filesystem (a /tmp that is a tmpfs, say): the only
// filesystem the bench ever lets an agent mark.
func isBenchTmpfs(dir string) error {
	if dir == "" {
		return errors.New("no bench tmpfs")
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(dir, &sfs); err != nil {
		return err
	}
	if sfs.Type != unix.TMPFS_MAGIC {
		return fmt.Errorf("%s is not a tmpfs", dir)
	}
	var st, parent unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return err
	}
	if err := unix.Stat(filepath.Dir(dir), &parent); err != nil {
		return err
	}
	if st.Dev == parent.Dev {
		return fmt.Errorf("%s is not a mount point of its own", dir)
	}
	return nil
}

// setupExecFS mounts the bench's tmpfs and moves the exec target onto it.
// Without it, the lockdown configuration does not run (execFSErr says
// why) and the target stays in the work directory.
func (e *Env) setupExecFS() {
	dir, err := e.mountExecFS()
	if err == nil {
		dst := filepath.Join(dir, "target")
		if err = copyFile(e.Tools.Target, dst, 0o755); err == nil {
			e.execFS, e.Tools.Target = dir, dst
			return
		}
	}
	e.execFSErr = err.Error()
	e.Log.Warn("no bench tmpfs: the lockdown configuration will not run", "err", err)
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// checkLockdownFanotify is the check of vigil-lockdown-fanotify.
func checkLockdownFanotify(ctx context.Context, e *Env) string {
	if r := needVigil(ctx, e); r != "" {
		return r
	}
	if e.InVM {
		return "host only"
	}
	if !e.PolicyFlag.present || !e.PolicyFlag.fanotify {
		return "not yet available: issue 4 (`vigil agent` needs --policy and --fanotify-mark)"
	}
	p := e.findPolicy("lockdown.yaml")
	if p == "" {
		return fmt.Sprintf("not yet available: lockdown.yaml not found in %s (issue 4)", strings.Join(e.PolicyDirs, ", "))
	}
	data, err := os.ReadFile(p)
	if err != nil {
		return err.Error()
	}
	if hasRules(string(data)) {
		// Its trust block acts only on the marked tmpfs; an enforcing
		// rule would act host-wide.
		return "lockdown.yaml has rules: on the host the bench runs only a lockdown policy without rules"
	}
	if err := isBenchTmpfs(e.execFS); err != nil {
		return "no bench tmpfs to mark: " + e.execFSErr
	}
	return ""
}

// startLockdownFanotify starts the agent with lockdown.yaml (its catalog
// directory an empty one of the bench's), exec control by fanotify on the
// bench's tmpfs only, and a trust database holding the exec target,
// scanned before the agent starts: every timed exec is the cached,
// approved path.
func startLockdownFanotify(ctx context.Context, e *Env) (*Running, error) {
	if e.InVM {
		return nil, errors.New("vigil-lockdown-fanotify is host only")
	}
	if err := isBenchTmpfs(e.execFS); err != nil {
		return nil, fmt.Errorf("refusing to mark: %w", err)
	}
	dir, err := os.MkdirTemp(e.Work, "agent-")
	if err != nil {
		return nil, err
	}
	state := filepath.Join(dir, "state")
	if err := os.MkdirAll(state, 0o700); err != nil {
		return nil, err
	}
	if err := e.trustScan(ctx, filepath.Join(state, "trust.db"), e.Tools.Target); err != nil {
		return nil, err
	}
	pol, err := e.lockdownCopy(dir, nil)
	if err != nil {
		return nil, err
	}
	return e.startAgent(ctx, dir, []string{pol}, []string{"--backend", "tracepoint", "--fanotify-mark", e.execFS})
}

// startEnforce starts vigil-enforce in the VM: hardening.yaml +
// lockdown.yaml on the LSM backend, after a trust scan of everything the
// bench runs there (without it lockdown refuses the bench's own helpers).
// The timing helper is listed as a JIT runtime in both policies' copies:
// its mprotect RW→RX benchmark is anonymous W→X memory, which they refuse
// otherwise, and the row is meant to time the allowed path.
func startEnforce(ctx context.Context, e *Env) (*Running, error) {
	if !e.InVM {
		return nil, errors.New("vigil-enforce runs only in the VM")
	}
	dir, err := os.MkdirTemp(e.Work, "agent-")
	if err != nil {
		return nil, err
	}
	state := filepath.Join(dir, "state")
	if err := os.MkdirAll(state, 0o700); err != nil {
		return nil, err
	}
	db, err := e.guestTrustDB(ctx)
	if err != nil {
		return nil, err
	}
	// The database is SQLite in WAL mode: copy its side files too.
	files, _ := filepath.Glob(db + "*")
	for _, f := range files {
		if err := copyFile(f, filepath.Join(state, "trust.db"+strings.TrimPrefix(f, db)), 0o600); err != nil {
			return nil, err
		}
	}
	src, err := os.ReadFile(e.findPolicy("hardening.yaml"))
	if err != nil {
		return nil, err
	}
	hard, err := hardeningWithJIT(string(src), []string{e.Tools.Micro})
	if err != nil {
		return nil, err
	}
	hpath := filepath.Join(dir, "hardening.yaml")
	if err := os.WriteFile(hpath, []byte(hard), 0o644); err != nil {
		return nil, err
	}
	lpath, err := e.lockdownCopy(dir, []string{e.Tools.Micro})
	if err != nil {
		return nil, err
	}
	return e.startAgent(ctx, dir, []string{hpath, lpath}, nil)
}

// guestTrustDB scans, once per guest, the system directories, the
// bench's helpers, this program and vigil into a trust database, and
// returns its path.
func (e *Env) guestTrustDB(ctx context.Context) (string, error) {
	if e.trustDB != "" {
		return e.trustDB, nil
	}
	db := filepath.Join(e.Work, "trust.db")
	paths := scanRoots([]string{"/bin", "/sbin", "/usr", "/lib", "/lib64", "/opt", e.Tools.Dir, e.Self, e.Vigil})
	t0 := time.Now()
	if err := e.trustScan(ctx, db, paths...); err != nil {
		return "", err
	}
	e.Log.Info("trust scan", "paths", strings.Join(paths, " "), "took", time.Since(t0).Round(time.Millisecond))
	e.trustDB = db
	return db, nil
}

// scanRoots returns the paths that exist, leaving out those under one
// already listed.
func scanRoots(paths []string) []string {
	var out []string
	for _, p := range paths {
		if _, err := os.Lstat(p); err != nil {
			continue
		}
		under := false
		for _, o := range out {
			if p == o || strings.HasPrefix(p, o+"/") {
				under = true
			}
		}
		if !under {
			out = append(out, p)
		}
	}
	return out
}

// trustScan runs `vigil trust scan --db DB PATH...`, dpkg ignored.
func (e *Env) trustScan(ctx context.Context, db string, paths ...string) error {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	args := append([]string{"trust", "scan", "--db", db, "--dpkg-admindir", ""}, paths...)
	out, err := exec.CommandContext(cctx, e.Vigil, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("vigil %s: %v: %s", strings.Join(args, " "), err, shorten(string(out), 500))
	}
	return nil
}

// lockdownCopy writes lockdown.yaml into dir with its catalog directory
// an empty directory there and anonAllow as its anonymous-exec
// allowlist, and returns the copy's path.
func (e *Env) lockdownCopy(dir string, anonAllow []string) (string, error) {
	src, err := os.ReadFile(e.findPolicy("lockdown.yaml"))
	if err != nil {
		return "", err
	}
	cats := filepath.Join(dir, "catalogs")
	if err := os.MkdirAll(cats, 0o755); err != nil {
		return "", err
	}
	pol, err := lockdownFor(string(src), cats, anonAllow)
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, "lockdown.yaml")
	return p, os.WriteFile(p, []byte(pol), 0o644)
}

var (
	reCatalogDir = regexp.MustCompile(`(?m)^([ \t]+catalog_dir:).*$`)
	reAnonExec   = regexp.MustCompile(`(?m)^([ \t]+)anonymous_exec:.*$`)
	reAnonAllow  = regexp.MustCompile(`(?m)^[ \t]+anonymous_exec_allow:`)
	reJIT        = regexp.MustCompile(`(?m)^([ \t]*)jit_runtimes:[ \t]*$`)
)

// lockdownFor rewrites a lockdown policy: trust.catalog_dir becomes
// catalogDir, and anonAllow (if any) its anonymous_exec_allow.
func lockdownFor(src, catalogDir string, anonAllow []string) (string, error) {
	if !reCatalogDir.MatchString(src) {
		return "", errors.New("lockdown.yaml: no trust.catalog_dir to point at the bench's")
	}
	out := reCatalogDir.ReplaceAllStringFunc(src, func(l string) string {
		key := reCatalogDir.FindStringSubmatch(l)[1]
		return key + " " + strconv.Quote(catalogDir)
	})
	if len(anonAllow) == 0 {
		return out, nil
	}
	if reAnonAllow.MatchString(out) {
		return "", errors.New("lockdown.yaml: already has an anonymous_exec_allow")
	}
	m := reAnonExec.FindStringSubmatchIndex(out)
	if m == nil {
		return "", errors.New("lockdown.yaml: no trust.anonymous_exec to add the bench's helper to")
	}
	indent := out[m[2]:m[3]]
	q := make([]string, len(anonAllow))
	for i, a := range anonAllow {
		q[i] = strconv.Quote(a)
	}
	line := "\n" + indent + "anonymous_exec_allow: [" + strings.Join(q, ", ") + "]"
	return out[:m[1]] + line + out[m[1]:], nil
}

// hardeningWithJIT adds jit to the jit_runtimes list of a hardening
// policy.
func hardeningWithJIT(src string, jit []string) (string, error) {
	m := reJIT.FindStringSubmatchIndex(src)
	if m == nil {
		return "", errors.New("hardening.yaml: no jit_runtimes list")
	}
	indent := src[m[2]:m[3]] + "  "
	var add strings.Builder
	for _, j := range jit {
		add.WriteString("\n" + indent + "- " + strconv.Quote(j))
	}
	return src[:m[1]] + add.String() + src[m[1]:], nil
}

// hasRules says whether a policy file has rules: a top-level `rules:`
// that is not `[]`.
func hasRules(policy string) bool {
	lines := strings.Split(policy, "\n")
	for i, l := range lines {
		l = stripComment(l)
		v, ok := strings.CutPrefix(l, "rules:")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		if v != "" {
			return v != "[]"
		}
		for _, next := range lines[i+1:] {
			n := stripComment(next)
			if strings.TrimSpace(n) == "" {
				continue
			}
			return strings.HasPrefix(n, " ") || strings.HasPrefix(n, "\t") || strings.HasPrefix(n, "-")
		}
		return false
	}
	return false
}

func stripComment(l string) string {
	if i := strings.Index(l, "#"); i >= 0 {
		l = l[:i]
	}
	return strings.TrimRight(l, " \t\r")
}

// decisionSizes are the unknown files of the decision-latency phase.
var decisionSizes = []struct {
	label string
	size  int64
}{
	{"unknown 1 MB file, first exec", 1_000_000},
	{"unknown 10 MB file, first exec", 10_000_000},
}

// DecisionTargetMS is issue 4's goal: an unknown 10 MB file decided
// within 20 ms (on the host).
const DecisionTargetMS = 20

// decideSample is one line of `micro decide`.
type decideSample struct {
	outcome string // "ok", "eperm", "errno"
	errno   int
	ns      float64
}

func parseDecide(out []byte) ([]decideSample, error) {
	var xs []decideSample
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		var s decideSample
		var err error
		switch {
		case (f[0] == "ok" || f[0] == "eperm") && len(f) == 2:
			s.outcome = f[0]
			s.ns, err = strconv.ParseFloat(f[1], 64)
		case f[0] == "errno" && len(f) == 3:
			s.outcome = f[0]
			if s.errno, err = strconv.Atoi(f[1]); err == nil {
				s.ns, err = strconv.ParseFloat(f[2], 64)
			}
		default:
			err = errors.New("unknown line")
		}
		if err != nil || s.ns < 0 {
			return nil, fmt.Errorf("micro decide: bad line %q", sc.Text())
		}
		xs = append(xs, s)
	}
	return xs, sc.Err()
}

func runDecide(ctx context.Context, t Tools, dir string, size int64, n int) ([]decideSample, error) {
	args := []string{"decide", t.Stamp, dir, strconv.FormatInt(size, 10), strconv.Itoa(n)}
	cmd := exec.CommandContext(ctx, t.Micro, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("micro %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	xs, err := parseDecide(out)
	if err == nil && len(xs) != n {
		err = fmt.Errorf("micro decide: %d samples, want %d", len(xs), n)
	}
	return xs, err
}

// runDecision times the first exec of unknown files under cfg (a
// lockdown configuration: refused) and with no agent (runs), the two
// interleaved over rounds, files written in dir.
func (e *Env) runDecision(ctx context.Context, place string, cfg *Config, dir string, rounds, samples int) []bench.Decision {
	type key struct {
		config string
		size   int64
	}
	kept, tried := map[key][]float64{}, map[key]int{}
	odd := map[key]string{}
	for _, slot := range bench.Schedule([]string{Baseline, cfg.Name}, rounds) {
		if ctx.Err() != nil {
			break
		}
		if why, ok := e.broken[slot.Config]; ok {
			e.Log.Debug("skipping broken configuration", "config", slot.Config, "why", why)
			continue
		}
		e.Log.Info("decision latency", "place", place, "round", slot.Round+1, "of", rounds, "config", slot.Config)
		var r *Running
		if slot.Config != Baseline {
			var err error
			if r, err = e.startConfig(ctx, cfg); err != nil {
				e.errorf("%s: decision latency: %s failed to start: %v", place, cfg.Name, err)
				e.broken[cfg.Name] = shorten(fmt.Sprintf("failed to start for the decision latency: %v", err), 300)
				continue
			}
			sleepCtx(ctx, e.P.Settle)
		}
		for _, sz := range decisionSizes {
			xs, err := runDecide(ctx, e.Tools, dir, sz.size, samples)
			if err != nil {
				if ctx.Err() == nil {
					e.errorf("%s: decision latency %s under %s: %v", place, sz.label, slot.Config, err)
				}
				continue
			}
			k := key{slot.Config, sz.size}
			want := "eperm"
			if slot.Config == Baseline {
				want = "ok"
			}
			for _, s := range xs {
				tried[k]++
				if s.outcome == want {
					kept[k] = append(kept[k], s.ns)
				} else if odd[k] == "" {
					odd[k] = fmt.Sprintf("%s (errno %d)", s.outcome, s.errno)
				}
			}
		}
		e.stopConfig(ctx, r, "decision latency")
	}
	var rows []bench.Decision
	for _, sz := range decisionSizes {
		k, kb := key{cfg.Name, sz.size}, key{Baseline, sz.size}
		d := bench.DecisionRow(sz.label, sz.size, place, cfg.Name, kept[k], tried[k], kept[kb])
		if why, ok := e.broken[cfg.Name]; ok && tried[k] == 0 {
			d.Status = "not run: " + why
		}
		for _, kk := range []key{k, kb} {
			if o := odd[kk]; o != "" {
				e.errorf("%s: decision latency %s under %s: some execs ended %s, not as expected", place, sz.label, kk.config, o)
			}
		}
		rows = append(rows, d)
	}
	return rows
}

// decisionNotRun are the rows of a place where the decision latency could
// not be measured.
func decisionNotRun(place, why string) []bench.Decision {
	var rows []bench.Decision
	for _, sz := range decisionSizes {
		rows = append(rows, bench.Decision{File: sz.label, Size: sz.size, Place: place, Status: "not run: " + why})
	}
	return rows
}
