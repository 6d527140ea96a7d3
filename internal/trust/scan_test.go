package trust

import (
	"bytes"
	"context"
	"crypto/md5" //nolint:gosec // dpkg's format
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func writeFile(t testing.TB, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func sum(s string) [32]byte { return sha256.Sum256([]byte(s)) }

func TestHashFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	content := strings.Repeat("vigil", 500000) // > the 1 MiB buffer
	writeFile(t, p, content, 0o644)
	got, err := HashFile(p)
	if err != nil || got != sum(content) {
		t.Fatalf("HashFile = %x, %v; want %x", got, err, sum(content))
	}
	if _, err := HashFile(p + ".missing"); err == nil || !strings.Contains(err.Error(), "f.missing") {
		t.Fatalf("HashFile of a missing file: %v", err)
	}

	// HashFD hashes the whole file whatever the descriptor's offset, and
	// leaves the offset alone.
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Seek(1000, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	got, err = HashFD(int(f.Fd()))
	if err != nil || got != sum(content) {
		t.Fatalf("HashFD = %x, %v; want %x", got, err, sum(content))
	}
	if off, _ := f.Seek(0, io.SeekCurrent); off != 1000 {
		t.Fatalf("HashFD moved the offset to %d", off)
	}
	if _, err := HashFD(-1); err == nil {
		t.Fatal("HashFD(-1) succeeded")
	}
	got, n, err := HashReader(strings.NewReader("abc"))
	if err != nil || got != sum("abc") || n != 3 {
		t.Fatalf("HashReader = %x, %d, %v", got, n, err)
	}
}

// scanTree builds a tree with each kind of file a scan meets.
func scanTree(t *testing.T) (root string, contents map[string]string) {
	t.Helper()
	root = filepath.Join(t.TempDir(), "tree")
	outside := filepath.Join(t.TempDir(), "outside")
	contents = map[string]string{
		"bin/tool":         "#!/bin/sh\necho tool\n",              // exec bit
		"bin/script":       "#!/usr/bin/python3\nprint(1)\n",      // #! without exec bit
		"lib/libx.so.1":    "\x7fELF\x02\x01\x01 a shared object", // ELF without exec bit
		"lib/deep/a/b/run": "plain text but executable",           // exec bit, no header
		"share/readme":     "not code",                            // neither
		"share/tiny":       "#",                                   // shorter than a header
		"share/empty":      "",                                    // empty
	}
	modes := map[string]os.FileMode{"bin/tool": 0o755, "lib/deep/a/b/run": 0o700}
	for p, c := range contents {
		mode := modes[p]
		if mode == 0 {
			mode = 0o644
		}
		writeFile(t, filepath.Join(root, p), c, mode)
	}
	// A symlink out of the tree to code: not followed.
	writeFile(t, filepath.Join(outside, "evil"), "#!/bin/sh\nevil\n", 0o755)
	if err := os.Symlink(filepath.Join(outside, "evil"), filepath.Join(root, "bin", "evil")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(root, "outdir")); err != nil {
		t.Fatal(err)
	}
	// Let the timestamps age past the racy window.
	time.Sleep(2 * racyWindow)
	return root, contents
}

func TestScanIncremental(t *testing.T) {
	ctx := context.Background()
	db := openTest(t)
	root, contents := scanTree(t)
	code := []string{"bin/tool", "bin/script", "lib/libx.so.1", "lib/deep/a/b/run"}

	st, err := Scan(ctx, db, []string{root}, ScanOptions{Workers: 3})
	if err != nil {
		t.Fatal(err)
	}
	if st.Code != 4 || st.Hashed != 4 || st.NotCode != 3 || st.Unchanged != 0 || st.ProblemCount != 0 {
		t.Fatalf("first scan: %+v", st)
	}
	for _, p := range code {
		if d, _ := db.Lookup(ctx, sum(contents[p]), Database); d != (Decision{Trusted, "database"}) {
			t.Errorf("%s: %v", p, d)
		}
	}
	// Files gives each code file with the identity it was hashed with.
	var files []File
	if err := db.Files(ctx, nil, func(f File) error { files = append(files, f); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(files) != 4 {
		t.Fatalf("Files: %d, want 4", len(files))
	}
	for _, f := range files {
		var st syscall.Stat_t
		if err := syscall.Stat(f.Path, &st); err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(root, f.Path)
		if f.Dev != st.Dev || f.Ino != st.Ino || f.Size != st.Size || f.MtimeNS != st.Mtim.Nano() ||
			f.CtimeNS != st.Ctim.Nano() || f.SHA != sum(contents[rel]) || f.Source != "database" {
			t.Errorf("Files: %+v, stat %+v", f, st)
		}
	}
	for _, p := range []string{"share/readme", "share/tiny"} {
		if d, _ := db.Lookup(ctx, sum(contents[p]), AllSources); d.Verdict != Unknown {
			t.Errorf("%s (not code) trusted: %v", p, d)
		}
	}
	if d, _ := db.Lookup(ctx, sum("#!/bin/sh\nevil\n"), AllSources); d.Verdict != Unknown {
		t.Error("a symlink out of the tree was followed")
	}

	// Re-scan: nothing read.
	g0, _ := db.Generation(ctx)
	st, err = Scan(ctx, db, []string{root}, ScanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Hashed != 0 || st.Unchanged != 4 || st.Code != 4 || st.NotCode != 3 {
		t.Fatalf("re-scan of an unchanged tree: %+v", st)
	}
	if g, _ := db.Generation(ctx); g != g0 {
		t.Fatalf("an unchanged re-scan bumped the generation %d -> %d", g0, g)
	}

	// One file changed, one removed: only the changed one is read, the
	// removed one's entry goes.
	changed := contents["bin/tool"] + "# one more line\n"
	writeFile(t, filepath.Join(root, "bin/tool"), changed, 0o755)
	if err := os.Remove(filepath.Join(root, "lib/libx.so.1")); err != nil {
		t.Fatal(err)
	}
	st, err = Scan(ctx, db, []string{root}, ScanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Hashed != 1 || st.Unchanged != 2 || st.Removed != 1 || st.Bytes != int64(len(changed)) {
		t.Fatalf("re-scan after a change and a removal: %+v", st)
	}
	if d, _ := db.Lookup(ctx, sum(changed), Database); d.Verdict != Trusted {
		t.Errorf("changed file not trusted after re-scan: %v", d)
	}
	for _, gone := range []string{contents["bin/tool"], contents["lib/libx.so.1"]} {
		if d, _ := db.Lookup(ctx, sum(gone), Database); d.Verdict != Unknown {
			t.Errorf("content no longer on disk still trusted: %v", d)
		}
	}

	// A scan of another tree leaves this one's entries alone; a scan of a
	// removed root removes them.
	other := t.TempDir()
	writeFile(t, filepath.Join(other, "x"), "#!/bin/true\n", 0o755)
	if st, err := Scan(ctx, db, []string{other}, ScanOptions{}); err != nil || st.Removed != 0 || st.Hashed != 1 {
		t.Fatalf("scan of another tree: %+v, %v", st, err)
	}
	if err := os.RemoveAll(root); err != nil {
		t.Fatal(err)
	}
	st, err = Scan(ctx, db, []string{root}, ScanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Removed != 6 || st.ProblemCount != 1 || !strings.Contains(st.Problems[0].Error(), "does not exist") {
		t.Fatalf("scan of a removed root: %+v", st)
	}
	if d, _ := db.Lookup(ctx, sum("#!/bin/true\n"), Database); d.Verdict != Trusted {
		t.Fatal("removing one root removed another's entries")
	}
}

func TestScanRootSymlinkAndUnreadable(t *testing.T) {
	ctx := context.Background()
	db := openTest(t)
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "usr/bin/a"), "#!/bin/a\n", 0o755)
	writeFile(t, filepath.Join(dir, "usr/bin/locked"), "#!/bin/locked\n", 0o755)
	if err := os.Symlink("usr/bin", filepath.Join(dir, "bin")); err != nil {
		t.Fatal(err)
	}
	// A root given as a symlink is resolved; the same tree twice is walked once.
	st, err := Scan(ctx, db, []string{filepath.Join(dir, "bin"), filepath.Join(dir, "usr/bin")}, ScanOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Hashed != 2 {
		t.Fatalf("scan through a root symlink: %+v", st)
	}
	if os.Geteuid() == 0 {
		t.Log("root reads mode-0 files: the unreadable-file case is not tested")
		return
	}
	os.Chmod(filepath.Join(dir, "usr/bin/locked"), 0)
	writeFile(t, filepath.Join(dir, "usr/bin/new"), "#!/bin/new\n", 0o755)
	st, err = Scan(ctx, db, []string{filepath.Join(dir, "usr/bin")}, ScanOptions{})
	if err != nil || st.ProblemCount != 1 || st.Hashed != 1 {
		t.Fatalf("scan with an unreadable file: %+v, %v", st, err)
	}
	if d, _ := db.Lookup(ctx, sum("#!/bin/locked\n"), Database); d.Verdict != Unknown {
		t.Fatal("a file changed and unreadable keeps its old trust")
	}
}

// fakeDpkg writes an admin dir listing files under root, with the MD5s
// given (relative path → content dpkg installed).
func fakeDpkg(t *testing.T, pkgs map[string]map[string]string) string {
	t.Helper()
	admin := t.TempDir()
	for pkg, files := range pkgs {
		var b bytes.Buffer
		for rel, content := range files {
			fmt.Fprintf(&b, "%x  %s\n", md5.Sum([]byte(content)), rel) //nolint:gosec // dpkg's format
		}
		writeFile(t, filepath.Join(admin, "info", pkg+".md5sums"), b.String(), 0o644)
	}
	writeFile(t, filepath.Join(admin, "info", "nofiles.list"), "/.\n", 0o644)
	return admin
}

func TestScanDpkg(t *testing.T) {
	ctx := context.Background()
	db := openTest(t)
	root := t.TempDir()
	files := map[string]string{
		"usr/bin/ls":    "\x7fELF ls",
		"usr/bin/cat":   "\x7fELF cat, modified on disk",
		"usr/bin/mine":  "#!/bin/sh\nmine\n",
		"usr/bin/ldd":   "#!/bin/bash\nldd\n",
		"usr/lib/x.so":  "\x7fELF x.so",
		"usr/share/doc": "documentation",
	}
	for p, c := range files {
		mode := os.FileMode(0o755)
		if strings.HasPrefix(p, "usr/share/") {
			mode = 0o644
		}
		writeFile(t, filepath.Join(root, p), c, mode)
	}
	if err := os.Symlink("usr/bin", filepath.Join(root, "bin")); err != nil {
		t.Fatal(err)
	}
	admin := fakeDpkg(t, map[string]map[string]string{
		"coreutils":      {"bin/ls": files["usr/bin/ls"], "bin/cat": "\x7fELF cat", "usr/share/doc": files["usr/share/doc"]},
		"libc-bin:amd64": {"usr/bin/ldd": files["usr/bin/ldd"], "usr/lib/x.so": files["usr/lib/x.so"], "usr/bin/gone": "x"},
	})
	ix, err := LoadDpkg(admin, root)
	if err != nil {
		t.Fatal(err)
	}
	if ix.Len() != 6 || !ix.Listed(filepath.Join(root, "usr/bin/ls")) {
		t.Fatalf("dpkg index: %d files, %q", ix.Len(), ix.Paths())
	}
	time.Sleep(2 * racyWindow)

	// --dpkg alone: every listed file, not the others.
	st, err := Scan(ctx, db, nil, ScanOptions{Dpkg: ix, DpkgFiles: true})
	if err != nil {
		t.Fatal(err)
	}
	if st.Hashed != 4 || st.Dpkg != 3 || st.DpkgMismatch != 1 || st.NotCode != 1 {
		t.Fatalf("dpkg scan: %+v", st)
	}
	want := map[string]Decision{
		"usr/bin/ls":   {Trusted, "dpkg:coreutils"},
		"usr/bin/ldd":  {Trusted, "dpkg:libc-bin"},
		"usr/lib/x.so": {Trusted, "dpkg:libc-bin"},
		"usr/bin/cat":  {Trusted, "database"}, // scanned, but not what dpkg installed
		"usr/bin/mine": {Verdict: Unknown},    // not listed, not scanned
	}
	for p, w := range want {
		if d, _ := db.Lookup(ctx, sum(files[p]), AllSources); d != w {
			t.Errorf("%s: %v, want %v", p, d, w)
		}
	}
	if d, _ := db.Lookup(ctx, sum(files["usr/bin/cat"]), Dpkg); d.Verdict != Unknown {
		t.Errorf("modified dpkg file trusted by the dpkg source: %v", d)
	}

	// A scan of the tree adds the rest; dpkg's files stay dpkg's, unread.
	st, err = Scan(ctx, db, []string{filepath.Join(root, "usr")}, ScanOptions{Dpkg: ix})
	if err != nil {
		t.Fatal(err)
	}
	if st.Hashed != 1 || st.Unchanged != 4 {
		t.Fatalf("tree scan after the dpkg scan: %+v", st)
	}
	if d, _ := db.Lookup(ctx, sum(files["usr/bin/mine"]), AllSources); d != (Decision{Trusted, "database"}) {
		t.Errorf("mine: %v", d)
	}

	// A database scanned without dpkg learns dpkg's files on the next scan
	// with it.
	db2 := openTest(t)
	if _, err := Scan(ctx, db2, []string{root}, ScanOptions{}); err != nil {
		t.Fatal(err)
	}
	if d, _ := db2.Lookup(ctx, sum(files["usr/bin/ls"]), AllSources); d.Source != "database" {
		t.Fatalf("ls without dpkg: %v", d)
	}
	st, err = Scan(ctx, db2, []string{root}, ScanOptions{Dpkg: ix})
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := db2.Lookup(ctx, sum(files["usr/bin/ls"]), AllSources); d.Source != "dpkg:coreutils" || st.Hashed != 4 {
		t.Fatalf("ls after a scan with dpkg: %v (%+v)", d, st)
	}
}

func TestLoadDpkgErrors(t *testing.T) {
	if _, err := LoadDpkg(filepath.Join(t.TempDir(), "none"), "/"); err == nil {
		t.Fatal("LoadDpkg of a missing admin dir")
	}
	admin := t.TempDir()
	writeFile(t, filepath.Join(admin, "info", "bad.md5sums"), "nothex  usr/bin/x\n", 0o644)
	if _, err := LoadDpkg(admin, "/"); err == nil || !strings.Contains(err.Error(), "bad.md5sums:1") {
		t.Fatalf("LoadDpkg of a bad list: %v", err)
	}
}

func TestScanProgressLines(t *testing.T) {
	db := openTest(t)
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "a"), "#!/bin/a\n", 0o755)
	var out bytes.Buffer
	if _, err := Scan(context.Background(), db, []string{dir}, ScanOptions{Progress: &out}); err != nil {
		t.Fatal(err)
	}
	real, _ := filepath.EvalSymlinks(dir)
	if !strings.Contains(out.String(), "trust scan: looking for code under "+real+"\n") ||
		!strings.Contains(out.String(), "trust scan: 1 new or changed files to read") || !strings.Contains(out.String(), "read 1/1 files") {
		t.Fatalf("progress:\n%s", out.String())
	}
}

func TestScanCanceled(t *testing.T) {
	db := openTest(t)
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "a"), "#!/bin/a\n", 0o755)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Scan(ctx, db, []string{dir}, ScanOptions{}); err == nil {
		t.Fatal("a canceled scan succeeded")
	}
}

func BenchmarkHashFile10MB(b *testing.B) {
	p := filepath.Join(b.TempDir(), "10mb")
	buf := make([]byte, 10<<20)
	rand.Read(buf)
	if err := os.WriteFile(p, buf, 0o644); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		if _, err := HashFile(p); err != nil {
			b.Fatal(err)
		}
	}
}

// TestScanProgressBar gives the scan a terminal (a pseudo-terminal): it
// draws a progress bar there instead of lines.
func TestScanProgressBar(t *testing.T) {
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminal here: %v", err)
	}
	defer master.Close()
	mfd := int(master.Fd())
	if err := unix.IoctlSetPointerInt(mfd, unix.TIOCSPTLCK, 0); err != nil {
		t.Skipf("unlock pseudo-terminal: %v", err)
	}
	n, err := unix.IoctlGetInt(mfd, unix.TIOCGPTN)
	if err != nil {
		t.Skipf("pseudo-terminal number: %v", err)
	}
	slave, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("open pseudo-terminal: %v", err)
	}
	defer slave.Close()
	if !isTerminal(slave) || isTerminal(&bytes.Buffer{}) {
		t.Fatal("isTerminal does not tell a terminal from a buffer")
	}
	got := make(chan string)
	go func() {
		var b bytes.Buffer
		buf := make([]byte, 4096)
		for {
			n, err := master.Read(buf)
			b.Write(buf[:n])
			if err != nil || strings.Contains(b.String(), "100%") {
				got <- b.String()
				return
			}
		}
	}()
	db := openTest(t)
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "a"), "#!/bin/a\n", 0o755)
	if _, err := Scan(context.Background(), db, []string{dir}, ScanOptions{Progress: slave}); err != nil {
		t.Fatal(err)
	}
	select {
	case out := <-got:
		if !strings.Contains(out, "reading 1 new or changed files") || !strings.Contains(out, "100%") || strings.Contains(out, "trust scan: read ") {
			t.Fatalf("terminal progress: %q", out)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no progress bar on the terminal")
	}
}
