// Package browser drives the fleet console of the real `vigil server`
// binary with headless Chromium (Debian's chromium package, which `make
// test` installs: make browser-deps). It runs on the host only: the VM
// image has no browser.
package browser

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/timestamppb"

	fleetv1 "github.com/vigil-hips/vigil/api/vigil/fleet/v1"
	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/fleet"
	"github.com/vigil-hips/vigil/internal/fleet/console"
	"github.com/vigil-hips/vigil/internal/sign"
	"github.com/vigil-hips/vigil/internal/testutil"
)

// vigilBin is $VIGIL_BIN (make test-host sets it) or a binary built from
// this tree.
func vigilBin(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("VIGIL_BIN"); p != "" {
		return p
	}
	p := filepath.Join(t.TempDir(), "vigil")
	cmd := exec.Command("go", "build", "-o", p, "../../cmd/vigil")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return p
}

// chromium returns Debian's chromium, or skips saying why the browser test
// cannot run.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("SKIPPED: the console browser test needs Debian's chromium package, which is not installed " +
		"(`make browser-deps` installs it; it fails without network)")
	return ""
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func randHex(t *testing.T, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// server is a running `vigil server` with its console.
type server struct {
	addr, console, state, ca string
	log                      *testutil.SyncBuffer
}

func startServer(t *testing.T, dir string, args ...string) *server {
	t.Helper()
	s := &server{addr: freeAddr(t), console: freeAddr(t), state: filepath.Join(dir, "state")}
	s.ca = filepath.Join(s.state, "ca.pem")
	cmd := exec.Command(vigilBin(t), append([]string{"server", "--listen", s.addr, "--state-dir", s.state,
		"--admin-socket", filepath.Join(dir, "admin.sock"), "--console-listen", s.console}, args...)...)
	d := testutil.StartDaemon(t, "vigil server", cmd, 20*time.Second, nil)
	s.log = d.Log
	if err := testutil.Within(20*time.Second, 100*time.Millisecond, func() error {
		if !d.Running() {
			return fmt.Errorf("exited: %v", d.Err())
		}
		c, err := net.Dial("tcp", s.console)
		if err != nil {
			return err
		}
		return c.Close()
	}); err != nil {
		t.Fatalf("the console did not come up: %v\n%s", err, s.log)
	}
	return s
}

// agent is a simulated agent speaking the fleet API: it enrolled, it
// watches for bundles and verifies each with the admin key as a real agent
// does, and keeps the hash verdicts of the newest one it accepted.
type agent struct {
	id     string
	client fleetv1.FleetClient
	mu     sync.Mutex
	hashes map[string]string
	got    chan struct{} // a new bundle was accepted (buffered 1)
}

func enroll(t *testing.T, ctx context.Context, s *server, secretFile string, adminPub []byte) *agent {
	t.Helper()
	a := &agent{id: "sim-" + randHex(t, 6), hashes: map[string]string{}, got: make(chan struct{}, 1)}
	cred, err := fleet.Enroll(ctx, fleet.Enrollment{Server: s.addr, CAFile: s.ca, SecretFile: secretFile, HostID: a.id, Hostname: "sim-host"})
	if err != nil {
		t.Fatalf("simulated agent: enroll: %v", err)
	}
	conn, err := fleet.Dial(s.addr, s.ca, cred)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	a.client = fleetv1.NewFleetClient(conn)
	if _, err := a.client.Sync(ctx, &fleetv1.SyncRequest{AgentVersion: "sim", Backend: "tracepoint", ExecMode: "lockdown"}); err != nil {
		t.Fatalf("simulated agent: sync: %v", err)
	}
	watch, err := a.client.Watch(ctx, &fleetv1.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		v, applied := fleet.Verifier{Key: adminPub, Host: a.id}, uint64(0)
		for {
			b, err := watch.Recv()
			if err != nil {
				return
			}
			fb, err := v.Verify(ctx, b.GetEnvelope(), applied)
			if err != nil {
				t.Errorf("simulated agent: bundle refused: %v", err)
				continue
			}
			applied = fb.Version
			a.mu.Lock()
			clear(a.hashes)
			for _, h := range fb.Hashes {
				a.hashes[h.SHA256] = h.Verdict
			}
			a.mu.Unlock()
			select {
			case a.got <- struct{}{}:
			default: // the reader has a wake-up pending already
			}
		}
	}()
	return a
}

func (a *agent) verdict(sha string) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.hashes[sha]
}

// blocked uploads a refused exec of unknown code, as the agent's store id.
func (a *agent) blocked(t *testing.T, ctx context.Context, id uint64, sha, path string) {
	t.Helper()
	ev := &vigilv1.Event{Id: id, Seq: id, Time: timestamppb.Now(), Kind: "exec", Backend: "tracepoint",
		Process: &vigilv1.Process{Pid: 31337, Exe: "/usr/bin/bash"},
		Detail:  &vigilv1.Event_Exec{Exec: &vigilv1.Exec{File: &vigilv1.File{Path: path}, Filename: path}},
		Trust:   &vigilv1.Trust{Sha256: sha, Verdict: "unknown", Mode: "lockdown"},
		Verdict: &vigilv1.Verdict{Action: "deny", Mode: "enforce", DecidedBy: "fanotify", Refused: true}}
	if _, err := a.client.UploadEvents(ctx, &fleetv1.UploadEventsRequest{AfterId: id - 1, ThroughId: id, Events: []*vigilv1.Event{ev}}); err != nil {
		t.Fatalf("simulated agent: upload: %v", err)
	}
}

// spki is the base64 SHA-256 of the console certificate's public key,
// after checking the certificate chains to the server's CA: Chromium is
// told to accept exactly that key (it does not know the fleet CA).
func spki(t *testing.T, s *server) string {
	t.Helper()
	pool, err := fleet.CertPool(s.ca)
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.Dial("tcp", s.console, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatalf("console TLS: %v", err)
	}
	defer c.Close()
	sum := sha256.Sum256(c.ConnectionState().PeerCertificates[0].RawSubjectPublicKeyInfo)
	return base64.StdEncoding.EncodeToString(sum[:])
}

func httpClient(t *testing.T, s *server) *http.Client {
	pool, err := fleet.CertPool(s.ca)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       10 * time.Second}
}

func digest(t *testing.T) string {
	s := sha256.Sum256([]byte(randHex(t, 32)))
	return hex.EncodeToString(s[:])
}

// TestConsoleApproveReachesAgent: the real `vigil server` with its
// console; a simulated agent enrolls and reports a blocked unknown binary.
// In headless Chromium an administrator is refused with a wrong password,
// logs in with the one the server made at first start, opens the approval
// queue and clicks Approve for the agent's host. The agent's next bundle,
// verified with the admin key, allows the digest within 10 s. Without the
// session, nothing is shown or done; with the session but without the
// CSRF token, a POST is refused and changes nothing.
// realAgent starts a real `vigil agent` that enrolls with s: lockdown on a
// tmpfs of this test only (the trust block acts on the marked filesystem,
// nothing host-wide), so code new to it is refused there. It returns the
// tmpfs and the agent's host id once the agent applied its first bundle.
func realAgent(t *testing.T, s *server, dir, secretFile, adminPub string) (mnt, hostID string) {
	t.Helper()
	testutil.RequireRoot(t)
	mnt = filepath.Join(dir, "xc")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=64m"); err != nil {
		t.Fatalf("mount tmpfs on %s: %v", mnt, err)
	}
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	src, err := os.ReadFile("../../examples/policies/lockdown.yaml")
	if err != nil {
		t.Fatal(err)
	}
	pol := filepath.Join(dir, "lockdown.yaml")
	if err := os.WriteFile(pol, []byte(strings.Replace(string(src), "/etc/vigil/catalogs", filepath.Join(dir, "no-catalogs"), 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	hostID = randHex(t, 16)
	idFile := filepath.Join(dir, "machine-id")
	if err := os.WriteFile(idFile, []byte(hostID+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	state, sock := filepath.Join(dir, "agent-state"), filepath.Join(dir, "agent.sock")
	cmd := exec.Command(vigilBin(t), "agent", "--backend", "tracepoint", "--fanotify-mark", mnt, "--policy", pol,
		"--state-dir", state, "--socket", sock, "--admin-key", adminPub, "--protect=false", "--host-id-file", idFile,
		"--fleet-server", s.addr, "--fleet-ca", s.ca, "--fleet-enroll-secret-file", secretFile, "--fleet-poll", "2s")
	d := testutil.StartDaemon(t, "agent", cmd, 30*time.Second, nil)
	if out, err := exec.Command(vigilBin(t), "status", "--socket", sock, "--wait", "150s").CombinedOutput(); err != nil {
		t.Fatalf("agent did not come up: %v\n%s\nagent log:\n%s", err, out, d.Log)
	}
	if err := testutil.Within(20*time.Second, 100*time.Millisecond, func() error {
		_, err := os.Stat(filepath.Join(state, "fleet", fleet.BundleFile))
		return err
	}); err != nil {
		t.Fatalf("the agent applied no bundle: %v\nagent log:\n%s", err, d.Log)
	}
	return mnt, hostID
}

// newCode writes a copy of /usr/bin/true with random bytes appended:
// code no trust source knows. It returns its path and digest.
func newCode(t *testing.T, dir string) (string, string) {
	t.Helper()
	b, err := os.ReadFile("/usr/bin/true")
	if err != nil {
		t.Fatal(err)
	}
	b = append(b, []byte(randHex(t, 8))...)
	p := filepath.Join(dir, "new-"+randHex(t, 4))
	if err := os.WriteFile(p, b, 0o755); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return p, hex.EncodeToString(sum[:])
}

func TestConsoleApproveReachesAgent(t *testing.T) {
	chrome := chromium(t)
	dir := t.TempDir()
	bin := vigilBin(t)
	if out, err := exec.Command(bin, "keys", "generate", "--out", filepath.Join(dir, "admin")).CombinedOutput(); err != nil {
		t.Fatalf("vigil keys generate: %v\n%s", err, out)
	}
	adminPub, err := sign.LoadPublicKey(filepath.Join(dir, "admin.pub"))
	if err != nil {
		t.Fatal(err)
	}
	secretFile := filepath.Join(dir, "enroll-secret")
	if err := os.WriteFile(secretFile, []byte("secret-"+randHex(t, 16)), 0o600); err != nil {
		t.Fatal(err)
	}
	s := startServer(t, dir, "--signing-key", filepath.Join(dir, "admin.key"), "--enroll-secret-file", secretFile)
	pwBytes, err := os.ReadFile(filepath.Join(s.state, console.PasswordFile))
	if err != nil {
		t.Fatalf("the server made no console password at first start: %v", err)
	}
	if fi, _ := os.Stat(filepath.Join(s.state, console.PasswordFile)); fi.Mode().Perm() != 0o600 {
		t.Errorf("console password file mode %v, want 0600", fi.Mode().Perm())
	}
	password := strings.TrimSpace(string(pwBytes))

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	// Two hosts: a real agent and a simulated one.
	mnt, realID := realAgent(t, s, dir, secretFile, filepath.Join(dir, "admin.pub"))
	ag := enroll(t, ctx, s, secretFile, adminPub)
	select { // the first bundle (no rule yet)
	case <-ag.got:
	case <-time.After(10 * time.Second):
		t.Fatal("the simulated agent got no bundle after enrolling")
	}
	// New code is refused on the real host and reported to the server.
	path, sha := newCode(t, mnt)
	if err := exec.Command(path).Run(); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("exec of new code on the real agent's tmpfs: %v, want EPERM", err)
	}
	other := digest(t) // for the refused POSTs
	ag.blocked(t, ctx, 1, other, "/srv/tmp/unknown-"+randHex(t, 4))

	base := "https://" + s.console
	hc := httpClient(t, s)

	// No session: no page, no action.
	resp, err := hc.Get(base + "/queue")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/login" || strings.Contains(string(body), sha) {
		t.Fatalf("GET /queue without a session: %d %q, want a redirect to /login and no data", resp.StatusCode, resp.Header.Get("Location"))
	}
	resp, err = hc.PostForm(base+"/queue/decide", url.Values{"sha256": {other}, "scope": {"global"}, "decision": {"approve"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("POST /queue/decide without a session: %d, want 401", resp.StatusCode)
	}

	// The browser.
	actx, acancel := chromedp.NewExecAllocator(ctx, append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chrome), chromedp.NoSandbox, chromedp.UserDataDir(filepath.Join(dir, "chromium")),
		chromedp.Flag("ignore-certificate-errors-spki-list", spki(t, s)))...)
	defer acancel()
	bctx, bcancel := chromedp.NewContext(actx)
	defer bcancel()
	if err := chromedp.Do(bctx, chromedp.Navigate(base+"/queue")); err != nil {
		t.Fatalf("chromium: %v", err)
	}
	loc, err := chromedp.Run(bctx, chromedp.Location())
	if err != nil || loc != base+"/login" {
		t.Fatalf("the queue without a session: at %q (%v), want the login page", loc, err)
	}
	// A wrong password is refused.
	if err := chromedp.Do(bctx,
		chromedp.SendKeys(chromedp.ID("password"), password+"-wrong"),
		chromedp.Click(chromedp.ID("login")),
		chromedp.WaitVisible(chromedp.ID("login-error")),
	); err != nil {
		t.Fatalf("wrong password: %v", err)
	}
	msg, _ := chromedp.Run(bctx, chromedp.Text(chromedp.ID("login-error")))
	if !strings.Contains(msg, "Wrong password") {
		t.Fatalf("wrong password: the page says %q", msg)
	}
	if loc, _ := chromedp.Run(bctx, chromedp.Location()); loc != base+"/login" {
		t.Fatalf("wrong password: at %q", loc)
	}
	// The right one.
	if err := chromedp.Do(bctx,
		chromedp.SendKeys(chromedp.ID("password"), password),
		chromedp.Click(chromedp.ID("login")),
		chromedp.WaitVisible(chromedp.ID("hosts")),
	); err != nil {
		t.Fatalf("login: %v", err)
	}
	hosts, _ := chromedp.Run(bctx, chromedp.Text(chromedp.ID("hosts")))
	if !strings.Contains(hosts, ag.id) || !strings.Contains(hosts, realID) || !strings.Contains(hosts, "lockdown") {
		t.Fatalf("the overview does not show the enrolled hosts %s, %s and their mode:\n%s", realID, ag.id, hosts)
	}
	cookies, err := chromedp.Call(bctx, network.GetCookies, network.GetCookiesParams{})
	if err != nil {
		t.Fatal(err)
	}
	var session *network.Cookie
	for _, c := range cookies.Cookies {
		if c.Name == console.SessionCookie {
			session = c
		}
	}
	if session == nil || !session.HTTPOnly || !session.Secure || session.SameSite != network.CookieSameSiteStrict {
		t.Fatalf("session cookie: %+v, want HttpOnly, Secure, SameSite=Strict", session)
	}

	// The queue, and the digest's row in it.
	// The agent uploads what it refused within seconds: reload the
	// queue until the row is there.
	row := chromedp.CSS(`tr[data-sha256="` + sha + `"]`)
	if err := testutil.Within(30*time.Second, 100*time.Millisecond, func() error {
		qctx, qcancel := context.WithTimeout(bctx, 3*time.Second)
		defer qcancel()
		return chromedp.Do(qctx, chromedp.Click(chromedp.ID("nav-queue")), chromedp.WaitVisible(row))
	}); err != nil {
		t.Fatalf("queue: the real agent's refused code is not listed: %v", err)
	}
	text, _ := chromedp.Run(bctx, chromedp.Text(row))
	for _, want := range []string{realID, path} {
		if !strings.Contains(text, want) {
			t.Errorf("queue row lacks %q:\n%s", want, text)
		}
	}

	// With the session but without the CSRF token: refused, nothing changes.
	req, _ := http.NewRequest("POST", base+"/queue/decide",
		strings.NewReader(url.Values{"sha256": {other}, "scope": {"global"}, "decision": {"approve"}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.AddCookie(&http.Cookie{Name: session.Name, Value: session.Value})
	if resp, err = hc.Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("POST without the CSRF token: %d, want 403", resp.StatusCode)
	}

	// One click: approve for every host.
	if err := chromedp.Do(bctx, chromedp.SetValue(chromedp.CSS(`tr[data-sha256="`+sha+`"] select[name="scope"]`), "global")); err != nil {
		t.Fatal(err)
	}
	clicked := time.Now()
	if err := chromedp.Do(bctx,
		chromedp.Click(chromedp.CSS(`tr[data-sha256="`+sha+`"] button.approve`)),
		chromedp.WaitVisible(chromedp.ID("flash")),
	); err != nil {
		t.Fatalf("approve: %v", err)
	}
	flash, _ := chromedp.Run(bctx, chromedp.Text(chromedp.ID("flash")))
	if !strings.Contains(flash, "approve "+sha+" for global") {
		t.Fatalf("after approving the page says %q", flash)
	}
	// It runs on the real host, and the simulated one has the signed
	// rule, within 10 s of the click.
	if err := testutil.Within(10*time.Second-time.Since(clicked), 100*time.Millisecond, func() error { return exec.Command(path).Run() }); err != nil {
		t.Fatalf("approved code still refused on the real agent %v after the click: %v", time.Since(clicked), err)
	}
	t.Logf("approved in the console; it ran on the real agent %v after the click", time.Since(clicked).Round(time.Millisecond))
	for ag.verdict(sha) != fleet.Allow {
		select {
		case <-ag.got:
		case <-time.After(10*time.Second - time.Since(clicked)):
			t.Fatalf("the simulated agent's verified bundle does not allow %s within 10 s of the click", sha)
		}
	}
	t.Logf("the simulated agent had the signed rule %v after the click", time.Since(clicked).Round(time.Millisecond))
	if v := ag.verdict(other); v != "" {
		t.Fatalf("the refused POST changed the agent's bundle: %s is %q", other, v)
	}
	if err := chromedp.Do(bctx, chromedp.WaitNotPresent(row), chromedp.WaitVisible(chromedp.CSS(`tr[data-sha256="`+other+`"]`))); err != nil {
		t.Fatalf("queue after approval: %v", err)
	}

	// The rules page shows the rule, its scope and its rollout.
	if err := chromedp.Do(bctx, chromedp.Click(chromedp.ID("nav-rules")), chromedp.WaitVisible(chromedp.ID("rules"))); err != nil {
		t.Fatal(err)
	}
	rules, _ := chromedp.Run(bctx, chromedp.Text(chromedp.ID("rules")))
	if !strings.Contains(rules, sha) || !strings.Contains(rules, "global") {
		t.Fatalf("rules page:\n%s", rules)
	}
	if !strings.Contains(rules, "/2 hosts") {
		t.Fatalf("rules page shows no rollout:\n%s", rules)
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatal("out of time")
	}
}

// TestConsoleAddressTaken: a --console-listen given explicitly that cannot
// be used stops the server with the reason (no silent server without its
// console).
func TestConsoleAddressTaken(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, vigilBin(t), "server", "--listen", freeAddr(t), "--state-dir", filepath.Join(dir, "state"),
		"--admin-socket", filepath.Join(dir, "admin.sock"), "--console-listen", ln.Addr().String()).CombinedOutput()
	if err == nil || ctx.Err() != nil {
		t.Fatalf("vigil server with its console address taken: %v (ctx %v), want it to exit with an error\n%s", err, ctx.Err(), out)
	}
	if !strings.Contains(string(out), "console cannot listen") {
		t.Fatalf("vigil server's error does not say why:\n%s", out)
	}
}
