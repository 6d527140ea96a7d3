package cli_test

import (
	"bytes"
	"context"
	"crypto/md5" //nolint:gosec // dpkg's format
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/cli"
	"github.com/vigil-hips/vigil/internal/trust"
)

// vigilCmd runs one command line in-process with the API socket given;
// it returns stdout and stderr.
func vigilCmd(socket string, stdin io.Reader, args ...string) (string, string, error) {
	root := cli.New(cli.Options{Version: "test"})
	root.SetArgs(append(args, "--socket", socket))
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	if stdin != nil {
		root.SetIn(stdin)
	}
	err := root.ExecuteContext(context.Background())
	return out.String(), errOut.String(), err
}

func mustVigil(t *testing.T, socket string, args ...string) string {
	t.Helper()
	out, _, err := vigilCmd(socket, nil, args...)
	if err != nil {
		t.Fatalf("vigil %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// wantErr runs a command that must fail with an error containing each of
// wants.
func wantErr(t *testing.T, socket string, wants []string, args ...string) {
	t.Helper()
	_, _, err := vigilCmd(socket, nil, args...)
	if err == nil {
		t.Fatalf("vigil %s succeeded", strings.Join(args, " "))
	}
	for _, w := range wants {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("vigil %s: error %q lacks %q", strings.Join(args, " "), err, w)
		}
	}
}

func writeExec(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}

func hexSum(s string) string {
	d := sha256.Sum256([]byte(s))
	return hex.EncodeToString(d[:])
}

func TestTrustScanListLookup(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "state", "trust.db")
	tree := filepath.Join(dir, "tree")
	writeExec(t, filepath.Join(tree, "bin/tool"), "#!/bin/sh\ntool\n", 0o755)
	writeExec(t, filepath.Join(tree, "bin/pkgtool"), "\x7fELF pkgtool", 0o755)
	writeExec(t, filepath.Join(tree, "doc/readme"), "text", 0o644)
	// A fake dpkg database that lists pkgtool (paths are relative to /).
	admin := filepath.Join(dir, "dpkg")
	rel := strings.TrimPrefix(filepath.Join(tree, "bin/pkgtool"), "/")
	writeExec(t, filepath.Join(admin, "info", "fakepkg.md5sums"),
		fmt.Sprintf("%x  %s\n", md5.Sum([]byte("\x7fELF pkgtool")), rel), 0o644) //nolint:gosec // dpkg's format
	time.Sleep(120 * time.Millisecond) // past the scan's racy window

	wantErr(t, "", []string{db, "does not exist"}, "trust", "lookup", "--db", db, hexSum("x"))
	wantErr(t, "", []string{"nothing to scan"}, "trust", "scan", "--db", db)

	out := mustVigil(t, "", "trust", "scan", "--db", db, "--dpkg-admindir", admin, tree)
	for _, w := range []string{"2 code files (2 hashed, 0 unchanged)", "1 other files", "dpkg: of the hashed files, 1 as dpkg installed them, 0 changed since"} {
		if !strings.Contains(out, w) {
			t.Errorf("trust scan output lacks %q:\n%s", w, out)
		}
	}
	if info, err := os.Stat(filepath.Dir(db)); err != nil || info.Mode().Perm() != 0o700 {
		t.Errorf("database directory: %v, %v", info, err)
	}
	out = mustVigil(t, "", "trust", "scan", "--db", db, "--dpkg-admindir", admin, tree)
	if !strings.Contains(out, "2 code files (0 hashed, 2 unchanged)") {
		t.Errorf("re-scan:\n%s", out)
	}

	out = mustVigil(t, "", "trust", "lookup", "--db", db, filepath.Join(tree, "bin/tool"), filepath.Join(tree, "bin/pkgtool"), hexSum("other"))
	for _, w := range []string{
		filepath.Join(tree, "bin/tool") + " " + hexSum("#!/bin/sh\ntool\n") + ": trusted (database)",
		"bin/pkgtool " + hexSum("\x7fELF pkgtool") + ": trusted (dpkg:fakepkg)",
		hexSum("other") + ": unknown",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("trust lookup lacks %q:\n%s", w, out)
		}
	}
	out = mustVigil(t, "", "trust", "lookup", "--db", db, "--sources", "dpkg", filepath.Join(tree, "bin/tool"))
	if !strings.Contains(out, ": unknown") {
		t.Errorf("lookup with dpkg only:\n%s", out)
	}
	wantErr(t, "", []string{"nope", "neither a SHA-256"}, "trust", "lookup", "--db", db, filepath.Join(dir, "nope"))
	wantErr(t, "", []string{`unknown trust source "rpm"`}, "trust", "lookup", "--db", db, "--sources", "rpm", hexSum("x"))

	out = mustVigil(t, "", "trust", "list", "--db", db, "-o", "json")
	var entries []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var e map[string]any
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("trust list -o json line %q: %v", line, err)
		}
		entries = append(entries, e)
	}
	if len(entries) != 2 {
		t.Fatalf("trust list -o json: %d entries:\n%s", len(entries), out)
	}
	byPath := map[string]string{}
	for _, e := range entries {
		paths := e["paths"].([]any)
		byPath[paths[0].(string)] = e["source"].(string)
	}
	if byPath[filepath.Join(tree, "bin/pkgtool")] != "dpkg:fakepkg" || byPath[filepath.Join(tree, "bin/tool")] != "database" {
		t.Errorf("trust list sources: %v", byPath)
	}
	out = mustVigil(t, "", "trust", "list", "--db", db)
	if !strings.Contains(out, "SHA256") || !strings.Contains(out, "dpkg:fakepkg") || !strings.Contains(out, "0 signers approved") {
		t.Errorf("trust list:\n%s", out)
	}

	// --dpkg alone scans what dpkg lists.
	db2 := filepath.Join(dir, "two.db")
	out = mustVigil(t, "", "trust", "scan", "--db", db2, "--dpkg", "--dpkg-admindir", admin)
	if !strings.Contains(out, "1 code file (1 hashed") {
		t.Errorf("trust scan --dpkg:\n%s", out)
	}
	wantErr(t, "", []string{"dpkg database"}, "trust", "scan", "--db", db2, "--dpkg", "--dpkg-admindir", filepath.Join(dir, "none"))
}

func TestKeysAndCatalogs(t *testing.T) {
	dir := t.TempDir()
	prefix := filepath.Join(dir, "admin")
	out := mustVigil(t, "", "keys", "generate", "--out", prefix)
	if !strings.Contains(out, "admin.pub: public key, id ") {
		t.Errorf("keys generate:\n%s", out)
	}
	info, err := os.Stat(prefix + ".key")
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("private key file: %v, %v", info, err)
	}
	wantErr(t, "", []string{"admin.key exists"}, "keys", "generate", "--out", prefix)
	mustVigil(t, "", "keys", "generate", "--out", filepath.Join(dir, "other"))
	id := strings.TrimSpace(strings.SplitN(mustVigil(t, "", "keys", "id", prefix+".pub"), ": ", 2)[1])
	if !strings.HasPrefix(id, "SHA256:") {
		t.Fatalf("keys id: %q", id)
	}

	tool := filepath.Join(dir, "tool")
	writeExec(t, tool, "#!/bin/sh\ntool\n", 0o755)
	cat := filepath.Join(dir, "tools.catalog")
	out = mustVigil(t, "", "catalog", "sign", "--key", prefix+".key", "--out", cat, tool)
	if !strings.Contains(out, `catalog "tools", 1 digest, signed by `+id) {
		t.Errorf("catalog sign:\n%s", out)
	}
	out = mustVigil(t, "", "catalog", "verify", "--key", prefix+".pub", cat)
	if !strings.Contains(out, cat+`: valid: catalog "tools"`) {
		t.Errorf("catalog verify:\n%s", out)
	}
	wantErr(t, "", []string{cat, "not signed by", "other.pub"}, "catalog", "verify", "--key", filepath.Join(dir, "other.pub"), cat)

	// A catalog whose payload was changed after signing.
	var env map[string]any
	b, _ := os.ReadFile(cat)
	json.Unmarshal(b, &env)
	forged := trust.NewCatalog("tools", [][32]byte{sha256.Sum256([]byte("evil"))}, time.Now())
	fb, _ := json.Marshal(forged)
	env["payload"] = b64(fb)
	fb, _ = json.Marshal(env)
	bad := filepath.Join(dir, "bad.catalog")
	os.WriteFile(bad, fb, 0o644)
	wantErr(t, "", []string{bad, "bad signature", "admin.pub"}, "catalog", "verify", "--key", prefix+".pub", bad)
	wantErr(t, "", []string{"missing.catalog"}, "catalog", "verify", "--key", prefix+".pub", filepath.Join(dir, "missing.catalog"))

	// --digests: sha256sum's format, with a comment; a bad line names FILE:LINE.
	list := filepath.Join(dir, "digests")
	os.WriteFile(list, []byte("# built today\n"+hexSum("a")+"  a\n"+hexSum("b")+"\n"), 0o644)
	out = mustVigil(t, "", "catalog", "sign", "--key", prefix+".key", "--name", "build", "--out", filepath.Join(dir, "b.catalog"), "--digests", list)
	if !strings.Contains(out, `catalog "build", 2 digests`) {
		t.Errorf("catalog sign --digests:\n%s", out)
	}
	os.WriteFile(list, []byte(hexSum("a")+"\nnot-a-digest\n"), 0o644)
	wantErr(t, "", []string{list + ":2"}, "catalog", "sign", "--key", prefix+".key", "--out", filepath.Join(dir, "c.catalog"), "--digests", list)
	wantErr(t, "", []string{"nothing to sign"}, "catalog", "sign", "--key", prefix+".key", "--out", filepath.Join(dir, "c.catalog"))

	// Installing: refused until the signer is approved, in force after.
	db := filepath.Join(dir, "trust.db")
	wantErr(t, "", []string{cat, "refused", "not signed by an approved signer"}, "catalog", "add", "--db", db, cat)
	tdb, err := trust.Open(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	defer tdb.Close()
	srv := startFakeAgent(t, tdb)
	out = mustVigil(t, srv, "approve", "--signer", prefix+".pub", "--comment", "release")
	if strings.TrimSpace(out) != "approved signer "+id {
		t.Errorf("approve --signer: %q", out)
	}
	wantErr(t, "", []string{bad, "refused", "signature does not verify"}, "catalog", "add", "--db", db, bad)
	out = mustVigil(t, "", "catalog", "add", "--db", db, cat)
	if !strings.Contains(out, `installed catalog "tools" from signer `+id+", 1 digest trusted") {
		t.Errorf("catalog add:\n%s", out)
	}
	out = mustVigil(t, "", "trust", "lookup", "--db", db, tool)
	if !strings.Contains(out, "trusted (catalog:"+id+")") {
		t.Errorf("lookup of a catalog's file:\n%s", out)
	}
	out = mustVigil(t, "", "catalog", "list", "--db", db)
	if !strings.Contains(out, "1 signer approved") || !strings.Contains(out, `catalog "tools"`) || !strings.Contains(out, "release") {
		t.Errorf("catalog list:\n%s", out)
	}
	// Revoking the signer takes the trust away.
	if out := mustVigil(t, srv, "approve", "--signer", prefix+".pub", "--deny"); !strings.Contains(out, "revoked signer "+id) {
		t.Errorf("approve --signer --deny: %q", out)
	}
	if out := mustVigil(t, "", "trust", "lookup", "--db", db, tool); !strings.Contains(out, ": unknown") {
		t.Errorf("lookup after revoke:\n%s", out)
	}
	wantErr(t, srv, []string{"signer " + id + " is not approved"}, "approve", "--signer", prefix+".pub", "--deny")
}

// fakeAgent serves the Pending and Approve RPCs with the trust package's
// handlers on a real database, as the agent does.
type fakeAgent struct {
	vigilv1.UnimplementedAgentServer
	pending func(context.Context, *vigilv1.PendingRequest) (*vigilv1.PendingResponse, error)
	approve func(context.Context, *vigilv1.ApproveRequest) (*vigilv1.ApproveResponse, error)
	applied int
}

func (f *fakeAgent) Pending(ctx context.Context, req *vigilv1.PendingRequest) (*vigilv1.PendingResponse, error) {
	return f.pending(ctx, req)
}

func (f *fakeAgent) Approve(ctx context.Context, req *vigilv1.ApproveRequest) (*vigilv1.ApproveResponse, error) {
	return f.approve(ctx, req)
}

func startFakeAgent(t *testing.T, db *trust.DB) string {
	t.Helper()
	socket := filepath.Join(t.TempDir(), "vigil.sock")
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	fa := &fakeAgent{}
	fa.pending = trust.PendingHandler(db, func() trust.Sources { return trust.AllSources })
	fa.approve = trust.ApproveHandler(db, func(context.Context) error { fa.applied++; return nil })
	s := grpc.NewServer()
	vigilv1.RegisterAgentServer(s, fa)
	go s.Serve(ln) //nolint:errcheck // stopped by Cleanup
	t.Cleanup(s.Stop)
	return socket
}

func TestPendingAndApprove(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	wantErr(t, filepath.Join(dir, "none.sock"), []string{"no agent is running"}, "pending")

	db, err := trust.Open(ctx, filepath.Join(dir, "trust.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	srv := startFakeAgent(t, db)
	if out := mustVigil(t, srv, "pending"); !strings.Contains(out, "no pending code") {
		t.Errorf("empty pending:\n%s", out)
	}

	miner := filepath.Join(dir, "miner")
	writeExec(t, miner, "#!/bin/sh\nmine\n", 0o755)
	a, b := sha256.Sum256([]byte("#!/bin/sh\nmine\n")), sha256.Sum256([]byte("other"))
	t0 := time.Now().Add(-time.Minute)
	for _, at := range []trust.Attempt{
		{SHA: a, Path: "/tmp/miner", Exe: "/usr/bin/bash", PID: 41, Refused: true, Time: t0},
		{SHA: a, Path: "/tmp/miner", Exe: "/usr/bin/bash", PID: 42, Refused: false, Time: t0.Add(time.Second)},
		{SHA: b, Path: "/tmp/other", Exe: "/usr/bin/python3", PID: 50, Refused: true, Time: t0.Add(2 * time.Second)},
	} {
		if err := db.RecordPending(ctx, at); err != nil {
			t.Fatal(err)
		}
	}
	out := mustVigil(t, srv, "pending")
	for _, w := range []string{hex.EncodeToString(a[:]) + "  2 attempts, 1 refused", "paths: /tmp/miner", "by:    42 /usr/bin/bash, 41 /usr/bin/bash", "2 pending digests"} {
		if !strings.Contains(out, w) {
			t.Errorf("pending lacks %q:\n%s", w, out)
		}
	}
	if strings.Index(out, hex.EncodeToString(b[:])) > strings.Index(out, hex.EncodeToString(a[:])) {
		t.Errorf("pending: most recent first:\n%s", out)
	}
	out = mustVigil(t, srv, "pending", "-o", "json", "--limit", "1")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var pc vigilv1.PendingCode
	if len(lines) != 1 || protojson.Unmarshal([]byte(lines[0]), &pc) != nil || pc.GetSha256() != hex.EncodeToString(b[:]) || pc.GetRefused() != 1 {
		t.Fatalf("pending -o json --limit 1:\n%s", out)
	}
	if !strings.Contains(lines[0], `"first_seen"`) {
		t.Errorf("pending -o json uses proto names: %s", lines[0])
	}

	// Approve by digest: in force, off the pending list.
	out = mustVigil(t, srv, "approve", "--sha256", strings.ToUpper(hex.EncodeToString(b[:])), "--comment", "ok")
	if strings.TrimSpace(out) != "approved "+hex.EncodeToString(b[:]) {
		t.Errorf("approve --sha256: %q", out)
	}
	if d, _ := db.Lookup(ctx, b, 0); d != (trust.Decision{Verdict: trust.Trusted, Source: "approved"}) {
		t.Errorf("after approve: %v", d)
	}
	// Deny by file.
	out = mustVigil(t, srv, "approve", "--file", miner, "--deny")
	if strings.TrimSpace(out) != "denied "+hex.EncodeToString(a[:]) {
		t.Errorf("approve --file --deny: %q", out)
	}
	if d, _ := db.Lookup(ctx, a, trust.AllSources); d.Verdict != trust.Denied {
		t.Errorf("after deny: %v", d)
	}
	if out := mustVigil(t, srv, "pending"); !strings.Contains(out, "no pending code") {
		t.Errorf("pending after approve and deny:\n%s", out)
	}

	// Clear errors, before or from the agent.
	wantErr(t, srv, []string{"exactly one of"}, "approve")
	wantErr(t, srv, []string{"exactly one of"}, "approve", "--sha256", hexSum("x"), "--file", miner)
	wantErr(t, srv, []string{"--sha256", "64 hex digits"}, "approve", "--sha256", "abc")
	wantErr(t, srv, []string{filepath.Join(dir, "nope")}, "approve", "--file", filepath.Join(dir, "nope"))
	notKey := filepath.Join(dir, "not.pub")
	os.WriteFile(notKey, []byte("hello"), 0o644)
	wantErr(t, srv, []string{notKey, "public key"}, "approve", "--signer", notKey)
	// The agent refuses a malformed request with InvalidArgument, shown as is.
	conn, err := grpc.NewClient("unix://"+srv, grpc.WithTransportCredentials(insecureCreds()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := vigilv1.NewAgentClient(conn).Approve(ctx, &vigilv1.ApproveRequest{Sha256: "zz"}); err == nil || !strings.Contains(err.Error(), "InvalidArgument") {
		t.Errorf("Approve of a bad digest: %v", err)
	}
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func insecureCreds() credentials.TransportCredentials { return insecure.NewCredentials() }
