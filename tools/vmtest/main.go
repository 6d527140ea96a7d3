// Command vmtest runs Go test binaries inside qemu VMs booted on Debian's
// 6.1 and 6.12 kernels with BPF LSM enabled, so tests that need real BPF
// LSM enforcement (which the development machines lack) run on every
// `make test-vm`. It is meant as a `go test -exec` wrapper:
//
//	go test -v -exec "$(pwd)/bin/vmtest run -kernel 6.1" ./pkg
//
// Commands:
//
//	vmtest kernels [-cache DIR] [-kernels 6.1,6.12]
//	    fetch and unpack the kernel packages into the cache (outside the
//	    repository; $VIGIL_VM_CACHE or /var/cache/vigil-vmtest).
//	vmtest run -kernel 6.1|6.12 [-timeout 15m] TESTBINARY [ARGS...]
//	    boot the kernel with an initramfs holding busybox and the test
//	    binary, run it, stream its output, exit with its exit status.
//	vmtest summary -dir DIR [-kernels 6.1,6.12]
//	    add up the results runs wrote to DIR ($VMTEST_SUMMARY_DIR) and fail
//	    unless every kernel passed and ran its bpf-lsm tests.
//
// Environment read by run (relative host paths in it are relative to
// VMTEST_ROOT, else the module root, not to the package directory go test
// runs the binary in): VMTEST_INCLUDE ("SRC:DEST ..." extra files),
// VMTEST_MODULES (kernel module names to put in the guest's /lib/modules),
// VMTEST_ENV ("NAME=VALUE ..." for the guest), VMTEST_SUMMARY_DIR,
// VMTEST_TIMEOUT, VMTEST_QEMU_ARGS, VMTEST_DMESG=1, VMTEST_VERBOSE=1.
// The guest sees VIGIL_IN_VM=1, VMTEST_KERNEL and VMTEST_KERNEL_RELEASE.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"syscall"
)

func usage() {
	fmt.Fprint(os.Stderr, `usage:
  vmtest kernels [-cache DIR] [-kernels 6.1,6.12]
  vmtest run -kernel 6.1|6.12 [-timeout 15m] TESTBINARY [ARGS...]
  vmtest summary -dir DIR [-kernels 6.1,6.12]
`)
}

func main() {
	// qemu is started with Pdeathsig, which fires when the starting
	// *thread* exits; keep main on one thread for the process's lifetime.
	runtime.LockOSThread()
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	var rc int
	switch os.Args[1] {
	case "kernels":
		rc = cmdKernels(ctx, os.Args[2:], os.Stdout)
	case "run":
		rc = cmdRun(ctx, os.Args[2:], os.Stdout, os.Stderr)
	case "summary":
		rc = cmdSummary(os.Args[2:], os.Stdout)
	case "-h", "-help", "--help", "help":
		usage()
	default:
		fmt.Fprintf(os.Stderr, "vmtest: unknown command %q\n", os.Args[1])
		usage()
		rc = 2
	}
	stop()
	os.Exit(rc)
}
