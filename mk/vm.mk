# mk/vm.mk: the VM test suite (tools/vmtest). The top Makefile includes it;
# it also works alone: make -f mk/vm.mk test-vm
#
#   make vm-deps     apt-get install what the VMs need, if missing
#   make vm-kernels  build bin/vmtest; fetch Debian's 6.1 and 6.12 kernels
#                    into the cache outside the repository
#                    ($VIGIL_VM_CACHE, default /var/cache/vigil-vmtest)
#   make test-vm     go test $(VM_PKGS) in a qemu VM per kernel in
#                    $(VM_KERNELS), with BPF LSM on; then the summary, which
#                    fails if a kernel has no results, a test failed, or the
#                    tests calling testutil.RequireBPFLSM all skipped there.
#
# Add packages to VM_PKGS, files to VMTEST_INCLUDE ("SRC:DEST ...", SRC
# relative to the repository), kernel modules to VMTEST_MODULES.

VM_KERNELS ?= 6.1 6.12
VM_PKGS ?= ./tools/vmtest/vmcheck/...
VMTEST_INCLUDE ?=
VMTEST_MODULES ?= dummy
VM_TIMEOUT ?= 45m
VM_GO_TEST_FLAGS ?= -timeout 40m
VM_SUMMARY_DIR ?= out/vmtest/summary
# xz-utils and zstd unpack the kernels (booted uncompressed, see
# tools/vmtest/vmlinux.go) and 6.12's modules.
VM_PKGS_DEB ?= qemu-system-x86 busybox-static cpio xz-utils zstd
GO ?= go

vm_empty :=
vm_space := $(vm_empty) $(vm_empty)
vm_comma := ,
vm_kernel_list = $(subst $(vm_space),$(vm_comma),$(strip $(VM_KERNELS)))

.PHONY: vm-deps vm-kernels test-vm vmtest-tool

vm-deps:
	@missing=; \
	for p in $(VM_PKGS_DEB); do \
		dpkg-query -W -f='$${db:Status-Status}\n' $$p 2>/dev/null | grep -qx installed || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then echo "vm-deps: already installed: $(VM_PKGS_DEB)"; exit 0; fi; \
	export DEBIAN_FRONTEND=noninteractive; \
	if ! apt-cache show $$missing >/dev/null 2>&1; then \
		echo "vm-deps: apt-get update"; apt-get update -q || exit 1; \
	fi; \
	echo "vm-deps: installing$$missing"; \
	apt-get install -y -q --no-install-recommends $$missing

vmtest-tool:
	$(GO) build -o bin/vmtest ./tools/vmtest

vm-kernels: vmtest-tool
	bin/vmtest kernels -kernels $(vm_kernel_list)

test-vm: vm-deps vm-kernels
	@rm -rf "$(VM_SUMMARY_DIR)" && mkdir -p "$(VM_SUMMARY_DIR)"; \
	status=0; \
	for k in $(VM_KERNELS); do \
		echo "test-vm: kernel $$k: $(VM_PKGS)"; \
		CGO_ENABLED=0 \
		VMTEST_SUMMARY_DIR="$(abspath $(VM_SUMMARY_DIR))" \
		VMTEST_ROOT="$(CURDIR)" \
		VMTEST_INCLUDE="$(VMTEST_INCLUDE)" \
		VMTEST_MODULES="$(VMTEST_MODULES)" \
		VMTEST_TIMEOUT="$(VM_TIMEOUT)" \
		$(GO) test -v -count=1 $(VM_GO_TEST_FLAGS) -exec "$(CURDIR)/bin/vmtest run -kernel $$k" $(VM_PKGS) || status=1; \
	done; \
	bin/vmtest summary -dir "$(VM_SUMMARY_DIR)" -kernels $(vm_kernel_list) || status=1; \
	exit $$status
