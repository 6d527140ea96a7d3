package e2e

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/testutil"
	"github.com/vigil-hips/vigil/internal/testworkload"
)

var (
	clientsOnce sync.Once
	clientsDir  string
	clientsErr  error
)

// exampleClient returns the example filter client binary name ("scanner",
// "jsonl"): in the VM the copy the image carries, else built from this tree.
func exampleClient(t *testing.T, name string) string {
	t.Helper()
	if testutil.InVM() {
		return "/opt/vigil-test/vigil-" + name
	}
	clientsOnce.Do(func() {
		clientsDir, clientsErr = os.MkdirTemp("", "vigil-e2e-clients")
		for _, n := range []string{"scanner", "jsonl"} {
			if clientsErr != nil {
				return
			}
			cmd := exec.Command("go", "build", "-o", filepath.Join(clientsDir, "vigil-"+n), "../../examples/clients/"+n)
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				clientsErr = fmt.Errorf("go build %s: %v\n%s", n, err, out)
			}
		}
	})
	if clientsErr != nil {
		t.Fatal(clientsErr)
	}
	return filepath.Join(clientsDir, "vigil-"+name)
}

// filterClient is a running example client.
type filterClient struct {
	cmd  *exec.Cmd
	out  *strings.Builder
	done chan int // exit code
}

// startClient starts an example client and waits until the agent accepted
// it (it prints "connected") or refused it (it exits).
func startClient(t *testing.T, bin string, args ...string) (*filterClient, error) {
	t.Helper()
	c := &filterClient{cmd: exec.Command(bin, args...), out: &strings.Builder{}, done: make(chan int, 1)}
	pr, pw := io.Pipe()
	c.cmd.Stdout, c.cmd.Stderr = pw, pw
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { c.cmd.Wait(); pw.Close() }()
	connected := make(chan struct{})
	var mu sync.Mutex
	go func() {
		sc := bufio.NewScanner(pr)
		once := sync.Once{}
		for sc.Scan() {
			mu.Lock()
			c.out.WriteString(sc.Text() + "\n")
			mu.Unlock()
			if strings.Contains(sc.Text(), "connected as") {
				once.Do(func() { close(connected) })
			}
		}
		c.done <- c.cmd.ProcessState.ExitCode()
	}()
	t.Cleanup(func() { c.cmd.Process.Kill() })
	select {
	case <-connected:
		return c, nil
	case code := <-c.done:
		mu.Lock()
		defer mu.Unlock()
		return nil, fmt.Errorf("client exited (status %d): %s", code, c.out.String())
	case <-time.After(30 * time.Second):
		return nil, errors.New("client did not connect within 30s")
	}
}

func (c *filterClient) stop() {
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
		c.cmd.Process.Kill()
	}
}

// filterSetup signs a client configuration with a fresh admin key and
// starts an agent with a fanotify mark on a test tmpfs.
func filterSetup(t *testing.T, clients []map[string]any, extra ...string) (*agent, string, string) {
	t.Helper()
	testutil.RequireRoot(t)
	mnt := testTmpfs(t)
	a, sock := filterSetupOn(t, mnt, clients, extra...)
	return a, sock, mnt
}

// filterSetupOn is filterSetup with the fanotify mark on mnt.
func filterSetupOn(t *testing.T, mnt string, clients []map[string]any, extra ...string) (*agent, string) {
	t.Helper()
	dir := t.TempDir()
	admin := filepath.Join(dir, "admin")
	if _, stderr, code := vigilRun(t, "keys", "generate", "--out", admin); code != 0 {
		t.Fatal(stderr)
	}
	cfg, _ := json.Marshal(map[string]any{"clients": clients})
	cfgPath := filepath.Join(dir, "clients-config.json")
	os.WriteFile(cfgPath, cfg, 0o644)
	signed := filepath.Join(dir, "filter-clients.json")
	if out, stderr, code := vigilRun(t, "filter", "sign", "--key", admin+".key", "--out", signed, cfgPath); code != 0 {
		t.Fatalf("vigil filter sign: %s%s", out, stderr)
	}
	hostID := filepath.Join(dir, "machine-id")
	os.WriteFile(hostID, []byte("e2e-filter-test\n"), 0o644)
	args := append([]string{"--fanotify-mark", mnt, "--admin-key", admin + ".pub", "--protect=false",
		"--host-id-file", hostID, "--filter-clients", signed}, extra...)
	a := startAgent(t, args...)
	return a, filepath.Join(filepath.Dir(a.socket), "filter.sock")
}

// filterVerdict waits for the filter API's verdict on an exec of path.
func (a *agent) filterVerdict(t *testing.T, path string) *vigilv1.Verdict {
	t.Helper()
	var v *vigilv1.Verdict
	within(10*time.Second, func() error {
		for _, ev := range a.events("--kind", "exec") {
			if ev.GetVerdict().GetRule() == "filter-api" && ev.GetExec().GetFile().GetPath() == path {
				v = ev.GetVerdict()
				return nil
			}
		}
		return errors.New("not yet")
	})
	if v == nil {
		t.Fatalf("no filter API verdict for %s", path)
	}
	return v
}

// TestFilterAPI: two approved clients at different altitudes answer exec
// authorization on the fanotify path (test tmpfs) in altitude order; a deny
// blocks the exec with EPERM and the decision record shows who was asked;
// a notify client receives events; an unapproved client is refused at
// connect with a reason and an event.
func TestFilterAPI(t *testing.T) {
	scanner, jsonl := exampleClient(t, "scanner"), exampleClient(t, "jsonl")
	a, sock, mnt := filterSetup(t, []map[string]any{
		{"name": "scanner", "exe": scanner, "deadline_ms": 5000},
		{"name": "scanner-low", "exe": scanner, "deadline_ms": 5000},
		{"name": "jsonl", "exe": jsonl},
	})
	// Markers made at run time: the test binary, copied below, must not
	// contain them.
	markHigh, markLow := fmt.Sprintf("high-%d-%d", time.Now().UnixNano(), os.Getpid()), fmt.Sprintf("low-%d-%d", time.Now().UnixNano(), os.Getpid())
	if _, err := startClient(t, scanner, "-socket", sock, "-name", "scanner", "-altitude", "200",
		"-marker", markHigh, "-path-prefix", mnt); err != nil {
		t.Fatal(err)
	}
	if _, err := startClient(t, scanner, "-socket", sock, "-name", "scanner-low", "-altitude", "50",
		"-marker", markLow, "-path-prefix", mnt); err != nil {
		t.Fatal(err)
	}
	notes := filepath.Join(t.TempDir(), "events.jsonl")
	if _, err := startClient(t, jsonl, "-socket", sock, "-name", "jsonl", "-altitude", "100", "-kinds", "exec", "-out", notes); err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Executable()
	clean, _ := variant(t, exe, filepath.Join(mnt, "clean"))
	high, _ := variant(t, exe, filepath.Join(mnt, "high"), []byte(markHigh)...)
	low, _ := variant(t, exe, filepath.Join(mnt, "low"), []byte(markLow)...)

	if err := testworkload.Noop(clean); err != nil {
		t.Fatalf("exec of a clean file: %v\nagent log:\n%s", err, a.log)
	}
	if err := testworkload.Noop(high); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("exec of a file the high client denies: %v, want EPERM", err)
	}
	if err := testworkload.Noop(low); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("exec of a file the low client denies: %v, want EPERM", err)
	}
	// The high client's deny ends the round: the low one is not asked.
	v := a.filterVerdict(t, high)
	if !v.Refused || len(v.Clients) != 1 || v.Clients[0].Client != "scanner@200" || v.Clients[0].Answer != "deny" {
		t.Fatalf("decision record for %s: %v", high, v)
	}
	// The low client's: asked after the high one, which allowed.
	v = a.filterVerdict(t, low)
	if !v.Refused || len(v.Clients) != 2 || v.Clients[0].Client != "scanner@200" || v.Clients[0].Answer != "allow" ||
		v.Clients[1].Client != "scanner-low@50" || v.Clients[1].Answer != "deny" || v.Clients[1].Reason != "marker found" {
		t.Fatalf("decision record for %s: %v", low, v)
	}
	// A clean file's allow was cacheable, by both clients, which select
	// by path only: the kernel keeps it (an inode mark ignoring exec
	// permission events) and the next execs are not asked about. (A client
	// that missed its deadline under emulation answered nothing to keep:
	// try a few times.)
	if err := within(30*time.Second, func() error {
		if _, inodes := a.fanotifyMarks(t, mnt); inodes[inodeOf(t, clean)].ignored&unix.FAN_OPEN_EXEC_PERM == 0 {
			if err := testworkload.Noop(clean); err != nil {
				t.Fatal(err)
			}
			return errors.New("not kept")
		}
		return nil
	}); err != nil {
		t.Fatalf("the clients' cacheable allows of %s are not kept in the kernel: %v", clean, err)
	}
	records := func() int {
		n := 0
		for _, ev := range a.events("--kind", "exec") {
			if ev.GetVerdict().GetRule() == "filter-api" && ev.GetExec().GetFile().GetPath() == clean {
				n++
			}
		}
		return n
	}
	before := records()
	for range 3 {
		if err := testworkload.Noop(clean); err != nil {
			t.Fatal(err)
		}
	}
	settle := time.Second // for a record, had there been one, to be stored
	if testutil.InVM() {
		settle = 5 * time.Second
	}
	time.Sleep(settle)
	if after := records(); after != before {
		t.Fatalf("execs of %s kept in the kernel were asked about: %d decision records, then %d", clean, before, after)
	}
	// The notify client got exec events.
	if err := within(10*time.Second, func() error {
		b, _ := os.ReadFile(notes)
		if !strings.Contains(string(b), `"kind":"exec"`) {
			return errors.New("no exec event yet")
		}
		return nil
	}); err != nil {
		t.Fatalf("the notify client wrote no exec event to %s", notes)
	}

	// An unapproved client: refused at connect, with the reason.
	_, err := startClient(t, jsonl, "-socket", sock, "-name", "intruder", "-altitude", "300")
	if err == nil || !strings.Contains(err.Error(), "not approved") {
		t.Fatalf("unapproved client: %v, want refused as not approved", err)
	}
	// An approved name from another executable: refused too.
	_, err = startClient(t, jsonl, "-socket", sock, "-name", "scanner-low", "-altitude", "301")
	if err == nil || !strings.Contains(err.Error(), "not with this executable") {
		t.Fatalf("approved name, other executable: %v, want refused", err)
	}
	var refused *vigilv1.FilterSession
	within(10*time.Second, func() error {
		for _, ev := range a.events("--kind", "filter") {
			if fs := ev.GetFilterSession(); fs.GetAction() == "refused" && fs.GetClient() == "intruder@300" {
				refused = fs
				return nil
			}
		}
		return errors.New("not yet")
	})
	if refused == nil || refused.Exe != jsonl || !strings.Contains(refused.Reason, "not approved") {
		t.Fatalf("no filter event for the refused client: %v", refused)
	}
}

// TestFilterDeadlines: a client that sleeps past its deadline denies the
// exec when fail-closed and lets it run when fail-open, in both cases
// within the deadline and a small margin; a client killed in the middle of
// a decision does not hang the exec.
func TestFilterDeadlines(t *testing.T) {
	scanner := exampleClient(t, "scanner")
	a, sock, mnt := filterSetup(t, []map[string]any{
		{"name": "closed", "exe": scanner, "deadline_ms": 100, "miss_mode": "fail-closed", "max_misses": 10},
		{"name": "open", "exe": scanner, "deadline_ms": 100, "miss_mode": "fail-open", "max_misses": 10},
		{"name": "slow", "exe": scanner, "deadline_ms": 5000, "miss_mode": "fail-open"},
	})
	exe, _ := os.Executable()
	// The first exec of a new 20 MB file, event handling: far less than
	// the clients' 20 s sleep, so a wait for the answer cannot pass.
	margin := 400 * time.Millisecond
	if testutil.InVM() {
		margin = 3 * time.Second // software-emulated: only the order of magnitude means anything
	}
	timed := func(path string) (time.Duration, error) {
		start := time.Now()
		err := testworkload.Noop(path)
		return time.Since(start), err
	}
	// Baseline: the first exec of a new file with no client connected.
	base, _ := variant(t, exe, filepath.Join(mnt, "base"))
	baseTook, err := timed(base)
	if err != nil {
		t.Fatal(err)
	}

	c, err := startClient(t, scanner, "-socket", sock, "-name", "closed", "-altitude", "10", "-sleep", "20s")
	if err != nil {
		t.Fatal(err)
	}
	f1, _ := variant(t, exe, filepath.Join(mnt, "f1"), 1)
	took, err := timed(f1)
	if !errors.Is(err, syscall.EPERM) || took > baseTook+100*time.Millisecond+margin {
		t.Fatalf("fail-closed client past its deadline: %v after %v (no client: %v), want EPERM within deadline+margin", err, took, baseTook)
	}
	if v := a.filterVerdict(t, f1); len(v.Clients) != 1 || v.Clients[0].Answer != "missed" || v.Clients[0].Applied != "deny" {
		t.Fatalf("decision record: %v", v)
	}
	c.stop()

	c, err = startClient(t, scanner, "-socket", sock, "-name", "open", "-altitude", "10", "-sleep", "20s")
	if err != nil {
		t.Fatal(err)
	}
	f2, _ := variant(t, exe, filepath.Join(mnt, "f2"), 2)
	took, err = timed(f2)
	if err != nil || took > baseTook+100*time.Millisecond+margin {
		t.Fatalf("fail-open client past its deadline: %v after %v (no client: %v), want it to run within deadline+margin", err, took, baseTook)
	}
	c.stop()

	// Killed in the middle of a decision: the exec does not wait for the
	// 5 s deadline. The kill comes from a goroutine of this process while
	// another goroutine is in the exec, and Go's fork/exec holds its P for
	// as long as the exec is held: os/exec clones with CLONE_VFORK through
	// a raw syscall (golang/go#11155), which never gives up the P, and the
	// parent stays in clone until the child's execve returns, i.e. until
	// the agent answers. With GOMAXPROCS=1 (one CPU: the VM) no other
	// goroutine of the test runs meanwhile, the kill came only after the
	// exec, and the exec waited the whole deadline (seen in the VM, and on
	// the host with GOMAXPROCS=1). A second P lets the kill run.
	if prev := runtime.GOMAXPROCS(0); prev < 2 {
		runtime.GOMAXPROCS(2)
		defer runtime.GOMAXPROCS(prev)
	}
	c, err = startClient(t, scanner, "-socket", sock, "-name", "slow", "-altitude", "10", "-sleep", "30s")
	if err != nil {
		t.Fatal(err)
	}
	f3, _ := variant(t, exe, filepath.Join(mnt, "f3"), 3)
	go func() {
		time.Sleep(500 * time.Millisecond)
		c.cmd.Process.Kill()
	}()
	took, err = timed(f3)
	t.Logf("client killed 500ms into the decision: the exec returned after %v (no client: %v)", took, baseTook)
	if err != nil || took >= 5*time.Second || took > 500*time.Millisecond+baseTook+margin {
		t.Fatalf("client killed mid-decision: %v after %v, want the exec to go on soon after the kill", err, took)
	}
	if v := a.filterVerdict(t, f3); len(v.Clients) != 1 || v.Clients[0].Answer != "gone" {
		t.Fatalf("decision record: %v", v)
	}
}

// TestFilterKernelRule: a client's kernel deny rule blocks synchronously on
// the LSM path (EPERM, the rule named client-NAME-ID) and disappears when
// the client goes away.
func TestFilterKernelRule(t *testing.T) {
	testutil.RequireBPFLSM(t)
	scanner := exampleClient(t, "scanner")
	a, sock, _ := filterSetup(t, []map[string]any{
		{"name": "guard", "exe": scanner, "kernel_rules": true},
		{"name": "norules", "exe": scanner},
	})
	dir, err := os.MkdirTemp("/tmp", "vigil-filter-rule")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	exe, _ := os.Executable()
	prog, _ := variant(t, exe, filepath.Join(dir, "prog"))
	rule := filepath.Join(t.TempDir(), "rule.yaml")
	os.WriteFile(rule, []byte(fmt.Sprintf("id: no-exec\non: exec\naction: deny\nmatch:\n  target:\n    path_prefix: [%s]\n", dir)), 0o644)
	if err := testworkload.Noop(prog); err != nil {
		t.Fatalf("exec before the rule: %v", err)
	}
	// A client not approved for kernel rules cannot add one.
	if _, err := startClient(t, scanner, "-socket", sock, "-name", "norules", "-altitude", "20", "-rule", rule); err == nil ||
		!strings.Contains(err.Error(), "not approved for kernel rules") {
		t.Fatalf("kernel rule from a client without the right: %v", err)
	}
	c, err := startClient(t, scanner, "-socket", sock, "-name", "guard", "-altitude", "10", "-rule", rule)
	if err != nil {
		t.Fatal(err)
	}
	if err := testworkload.Noop(prog); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("exec under the client's kernel rule: %v, want EPERM", err)
	}
	var v *vigilv1.Verdict
	within(10*time.Second, func() error {
		for _, ev := range a.events("--kind", "exec") {
			if ev.GetExec().GetFile().GetPath() == prog && ev.GetVerdict().GetRule() == "client-guard-rule" {
				v = ev.GetVerdict()
				return nil
			}
		}
		return errors.New("not yet")
	})
	if v == nil || !v.Refused || v.DecidedBy != "lsm" {
		t.Fatalf("verdict of the client's kernel rule: %v", v)
	}
	c.stop()
	if err := within(10*time.Second, func() error { return testworkload.Noop(prog) }); err != nil {
		t.Fatalf("exec after the client left: %v, want its rule gone", err)
	}
}

// fanMark is one mark of a fanotify group: its events and ignored events.
type fanMark struct{ mask, ignored uint64 }

var fanMarkRE = regexp.MustCompile(`^fanotify (?:ino:([0-9a-f]+) )?sdev:([0-9a-f]+) mflags:[0-9a-f]+ mask:([0-9a-f]+) ignored_mask:([0-9a-f]+)`)

// fanotifyMarks reads the marks of the agent's fanotify groups from
// /proc/PID/fdinfo: the filesystem mark of the filesystem holding path,
// and the inode marks on it, by inode.
func (a *agent) fanotifyMarks(t *testing.T, path string) (sb fanMark, inodes map[uint64]fanMark) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	sdev := uint64(unix.Major(st.Dev))<<20 | uint64(unix.Minor(st.Dev)) // the kernel's dev_t
	pid := a.cmd.Process.Pid
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	inodes = map[uint64]fanMark{}
	found := false
	for _, fd := range fds {
		if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); l != "anon_inode:[fanotify]" {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, fd.Name()))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			m := fanMarkRE.FindStringSubmatch(line)
			if m == nil {
				continue
			}
			dev, _ := strconv.ParseUint(m[2], 16, 64)
			if dev != sdev {
				continue
			}
			mask, _ := strconv.ParseUint(m[3], 16, 64)
			ign, _ := strconv.ParseUint(m[4], 16, 64)
			if m[1] == "" {
				sb, found = fanMark{mask, ign}, true
				continue
			}
			ino, _ := strconv.ParseUint(m[1], 16, 64)
			inodes[ino] = fanMark{mask, ign}
		}
	}
	if !found {
		t.Fatalf("the agent has no fanotify mark on the filesystem of %s", path)
	}
	return sb, inodes
}

func inodeOf(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// openRecords are the filter API's decisions about opens of path.
func (a *agent) openRecords(t *testing.T, path string) []*vigilv1.Event {
	t.Helper()
	var out []*vigilv1.Event
	for _, ev := range a.events("--kind", "open") {
		if ev.GetVerdict().GetRule() == "filter-api" && ev.GetFileOpen().GetFile().GetPath() == path {
			out = append(out, ev)
		}
	}
	return out
}

// TestFilterOpenAuth: a client that subscribes to open authorization on
// the fanotify path (test tmpfs) denies the open of a file containing its
// marker (EPERM) and allows another; its cacheable allow is kept in the
// kernel until the file changes. Open permission events are asked of the
// kernel only while such a client is connected. The agent's own opens
// (its state directory is on the marked filesystem) are never asked about.
func TestFilterOpenAuth(t *testing.T) {
	scanner := exampleClient(t, "scanner")
	testutil.RequireRoot(t)
	mnt := testTmpfs(t)
	a, sock := filterSetupOn(t, mnt, []map[string]any{{"name": "opener", "exe": scanner, "deadline_ms": 5000}},
		"--state-dir", filepath.Join(mnt, "state"))
	marker := fmt.Sprintf("open-%d-%d", time.Now().UnixNano(), os.Getpid())
	bad, clean := filepath.Join(mnt, "bad.txt"), filepath.Join(mnt, "clean.txt")
	os.WriteFile(bad, []byte("some text\n"+marker+"\n"), 0o644)
	os.WriteFile(clean, []byte("nothing to see\n"), 0o644)

	sb, _ := a.fanotifyMarks(t, mnt)
	if sb.mask&unix.FAN_OPEN_EXEC_PERM == 0 || sb.mask&unix.FAN_OPEN_PERM != 0 {
		t.Fatalf("no open client: the mark's events are %#x, want exec permission only", sb.mask)
	}
	if _, err := os.ReadFile(bad); err != nil {
		t.Fatalf("open with no client: %v", err)
	}

	c, err := startClient(t, scanner, "-socket", sock, "-name", "opener", "-altitude", "100", "-kinds", "open", "-marker", marker)
	if err != nil {
		t.Fatal(err)
	}
	if sb, _ = a.fanotifyMarks(t, mnt); sb.mask&unix.FAN_OPEN_PERM == 0 {
		t.Fatalf("an open client is connected: the mark's events are %#x, want open permission too", sb.mask)
	}
	if _, err := os.ReadFile(bad); !errors.Is(err, syscall.EPERM) && !errors.Is(err, syscall.EACCES) {
		t.Fatalf("open of a file with the client's marker: %v, want EPERM", err)
	}
	if b, err := os.ReadFile(clean); err != nil || !strings.Contains(string(b), "nothing to see") {
		t.Fatalf("open of a clean file: %q, %v", b, err)
	}
	var rec []*vigilv1.Event
	within(10*time.Second, func() error {
		if rec = a.openRecords(t, bad); len(rec) == 0 {
			return errors.New("not yet")
		}
		return nil
	})
	if len(rec) == 0 {
		t.Fatalf("no decision record for the open of %s", bad)
	}
	if v := rec[0].GetVerdict(); !v.Refused || v.Action != "deny" || len(v.Clients) != 1 || v.Clients[0].Client != "opener@100" ||
		v.Clients[0].Answer != "deny" || v.Clients[0].Reason != "marker found" || rec[0].GetProcess().GetPid() != uint32(os.Getpid()) {
		t.Fatalf("decision record for %s: %v", bad, rec[0])
	}

	// The clean file's allow was cacheable: the kernel keeps it (an inode
	// mark ignoring open permission events) and does not ask again.
	var cleanAsked int
	within(10*time.Second, func() error {
		cleanAsked = len(a.openRecords(t, clean))
		if cleanAsked == 0 {
			return errors.New("not yet")
		}
		return nil
	})
	if cleanAsked != 1 {
		t.Fatalf("open of the clean file: %d decision records, want 1", cleanAsked)
	}
	if _, inodes := a.fanotifyMarks(t, mnt); inodes[inodeOf(t, clean)].ignored&unix.FAN_OPEN_PERM == 0 {
		t.Fatalf("the clean file's allow is not kept in the kernel: inode marks %v", inodes)
	}
	for range 3 {
		if _, err := os.ReadFile(clean); err != nil {
			t.Fatal(err)
		}
	}
	// Until it changes: the write (its open came before the change, under
	// the kept verdict) drops it, and the next open is asked again.
	if err := os.WriteFile(clean, []byte("nothing to see, still\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, inodes := a.fanotifyMarks(t, mnt); inodes[inodeOf(t, clean)].ignored&unix.FAN_OPEN_PERM != 0 {
		t.Fatalf("the clean file changed, its allow is still kept in the kernel: inode marks %v", inodes)
	}
	if _, err := os.ReadFile(clean); err != nil {
		t.Fatal(err)
	}
	within(10*time.Second, func() error {
		if len(a.openRecords(t, clean)) < 2 {
			return errors.New("not yet")
		}
		return nil
	})
	if n := len(a.openRecords(t, clean)); n != 2 {
		t.Fatalf("opens of the clean file: %d decision records, want 2 (the first open and the first after the change)", n)
	}
	// The agent's own opens are never asked about.
	for _, ev := range a.events("--kind", "open") {
		if ev.GetProcess().GetPid() == uint32(a.cmd.Process.Pid) {
			t.Fatalf("the agent's own open was asked about: %v", ev)
		}
	}

	// The client leaves: no more open permission events.
	c.stop()
	if err := within(10*time.Second, func() error {
		if sb, _ := a.fanotifyMarks(t, mnt); sb.mask&unix.FAN_OPEN_PERM != 0 {
			return fmt.Errorf("the mark's events are %#x", sb.mask)
		}
		return nil
	}); err != nil {
		t.Fatalf("the open client left, open permission events still asked: %v", err)
	}
	if _, err := os.ReadFile(bad); err != nil {
		t.Fatalf("open after the client left: %v", err)
	}
}
