package harness

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/vigil-hips/vigil/bench"
)

// workloadPackage is the Debian source package built by the workload
// benchmark: a medium C project with an autoconf configure (thousands of
// short execs) and a make of some hundred files, about a minute with
// make -j2 on 2 cores.
const workloadPackage = "bash"

// debSrcLines derives deb-src entries for the archive's main component of
// release codename from the machine's APT sources (deb822 .sources files
// and one-line .list files), so the bench fetches sources from the same
// mirror the machine already uses. Only the first matching entry is used.
func debSrcLines(files map[string]string, codename string) []string {
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		content := files[n]
		if strings.HasSuffix(n, ".sources") {
			for _, st := range parseDeb822(content) {
				if strings.EqualFold(st["enabled"], "no") ||
					!hasField(st["types"], "deb") || !hasField(st["suites"], codename) || !hasField(st["components"], "main") {
					continue
				}
				uris := strings.Fields(st["uris"])
				if len(uris) == 0 {
					continue
				}
				opt := ""
				if k := st["signed-by"]; k != "" && !strings.Contains(k, "\n") && !strings.Contains(k, "BEGIN PGP") {
					opt = "[signed-by=" + strings.TrimSpace(k) + "] "
				}
				return []string{fmt.Sprintf("deb-src %s%s %s main", opt, uris[0], codename)}
			}
			continue
		}
		sc := bufio.NewScanner(strings.NewReader(content))
		for sc.Scan() {
			l := strings.TrimSpace(sc.Text())
			if !strings.HasPrefix(l, "deb ") {
				continue
			}
			rest := strings.TrimSpace(strings.TrimPrefix(l, "deb "))
			opt := ""
			if strings.HasPrefix(rest, "[") {
				if i := strings.Index(rest, "]"); i > 0 {
					opt, rest = rest[:i+1]+" ", strings.TrimSpace(rest[i+1:])
				}
			}
			f := strings.Fields(rest)
			if len(f) >= 3 && f[1] == codename && slices.Contains(f[2:], "main") {
				return []string{fmt.Sprintf("deb-src %s%s %s main", opt, f[0], codename)}
			}
		}
	}
	return nil
}

func hasField(list, want string) bool {
	return slices.Contains(strings.Fields(list), want)
}

// parseDeb822 splits deb822 text into stanzas of lower-cased keys.
func parseDeb822(s string) []map[string]string {
	var out []map[string]string
	cur := map[string]string{}
	last := ""
	flush := func() {
		if len(cur) > 0 {
			out = append(out, cur)
		}
		cur, last = map[string]string{}, ""
	}
	for _, l := range strings.Split(s, "\n") {
		switch {
		case strings.TrimSpace(l) == "":
			flush()
		case strings.HasPrefix(l, "#"):
		case (l[0] == ' ' || l[0] == '\t') && last != "":
			cur[last] += "\n" + strings.TrimSpace(l)
		default:
			k, v, ok := strings.Cut(l, ":")
			if ok {
				last = strings.ToLower(strings.TrimSpace(k))
				cur[last] = strings.TrimSpace(v)
			}
		}
	}
	flush()
	return out
}

func osCodename() string {
	data, _ := os.ReadFile("/etc/os-release")
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "VERSION_CODENAME="); ok {
			return strings.Trim(v, `"`)
		}
	}
	return ""
}

var origRE = regexp.MustCompile(`^` + workloadPackage + `_([0-9][^_]*)\.orig\.tar\.(gz|xz|bz2)$`)

// fetchSource returns the upstream tarball of the workload package and
// its version, downloading it once into the cache with a private APT
// configuration (its own source list and state directories under the
// cache: the machine's APT configuration is not changed).
func (e *Env) fetchSource(ctx context.Context) (string, string, error) {
	cache := e.Opts.Cache
	if cache == "" {
		cache = "/var/cache/vigil-bench"
	}
	src := filepath.Join(cache, "src")
	find := func() (string, string) {
		ents, _ := os.ReadDir(src)
		for _, en := range ents {
			if m := origRE.FindStringSubmatch(en.Name()); m != nil {
				return filepath.Join(src, en.Name()), m[1]
			}
		}
		return "", ""
	}
	if p, v := find(); p != "" {
		return p, v, nil
	}
	if e.Opts.NoInstall {
		return "", "", errors.New("the workload's sources are not in the cache (and -no-install)")
	}
	codename := osCodename()
	files := map[string]string{}
	for _, pat := range []string{"/etc/apt/sources.list", "/etc/apt/sources.list.d/*.list", "/etc/apt/sources.list.d/*.sources"} {
		ms, _ := filepath.Glob(pat)
		for _, m := range ms {
			if data, err := os.ReadFile(m); err == nil {
				files[m] = string(data)
			}
		}
	}
	lines := debSrcLines(files, codename)
	if len(lines) == 0 {
		return "", "", fmt.Errorf("no APT source for %s main to derive a deb-src entry from", codename)
	}
	aptDir := filepath.Join(cache, "apt")
	for _, d := range []string{src, filepath.Join(aptDir, "lists", "partial"), filepath.Join(aptDir, "cache", "archives", "partial")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return "", "", err
		}
	}
	list := filepath.Join(aptDir, "sources.list")
	if err := os.WriteFile(list, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		return "", "", err
	}
	aptOpts := []string{"-q",
		"-o", "Dir::Etc::SourceList=" + list,
		"-o", "Dir::Etc::SourceParts=" + filepath.Join(aptDir, "none"),
		"-o", "Dir::State::Lists=" + filepath.Join(aptDir, "lists"),
		"-o", "Dir::Cache=" + filepath.Join(aptDir, "cache"),
		"-o", "APT::Sandbox::User=root",
	}
	run := func(dir string, args ...string) error {
		cmd := exec.CommandContext(ctx, "apt-get", append(aptOpts, args...)...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("apt-get %s: %v: %s", strings.Join(args, " "), err, lastLines(string(out), 4))
		}
		return nil
	}
	e.Log.Info("fetching the workload's sources", "package", workloadPackage, "source", lines[0])
	if err := run(src, "update"); err != nil {
		return "", "", err
	}
	if err := run(src, "source", "--download-only", workloadPackage); err != nil {
		return "", "", err
	}
	if p, v := find(); p != "" {
		return p, v, nil
	}
	return "", "", fmt.Errorf("apt-get source %s left no upstream tarball in %s", workloadPackage, src)
}

// runWorkload builds the package with and without the agent, interleaved,
// from a fresh unpack each time (the unpack is not timed).
func (e *Env) runWorkload(ctx context.Context, agent *Config) (*bench.Workload, error) {
	tarball, version, err := e.fetchSource(ctx)
	if err != nil {
		return nil, err
	}
	cmdline := "./configure && make -j2"
	if !e.P.WorkloadFull {
		cmdline = "./configure"
	}
	w := &bench.Workload{
		Project:  fmt.Sprintf("%s %s", workloadPackage, version),
		Command:  cmdline,
		Rounds:   e.P.WorkloadRounds,
		Baseline: Baseline,
		Note:     fmt.Sprintf("Upstream sources of Debian's %s source package, unpacked afresh for every build.", workloadPackage),
	}
	if !e.P.WorkloadFull {
		w.Note += " Quick mode: configure only."
	}
	cfgs := map[string]*Config{Baseline: ConfigByName(Baseline), agent.Name: agent}
	byCfg := map[string][]float64{}
	for _, slot := range bench.Schedule([]string{Baseline, agent.Name}, e.P.WorkloadRounds) {
		if ctx.Err() != nil {
			break
		}
		run, err := e.build(ctx, cfgs[slot.Config], tarball, cmdline)
		if err != nil {
			return w, err
		}
		run.Round = slot.Round
		e.Log.Info("workload", "config", slot.Config, "round", slot.Round+1, "seconds", fmt.Sprintf("%.1f", run.Seconds),
			"events", run.Events, "lost", run.Lost)
		w.Runs = append(w.Runs, run)
		byCfg[slot.Config] = append(byCfg[slot.Config], run.Seconds)
	}
	base := bench.Summarize(byCfg[Baseline])
	for _, name := range []string{Baseline, agent.Name} {
		if xs := byCfg[name]; len(xs) > 0 {
			s := bench.Summarize(xs)
			w.Results = append(w.Results, bench.WorkloadResult{Config: name, Seconds: s,
				Ratio: bench.Ratio(s.Median, base.Median), MinRatio: bench.Ratio(s.Min, base.Min)})
		}
	}
	return w, nil
}

func (e *Env) build(ctx context.Context, c *Config, tarball, cmdline string) (bench.WorkloadRun, error) {
	run := bench.WorkloadRun{Config: c.Name}
	dir, err := os.MkdirTemp(e.Work, "build-")
	if err != nil {
		return run, err
	}
	defer os.RemoveAll(dir)
	if out, err := exec.CommandContext(ctx, "tar", "-C", dir, "--strip-components=1", "-xf", tarball).CombinedOutput(); err != nil {
		return run, fmt.Errorf("unpack %s: %v: %s", tarball, err, out)
	}
	r, err := e.startConfig(ctx, c)
	if err != nil {
		return run, err
	}
	defer e.stopConfig(ctx, r, "workload")
	sleepCtx(ctx, e.P.Settle)
	var before *agentStatus
	if r != nil && r.agent != nil {
		if before, err = r.agent.status(ctx); err != nil {
			return run, err
		}
	}
	logPath := filepath.Join(e.Work, fmt.Sprintf("build-%s-%d.log", c.Name, e.seq.Add(1)))
	logf, err := os.Create(logPath)
	if err != nil {
		return run, err
	}
	defer logf.Close()
	cpu0 := r.CPU()
	cmd := exec.CommandContext(ctx, "sh", "-c", cmdline)
	cmd.Dir, cmd.Stdout, cmd.Stderr = dir, logf, logf
	start := time.Now()
	err = cmd.Run()
	run.Seconds = time.Since(start).Seconds()
	cpu := r.CPU() - cpu0
	if err != nil {
		return run, fmt.Errorf("%s under %s: %v (log: %s)", cmdline, c.Name, err, logPath)
	}
	if r != nil && r.agent != nil {
		run.AgentCPU = cpu.Seconds() / run.Seconds * 100
		after, _, err := r.agent.drain(ctx, 30*time.Second)
		if err != nil {
			return run, err
		}
		run.Events = uint64(after.Counters.Received - before.Counters.Received)
		run.Lost = uint64(after.Counters.Lost - before.Counters.Lost)
		run.Execs = uint64(after.Counters.ByKind["exec"] - before.Counters.ByKind["exec"])
	}
	return run, nil
}
