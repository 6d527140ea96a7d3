package main

import (
	"bufio"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
)

// archive is the initramfs being put together: guest path → entry. It is
// written as a cpio "newc" archive, which is what the kernel unpacks into
// its rootfs. Entries are written sorted, so every directory comes before
// what it holds (the kernel's unpacker does not create parents).
type archive struct {
	entries map[string]*entry
}

type entry struct {
	mode   uint32 // type and permission bits, as in cpio (S_IFREG|0755 …)
	src    string // host file to copy, for regular files without data
	data   []byte // contents, for generated regular files
	size   int64
	target string // symlink target
	rdev   [2]uint32
	mtime  int64
}

const (
	sIFMT  = 0o170000
	sIFDIR = 0o040000
	sIFREG = 0o100000
	sIFLNK = 0o120000
	sIFCHR = 0o020000
)

func newArchive() *archive { return &archive{entries: map[string]*entry{}} }

func cleanGuest(p string) (string, error) {
	if !path.IsAbs(p) {
		return "", fmt.Errorf("guest path %q is not absolute", p)
	}
	p = path.Clean(p)
	if p == "/" {
		return "", fmt.Errorf("guest path / cannot be replaced")
	}
	return p, nil
}

// put adds e at p and the directories above p. A later put replaces an
// earlier one (an included file wins over a busybox applet link).
func (a *archive) put(p string, e *entry) error {
	p, err := cleanGuest(p)
	if err != nil {
		return err
	}
	if old, ok := a.entries[p]; ok && old.mode&sIFMT == sIFDIR && e.mode&sIFMT == sIFDIR {
		return nil
	}
	for d := path.Dir(p); d != "/"; d = path.Dir(d) {
		if old, ok := a.entries[d]; ok {
			if old.mode&sIFMT != sIFDIR {
				return fmt.Errorf("%s: %s is not a directory in the initramfs", p, d)
			}
			continue
		}
		a.entries[d] = &entry{mode: sIFDIR | 0o755}
	}
	a.entries[p] = e
	return nil
}

func (a *archive) dir(p string, perm uint32) error {
	return a.put(p, &entry{mode: sIFDIR | perm})
}

func (a *archive) bytes(p string, perm uint32, data []byte) error {
	return a.put(p, &entry{mode: sIFREG | perm, data: data, size: int64(len(data))})
}

func (a *archive) symlink(p, target string) error {
	return a.put(p, &entry{mode: sIFLNK | 0o777, target: target, size: int64(len(target))})
}

func (a *archive) chardev(p string, major, minor uint32) error {
	return a.put(p, &entry{mode: sIFCHR | 0o600, rdev: [2]uint32{major, minor}})
}

// file adds the host file src (symlinks followed) at guest path p.
func (a *archive) file(p, src string) error {
	st, err := os.Stat(src)
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", src)
	}
	return a.put(p, &entry{mode: sIFREG | uint32(st.Mode().Perm()), src: src, size: st.Size(), mtime: st.ModTime().Unix()})
}

// tree adds src at p: a file, or a directory with everything under it.
// Symlinks inside a directory are kept as symlinks.
func (a *archive) tree(p, src string) error {
	st, err := os.Stat(src)
	if err != nil {
		return err
	}
	if !st.IsDir() {
		return a.file(p, src)
	}
	return filepath.WalkDir(src, func(hp string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, hp)
		if err != nil {
			return err
		}
		gp := path.Join(p, filepath.ToSlash(rel))
		switch {
		case d.IsDir():
			info, err := d.Info()
			if err != nil {
				return err
			}
			return a.dir(gp, uint32(info.Mode().Perm()))
		case d.Type()&fs.ModeSymlink != 0:
			t, err := os.Readlink(hp)
			if err != nil {
				return err
			}
			return a.symlink(gp, t)
		case d.Type().IsRegular():
			return a.file(gp, hp)
		default:
			return nil // sockets, fifos, devices: not useful in a test image
		}
	})
}

// writeCpio writes the archive in cpio newc format.
func (a *archive) writeCpio(w io.Writer) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	names := make([]string, 0, len(a.entries))
	for p := range a.entries {
		names = append(names, p)
	}
	slices.Sort(names)
	ino := uint32(1)
	for _, p := range names {
		e := a.entries[p]
		if err := writeCpioEntry(bw, strings.TrimPrefix(p, "/"), ino, e); err != nil {
			return fmt.Errorf("initramfs %s: %w", p, err)
		}
		ino++
	}
	if err := writeCpioEntry(bw, "TRAILER!!!", 0, &entry{}); err != nil {
		return err
	}
	return bw.Flush()
}

func writeCpioEntry(w *bufio.Writer, name string, ino uint32, e *entry) error {
	nlink := 1
	if e.mode&sIFMT == sIFDIR {
		nlink = 2
	}
	size := e.size
	if e.mode&sIFMT != sIFREG && e.mode&sIFMT != sIFLNK {
		size = 0
	}
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		ino, e.mode, 0, 0, nlink, uint32(e.mtime), uint32(size), 0, 0, e.rdev[0], e.rdev[1], len(name)+1, 0)
	n := len(hdr) + len(name) + 1
	if _, err := w.WriteString(hdr); err != nil {
		return err
	}
	w.WriteString(name)
	w.WriteByte(0)
	pad(w, n)
	switch {
	case e.mode&sIFMT == sIFLNK:
		w.WriteString(e.target)
	case e.mode&sIFMT == sIFREG && e.src != "":
		f, err := os.Open(e.src)
		if err != nil {
			return err
		}
		m, err := io.CopyN(w, f, size)
		f.Close()
		if err != nil {
			return fmt.Errorf("copy %s (%d of %d bytes; did it change while packing?): %w", e.src, m, size, err)
		}
	case e.mode&sIFMT == sIFREG:
		w.Write(e.data)
	}
	pad(w, int(size))
	return nil
}

func pad(w *bufio.Writer, n int) {
	for ; n%4 != 0; n++ {
		w.WriteByte(0)
	}
}

// isStaticELF reports whether the ELF file at p has no program interpreter,
// which is what a binary needs to run in an initramfs without a libc.
// Files that are not ELF (scripts) report isELF=false.
func isStaticELF(p string) (static, isELF bool, err error) {
	f, err := elf.Open(p)
	if err != nil {
		var fe *elf.FormatError
		if errors.As(err, &fe) {
			return false, false, nil
		}
		return false, false, err
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return false, true, nil
		}
	}
	return true, true, nil
}

// addBusybox adds the static busybox at /bin/busybox and a link for every
// applet it has, at the applet's usual path.
func (a *archive) addBusybox(bb string) error {
	static, isELF, err := isStaticELF(bb)
	if err != nil {
		return fmt.Errorf("busybox %s: %w (apt-get install busybox-static)", bb, err)
	}
	if !isELF || !static {
		return fmt.Errorf("busybox %s is not a static binary (apt-get install busybox-static)", bb)
	}
	if err := a.file("/bin/busybox", bb); err != nil {
		return err
	}
	out, err := exec.Command(bb, "--list-full").Output()
	if err != nil {
		return fmt.Errorf("%s --list-full: %w", bb, err)
	}
	for _, l := range strings.Fields(string(out)) {
		p := "/" + l
		if p == "/bin/busybox" {
			continue
		}
		if err := a.symlink(p, "/bin/busybox"); err != nil {
			return err
		}
	}
	return nil
}

// findBusybox returns the static busybox to use: $VMTEST_BUSYBOX, else the
// one Debian's busybox-static installs.
func findBusybox() (string, error) {
	if p := os.Getenv("VMTEST_BUSYBOX"); p != "" {
		return p, nil
	}
	for _, p := range []string{"/bin/busybox", "/usr/bin/busybox"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("no busybox found: apt-get install busybox-static (or make vm-deps), or set VMTEST_BUSYBOX")
}

// Include is one VMTEST_INCLUDE item: host path SRC at guest path DEST.
type Include struct {
	Src, Dest string
}

// parseIncludes parses VMTEST_INCLUDE: space-separated SRC:DEST pairs. A
// relative SRC is relative to root (the module root), not to the test's
// working directory, which go test sets to the package's directory.
func parseIncludes(s, root string) ([]Include, error) {
	var out []Include
	for _, item := range strings.Fields(s) {
		i := strings.LastIndex(item, ":")
		if i <= 0 || i == len(item)-1 {
			return nil, fmt.Errorf("VMTEST_INCLUDE item %q: want SRC:DEST", item)
		}
		src, dest := item[:i], item[i+1:]
		if !path.IsAbs(dest) {
			return nil, fmt.Errorf("VMTEST_INCLUDE item %q: DEST must be an absolute guest path", item)
		}
		if !filepath.IsAbs(src) {
			src = filepath.Join(root, src)
		}
		out = append(out, Include{Src: src, Dest: dest})
	}
	return out, nil
}

// moduleRoot returns VMTEST_ROOT, else the nearest directory at or above
// dir holding a go.mod, else dir.
func moduleRoot(dir string) string {
	if r := os.Getenv("VMTEST_ROOT"); r != "" {
		return r
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d
		}
		if filepath.Dir(d) == d {
			return dir
		}
	}
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=:,+@%", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'"'"'`) + "'"
}

// initScript is the guest's /init. It runs as PID 1 under busybox sh.
type initScript struct {
	Nonce   string   // makes the markers impossible to print by accident
	Env     []string // NAME=VALUE, exported before the test runs
	Dir     string   // working directory for the test
	Command []string // test binary and its arguments
	Dmesg   bool     // print the kernel log after the test
	// Carry lists tmpfs mount points (/tmp, /run) the working directory is
	// below: their initramfs content is copied onto the new tmpfs, so the
	// guest gets a tmpfs there (as tests expect) and keeps the directory.
	Carry []string
}

func (s initScript) startMarker() string { return "vmtest-start-" + s.Nonce }
func (s initScript) exitMarker() string  { return "vmtest-exit-" + s.Nonce + " rc=" }

func (s initScript) render() string {
	var b strings.Builder
	b.WriteString(`#!/bin/sh
# Generated by vmtest: bring the minimal system up, run one test binary,
# report its exit status on the console, power off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Keep kernel messages (all but emergencies) off the console: it carries
# the test's output.
dmesg -n 1 2>/dev/null
mnt() {
	mkdir -p "$3" 2>/dev/null
	mount -t "$1" "$2" "$3" 2>/dev/null || echo "vmtest: warning: cannot mount $1 on $3"
}
mnt proc proc /proc
mnt sysfs sysfs /sys
mnt devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
`)
	fmt.Fprintf(&b, "echo %s\n", s.startMarker())
	b.WriteString(`mnt devpts devpts /dev/pts
mnt tmpfs tmpfs /dev/shm
mnt securityfs securityfs /sys/kernel/security
mnt bpf bpf /sys/fs/bpf
mnt tracefs tracefs /sys/kernel/tracing
mnt debugfs debugfs /sys/kernel/debug
mnt cgroup2 cgroup2 /sys/fs/cgroup
`)
	for _, d := range []string{"/tmp", "/run"} {
		if slices.Contains(s.Carry, d) {
			keep := "/.vmtest-carry" + strings.ReplaceAll(d, "/", "-")
			fmt.Fprintf(&b, "mv %[1]s %[2]s && mnt tmpfs tmpfs %[1]s && cp -a %[2]s/. %[1]s/ && rm -rf %[2]s\n", d, keep)
			continue
		}
		fmt.Fprintf(&b, "mnt tmpfs tmpfs %s\n", d)
	}
	b.WriteString(`ip link set lo up 2>/dev/null || echo "vmtest: warning: cannot bring up lo"
hostname vmtest
export HOME=/root TMPDIR=/tmp TERM=dumb
`)
	for _, kv := range s.Env {
		name, val, _ := strings.Cut(kv, "=")
		fmt.Fprintf(&b, "export %s=%s\n", name, shellQuote(val))
	}
	fmt.Fprintf(&b, "cd %s || echo \"vmtest: warning: cannot cd to %s\"\n", shellQuote(s.Dir), strings.ReplaceAll(s.Dir, `"`, ``))
	q := make([]string, len(s.Command))
	for i, a := range s.Command {
		q[i] = shellQuote(a)
	}
	b.WriteString(strings.Join(q, " ") + "\n")
	b.WriteString("rc=$?\n")
	if s.Dmesg {
		b.WriteString("echo '--- vmtest: kernel log ---'; dmesg\n")
	}
	fmt.Fprintf(&b, "echo %s$rc\n", s.exitMarker())
	b.WriteString("sync\npoweroff -f\n")
	return b.String()
}

// envName reports whether s is a valid shell variable name.
func envName(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		if !(r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || i > 0 && r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

// addBase adds what every guest needs besides busybox: the console node
// the kernel opens for init before devtmpfs is mounted, mount points and a
// minimal /etc.
func (a *archive) addBase() error {
	for _, d := range []string{"/dev", "/proc", "/sys", "/tmp", "/run", "/root", "/etc", "/mnt", "/var"} {
		perm := uint32(0o755)
		if d == "/tmp" {
			perm = 0o1777
		}
		if err := a.dir(d, perm); err != nil {
			return err
		}
	}
	if err := a.chardev("/dev/console", 5, 1); err != nil {
		return err
	}
	if err := a.chardev("/dev/null", 1, 3); err != nil {
		return err
	}
	for p, s := range map[string]string{
		"/etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
		"/etc/group":  "root:x:0:\nnogroup:x:65534:\n",
		"/etc/hosts":  "127.0.0.1\tlocalhost vmtest\n::1\tlocalhost\n",
	} {
		if err := a.bytes(p, 0o644, []byte(s)); err != nil {
			return err
		}
	}
	return nil
}
