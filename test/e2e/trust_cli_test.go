package e2e

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// vigilRun runs the vigil binary without an agent; it returns stdout,
// stderr and the exit code.
func vigilRun(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(vigilBin(t), args...)
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("vigil %s: %v", strings.Join(args, " "), err)
	}
	return out.String(), errOut.String(), code
}

// TestTrustCLI runs the offline trust commands of the real binary: a key,
// a signed catalog and its verification (a bad one exits non-zero with a
// one-line reason naming the file), a scan and a re-scan, lookups.
func TestTrustCLI(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "trust.db")
	prefix := filepath.Join(dir, "admin")
	if _, stderr, code := vigilRun(t, "keys", "generate", "--out", prefix); code != 0 {
		t.Fatalf("keys generate: exit %d: %s", code, stderr)
	}
	tool := filepath.Join(dir, "tree", "tool")
	if err := os.MkdirAll(filepath.Dir(tool), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tool, []byte("#!/bin/sh\necho tool\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cat := filepath.Join(dir, "tools.catalog")
	if _, stderr, code := vigilRun(t, "catalog", "sign", "--key", prefix+".key", "--out", cat, tool); code != 0 {
		t.Fatalf("catalog sign: exit %d: %s", code, stderr)
	}
	if out, stderr, code := vigilRun(t, "catalog", "verify", "--key", prefix+".pub", cat); code != 0 || !strings.Contains(out, "valid") {
		t.Fatalf("catalog verify: exit %d: %s%s", code, out, stderr)
	}

	// Change one digest in the signed payload: the signature no longer holds.
	var env map[string]any
	b, _ := os.ReadFile(cat)
	if err := json.Unmarshal(b, &env); err != nil {
		t.Fatal(err)
	}
	p := env["payload"].(string)
	c := "A"
	if p[40] == 'A' {
		c = "B"
	}
	env["payload"] = p[:40] + c + p[41:]
	b, _ = json.Marshal(env)
	bad := filepath.Join(dir, "bad.catalog")
	if err := os.WriteFile(bad, b, 0o644); err != nil {
		t.Fatal(err)
	}
	_, stderr, code := vigilRun(t, "catalog", "verify", "--key", prefix+".pub", bad)
	if code == 0 || strings.Count(strings.TrimSpace(stderr), "\n") != 0 || !strings.Contains(stderr, bad) {
		t.Fatalf("verify of a changed catalog: exit %d, stderr %q", code, stderr)
	}

	time.Sleep(100 * time.Millisecond) // past the scan's racy window
	tree := filepath.Dir(tool)
	if out, stderr, code := vigilRun(t, "trust", "scan", "--db", db, "--dpkg-admindir", "", tree); code != 0 || !strings.Contains(out, "1 code file (1 hashed") {
		t.Fatalf("trust scan: exit %d: %s%s", code, out, stderr)
	}
	if out, _, code := vigilRun(t, "trust", "scan", "--db", db, "--dpkg-admindir", "", tree); code != 0 || !strings.Contains(out, "(0 hashed, 1 unchanged)") {
		t.Fatalf("trust re-scan: exit %d: %s", code, out)
	}
	if out, _, _ := vigilRun(t, "trust", "lookup", "--db", db, tool); !strings.Contains(out, "trusted (database)") {
		t.Fatalf("trust lookup: %s", out)
	}
	if _, stderr, code := vigilRun(t, "trust", "lookup", "--db", filepath.Join(dir, "none.db"), tool); code == 0 || !strings.Contains(stderr, "none.db does not exist") {
		t.Fatalf("lookup in a missing database: exit %d, %q", code, stderr)
	}
}

// TestTrustScanDpkg scans a file dpkg installed, with this machine's dpkg
// database.
func TestTrustScanDpkg(t *testing.T) {
	list := "/var/lib/dpkg/info/coreutils.md5sums"
	if _, err := os.Stat(list); err != nil {
		t.Skipf("no dpkg record of coreutils here (%v)", err)
	}
	real, err := filepath.EvalSymlinks("/bin/true")
	if err != nil {
		t.Skipf("no /bin/true: %v", err)
	}
	db := filepath.Join(t.TempDir(), "trust.db")
	out, stderr, code := vigilRun(t, "trust", "scan", "--db", db, real)
	if code != 0 {
		t.Fatalf("trust scan %s: exit %d: %s", real, code, stderr)
	}
	out, _, _ = vigilRun(t, "trust", "lookup", "--db", db, real)
	if !strings.Contains(out, "trusted (dpkg:coreutils)") {
		t.Fatalf("lookup of %s after a scan with dpkg: %s (is it modified?)", real, out)
	}
}
