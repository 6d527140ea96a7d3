package ocsf

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
)

// required are the attributes each class requires (schema.ocsf.io: the
// base event, the system category, the class itself) plus the security
// control profile's action_id and disposition_id, as dotted paths.
var (
	requiredBase = []string{"activity_id", "category_uid", "class_uid", "metadata.product.name", "metadata.product.vendor_name",
		"metadata.version", "severity_id", "time", "type_uid", "actor", "device", "action_id", "disposition_id"}
	requiredClass = map[int][]string{
		ClassProcess:         {"process"},
		ClassModule:          {"actor", "module"},
		ClassMemory:          {"process"},
		ClassKernelExtension: {"actor", "driver", "driver.file"},
		ClassFileSystem:      {"actor", "file"},
	}
	// activities are the activity ids each class defines.
	activities = map[int][]int{
		ClassProcess:         {1, 2, 3, 4, 5},
		ClassModule:          {1, 2},
		ClassMemory:          {1, 2, 3, 4, 5, 6},
		ClassKernelExtension: {1, 2},
		ClassFileSystem:      {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14},
	}
)

func get(m map[string]any, path string) (any, bool) {
	var cur any = m
	for _, k := range strings.Split(path, ".") {
		mm, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = mm[k]; !ok || cur == nil {
			return nil, false
		}
	}
	return cur, true
}

func num(t *testing.T, m map[string]any, path string) int {
	t.Helper()
	v, ok := get(m, path)
	f, isNum := v.(float64)
	if !ok || !isNum {
		t.Fatalf("%s: %v, want a number", path, v)
	}
	return int(f)
}

func randHex(t *testing.T) string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func proc() *vigilv1.Process {
	return &vigilv1.Process{Pid: 42, Ppid: 1, Uid: 1000, StartTimeNs: 99, Comm: "tool", Exe: "/usr/bin/tool"}
}

func f(path string) *vigilv1.File { return &vigilv1.File{Path: path, Dev: 8, Inode: 77} }

// TestMapping: each kind maps to its class and activity, with every
// attribute the class requires, the type_uid the schema defines
// (class_uid * 100 + activity_id) and the disposition of its verdict.
func TestMapping(t *testing.T) {
	sha := strings.Repeat("ab", 32)
	refused := &vigilv1.Verdict{Action: "deny", Rule: "r1", Mode: "enforce", DecidedBy: "lsm", Refused: true}
	monitor := &vigilv1.Verdict{Action: "deny", Rule: "r2", Mode: "monitor", DecidedBy: "lsm"}
	tests := []struct {
		name            string
		ev              *vigilv1.Event
		class, activity int
		disp            string
		check           map[string]any // path → value (JSON-decoded)
	}{
		{"exec blocked", &vigilv1.Event{Kind: "exec", Verdict: refused, Trust: &vigilv1.Trust{Sha256: sha, Verdict: "unknown", Mode: "lockdown"},
			Detail: &vigilv1.Event_Exec{Exec: &vigilv1.Exec{File: f("/tmp/x"), Argv: []string{"/tmp/x", "-v"}, CallerExe: "/bin/sh"}}},
			ClassProcess, 1, Blocked, map[string]any{"process.file.path": "/tmp/x", "process.file.hashes": nil, "process.cmd_line": "/tmp/x -v", "actor.process.file.path": "/bin/sh"}},
		{"exec unknown code in monitor", &vigilv1.Event{Kind: "exec", Trust: &vigilv1.Trust{Sha256: sha, Verdict: "unknown", Mode: "monitor"},
			Detail: &vigilv1.Event_Exec{Exec: &vigilv1.Exec{File: f("/tmp/y")}}}, ClassProcess, 1, WouldBlock, nil},
		{"exec trusted", &vigilv1.Event{Kind: "exec", Trust: &vigilv1.Trust{Sha256: sha, Verdict: "trusted", Mode: "lockdown"},
			Detail: &vigilv1.Event_Exec{Exec: &vigilv1.Exec{File: f("/usr/bin/ls")}}}, ClassProcess, 1, Allowed, nil},
		{"exit", &vigilv1.Event{Kind: "exit", Detail: &vigilv1.Event_Exit{Exit: &vigilv1.Exit{Code: 3}}}, ClassProcess, 2, Allowed,
			map[string]any{"exit_code": 3.0}},
		{"inject refused", &vigilv1.Event{Kind: "inject", Verdict: refused, Detail: &vigilv1.Event_Inject{Inject: &vigilv1.Inject{Method: "ptrace_attach", TargetPid: 7, TargetExe: "/usr/sbin/sshd"}}},
			ClassProcess, 4, Blocked, map[string]any{"process.pid": 7.0, "process.file.path": "/usr/sbin/sshd", "policy.name": "r1"}},
		{"image load", &vigilv1.Event{Kind: "image_load", Trust: &vigilv1.Trust{Sha256: sha, Verdict: "trusted"}, Detail: &vigilv1.Event_ImageLoad{ImageLoad: &vigilv1.ImageLoad{File: f("/lib/libc.so.6")}}},
			ClassModule, 1, Allowed, map[string]any{"module.file.path": "/lib/libc.so.6"}},
		{"mprotect would-block", &vigilv1.Event{Kind: "mem_exec", Verdict: monitor, Detail: &vigilv1.Event_MemExec{MemExec: &vigilv1.MemExec{Syscall: "mprotect", Addr: 4096, Len: 8192, Prot: 7, Anonymous: true}}},
			ClassMemory, 2, WouldBlock, map[string]any{"size": 8192.0, "base_address": "0x1000", "policy.name": "r2"}},
		{"mmap", &vigilv1.Event{Kind: "mem_exec", Detail: &vigilv1.Event_MemExec{MemExec: &vigilv1.MemExec{Syscall: "mmap", Prot: 5, File: f("/opt/a.so")}}},
			ClassMemory, 1, Allowed, nil},
		{"module load blocked", &vigilv1.Event{Kind: "kernel", Verdict: refused, Detail: &vigilv1.Event_Kernel{Kernel: &vigilv1.KernelOp{Op: "module_load", File: f("/lib/modules/dummy.ko")}}},
			ClassKernelExtension, 1, Blocked, map[string]any{"driver.file.path": "/lib/modules/dummy.ko"}},
		{"bpf load", &vigilv1.Event{Kind: "kernel", Detail: &vigilv1.Event_Kernel{Kernel: &vigilv1.KernelOp{Op: "bpf_prog_load", BpfProgName: "probe"}}},
			ClassKernelExtension, 1, Allowed, map[string]any{"driver.file.name": "probe"}},
		{"kcore", &vigilv1.Event{Kind: "kernel", Verdict: refused, Detail: &vigilv1.Event_Kernel{Kernel: &vigilv1.KernelOp{Op: "kcore_open", File: f("/proc/kcore")}}},
			ClassFileSystem, 14, Blocked, map[string]any{"file.path": "/proc/kcore"}},
		{"file write", &vigilv1.Event{Kind: "file_modify", Verdict: monitor, Detail: &vigilv1.Event_FileModify{FileModify: &vigilv1.FileModify{Op: "open_write", File: f("/etc/crontab")}}},
			ClassFileSystem, 3, WouldBlock, map[string]any{"file.path": "/etc/crontab"}},
		{"rename", &vigilv1.Event{Kind: "file_modify", Detail: &vigilv1.Event_FileModify{FileModify: &vigilv1.FileModify{Op: "rename", File: f("/tmp/a"), NewPath: "/etc/cron.d/a"}}},
			ClassFileSystem, 5, Allowed, map[string]any{"file_result.path": "/etc/cron.d/a"}},
		{"unlink", &vigilv1.Event{Kind: "file_modify", Detail: &vigilv1.Event_FileModify{FileModify: &vigilv1.FileModify{Op: "unlink", File: f("/etc/x")}}}, ClassFileSystem, 4, Allowed, nil},
		{"chmod", &vigilv1.Event{Kind: "file_modify", Detail: &vigilv1.Event_FileModify{FileModify: &vigilv1.FileModify{Op: "chmod", File: f("/etc/x")}}}, ClassFileSystem, 7, Allowed, nil},
		{"create", &vigilv1.Event{Kind: "file_modify", Detail: &vigilv1.Event_FileModify{FileModify: &vigilv1.FileModify{Op: "create", File: f("/etc/x")}}}, ClassFileSystem, 1, Allowed, nil},
	}
	wantAction := map[string][2]int{Blocked: {2, 2}, WouldBlock: {1, 15}, Allowed: {1, 1}}
	host := Host{ID: "host-" + randHex(t), Hostname: "web1"}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.ev.Time = timestamppb.New(time.UnixMilli(1700000000123))
			tt.ev.Process = proc()
			tt.ev.Id = 5
			m, ok := Map(tt.ev, host, Product{Name: "Vigil server", Version: "test"})
			if !ok {
				t.Fatal("not mapped")
			}
			raw, err := json.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			var got map[string]any
			if err := json.Unmarshal(raw, &got); err != nil {
				t.Fatal(err)
			}
			for _, p := range append(append([]string{}, requiredBase...), requiredClass[tt.class]...) {
				if _, ok := get(got, p); !ok {
					t.Errorf("required %s missing: %s", p, raw)
				}
			}
			class, act := num(t, got, "class_uid"), num(t, got, "activity_id")
			if class != tt.class || act != tt.activity {
				t.Errorf("class %d activity %d, want %d %d", class, act, tt.class, tt.activity)
			}
			valid := false
			for _, a := range activities[class] {
				valid = valid || a == act
			}
			if !valid {
				t.Errorf("activity %d is not one of class %d's", act, class)
			}
			if tu := num(t, got, "type_uid"); tu != class*100+act {
				t.Errorf("type_uid %d, want %d", tu, class*100+act)
			}
			if num(t, got, "category_uid") != 1 {
				t.Errorf("category_uid %v", got["category_uid"])
			}
			if num(t, got, "time") != 1700000000123 {
				t.Errorf("time %v, want epoch milliseconds", got["time"])
			}
			if d, _ := get(got, "unmapped.vigil_disposition"); d != tt.disp {
				t.Errorf("disposition %v, want %s", d, tt.disp)
			}
			wa := wantAction[tt.disp]
			if num(t, got, "action_id") != wa[0] || num(t, got, "disposition_id") != wa[1] {
				t.Errorf("action_id %v disposition_id %v, want %v", got["action_id"], got["disposition_id"], wa)
			}
			if h, _ := get(got, "device.uid"); h != host.ID {
				t.Errorf("device.uid %v", h)
			}
			for p, want := range tt.check {
				v, ok := get(got, p)
				if !ok || (want != nil && v != want) {
					t.Errorf("%s: %v, want %v", p, v, want)
				}
			}
		})
	}
	for _, kind := range []*vigilv1.Event{
		{Kind: "fork", Detail: &vigilv1.Event_Fork{Fork: &vigilv1.Fork{}}},
		{Kind: "gap", Detail: &vigilv1.Event_Gap{Gap: &vigilv1.Gap{}}},
		{Kind: "tamper", Detail: &vigilv1.Event_Tamper{Tamper: &vigilv1.Tamper{}}},
	} {
		if _, ok := Map(kind, host, Product{}); ok {
			t.Errorf("%s mapped, want skipped", kind.Kind)
		}
	}
}

func sample(n int, marker string) []*vigilv1.Event {
	var evs []*vigilv1.Event
	for i := range n {
		evs = append(evs, &vigilv1.Event{Id: uint64(i + 1), Kind: "exec", Time: timestamppb.Now(), Process: proc(),
			Detail: &vigilv1.Event_Exec{Exec: &vigilv1.Exec{File: f("/tmp/" + marker), Argv: []string{marker}}}})
	}
	// One without a class: skipped.
	evs = append(evs, &vigilv1.Event{Kind: "fork", Detail: &vigilv1.Event_Fork{Fork: &vigilv1.Fork{}}})
	return evs
}

// TestFileExport: events are appended as JSON lines, one OCSF event each.
func TestFileExport(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ocsf.jsonl")
	marker := randHex(t)
	e, err := New(Config{File: path, Product: Product{Name: "Vigil server"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := e.Export(Host{ID: "h"}, sample(3, marker)); err != nil || n != 3 {
		t.Fatalf("export: %d %v", n, err)
	}
	e.Export(Host{ID: "h"}, sample(2, marker))
	if err := e.Close(time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Export(Host{ID: "h"}, sample(1, marker)); err == nil {
		t.Fatal("export after close accepted")
	}
	fh, _ := os.Open(path)
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	lines := 0
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %d: %v", lines+1, err)
		}
		if p, _ := get(m, "process.file.path"); p != "/tmp/"+marker || m["class_uid"] != 1007.0 {
			t.Fatalf("line %d: %s", lines+1, sc.Bytes())
		}
		lines++
	}
	if lines != 5 {
		t.Fatalf("%d lines, want 5", lines)
	}
	if err := (Config{}).Validate(); err == nil {
		t.Fatal("an empty config validated")
	}
	if err := (Config{Webhook: "ftp://x"}).Validate(); err == nil {
		t.Fatal("an ftp webhook validated")
	}
}

// TestWebhookExport: events are POSTed as JSON arrays in batches of at
// most Batch; a server that fails (503) is retried until it takes them,
// and each event arrives exactly once; a server that refuses (400) is not
// retried and the loss is counted.
func TestWebhookExport(t *testing.T) {
	marker := randHex(t)
	var (
		mu       sync.Mutex
		fails    = 2
		got      = map[string]int{}
		maxBatch int
		posts    int
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		posts++
		if fails > 0 {
			fails--
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
		b, _ := io.ReadAll(r.Body)
		var arr []map[string]any
		if err := json.Unmarshal(b, &arr); err != nil || r.Header.Get("Content-Type") != "application/json" {
			http.Error(w, "bad", http.StatusBadRequest)
			return
		}
		maxBatch = max(maxBatch, len(arr))
		for _, m := range arr {
			uid, _ := get(m, "metadata.uid")
			got[uid.(string)]++
		}
	}))
	defer srv.Close()
	e, err := New(Config{Webhook: srv.URL, Batch: 4, FlushEvery: 50 * time.Millisecond, Retries: 5, Product: Product{Name: "Vigil server"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := e.Export(Host{ID: marker}, sample(10, marker)); err != nil || n != 10 {
		t.Fatalf("export: %d %v", n, err)
	}
	if err := e.Close(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 10 || e.Sent() != 10 || e.Dropped() != 0 {
		t.Fatalf("delivered %d distinct (sent %d, dropped %d), want 10", len(got), e.Sent(), e.Dropped())
	}
	for uid, n := range got {
		if n != 1 || !strings.HasPrefix(uid, marker+":") {
			t.Fatalf("event %s delivered %d times", uid, n)
		}
	}
	if maxBatch > 4 || posts < 3+2 {
		t.Fatalf("max batch %d (want <= 4), posts %d (want >= 5: 2 failures and 3 batches)", maxBatch, posts)
	}

	refusing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		posts++
		mu.Unlock()
		http.Error(w, "no", http.StatusBadRequest)
	}))
	defer refusing.Close()
	posts = 0
	mu.Unlock()
	e2, _ := New(Config{Webhook: refusing.URL, Batch: 100, FlushEvery: 20 * time.Millisecond}, nil)
	e2.Export(Host{ID: "h"}, sample(3, marker))
	e2.Close(10 * time.Second)
	mu.Lock()
	if e2.Dropped() != 3 || posts != 1 {
		t.Fatalf("refusing server: dropped %d, posts %d; want 3 dropped after one post", e2.Dropped(), posts)
	}
}
