package harness

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// fapolicydEtc is the configuration directory of Debian's package.
const fapolicydEtc = "/etc/fapolicyd"

// fapolicydOverrides are the settings the bench changes in a copy of
// fapolicyd.conf (the host's file is never edited):
//   - permissive: a host-wide deny never happens on this machine, and
//     Debian's default rules deny every execution;
//   - uid/gid root: fapolicyd drops to its own user keeping
//     CAP_SYS_RESOURCE, which some sandboxes (this CI's) do not have in
//     their bounding set, and then refuses to start;
//   - allow_filesystem_mark: the daemon runs in a private mount
//     namespace (to see the copied configuration and keep its state on a
//     tmpfs); mount marks would then watch that namespace's copies of the
//     mounts and see nothing, filesystem marks watch the filesystems
//     themselves;
//   - do_stat_report: no report file written to /var/log at exit.
var fapolicydOverrides = map[string]string{
	"permissive":            "1",
	"uid":                   "root",
	"gid":                   "root",
	"allow_filesystem_mark": "1",
	"do_stat_report":        "0",
}

// rewriteFapolicydConf applies the overrides to a fapolicyd.conf: a key
// already set is changed in place, a missing key is added at the end.
func rewriteFapolicydConf(conf string, overrides map[string]string) string {
	done := map[string]bool{}
	lines := strings.Split(strings.TrimRight(conf, "\n"), "\n")
	for i, l := range lines {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "#") {
			continue
		}
		k, _, ok := strings.Cut(t, "=")
		if !ok {
			continue
		}
		k = strings.TrimSpace(k)
		if v, ok := overrides[k]; ok {
			lines[i] = k + " = " + v
			done[k] = true
		}
	}
	keys := make([]string, 0, len(overrides))
	for k := range overrides {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if !done[k] {
			lines = append(lines, k+" = "+overrides[k])
		}
	}
	return strings.Join(lines, "\n") + "\n"
}

// compileRules does what fagenrules does: the rules.d files in sort order,
// without comments and blank lines, make compiled.rules.
func compileRules(files map[string]string) string {
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, n := range names {
		for _, l := range strings.Split(files[n], "\n") {
			t := strings.TrimSpace(l)
			if t == "" || strings.HasPrefix(t, "#") {
				continue
			}
			b.WriteString(t + "\n")
		}
	}
	return b.String()
}

func checkFapolicyd(ctx context.Context, e *Env) string {
	if r := e.missing("fapolicyd"); r != "" {
		return r
	}
	if _, err := os.Stat(filepath.Join(fapolicydEtc, "fapolicyd.conf")); err != nil {
		return "no " + fapolicydEtc + "/fapolicyd.conf"
	}
	if p := pidsByComm("fapolicyd"); len(p) > 0 {
		return fmt.Sprintf("fapolicyd (pid %d) already runs here; the bench does not take over a running service", p[0])
	}
	return ""
}

// copyTree copies the regular files and directories under src to dst.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		out := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(out, 0o755)
		case d.Type().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			return os.WriteFile(out, data, 0o644)
		}
		return nil
	})
}

func startFapolicyd(ctx context.Context, e *Env) (*Running, error) {
	dir, err := os.MkdirTemp(e.Work, "fapolicyd-")
	if err != nil {
		return nil, err
	}
	etc := filepath.Join(dir, "etc")
	if err := copyTree(fapolicydEtc, etc); err != nil {
		return nil, err
	}
	conf, err := os.ReadFile(filepath.Join(etc, "fapolicyd.conf"))
	if err != nil {
		return nil, err
	}
	newConf := rewriteFapolicydConf(string(conf), fapolicydOverrides)
	if !strings.Contains(newConf, "\npermissive = 1\n") {
		return nil, fmt.Errorf("fapolicyd.conf copy is not permissive; refusing to start it")
	}
	if err := os.WriteFile(filepath.Join(etc, "fapolicyd.conf"), []byte(newConf), 0o644); err != nil {
		return nil, err
	}
	rules := map[string]string{}
	ents, _ := os.ReadDir(filepath.Join(etc, "rules.d"))
	for _, en := range ents {
		if strings.HasSuffix(en.Name(), ".rules") {
			data, err := os.ReadFile(filepath.Join(etc, "rules.d", en.Name()))
			if err != nil {
				return nil, err
			}
			rules[en.Name()] = string(data)
		}
	}
	if len(rules) > 0 {
		if err := os.WriteFile(filepath.Join(etc, "compiled.rules"), []byte(compileRules(rules)), 0o644); err != nil {
			return nil, err
		}
	}
	d, err := e.startDaemon(ctx, daemonSpec{
		name:   "fapolicyd",
		argv:   []string{"fapolicyd", "--permissive"},
		tmpfs:  []string{"/run", "/var/lib/fapolicyd"},
		binds:  []string{etc + "=" + fapolicydEtc},
		mkdirs: []string{"/run/fapolicyd"},
		forks:  true,
		comm:   "fapolicyd",
	})
	if err != nil {
		return nil, err
	}
	// Ready once its fanotify marks are in place and stop changing.
	deadline := time.Now().Add(60 * time.Second)
	last, stable := -1, 0
	for {
		n := fanotifyMarks(d.pids())
		if n > 0 && n == last {
			stable++
		} else {
			stable = 0
		}
		last = n
		if stable >= 5 {
			break
		}
		if time.Now().After(deadline) || !d.alive() {
			d.stop()
			return nil, fmt.Errorf("fapolicyd placed no fanotify marks: %w%s", errNotReady, d.logTail())
		}
		time.Sleep(100 * time.Millisecond)
	}
	// It is permissive; prove it before anything else runs: an exec
	// that fails or hangs stops the daemon at once.
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(cctx, e.Tools.Target).CombinedOutput(); err != nil {
		d.stop()
		return nil, fmt.Errorf("an exec failed under fapolicyd (%v: %s): stopped it", err, out)
	}
	return &Running{d: d}, nil
}

// fanotifyMarks counts the fanotify marks of the processes' descriptors.
func fanotifyMarks(pids []int) int {
	n := 0
	for _, pid := range pids {
		infos, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fdinfo/*", pid))
		for _, f := range infos {
			data, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			for _, l := range strings.Split(string(data), "\n") {
				if strings.HasPrefix(l, "fanotify ") && strings.Contains(l, "mask:") {
					n++
				}
			}
		}
	}
	return n
}
