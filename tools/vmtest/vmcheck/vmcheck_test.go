package vmcheck

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/vigil-hips/vigil/internal/testutil"
)

func TestBPFAmongActiveLSMs(t *testing.T) {
	testutil.RequireBPFLSM(t)
	b, err := os.ReadFile("/sys/kernel/security/lsm")
	if err != nil {
		t.Fatal(err)
	}
	lsms := strings.Split(strings.TrimSpace(string(b)), ",")
	if !slices.Contains(lsms, "bpf") {
		t.Fatalf("active LSMs %q do not include bpf", lsms)
	}
	t.Logf("active LSMs: %s", strings.Join(lsms, ","))
}

// fileOpenSpec is an lsm/file_open program running insns.
func fileOpenSpec(insns asm.Instructions) *ebpf.ProgramSpec {
	return &ebpf.ProgramSpec{
		Name:         "vmcheck_open",
		Type:         ebpf.LSM,
		AttachType:   ebpf.AttachLSMMac,
		AttachTo:     "file_open",
		License:      "GPL",
		Instructions: insns,
	}
}

func loadAndAttach(t *testing.T, spec *ebpf.ProgramSpec) {
	t.Helper()
	prog, err := ebpf.NewProgram(spec)
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			t.Fatalf("load lsm/file_open: %+v", ve)
		}
		t.Fatalf("load lsm/file_open: %v", err)
	}
	t.Cleanup(func() { prog.Close() })
	l, err := link.AttachLSM(link.LSMOptions{Program: prog})
	if err != nil {
		t.Fatalf("attach lsm/file_open: %v", err)
	}
	t.Cleanup(func() { l.Close() })
}

// TestAttachLSMProgram loads and attaches the smallest LSM program there is
// (return 0: allow). On 6.12 the verifier insists on a return value in
// [-4095, 0]; 0 is in it.
func TestAttachLSMProgram(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireBPFLSM(t)
	loadAndAttach(t, fileOpenSpec(asm.Instructions{
		asm.Mov.Imm(asm.R0, 0),
		asm.Return(),
	}))
	// Opening files still works with the allow-all program attached.
	if _, err := os.ReadFile("/proc/self/status"); err != nil {
		t.Fatalf("open with allow-all lsm/file_open attached: %v", err)
	}
}

// TestLSMProgramRuns proves the attached program is called, not just
// accepted: it counts file_open calls in an array map. (DESIGN.md records a
// kernel, 6.1, where some LSM programs attached fine and never ran.)
func TestLSMProgramRuns(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireBPFLSM(t)
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		t.Fatalf("create map: %v", err)
	}
	defer m.Close()
	loadAndAttach(t, fileOpenSpec(asm.Instructions{
		asm.StoreImm(asm.RFP, -4, 0, asm.Word), // key = 0
		asm.LoadMapPtr(asm.R1, m.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.Mov.Imm(asm.R1, 1),
		asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),
		asm.Mov.Imm(asm.R0, 0).WithSymbol("out"),
		asm.Return(),
	}))
	for range 3 {
		if _, err := os.ReadFile("/proc/self/status"); err != nil {
			t.Fatal(err)
		}
	}
	var n uint64
	if err := m.Lookup(uint32(0), &n); err != nil {
		t.Fatalf("read counter: %v", err)
	}
	if n < 3 {
		t.Fatalf("lsm/file_open ran %d times for 3 opens", n)
	}
	t.Logf("lsm/file_open ran %d times", n)
}

// TestVMEnvironment checks what the VM's init promises the tests.
func TestVMEnvironment(t *testing.T) {
	testutil.RequireVM(t)
	mounts, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []struct{ dir, fstype string }{
		{"/proc", "proc"},
		{"/sys", "sysfs"},
		{"/dev", "devtmpfs"},
		{"/sys/kernel/security", "securityfs"},
		{"/sys/fs/bpf", "bpf"},
		{"/sys/kernel/tracing", "tracefs"},
		{"/sys/kernel/debug", "debugfs"},
		{"/sys/fs/cgroup", "cgroup2"},
		{"/tmp", "tmpfs"},
		{"/run", "tmpfs"},
	} {
		if !hasMount(string(mounts), want.dir, want.fstype) {
			t.Errorf("%s is not mounted as %s", want.dir, want.fstype)
		}
	}
	b, err := os.ReadFile("testdata/hello.txt")
	if err != nil {
		t.Errorf("relative testdata: %v", err)
	} else if string(b) != "vmtest testdata\n" {
		t.Errorf("testdata/hello.txt = %q", b)
	}
	if os.Getenv("VMTEST_KERNEL") == "" {
		t.Error("VMTEST_KERNEL is not set")
	}
	f, err := os.CreateTemp("", "vmcheck-")
	if err != nil {
		t.Fatalf("temp dir not writable: %v", err)
	}
	f.Close()
	os.Remove(f.Name())
}

func hasMount(mounts, dir, fstype string) bool {
	for _, l := range strings.Split(mounts, "\n") {
		f := strings.Fields(l)
		if len(f) >= 3 && f[1] == dir && f[2] == fstype {
			return true
		}
	}
	return false
}

// TestLoadKernelModule loads a module vmtest put in the guest (make test-vm
// passes VMTEST_MODULES=dummy) with finit_module(2), the way module-load
// control tests will.
func TestLoadKernelModule(t *testing.T) {
	testutil.RequireVM(t)
	testutil.RequireRoot(t)
	if !slices.Contains(strings.Fields(os.Getenv("VMTEST_MODULES")), "dummy") {
		t.Skip("VMTEST_MODULES does not include dummy")
	}
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		t.Fatal(err)
	}
	release := unix.ByteSliceToString(uts.Release[:])
	ko := filepath.Join("/lib/modules", release, "kernel/drivers/net/dummy.ko")
	f, err := os.Open(ko)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.FinitModule(int(f.Fd()), "", 0); err != nil && !errors.Is(err, unix.EEXIST) {
		t.Fatalf("finit_module %s: %v", ko, err)
	}
	if _, err := os.Stat("/sys/module/dummy"); err != nil {
		t.Fatalf("module loaded but %v", err)
	}
	if err := unix.DeleteModule("dummy", 0); err != nil {
		t.Errorf("delete_module dummy: %v", err)
	}
}
