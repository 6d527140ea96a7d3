# Vigil build and test entry points. `make test` is the one command that
# runs every test on a fresh machine: it installs what it needs itself.
SHELL := /bin/bash
GO ?= go
export CGO_ENABLED := 0

BIN := $(CURDIR)/bin
VIGIL := $(BIN)/vigil

# Debian packages the build and tests need (installed when missing).
# postgresql: the fleet scale-out tests run a private cluster (internal/testutil/pgtest).
BUILD_PKGS := clang llvm libbpf-dev protobuf-compiler libc6-dev postgresql

.PHONY: all build deps generate check-generated vet test test-host bench clean

all: build

build: $(VIGIL)

$(VIGIL): FORCE
	$(GO) build -o $@ ./cmd/vigil

FORCE:

# deps installs the Debian packages that are missing (as root; apt-get
# update only when something must be installed).
deps:
	@missing=""; for p in $(BUILD_PKGS) $(VM_PKGS_DEB); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# generate rebuilds the BPF objects, their Go bindings and the protobuf
# code. The outputs are committed; check-generated fails when they are
# stale.
generate: deps
	$(GO) build -o $(BIN)/protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go
	$(GO) build -o $(BIN)/protoc-gen-go-grpc google.golang.org/grpc/cmd/protoc-gen-go-grpc
	$(GO) generate ./...

check-generated: generate
	@if ! git diff --quiet -- api internal; then \
		git --no-pager diff --stat -- api internal; \
		echo "generated files are stale: run 'make generate' and commit the result" >&2; \
		exit 1; \
	fi

vet:
	$(GO) vet ./...

# The console's browser test (test/browser) drives Debian's chromium,
# installed here when missing. Without network it cannot be: the test then
# skips, and this says so.
BROWSER_PKGS := chromium
.PHONY: browser-deps
browser-deps:
	@missing=""; for p in $(BROWSER_PKGS); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; } || \
		echo "WARNING: could not install$$missing: the console browser test (test/browser) will SKIP" >&2; \
	fi

# Host tests: the tracepoint and fanotify paths run for real here (as
# root); nothing arms a host-wide deny.
test-host: build browser-deps
	VIGIL_BIN=$(VIGIL) $(GO) test -count=1 ./...

test: deps check-generated vet test-host test-vm
	@echo "make test: all suites passed"

clean:
	rm -rf bin out

# The VM suite: these packages run in qemu on each kernel, with bin/vigil
# in the image for the end-to-end tests, and the dynamic loader, libc and a
# dynamically linked program for the direct-loader test.
VM_PKGS := ./tools/vmtest/vmcheck/... ./internal/sensor/bpfsensor/... ./internal/tamper/... ./test/e2e/...
VM_LIBDIR := /lib/x86_64-linux-gnu
VMTEST_INCLUDE := bin/vigil:/usr/bin/vigil \
	/lib64/ld-linux-x86-64.so.2:/lib64/ld-linux-x86-64.so.2 \
	$(VM_LIBDIR)/libc.so.6:$(VM_LIBDIR)/libc.so.6 \
	/usr/bin/true:/opt/vigil-test/true \
	bin/xcloader:/opt/vigil-test/xcloader \
	bin/vigil-scanner:/opt/vigil-test/vigil-scanner \
	bin/vigil-jsonl:/opt/vigil-test/vigil-jsonl \
	bin/libxctest.so:/opt/vigil-test/libxctest.so \
	examples:$(CURDIR)/examples
include mk/vm.mk
include mk/bench.mk

test-vm: build xctest clients

# Execution control's VM tests load a library through dlopen (xcloader)
# and LD_PRELOAD: a C program and library linked against the system libc.
.PHONY: xctest
xctest: $(BIN)/xcloader $(BIN)/libxctest.so
$(BIN)/xcloader: tools/xctest/xcloader.c
	@mkdir -p $(BIN)
	clang -O2 -Wall -Werror -o $@ $<
$(BIN)/libxctest.so: tools/xctest/xclib.c
	@mkdir -p $(BIN)
	clang -O2 -Wall -Werror -shared -fPIC -o $@ $<

# The example filter API clients (examples/clients), static: the VM tests
# run them as approved clients.
.PHONY: clients
clients:
	$(GO) build -o $(BIN)/vigil-scanner ./examples/clients/scanner
	$(GO) build -o $(BIN)/vigil-jsonl ./examples/clients/jsonl
