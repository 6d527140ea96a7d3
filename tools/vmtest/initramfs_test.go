package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

type cpioEntry struct {
	name  string
	mode  uint32
	data  string
	rdevM uint32
}

// readCpio is a minimal newc reader, independent of the writer.
func readCpio(t *testing.T, b []byte) []cpioEntry {
	t.Helper()
	var out []cpioEntry
	off := 0
	align := func(n int) int { return (n + 3) &^ 3 }
	for {
		if off+110 > len(b) || string(b[off:off+6]) != "070701" {
			t.Fatalf("bad header at %d", off)
		}
		field := func(i int) uint32 {
			v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				t.Fatalf("header field %d at %d: %v", i, off, err)
			}
			return uint32(v)
		}
		mode, size, rdevMajor, namesize := field(1), int(field(6)), field(9), int(field(11))
		name := string(b[off+110 : off+110+namesize-1])
		off = align(off + 110 + namesize)
		data := string(b[off : off+size])
		off = align(off + size)
		if name == "TRAILER!!!" {
			if off != len(b) {
				t.Errorf("%d bytes after the trailer", len(b)-off)
			}
			return out
		}
		out = append(out, cpioEntry{name: name, mode: mode, data: data, rdevM: rdevMajor})
	}
}

func TestCpioWriter(t *testing.T) {
	dir := t.TempDir()
	host := filepath.Join(dir, "f")
	os.WriteFile(host, []byte("hello, file"), 0o640)
	td := filepath.Join(dir, "testdata")
	os.MkdirAll(filepath.Join(td, "sub"), 0o755)
	os.WriteFile(filepath.Join(td, "sub", "x.txt"), []byte("x"), 0o644)
	os.Symlink("sub/x.txt", filepath.Join(td, "link"))

	a := newArchive()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(a.addBase())
	must(a.file("/usr/bin/f", host))
	must(a.bytes("/init", 0o755, []byte("#!/bin/sh\n")))
	must(a.symlink("/bin/sh", "/bin/busybox"))
	must(a.tree("/work/pkg/testdata", td))
	must(a.bytes("/bin/sh", 0o755, []byte("override"))) // later wins
	if err := a.bytes("/init/x", 0o644, nil); err == nil {
		t.Error("a file below a file was accepted")
	}
	if err := a.bytes("relative", 0o644, nil); err == nil {
		t.Error("a relative guest path was accepted")
	}

	var buf bytes.Buffer
	must(a.writeCpio(&buf))
	ents := readCpio(t, buf.Bytes())
	byName := map[string]cpioEntry{}
	var names []string
	for _, e := range ents {
		if _, dup := byName[e.name]; dup {
			t.Errorf("%s written twice", e.name)
		}
		byName[e.name] = e
		names = append(names, e.name)
		// Every parent must come first: the kernel does not create them.
		if d := filepath.Dir(e.name); d != "." {
			if p, ok := byName[d]; !ok || p.mode&sIFMT != sIFDIR {
				t.Errorf("%s comes before its directory %s", e.name, d)
			}
		}
	}
	for name, want := range map[string]struct {
		mode uint32
		data string
	}{
		"usr/bin/f":                   {sIFREG | 0o640, "hello, file"},
		"init":                        {sIFREG | 0o755, "#!/bin/sh\n"},
		"bin/sh":                      {sIFREG | 0o755, "override"},
		"work/pkg/testdata/sub/x.txt": {sIFREG | 0o644, "x"},
		"work/pkg/testdata/link":      {sIFLNK | 0o777, "sub/x.txt"},
		"tmp":                         {sIFDIR | 0o1777, ""},
		"usr/bin":                     {sIFDIR | 0o755, ""},
		"dev/console":                 {sIFCHR | 0o600, ""},
	} {
		e, ok := byName[name]
		if !ok {
			t.Errorf("%s missing; have %q", name, names)
			continue
		}
		if e.mode != want.mode || e.data != want.data {
			t.Errorf("%s: mode %o data %q, want mode %o data %q", name, e.mode, e.data, want.mode, want.data)
		}
	}
	if byName["dev/console"].rdevM != 5 {
		t.Errorf("/dev/console major %d, want 5", byName["dev/console"].rdevM)
	}
	if _, err := exec.LookPath("cpio"); err == nil {
		// The real cpio agrees it is a valid newc archive.
		cmd := exec.Command("cpio", "-t", "--quiet")
		cmd.Stdin = bytes.NewReader(buf.Bytes())
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("cpio -t: %v", err)
		}
		if got := strings.Fields(string(out)); !reflect.DeepEqual(got, names) {
			t.Errorf("cpio -t lists %q, want %q", got, names)
		}
	}
}

func TestShellQuote(t *testing.T) {
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	args := []string{"plain", "", "with space", "it's", `"dq"`, "$HOME", "`x`", "-test.run=^TestA$|B/c", "a\nb", "ümlaut"}
	var q []string
	for _, a := range args {
		q = append(q, shellQuote(a))
	}
	out, err := exec.Command("sh", "-c", "printf '%s\\0' "+strings.Join(q, " ")).Output()
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Split(strings.TrimSuffix(string(out), "\x00"), "\x00")
	if !reflect.DeepEqual(got, args) {
		t.Errorf("sh saw %q, want %q", got, args)
	}
}

func TestParseIncludes(t *testing.T) {
	got, err := parseIncludes(" bin/vigil:/usr/bin/vigil  /abs/x.ko:/lib/x.ko ", "/repo")
	if err != nil {
		t.Fatal(err)
	}
	want := []Include{{"/repo/bin/vigil", "/usr/bin/vigil"}, {"/abs/x.ko", "/lib/x.ko"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	for _, bad := range []string{"bin/vigil", "bin/vigil:", ":/x", "bin/vigil:usr/bin/vigil"} {
		if _, err := parseIncludes(bad, "/repo"); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestInitScript(t *testing.T) {
	s := initScript{
		Nonce:   "abc",
		Env:     []string{"VIGIL_IN_VM=1", "X=it's"},
		Dir:     "/tmp/pkg dir",
		Command: []string{"/vmtest/p.test", "-test.run=^A$"},
		Carry:   []string{"/tmp"},
	}
	got := s.render()
	for _, want := range []string{
		"echo vmtest-start-abc\n",
		"export VIGIL_IN_VM=1\n",
		`export X='it'"'"'s'` + "\n",
		"cd '/tmp/pkg dir' ||",
		"/vmtest/p.test '-test.run=^A$'\n",
		"echo vmtest-exit-abc rc=$rc\n",
		"mnt securityfs securityfs /sys/kernel/security\n",
		"mnt bpf bpf /sys/fs/bpf\n",
		"mnt tracefs tracefs /sys/kernel/tracing\n",
		"mnt cgroup2 cgroup2 /sys/fs/cgroup\n",
		"mnt tmpfs tmpfs /run\n",
		"mv /tmp /.vmtest-carry-tmp && mnt tmpfs tmpfs /tmp && cp -a /.vmtest-carry-tmp/. /tmp/ && rm -rf /.vmtest-carry-tmp\n",
		"poweroff -f\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("init script lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "\nmnt tmpfs tmpfs /tmp\n") {
		t.Error("mounts a tmpfs over the working directory without carrying it over")
	}
	if _, err := exec.LookPath("sh"); err == nil {
		if out, err := exec.Command("sh", "-n", "-c", got).CombinedOutput(); err != nil {
			t.Errorf("sh -n: %v\n%s", err, out)
		}
	}
}

func TestConsole(t *testing.T) {
	var out bytes.Buffer
	c := &console{start: "vmtest-start-n", exit: "vmtest-exit-n rc=", out: &out, counter: NewCounter(), rc: -1}
	now := time.Now()
	for _, l := range []string{
		"SeaBIOS (version x)",
		"[    0.1] kernel noise",
		"vmtest-start-n",
		"=== RUN   TestA",
		"--- PASS: TestA (0.00s)",
		"PASS",
		"no newline at endvmtest-exit-n rc=3",
		"[    4.2] reboot: Power down",
	} {
		c.line(l, now)
	}
	if c.rc != 3 {
		t.Errorf("rc = %d, want 3", c.rc)
	}
	if c.started.IsZero() {
		t.Error("start marker not seen")
	}
	want := "=== RUN   TestA\n--- PASS: TestA (0.00s)\nPASS\nno newline at end\n"
	if out.String() != want {
		t.Errorf("forwarded %q, want %q", out.String(), want)
	}
	if !slices.Equal(c.boot, []string{"SeaBIOS (version x)", "[    0.1] kernel noise"}) {
		t.Errorf("boot log %q", c.boot)
	}
	if got := c.counter.Finish(); got != (Counts{Ran: 1, Passed: 1}) {
		t.Errorf("counts %+v", got)
	}
}

func TestConsoleGarbledStartMarker(t *testing.T) {
	var out, log bytes.Buffer
	c := &console{start: "vmtest-start-n", exit: "vmtest-exit-n rc=", out: &out, logw: &log, counter: NewCounter(), rc: -1}
	for _, l := range []string{"vmtest-st[ 1.0] noise", "art-n", "=== RUN   TestA", "--- FAIL: TestA (0.00s)", "vmtest-exit-n rc=1"} {
		c.line(l, time.Now())
	}
	if c.rc != 1 {
		t.Errorf("rc = %d, want 1", c.rc)
	}
	if !strings.Contains(out.String(), "--- FAIL: TestA") {
		t.Errorf("output lost: %q", out.String())
	}
	if got := c.counter.Finish(); got != (Counts{Ran: 1, Failed: 1}) {
		t.Errorf("counts %+v", got)
	}
}

func TestANSIEscapeStripped(t *testing.T) {
	in := "\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16.2)"
	if got := ansiEscape.ReplaceAllString(in, ""); got != "SeaBIOS (version 1.16.2)" {
		t.Errorf("got %q", got)
	}
}

func TestQemuArgsIcount(t *testing.T) {
	o := runOptions{mem: "2048", smp: 1}
	if got := strings.Join(qemuArgs(o, "vmlinux", "initrd"), " "); strings.Contains(got, "-icount") {
		t.Errorf("no icount asked, got %q", got)
	}
	o.icount = "shift=2,sleep=off"
	got := strings.Join(qemuArgs(o, "vmlinux", "initrd"), " ")
	if !strings.Contains(got, "-icount shift=2,sleep=off") || !strings.Contains(got, "-accel tcg") {
		t.Errorf("icount asked, got %q", got)
	}
}
