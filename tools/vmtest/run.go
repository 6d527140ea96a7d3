package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vigil-hips/vigil/internal/syncbuf"
)

// Exit statuses of `vmtest run` when the test binary did not report one.
const (
	exitTimeout     = 124 // the VM ran past -timeout (as timeout(1))
	exitRunnerError = 125 // vmtest or the VM failed (as env(1), git bisect)
	exitInterrupted = 130
)

// powerOffGrace is how long qemu may take to exit after the test reported
// its exit status before it is killed.
const powerOffGrace = 15 * time.Second

// qemuArgs is qemu's command line for o, booting image with initrd.
func qemuArgs(o runOptions, image, initrd string) []string {
	args := []string{
		"-accel", "tcg", "-cpu", "max",
		"-m", o.mem, "-smp", strconv.Itoa(o.smp),
		"-nographic", "-no-reboot",
		"-kernel", image,
		"-initrd", initrd,
		"-append", kernelCmdline,
	}
	if o.icount != "" {
		args = append(args, "-icount", o.icount)
	}
	return args
}

// kernelCmdline is DESIGN.md's verified recipe: BPF LSM on, everything on
// the serial console, and a panic powers the VM off (with -no-reboot).
const kernelCmdline = "console=ttyS0 quiet lsm=lockdown,capability,landlock,bpf panic=-1"

type runOptions struct {
	kernel  string
	timeout time.Duration
	cache   string
	mem     string
	smp     int
	icount  string
	qemu    string
	dmesg   bool
	verbose bool
	bzImage bool
}

func envDuration(name string, def time.Duration) time.Duration {
	if v := os.Getenv(name); v != "" {
		if d, err := time.ParseDuration(v); err == nil {
			return d
		}
	}
	return def
}

// cmdRun implements `vmtest run`: boot the kernel with an initramfs that
// holds the test binary, run it as the only job, stream its output and
// return its exit status.
func cmdRun(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	var o runOptions
	fs.StringVar(&o.kernel, "kernel", os.Getenv("VMTEST_KERNEL"), "kernel to boot: "+strings.Join(knownKernels(), " or ")+" ($VMTEST_KERNEL)")
	fs.DurationVar(&o.timeout, "timeout", envDuration("VMTEST_TIMEOUT", 15*time.Minute), "kill the VM and fail after this long ($VMTEST_TIMEOUT)")
	fs.StringVar(&o.cache, "cache", defaultCacheDir(), "kernel cache directory ($VIGIL_VM_CACHE)")
	fs.StringVar(&o.mem, "m", "2048", "guest memory (qemu -m)")
	// One guest CPU: under TCG, the kernel's cross-CPU code patching
	// (static keys flipped by attaching syscall tracepoints, text_poke
	// with int3) races with the other vCPU's stale translations and has
	// oopsed the guest ("Oops: int3" in syscall_trace_enter). On a 2-core
	// host the suite runs two VMs at once anyway.
	fs.IntVar(&o.smp, "smp", 1, "guest CPUs (qemu -smp)")
	// A clock that counts instructions: the guest's time then advances by
	// the code it runs, not by the host's clock, so the host's load and
	// speed changes do not reach what the guest measures (the bench's
	// VM phase). Slower to emulate; tests have no use for it.
	fs.StringVar(&o.icount, "icount", os.Getenv("VMTEST_ICOUNT"), "qemu -icount setting, e.g. shift=2,sleep=off (empty: the host's clock) ($VMTEST_ICOUNT)")
	fs.StringVar(&o.qemu, "qemu", "qemu-system-x86_64", "qemu binary")
	fs.BoolVar(&o.dmesg, "dmesg", os.Getenv("VMTEST_DMESG") == "1", "print the guest's kernel log after the test ($VMTEST_DMESG=1)")
	fs.BoolVar(&o.bzImage, "bzimage", os.Getenv("VMTEST_BZIMAGE") == "1", "boot the compressed bzImage instead of the extracted vmlinux (PVH); slower ($VMTEST_BZIMAGE=1)")
	fs.BoolVar(&o.verbose, "v", os.Getenv("VMTEST_VERBOSE") == "1", "show the boot log and the qemu command ($VMTEST_VERBOSE=1)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: vmtest run -kernel 6.1|6.12 [flags] TESTBINARY [ARGS...]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if o.kernel == "" || fs.NArg() == 0 {
		fs.Usage()
		return 2
	}
	r := &runner{opts: o, stdout: stdout, stderr: stderr}
	return r.run(ctx, fs.Arg(0), fs.Args()[1:])
}

type runner struct {
	opts           runOptions
	stdout, stderr io.Writer
}

func (r *runner) errorf(format string, a ...any) {
	fmt.Fprintf(r.stderr, "vmtest: error: "+format+"\n", a...)
}

func (r *runner) run(ctx context.Context, bin string, args []string) int {
	start := time.Now()
	cwd, err := os.Getwd()
	if err != nil {
		r.errorf("%v", err)
		return exitRunnerError
	}
	root := moduleRoot(cwd)
	rec := Record{Kernel: r.opts.kernel, Binary: filepath.Base(bin), ExitCode: -1}
	rec.Package = rec.Binary
	if rel, err := filepath.Rel(root, cwd); err == nil && !strings.HasPrefix(rel, "..") {
		rec.Package = filepath.ToSlash(rel)
	}
	summaryDir := os.Getenv("VMTEST_SUMMARY_DIR")
	if summaryDir != "" && !filepath.IsAbs(summaryDir) {
		// go test runs us in the package's directory; like VMTEST_INCLUDE,
		// a relative path means relative to the module root.
		summaryDir = filepath.Join(root, summaryDir)
	}
	finish := func(code int, counts Counts, errMsg string) int {
		rec.Counts = counts
		rec.Error = errMsg
		if code >= 0 && errMsg == "" {
			rec.ExitCode = code
		}
		rec.TotalSeconds = time.Since(start).Seconds()
		if summaryDir != "" {
			if err := appendRecord(summaryDir, rec); err != nil {
				r.errorf("record results: %v", err)
				if code == 0 {
					code = exitRunnerError
				}
			}
		}
		return code
	}
	fail := func(code int, format string, a ...any) int {
		msg := fmt.Sprintf(format, a...)
		r.errorf("%s", msg)
		return finish(code, Counts{}, msg)
	}

	kc := kernelCache{dir: r.opts.cache, log: r.stderr}
	ks, err := kc.get(ctx, []string{r.opts.kernel}, false)
	if err != nil {
		return fail(exitRunnerError, "%v", err)
	}
	k := ks[0]
	rec.Release = k.Release

	removeStaleWorkDirs()
	work, err := os.MkdirTemp("", fmt.Sprintf("vmtest-%d-", os.Getpid()))
	if err != nil {
		return fail(exitRunnerError, "%v", err)
	}
	defer os.RemoveAll(work)

	script, err := r.buildInitramfs(k, bin, args, cwd, root, work)
	if err != nil {
		return fail(exitRunnerError, "build initramfs: %v", err)
	}

	image := k.Vmlinux
	if image == "" || r.opts.bzImage {
		image = k.Vmlinuz
	}
	qargs := qemuArgs(r.opts, image, filepath.Join(work, "initramfs.cpio"))
	qargs = append(qargs, strings.Fields(os.Getenv("VMTEST_QEMU_ARGS"))...)
	if r.opts.verbose {
		fmt.Fprintf(r.stderr, "vmtest: %s %s\n", r.opts.qemu, strings.Join(qargs, " "))
	}

	tctx, cancel := context.WithTimeout(ctx, r.opts.timeout)
	defer cancel()
	// qctx also ends a little after the test reported its exit status, in
	// case the guest fails to power off.
	qctx, qcancel := context.WithCancel(tctx)
	defer qcancel()
	cmd := exec.CommandContext(qctx, r.opts.qemu, qargs...)
	cmd.Stdin = nil // never hand qemu a terminal: it would switch it to raw mode
	var qerr syncbuf.Buffer
	cmd.Stderr = &qerr
	// If vmtest dies, so does qemu (main locks its OS thread so this holds).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 5 * time.Second
	pipe, err := cmd.StdoutPipe()
	if err != nil {
		return fail(exitRunnerError, "%v", err)
	}
	counter := NewCounter()
	con := &console{
		start:   script.startMarker(),
		exit:    script.exitMarker(),
		out:     r.stdout,
		counter: counter,
		verbose: r.opts.verbose,
		logw:    r.stderr,
		rc:      -1,
	}
	bootStart := time.Now()
	if err := cmd.Start(); err != nil {
		return fail(exitRunnerError, "start %s: %v (apt-get install qemu-system-x86, or make vm-deps)", r.opts.qemu, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		br := bufio.NewReaderSize(pipe, 64*1024)
		for {
			line, err := br.ReadString('\n')
			if line != "" {
				wasEnded := con.ended
				con.line(strings.TrimRight(line, "\r\n"), time.Now())
				if con.ended && !wasEnded {
					time.AfterFunc(powerOffGrace, qcancel)
				}
			}
			if err != nil {
				return
			}
		}
	}()
	<-done
	werr := cmd.Wait()

	counts := counter.Finish()
	if !con.started.IsZero() {
		rec.BootSeconds = con.started.Sub(bootStart).Seconds()
	}
	elapsed := time.Since(bootStart).Round(100 * time.Millisecond)
	switch {
	case errors.Is(tctx.Err(), context.DeadlineExceeded) && con.rc < 0:
		con.dumpBootLog(r.stderr)
		return finish(exitTimeout, counts, r.report(k, "timeout: the VM ran longer than %v and was killed", r.opts.timeout))
	case ctx.Err() != nil && con.rc < 0:
		return finish(exitInterrupted, counts, r.report(k, "interrupted; qemu killed"))
	case con.rc >= 0:
		fmt.Fprintf(r.stderr, "vmtest: kernel %s (%s): booted in %.1fs, exit status %d after %v\n",
			r.opts.kernel, k.Release, rec.BootSeconds, con.rc, elapsed)
		return finish(con.rc, counts, "")
	case con.started.IsZero():
		con.dumpBootLog(r.stderr)
		dumpQemuStderr(r.stderr, qerr.String())
		return finish(exitRunnerError, counts, r.report(k, "the VM never reached init (qemu: %v)", werrString(werr)))
	default:
		dumpQemuStderr(r.stderr, qerr.String())
		return finish(exitRunnerError, counts, r.report(k, "the VM stopped before the test binary reported its exit status (kernel panic? the test powered off the VM?) (qemu: %v)", werrString(werr)))
	}
}

func (r *runner) report(k Kernel, format string, a ...any) string {
	msg := fmt.Sprintf(format, a...)
	r.errorf("kernel %s (%s): %s", r.opts.kernel, k.Release, msg)
	return msg
}

func werrString(err error) string {
	if err == nil {
		return "exited 0"
	}
	return err.Error()
}

func dumpQemuStderr(w io.Writer, s string) {
	if s = strings.TrimSpace(s); s != "" {
		fmt.Fprintf(w, "vmtest: qemu stderr:\n%s\n", s)
	}
}

// buildInitramfs writes work/initramfs.cpio and returns the init script.
func (r *runner) buildInitramfs(k Kernel, bin string, args []string, cwd, root, work string) (initScript, error) {
	var s initScript
	a := newArchive()
	if err := a.addBase(); err != nil {
		return s, err
	}
	bb, err := findBusybox()
	if err != nil {
		return s, err
	}
	if err := a.addBusybox(bb); err != nil {
		return s, err
	}

	static, isELF, err := isStaticELF(bin)
	if err != nil {
		return s, fmt.Errorf("test binary: %w", err)
	}
	if isELF && !static {
		return s, fmt.Errorf("test binary %s is dynamically linked; the guest has no libc: build with CGO_ENABLED=0", bin)
	}
	guestBin := "/vmtest/" + filepath.Base(bin)
	if err := a.file(guestBin, bin); err != nil {
		return s, fmt.Errorf("test binary: %w", err)
	}

	// The working directory exists in the guest at the same path, with the
	// package's testdata, so relative paths in tests work unchanged.
	if err := a.dir(cwd, 0o755); err != nil {
		return s, err
	}
	if st, err := os.Stat(filepath.Join(cwd, "testdata")); err == nil && st.IsDir() {
		if err := a.tree(filepath.Join(cwd, "testdata"), filepath.Join(cwd, "testdata")); err != nil {
			return s, fmt.Errorf("testdata: %w", err)
		}
	}

	incs, err := parseIncludes(os.Getenv("VMTEST_INCLUDE"), root)
	if err != nil {
		return s, err
	}
	for _, inc := range incs {
		if err := a.tree(inc.Dest, inc.Src); err != nil {
			return s, fmt.Errorf("VMTEST_INCLUDE %s:%s: %w", inc.Src, inc.Dest, err)
		}
		if static, isELF, _ := isStaticELF(inc.Src); isELF && !static {
			fmt.Fprintf(r.stderr, "vmtest: warning: %s is dynamically linked and will not run in the guest (build it with CGO_ENABLED=0)\n", inc.Src)
		}
	}

	modules, err := a.addModules(k, strings.Fields(os.Getenv("VMTEST_MODULES")), work)
	if err != nil {
		return s, err
	}

	env := []string{
		"VIGIL_IN_VM=1",
		"VMTEST_KERNEL=" + r.opts.kernel,
		"VMTEST_KERNEL_RELEASE=" + k.Release,
	}
	if len(modules) > 0 {
		env = append(env, "VMTEST_MODULES="+strings.Join(modules, " "))
	}
	for _, name := range []string{"GOTRACEBACK", "GODEBUG"} {
		if v, ok := os.LookupEnv(name); ok {
			env = append(env, name+"="+v)
		}
	}
	for _, kv := range strings.Fields(os.Getenv("VMTEST_ENV")) {
		name, _, ok := strings.Cut(kv, "=")
		if !ok || !envName(name) {
			return s, fmt.Errorf("VMTEST_ENV item %q: want NAME=VALUE", kv)
		}
		env = append(env, kv)
	}
	nonce := make([]byte, 8)
	rand.Read(nonce)
	s = initScript{
		Nonce:   hex.EncodeToString(nonce),
		Env:     env,
		Dir:     cwd,
		Command: append([]string{guestBin}, args...),
		Dmesg:   r.opts.dmesg,
	}
	for _, d := range []string{"/tmp", "/run"} {
		if cwd == d || strings.HasPrefix(cwd, d+"/") {
			s.Carry = append(s.Carry, d)
		}
	}
	if err := a.bytes("/init", 0o755, []byte(s.render())); err != nil {
		return s, err
	}

	f, err := os.Create(filepath.Join(work, "initramfs.cpio"))
	if err != nil {
		return s, err
	}
	if err := a.writeCpio(f); err != nil {
		f.Close()
		return s, err
	}
	return s, f.Close()
}

// console splits the guest's serial output: everything up to the start
// marker is boot noise (kept, shown only when the boot fails or with -v);
// after it, lines are the test's output and go to out and the counter;
// the exit marker carries the test's exit status and ends the output.
type console struct {
	start, exit string
	out         io.Writer
	counter     *Counter
	verbose     bool
	logw        io.Writer

	started time.Time
	rc      int // -1 until the exit marker is seen
	ended   bool
	boot    []string // last lines before the start marker
}

// bootLogKeep bounds the console kept before the start marker.
const bootLogKeep = 100000

func (c *console) line(l string, now time.Time) {
	switch {
	case c.ended:
		if c.verbose {
			fmt.Fprintf(c.logw, "vmtest: [guest] %s\n", l)
		}
	case c.started.IsZero():
		if strings.Contains(l, c.start) {
			c.started = now
			return
		}
		if strings.Contains(l, c.exit) {
			// The start marker was garbled (a kernel message written into
			// the middle of it): the test's output is somewhere in the
			// buffered console. Show all of it rather than lose it.
			fmt.Fprintln(c.logw, "vmtest: warning: the start marker was not seen; the whole console follows")
			c.started = now
			for _, b := range c.boot {
				c.emit(b)
			}
			c.boot = nil
			c.line(l, now)
			return
		}
		if c.verbose {
			fmt.Fprintf(c.logw, "vmtest: [boot] %s\n", l)
		}
		if len(c.boot) < bootLogKeep {
			c.boot = append(c.boot, l)
		}
	default:
		if i := strings.Index(l, c.exit); i >= 0 {
			if prefix := l[:i]; prefix != "" {
				c.emit(prefix)
			}
			if n, err := strconv.Atoi(strings.TrimSpace(l[i+len(c.exit):])); err == nil {
				c.rc = n
			}
			c.ended = true
			return
		}
		c.emit(l)
	}
}

func (c *console) emit(l string) {
	fmt.Fprintln(c.out, l)
	c.counter.Feed(l)
}

func (c *console) dumpBootLog(w io.Writer) {
	if len(c.boot) == 0 || c.verbose {
		return
	}
	lines := c.boot[max(0, len(c.boot)-200):]
	fmt.Fprintf(w, "vmtest: last %d lines of the boot log:\n", len(lines))
	for _, l := range lines {
		fmt.Fprintf(w, "  %s\n", ansiEscape.ReplaceAllString(l, ""))
	}
}

// ansiEscape matches the terminal control sequences SeaBIOS writes to the
// console (clear screen, reset), which would garble the terminal showing a
// boot log.
var ansiEscape = regexp.MustCompile(`\x1b(\[[0-9;?]*[ -/]*[@-~]|[@-Z\\-_]|c)`)

// removeStaleWorkDirs removes work directories left in the temp dir by
// runs that were SIGKILLed (qemu dies with them, through Pdeathsig, but
// nothing cleans up). The directory name carries the run's PID.
func removeStaleWorkDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "vmtest-*-*"))
	for _, d := range dirs {
		f := strings.SplitN(filepath.Base(d), "-", 3)
		pid, err := strconv.Atoi(f[1])
		if err != nil || pid <= 0 || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			os.RemoveAll(d)
		}
	}
}
