// Command vigil-bench runs Vigil's benchmark suite: the agent's cost
// against no agent, auditd and fapolicyd, on the host and in a VM with BPF
// LSM, measured side by side in one run. `make bench` is the way to run
// it (see mk/bench.mk and docs/benchmarks.md).
//
//	vigil-bench run [-quick] [-out DIR] [-vigil BIN] [-vmtest BIN] [-phases micro,cost,...]
//	    the suite, then DIR/report.md, report.json and chart.svg.
//	vigil-bench cleanup [-journal FILE]
//	    undo what a run that died left behind (daemons, audit rules and
//	    settings); a no-op after a clean run.
//	vigil-bench exec-in ... -- CMD    (internal) start a daemon in its cgroup and mounts
//	vigil-bench guest ...             (internal) the VM side, run by tools/vmtest
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/vigil-hips/vigil/bench/harness"
)

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	var err error
	switch os.Args[1] {
	case "run":
		err = cmdRun(ctx, os.Args[2:])
	case "cleanup":
		err = cmdCleanup(ctx, os.Args[2:])
	case "exec-in":
		err = harness.ExecIn(os.Args[2:])
	case "echo-peer":
		err = harness.EchoPeer()
	case "guest":
		err = harness.Guest(ctx, os.Args[2:], slog.New(slog.NewTextHandler(os.Stdout, nil)))
	case "-h", "-help", "--help", "help":
		usage()
		return
	default:
		fmt.Fprintf(os.Stderr, "vigil-bench: unknown command %q\n", os.Args[1])
		usage()
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "vigil-bench: %v\n", err)
		if errors.Is(err, context.Canceled) {
			os.Exit(130)
		}
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprint(os.Stderr, `usage:
  vigil-bench run [-quick] [-out DIR] [-vigil BIN] [-vmtest BIN] [-phases LIST] [-vm-kernels LIST]
  vigil-bench cleanup [-journal FILE]
`)
}

func cmdRun(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	var o harness.Options
	quick := fs.Bool("quick", os.Getenv("BENCH_QUICK") != "" && os.Getenv("BENCH_QUICK") != "0", "quick mode, about 3 minutes ($BENCH_QUICK=1)")
	fs.StringVar(&o.Out, "out", "out/bench", "results directory")
	fs.StringVar(&o.Vigil, "vigil", "bin/vigil", "the vigil binary")
	fs.StringVar(&o.VMTest, "vmtest", "bin/vmtest", "the tools/vmtest binary (empty: no VM suite)")
	fs.StringVar(&o.Journal, "journal", harness.DefaultJournal, "the undo journal")
	fs.StringVar(&o.Cache, "cache", "/var/cache/vigil-bench", "download cache (the workload's sources)")
	phases := fs.String("phases", "", "run only these phases: micro,cost,throughput,workload,decision,auth,fleet,vm")
	configs := fs.String("configs", "", "run only these host configurations (and the baseline), e.g. vigil,auditd")
	kernels := fs.String("vm-kernels", "", "kernels of the VM suite, e.g. 6.12,6.1 (default: the mode's)")
	fs.BoolVar(&o.NoInstall, "no-install", false, "never run apt-get")
	fs.BoolVar(&o.Keep, "keep", false, "keep the work directory (daemon and build logs)")
	verbose := fs.Bool("v", false, "debug logging")
	if err := fs.Parse(args); err != nil {
		return err
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if os.Geteuid() != 0 {
		return errors.New("the bench needs root (daemons, cgroups, BPF, audit)")
	}
	if *phases != "" {
		o.Phases = strings.Split(*phases, ",")
	}
	if *configs != "" {
		o.Configs = strings.Split(*configs, ",")
	}
	if *kernels != "" {
		o.VMKernels = strings.Split(*kernels, ",")
	}
	var err error
	if o.Self, err = os.Executable(); err != nil {
		return err
	}
	for _, p := range []*string{&o.Vigil, &o.VMTest, &o.Out} {
		if *p != "" {
			if *p, err = filepath.Abs(*p); err != nil {
				return err
			}
		}
	}
	if o.VMTest != "" {
		if _, err := os.Stat(o.VMTest); err != nil {
			log.Warn("no vmtest binary: the VM suite will not run", "path", o.VMTest)
		}
	}
	o.Root, _ = os.Getwd()
	p := harness.FullParams()
	if *quick {
		p = harness.QuickParams()
	}
	start := time.Now()
	log.Info("vigil-bench", "mode", p.Mode, "out", o.Out)
	rep, err := harness.Run(ctx, o, p, log)
	if rep != nil {
		if werr := harness.WriteReport(rep, o.Out); werr != nil {
			return errors.Join(err, werr)
		}
		log.Info("report written", "dir", o.Out, "took", time.Since(start).Round(time.Second))
	}
	if err != nil {
		return err
	}
	return ctx.Err()
}

func cmdCleanup(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("cleanup", flag.ContinueOnError)
	journal := fs.String("journal", harness.DefaultJournal, "the undo journal")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	lock, err := harness.TryLock(*journal)
	if err != nil {
		// A run is in progress: it cleans up after itself.
		log.Warn("cleanup skipped", "err", err)
		return nil
	}
	defer lock.Unlock()
	// Cleanup must finish even if make is being interrupted again.
	return harness.Cleanup(context.WithoutCancel(ctx), *journal, log)
}
