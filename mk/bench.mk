# mk/bench.mk: the benchmark suite (bench/, docs/benchmarks.md). The top
# Makefile includes it. Needs root; installs what it needs (gcc,
# libc6-dev, auditd, fapolicyd; the VM packages and kernels through
# vm-deps and vm-kernels). Not part of `make test`.
#
#   make bench                the whole suite, about 15-20 minutes on 2 cores:
#                             $(BENCH_OUT)/report.md, report.json, chart.svg
#   make bench BENCH_QUICK=1  the same phases at a smaller scale, about 3 minutes
#   make bench-cleanup        undo what an interrupted run left (daemons,
#                             audit rules and settings); a no-op otherwise
#
# BENCH_FLAGS passes more flags to `vigil-bench run`, e.g.
# BENCH_FLAGS="-phases micro,cost -configs vigil,auditd" or "-keep". Phases:
# micro, cost, throughput, workload, decision (execution control), auth,
# fleet (the fleet server under simulated agents), vm.

BENCH_OUT ?= out/bench
BENCH_QUICK ?=
BENCH_FLAGS ?=
BENCH_BIN := bin/vigil-bench
GO ?= go

.PHONY: bench bench-tool bench-cleanup

# Static: the same binary runs as the VM guest.
bench-tool:
	CGO_ENABLED=0 $(GO) build -o $(BENCH_BIN) ./bench/cmd/vigil-bench

# The trap undoes whatever a failed or interrupted run left behind, even
# if vigil-bench itself was killed; after a clean run it does nothing.
bench: build bench-tool vm-deps vm-kernels
	@trap '$(BENCH_BIN) cleanup' EXIT INT TERM HUP; \
	$(BENCH_BIN) run -vigil bin/vigil -vmtest bin/vmtest -out $(BENCH_OUT) \
		$(if $(filter-out 0,$(BENCH_QUICK)),-quick) $(BENCH_FLAGS)

bench-cleanup: bench-tool
	$(BENCH_BIN) cleanup
