package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/agent"
	"github.com/vigil-hips/vigil/internal/policy"
	"github.com/vigil-hips/vigil/internal/sign"
	"github.com/vigil-hips/vigil/internal/trust"
)

const hardening = "../../examples/policies/hardening.yaml"

func runPolicy(t *testing.T, stdin string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := newPolicyCmd(&globals{socket: "/nonexistent/vigil.sock"})
	cmd.SetArgs(args)
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetIn(strings.NewReader(stdin))
	cmd.SilenceUsage = true
	cmd.SilenceErrors = true
	err = cmd.Execute()
	return out.String(), errOut.String(), err
}

func TestPolicyCheck(t *testing.T) {
	p, err := policy.Load(hardening)
	if err != nil {
		t.Fatal(err)
	}
	out, _, err := runPolicy(t, "", "check", hardening)
	want := fmt.Sprintf("%s: ok (%d rules, mode enforce, digest %s)\n", hardening, len(p.Rules), p.Digest())
	if err != nil || out != want {
		t.Fatalf("check: %q, %v; want %q", out, err, want)
	}

	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("version: 1\nmode: enforce\nrules:\n- {id: r, on: exec, action: deny, match: {inject_method: ptrace_attach}}\n- {id: r, on: exec, action: nope}\n"), 0o644)
	out, errOut, err := runPolicy(t, "", "check", hardening, bad)
	wantErr := bad + ":4:43: inject_method does not apply to exec events (only to inject)\n" +
		bad + ":5:8: duplicate rule id \"r\" (first at 4:8)\n" +
		bad + ":5:29: action: unknown value \"nope\" (want allow, deny, kill, alert)\n"
	if err == nil || err.Error() != "1 of 2 policy files invalid" || errOut != wantErr || !strings.HasPrefix(out, hardening+": ok") {
		t.Fatalf("check bad: out %q\nerr %v\nstderr:\n%s\nwant stderr:\n%s", out, err, errOut, wantErr)
	}

	if _, _, err := runPolicy(t, "", "check", filepath.Join(t.TempDir(), "none.yaml")); err == nil || !os.IsNotExist(err) {
		t.Errorf("check of a missing file: %v", err)
	}
}

func TestPolicyTest(t *testing.T) {
	nginx := &vigilv1.Process{Pid: 300, Uid: 33, Exe: "/usr/bin/dash",
		Ancestry: []*vigilv1.Ancestor{{Pid: 200, Exe: "/usr/sbin/nginx"}, {Pid: 100, Exe: "/usr/sbin/nginx"}}}
	gdb := &vigilv1.Process{Pid: 400, Exe: "/usr/bin/gdb", Ancestry: []*vigilv1.Ancestor{{Pid: 90, Exe: "/usr/bin/bash"}}}
	events := []*vigilv1.Event{
		{Id: 1, Seq: 10, Kind: "exec", Process: nginx, Detail: &vigilv1.Event_Exec{Exec: &vigilv1.Exec{File: &vigilv1.File{Path: "/usr/bin/dash"}}}},
		{Id: 2, Seq: 11, Kind: "fork", Process: gdb, Detail: &vigilv1.Event_Fork{Fork: &vigilv1.Fork{ChildPid: 401}}},
		{Id: 3, Seq: 12, Kind: "exec", Process: &vigilv1.Process{Pid: 401, Exe: "/tmp/prog", Ancestry: []*vigilv1.Ancestor{{Pid: 400, Exe: "/usr/bin/gdb"}}},
			Detail: &vigilv1.Event_Exec{Exec: &vigilv1.Exec{File: &vigilv1.File{Path: "/tmp/prog"}}}},
		{Id: 4, Seq: 13, Kind: "inject", Process: gdb, Detail: &vigilv1.Event_Inject{Inject: &vigilv1.Inject{Method: "ptrace_attach", TargetPid: 401}}},
		{Id: 5, Seq: 14, Kind: "inject", Process: gdb, Detail: &vigilv1.Event_Inject{Inject: &vigilv1.Inject{Method: "ptrace_attach", TargetPid: 1}}},
		{Id: 6, Seq: 15, Kind: "kernel", Process: &vigilv1.Process{Pid: 7, Exe: "/tmp/loader"}, Detail: &vigilv1.Event_Kernel{Kernel: &vigilv1.KernelOp{Op: "module_load"}}},
	}
	var jsonl bytes.Buffer
	for _, ev := range events {
		b, err := agent.AppendEventJSON(nil, ev)
		if err != nil {
			t.Fatal(err)
		}
		jsonl.Write(append(b, '\n'))
	}
	file := filepath.Join(t.TempDir(), "events.json")
	os.WriteFile(file, jsonl.Bytes(), 0o644)

	out, _, err := runPolicy(t, "", "test", hardening, "--event", file)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"→ deny by rule no-shell-under-server (enforced: the operation is refused): Nor may any process it started",
		"→ not decided: fork events are not decided by policy",
		"→ allow: no rule matched (the default; mode enforce)",
		"→ deny by rule no-kernel-code-loads (enforced: the operation is refused)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	// JSON, from stdin; the inject into 401 (gdb's child, as the third
	// event tells) is allowed, the one into pid 1 is not.
	out, _, err = runPolicy(t, jsonl.String(), "test", hardening, "--event", "-", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		ID         uint64          `json:"id"`
		Kind       string          `json:"kind"`
		Verdict    *policy.Verdict `json:"verdict"`
		NotDecided string          `json:"not_decided"`
	}
	var got []result
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var r result
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		got = append(got, r)
	}
	want := []struct {
		rule   string
		action policy.Action
	}{
		{"no-shell-under-server", policy.Deny}, {}, {"", policy.Allow}, {"", policy.Allow},
		{"no-injection-outside-own-tree", policy.Deny}, {"no-kernel-code-loads", policy.Deny},
	}
	if len(got) != len(want) {
		t.Fatalf("%d results, want %d:\n%s", len(got), len(want), out)
	}
	for i, w := range want {
		g := got[i]
		if g.ID != uint64(i+1) {
			t.Errorf("result %d: id %d", i, g.ID)
		}
		if w.action == "" {
			if g.Verdict != nil || g.NotDecided == "" {
				t.Errorf("result %d: %+v, want not decided", i, g)
			}
			continue
		}
		if g.Verdict == nil || g.Verdict.Rule != w.rule || g.Verdict.Action != w.action || g.Verdict.Enforced != (w.action == policy.Deny) {
			t.Errorf("result %d: %+v, want %s by %q", i, g.Verdict, w.action, w.rule)
		}
	}

	// --ancestry overrides what the events tell.
	out, _, err = runPolicy(t, jsonl.String(), "test", hardening, "--event", "-", "--ancestry", "401=1", "-o", "json")
	if err != nil || !strings.Contains(strings.Split(out, "\n")[3], "no-injection-outside-own-tree") {
		t.Errorf("with --ancestry 401=1: %v\n%s", err, out)
	}

	for _, args := range [][]string{
		{"test", hardening},
		{"test", hardening, "--event", file, "--sha256", "/x=abc"},
		{"test", hardening, "--event", file, "--cgroup", "x=/a"},
		{"test", hardening, "--event", file, "--ancestry", "1=a"},
		{"test", hardening, "--event", file, "-o", "yaml"},
	} {
		if _, _, err := runPolicy(t, "", args...); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
	if _, _, err := runPolicy(t, "", "test", hardening, "--event", "-"); err == nil || !strings.Contains(err.Error(), "no event") {
		t.Errorf("no events: %v", err)
	}
}

func TestTestEnv(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "prog")
	os.WriteFile(exe, []byte("hello\n"), 0o755)
	const helloSHA = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
	env, err := newTestEnv([]string{"/usr/bin/x=" + strings.Repeat("AB", 32)}, []string{"7=/system.slice/a.service"}, []string{"5=4,1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if h, ok := env.SHA256(policy.File{Path: "/usr/bin/x"}); !ok || h != strings.Repeat("ab", 32) {
		t.Errorf("SHA256 from the flag: %q %v", h, ok)
	}
	if h, ok := env.SHA256(policy.File{Path: exe}); !ok || h != helloSHA {
		t.Errorf("SHA256 of a local file: %q %v", h, ok)
	}
	if _, ok := env.SHA256(policy.File{Path: exe, Dev: 1, Inode: 1}); ok {
		t.Error("SHA256 of a local file that is not the same file")
	}
	if _, ok := env.SHA256(policy.File{Path: dir}); ok {
		t.Error("SHA256 of a directory")
	}
	if p, ok := env.CgroupPath(7); !ok || p != "/system.slice/a.service" {
		t.Errorf("CgroupPath: %q %v", p, ok)
	}
	if a, ok := env.Ancestry(5, 0); !ok || len(a) != 2 || a[0].Pid != 4 || a[1].Pid != 1 {
		t.Errorf("Ancestry: %v %v", a, ok)
	}
}

// TestTestEnvSigners: process.signer facts for `vigil policy test`: the
// --signer flags, else the trust database's catalogs that verify with a
// key the policy names.
func TestTestEnvSigners(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	exe := filepath.Join(dir, "prog")
	os.WriteFile(exe, []byte("hello\n"), 0o755)
	helloSHA, _ := trust.ParseDigest("5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03")
	dbPath := filepath.Join(dir, trust.FileName)
	db, err := trust.Open(ctx, dbPath)
	if err != nil {
		t.Fatal(err)
	}
	kPub, kPriv, _ := sign.GenerateKey()
	lPub, _, _ := sign.GenerateKey()
	k, _ := db.ApproveSigner(ctx, kPub, "")
	l, _ := db.ApproveSigner(ctx, lPub, "")
	cat, err := trust.SignCatalog(ctx, kPriv, trust.NewCatalog("c", [][32]byte{helloSHA}, time.Now()))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.AddCatalog(ctx, cat); err != nil {
		t.Fatal(err)
	}
	db.Close()

	env, err := newTestEnv(nil, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := env.addSigners(ctx, []string{"/usr/bin/x=" + l}, dbPath, []string{k, l}); err != nil {
		t.Fatal(err)
	}
	if ids, ok := env.Signers(policy.File{Path: exe}); !ok || len(ids) != 1 || ids[0] != k {
		t.Errorf("Signers of a file K's catalog lists: %v %v, want [%s]", ids, ok, k)
	}
	if ids, ok := env.Signers(policy.File{Path: "/usr/bin/x"}); !ok || len(ids) != 1 || ids[0] != l {
		t.Errorf("Signers from --signer: %v %v", ids, ok)
	}
	if ids, _ := env.Signers(policy.File{Path: dir}); len(ids) != 0 {
		t.Errorf("Signers of a directory: %v", ids)
	}
	// Only the keys the policy names are looked up.
	env, _ = newTestEnv(nil, nil, nil, nil)
	if err := env.addSigners(ctx, nil, dbPath, []string{l}); err != nil {
		t.Fatal(err)
	}
	if ids, _ := env.Signers(policy.File{Path: exe}); len(ids) != 0 {
		t.Errorf("Signers for a policy naming only L: %v", ids)
	}
	if err := env.addSigners(ctx, []string{"x=" + k}, "", nil); err == nil {
		t.Error("--signer with a relative path: no error")
	}
}
