package harness

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/vigil-hips/vigil/bench"
)

// guestMarker starts the console line that carries the guest's results.
const guestMarker = "VIGIL-BENCH-RESULT "

// guestBundle is where the helpers are in the guest.
const guestBundle = "/opt/vigil-bench"

// guestResult is what the guest reports.
type guestResult struct {
	Suite    bench.MicroSuite     `json:"suite"`
	Configs  []bench.ConfigStatus `json:"configs"`
	Decision []bench.Decision     `json:"decision_latency,omitempty"`
	Errors   []string             `json:"errors,omitempty"`
}

// elfDeps returns the dynamic loader and the shared libraries the given
// ELF files need, resolved on this machine, transitively.
func elfDeps(files ...string) ([]string, error) {
	dirs := []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"}
	seen := map[string]bool{}
	var out []string
	queue := append([]string{}, files...)
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		f, err := elf.Open(p)
		if err != nil {
			return nil, err
		}
		for _, prog := range f.Progs {
			if prog.Type == elf.PT_INTERP {
				data, err := io.ReadAll(prog.Open())
				if err == nil {
					interp := strings.TrimRight(string(data), "\x00")
					if !seen[interp] {
						seen[interp] = true
						out = append(out, interp)
					}
				}
			}
		}
		libs, err := f.ImportedLibraries()
		f.Close()
		if err != nil {
			return nil, err
		}
		for _, lib := range libs {
			found := ""
			for _, d := range dirs {
				if _, err := os.Stat(filepath.Join(d, lib)); err == nil {
					found = filepath.Join(d, lib)
					break
				}
			}
			if found == "" {
				return nil, fmt.Errorf("%s needs %s, not found", p, lib)
			}
			if !seen[found] {
				seen[found] = true
				out = append(out, found)
				queue = append(queue, found)
			}
		}
	}
	return out, nil
}

// runVM runs the microbenchmarks in a qemu guest on kernel (tools/vmtest)
// with every VM configuration, interleaved, and (with decision) the
// decision latency under vigil-enforce, and returns the suite, the
// configurations' status there and the decision-latency rows.
func (e *Env) runVM(ctx context.Context, kernel string, decision bool) (bench.MicroSuite, []bench.ConfigStatus, []bench.Decision, error) {
	place := "vm " + kernel
	var statuses []bench.ConfigStatus
	for _, c := range Configs {
		if c.Places&VM == 0 {
			statuses = append(statuses, bench.ConfigStatus{Name: c.Name, Label: c.Label, Place: place, Reason: c.PlaceNote})
		}
	}
	fail := func(err error) (bench.MicroSuite, []bench.ConfigStatus, []bench.Decision, error) {
		for _, c := range Configs {
			if c.Places&VM != 0 {
				statuses = append(statuses, bench.ConfigStatus{Name: c.Name, Label: c.Label, Place: place,
					Reason: "the VM suite did not run: " + err.Error()})
			}
		}
		return bench.MicroSuite{}, statuses, nil, err
	}
	if e.Opts.VMTest == "" {
		return fail(errors.New("no vmtest binary (make vmtest-tool)"))
	}
	bundle := filepath.Join(e.Work, "guest")
	if _, err := os.Stat(bundle); err != nil {
		if err := os.MkdirAll(bundle, 0o755); err != nil {
			return fail(err)
		}
		for _, f := range []string{e.Tools.Micro, e.Tools.Target, e.Tools.Stamp, e.Tools.Lib, e.Tools.File} {
			data, err := os.ReadFile(f)
			if err != nil {
				return fail(err)
			}
			if err := os.WriteFile(filepath.Join(bundle, filepath.Base(f)), data, 0o755); err != nil {
				return fail(err)
			}
		}
	}
	// The policy files the configurations name, where the guest looks.
	os.MkdirAll(filepath.Join(bundle, "policies"), 0o755)
	for _, d := range e.PolicyDirs {
		ms, _ := filepath.Glob(filepath.Join(d, "*.yaml"))
		for _, m := range ms {
			dst := filepath.Join(bundle, "policies", filepath.Base(m))
			if _, err := os.Stat(dst); err == nil {
				continue
			}
			if data, err := os.ReadFile(m); err == nil {
				os.WriteFile(dst, data, 0o644)
			}
		}
	}
	deps, err := elfDeps(e.Tools.Micro, e.Tools.Lib)
	if err != nil {
		return fail(err)
	}
	include := []string{e.Vigil + ":/usr/bin/vigil", bundle + ":" + guestBundle}
	for _, d := range deps {
		include = append(include, d+":"+d)
	}
	args := []string{"run", "-kernel", kernel, "-timeout", e.P.VMTimeout.String(), "-icount", e.P.VMIcount,
		e.Self, "guest", "-place", place, "-icount", e.P.VMIcount, "-rounds", strconv.Itoa(e.P.VMRounds),
		"-scale", strconv.FormatFloat(e.P.VMBatchScale, 'f', -1, 64),
		"-settle", e.P.Settle.String()}
	if decision {
		args = append(args, "-decision-rounds", strconv.Itoa(e.P.VMDecisionRounds),
			"-decision-samples", strconv.Itoa(e.P.VMDecisionSamples))
	}
	e.Log.Info("vm: booting", "kernel", kernel, "rounds", e.P.VMRounds)
	cmd := exec.CommandContext(ctx, e.Opts.VMTest, args...)
	cmd.Dir = e.Work
	cmd.Env = append(os.Environ(), "VMTEST_INCLUDE="+strings.Join(include, " "), "VMTEST_SUMMARY_DIR=")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return fail(err)
	}
	if err := cmd.Start(); err != nil {
		return fail(err)
	}
	var res *guestResult
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if i := strings.Index(line, guestMarker); i >= 0 {
			var g guestResult
			if err := json.Unmarshal([]byte(line[i+len(guestMarker):]), &g); err != nil {
				e.errorf("vm %s: unreadable result line: %v", kernel, err)
				continue
			}
			res = &g
			continue
		}
		e.Log.Debug("vm "+kernel, "guest", line)
		if strings.Contains(line, "level=INFO") || strings.Contains(line, "level=ERROR") {
			e.Log.Info("vm " + kernel + ": " + strings.TrimSpace(line[strings.Index(line, "msg="):]))
		}
	}
	werr := cmd.Wait()
	if res == nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 1500 {
			msg = "…" + msg[len(msg)-1500:]
		}
		return fail(fmt.Errorf("no result from the guest (%v): %s", werr, msg))
	}
	for _, m := range res.Errors {
		e.errorf("%s: %s", place, m)
	}
	for _, l := range strings.Split(stderr.String(), "\n") {
		if strings.Contains(l, "booted in") {
			e.Log.Info(strings.TrimSpace(l))
		}
	}
	statuses = append(statuses, res.Configs...)
	order := func(name string) int {
		return slices.IndexFunc(Configs, func(c Config) bool { return c.Name == name })
	}
	slices.SortStableFunc(statuses, func(a, b bench.ConfigStatus) int { return order(a.Name) - order(b.Name) })
	return res.Suite, statuses, res.Decision, nil
}

// Guest is `vigil-bench guest`, run by tools/vmtest inside the VM: the
// microbenchmarks for every VM configuration, interleaved, printed as one
// result line on the console.
func Guest(ctx context.Context, args []string, log *slog.Logger) error {
	fs := flag.NewFlagSet("guest", flag.ContinueOnError)
	place := fs.String("place", "vm", "name of this place in the report")
	rounds := fs.Int("rounds", 2, "interleaved rounds")
	scale := fs.Float64("scale", 0.1, "batch count scale")
	settle := fs.Duration("settle", 0, "pause after a configuration starts")
	bundle := fs.String("bundle", guestBundle, "directory of the helpers")
	icount := fs.String("icount", "", "the qemu -icount setting the VM runs with (for the report)")
	vigil := fs.String("vigil", "/usr/bin/vigil", "the vigil binary")
	decRounds := fs.Int("decision-rounds", 1, "rounds of the decision latency")
	decSamples := fs.Int("decision-samples", 0, "samples per file size and round of the decision latency (0: not measured)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	p := QuickParams()
	p.Settle = *settle
	e := newEnv(p, log)
	e.InVM, e.Vigil = true, *vigil
	self, err := os.Executable()
	if err != nil {
		return err
	}
	e.Self = self
	if e.Work, err = os.MkdirTemp("", "vigil-bench-"); err != nil {
		return err
	}
	if e.Journal, err = OpenJournal(filepath.Join(e.Work, "journal.json")); err != nil {
		return err
	}
	defer Cleanup(context.WithoutCancel(ctx), e.Journal.Path(), log)
	e.Tools = Tools{Dir: *bundle, Micro: filepath.Join(*bundle, "micro"), Target: filepath.Join(*bundle, "target"),
		Stamp: filepath.Join(*bundle, "stamp"), Lib: filepath.Join(*bundle, "libvigilbench.so"), File: filepath.Join(*bundle, "file")}
	e.Acct = DetectAccounting()
	e.PolicyFlag = agentPolicyFlag(ctx, e.Vigil)
	e.PolicyDirs = []string{filepath.Join(*bundle, "policies")}

	res := guestResult{}
	var cfgs []*Config
	for i := range Configs {
		c := &Configs[i]
		if c.Places&VM == 0 {
			continue
		}
		st := bench.ConfigStatus{Name: c.Name, Label: c.Label, Place: *place, Notes: c.Notes}
		if c.Check != nil {
			st.Reason = c.Check(ctx, e)
		}
		if st.Reason == "" {
			st.Ran = true
			cfgs = append(cfgs, c)
		} else {
			st.Notes = nil
		}
		res.Configs = append(res.Configs, st)
	}
	res.Suite = e.runSuite(ctx, *place, cfgs, *rounds, *scale)
	if *decSamples > 0 && ctx.Err() == nil {
		if c := findConfig(cfgs, "vigil-enforce"); c != nil {
			res.Decision = e.runDecision(ctx, *place, c, e.Work, *decRounds, *decSamples)
		} else {
			res.Decision = decisionNotRun(*place, "vigil-enforce: "+configReason(res.Configs, "vigil-enforce", *place))
		}
	}
	var u unix.Utsname
	unix.Uname(&u)
	res.Suite.Kernel = unix.ByteSliceToString(u.Release[:])
	res.Suite.Note = fmt.Sprintf("Kernel %s in qemu with TCG (software emulation), BPF LSM on: only the ratios within "+
		"the VM mean anything, absolute times do not.", res.Suite.Kernel)
	if *icount != "" {
		res.Suite.Note += fmt.Sprintf(" The guest's clock counts instructions (qemu -icount %s): a time here is the "+
			"instructions the operation ran, at a fixed time each, every process's in between included (the agent's too, "+
			"on the one vCPU); the host's load and speed do not enter it, nor do caches, which TCG does not model.", *icount)
	}
	for i := range res.Configs {
		st := &res.Configs[i]
		if why, ok := e.broken[st.Name]; ok {
			st.Reason = why
			st.Ran = slices.Contains(res.Suite.Configs, st.Name)
		}
		if st.Ran {
			st.Notes = append(st.Notes, e.runNotes(st.Name)...)
		}
	}
	res.Errors = e.errs
	data, err := json.Marshal(res)
	if err != nil {
		return err
	}
	fmt.Printf("\n%s%s\n", guestMarker, data)
	return nil
}
