package console_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	fleetv1 "github.com/vigil-hips/vigil/api/vigil/fleet/v1"
	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/fleet"
	"github.com/vigil-hips/vigil/internal/fleet/console"
	"github.com/vigil-hips/vigil/internal/fleet/fleetdb"
	"github.com/vigil-hips/vigil/internal/fleet/fleetsrv"
	"github.com/vigil-hips/vigil/internal/sign"
)

// env is a real fleet server (SQLite in a temporary directory, online
// signing) with the console in front of it.
type env struct {
	t     *testing.T
	srv   *fleetsrv.Server
	db    *fleetdb.SQLite
	admin fleetv1.FleetAdminClient
	pub   []byte
	con   *console.Console
	ts    *httptest.Server
	pw    string
	clock *clock
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func randHex(t *testing.T, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	ca, _, err := fleet.LoadOrCreateCA(dir, "test CA")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.ServerCert([]string{"127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	pub, priv, err := sign.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	db, err := fleetdb.OpenSQLite(ctx, filepath.Join(dir, fleetdb.FileName))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	srv, err := fleetsrv.New(fleetsrv.Config{Store: db, Sink: db, CA: ca, Cert: cert, SigningKey: priv})
	if err != nil {
		t.Fatal(err)
	}
	admin, stop, err := console.InProcess(srv.AdminGRPCServer())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	e := &env{t: t, srv: srv, db: db, admin: admin, pub: pub, pw: "pw-" + randHex(t, 12),
		clock: &clock{t: time.Now()}}
	e.con, err = console.New(console.Config{Admin: admin, Password: e.pw, Now: e.clock.now})
	if err != nil {
		t.Fatal(err)
	}
	e.ts = httptest.NewTLSServer(e.con)
	t.Cleanup(e.ts.Close)
	return e
}

// enroll enrolls a host through the Fleet service.
func (e *env) enroll(id, hostname string, tags ...string) {
	e.t.Helper()
	ctx := context.Background()
	secret := "secret-" + randHex(e.t, 12)
	if err := e.srv.AddSecret(ctx, "test", secret); err != nil {
		e.t.Fatal(err)
	}
	_, pub, err := fleet.NewHostKey()
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.srv.Enroll(ctx, &fleetv1.EnrollRequest{Secret: secret, HostId: id, Hostname: hostname, Tags: tags, PublicKey: pub}); err != nil {
		e.t.Fatal(err)
	}
}

// unknownExec uploads, as host, an exec of unknown code: it joins the
// approval queue.
func (e *env) unknownExec(host string, id uint64, sha, path string, refused bool, at time.Time) {
	e.t.Helper()
	ev := &vigilv1.Event{Id: id, Seq: id, Time: timestamppb.New(at), Kind: "exec", Backend: "tracepoint",
		Process: &vigilv1.Process{Pid: 4242, Exe: path},
		Detail:  &vigilv1.Event_Exec{Exec: &vigilv1.Exec{File: &vigilv1.File{Path: path}, Filename: path}},
		Trust:   &vigilv1.Trust{Sha256: sha, Verdict: "unknown", Mode: "lockdown"},
		Verdict: &vigilv1.Verdict{Action: "deny", Mode: "enforce", DecidedBy: "fanotify", Refused: refused}}
	if _, err := e.db.Append(context.Background(), fleetdb.Upload{Host: host, AfterID: id - 1, ThroughID: id, Events: []*vigilv1.Event{ev}}); err != nil {
		e.t.Fatal(err)
	}
}

// browser is an HTTP client with a cookie jar.
type browser struct {
	t *testing.T
	e *env
	c *http.Client
}

func (e *env) browser() *browser {
	jar, _ := cookiejar.New(nil)
	c := *e.ts.Client() // a copy: its own jar
	c.Jar = jar
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &browser{t: e.t, e: e, c: &c}
}

func (b *browser) do(method, path string, form url.Values) (int, http.Header, string) {
	b.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, b.e.ts.URL+path, body)
	if err != nil {
		b.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(out)
}

var csrfRe = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func csrfOf(t *testing.T, page string) string {
	t.Helper()
	m := csrfRe.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no CSRF token in the page:\n%s", page)
	}
	return m[1]
}

// login logs in and returns the session's CSRF token.
func (b *browser) login(password string) (int, string) {
	b.t.Helper()
	code, _, page := b.do("GET", "/login", nil)
	if code != http.StatusOK {
		b.t.Fatalf("GET /login: %d", code)
	}
	code, _, _ = b.do("POST", "/login", url.Values{"csrf": {csrfOf(b.t, page)}, "password": {password}})
	if code != http.StatusSeeOther {
		return code, ""
	}
	code, _, page = b.do("GET", "/", nil)
	if code != http.StatusOK {
		b.t.Fatalf("GET / after login: %d", code)
	}
	return http.StatusSeeOther, csrfOf(b.t, page)
}

func TestNoAnonymousAccess(t *testing.T) {
	e := newEnv(t)
	e.enroll("h1", "one")
	b := e.browser()
	for _, p := range []string{"/", "/hosts/h1", "/events", "/queue", "/rules"} {
		code, hdr, body := b.do("GET", p, nil)
		if code != http.StatusSeeOther || hdr.Get("Location") != "/login" {
			t.Errorf("GET %s without a session: %d %q, want a redirect to /login", p, code, hdr.Get("Location"))
		}
		if strings.Contains(body, "h1") {
			t.Errorf("GET %s without a session shows fleet data: %s", p, body)
		}
	}
	for _, p := range []string{"/queue/decide", "/rules", "/rules/1/delete", "/rules/1/promote", "/hosts/h1/tags", "/hosts/h1/revoke", "/logout"} {
		if code, _, _ := b.do("POST", p, url.Values{"csrf": {"x"}}); code != http.StatusUnauthorized {
			t.Errorf("POST %s without a session: %d, want 401", p, code)
		}
	}
	// The static files are there (the login page needs them), without a listing.
	if code, hdr, body := b.do("GET", "/static/console.css", nil); code != http.StatusOK || !strings.HasPrefix(hdr.Get("Content-Type"), "text/css") || !strings.Contains(body, "body") {
		t.Errorf("GET /static/console.css: %d %q", code, hdr.Get("Content-Type"))
	}
	if code, _, _ := b.do("GET", "/static/", nil); code != http.StatusNotFound {
		t.Errorf("GET /static/: %d, want 404 (no listing)", code)
	}
	// A made-up session cookie is no session.
	u, _ := url.Parse(e.ts.URL)
	b.c.Jar.SetCookies(u, []*http.Cookie{{Name: console.SessionCookie, Value: randHex(t, 32)}})
	if code, _, _ := b.do("GET", "/queue", nil); code != http.StatusSeeOther {
		t.Errorf("GET /queue with a forged session cookie: %d, want a redirect", code)
	}
}

func TestLogin(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	if code, _ := b.login(e.pw + "x"); code != http.StatusUnauthorized {
		t.Fatalf("wrong password: %d, want 401", code)
	}
	if code, _, _ := b.do("GET", "/", nil); code != http.StatusSeeOther {
		t.Fatalf("after a wrong password the overview answered %d", code)
	}
	// The login form has its own CSRF token.
	if code, _, _ := b.do("POST", "/login", url.Values{"password": {e.pw}}); code != http.StatusForbidden {
		t.Fatalf("login without its CSRF token: %d, want 403", code)
	}
	code, csrf := b.login(e.pw)
	if code != http.StatusSeeOther || csrf == "" {
		t.Fatalf("right password: %d", code)
	}
	// The session cookie's attributes.
	code, hdr, _ := e.browser().doLoginRaw(t, e.pw)
	if code != http.StatusSeeOther {
		t.Fatalf("login: %d", code)
	}
	var found bool
	for _, sc := range hdr.Values("Set-Cookie") {
		if strings.HasPrefix(sc, console.SessionCookie+"=") {
			found = true
			for _, attr := range []string{"HttpOnly", "Secure", "SameSite=Strict", "Path=/"} {
				if !strings.Contains(sc, attr) {
					t.Errorf("session cookie %q lacks %s", sc, attr)
				}
			}
		}
	}
	if !found {
		t.Fatalf("no session cookie set: %v", hdr.Values("Set-Cookie"))
	}
	// Log out: the session is gone.
	if code, _, body := b.do("POST", "/logout", url.Values{"csrf": {csrf}}); code != http.StatusSeeOther {
		t.Fatalf("logout: %d %s", code, body)
	}
	if code, _, _ := b.do("GET", "/", nil); code != http.StatusSeeOther {
		t.Fatalf("after logout the overview answered %d", code)
	}
}

// doLoginRaw logs in and returns the POST's response.
func (b *browser) doLoginRaw(t *testing.T, pw string) (int, http.Header, string) {
	_, _, page := b.do("GET", "/login", nil)
	return b.do("POST", "/login", url.Values{"csrf": {csrfOf(t, page)}, "password": {pw}})
}

func TestLoginThrottled(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	for i := range 5 {
		if code, _ := b.login("wrong-password-" + fmt.Sprint(i)); code != http.StatusUnauthorized {
			t.Fatalf("attempt %d: %d", i, code)
		}
	}
	if code, _ := b.login(e.pw); code != http.StatusTooManyRequests {
		t.Fatalf("6th attempt within a minute (right password): %d, want 429", code)
	}
	e.clock.add(61 * time.Second)
	if code, _ := b.login(e.pw); code != http.StatusSeeOther {
		t.Fatalf("after the window: %d, want a login", code)
	}
}

func TestSessionExpires(t *testing.T) {
	e := newEnv(t)
	b := e.browser()
	if code, _ := b.login(e.pw); code != http.StatusSeeOther {
		t.Fatal("login failed")
	}
	e.clock.add(20 * time.Minute)
	if code, _, _ := b.do("GET", "/", nil); code != http.StatusOK {
		t.Fatalf("session used within its idle time: %d", code)
	}
	e.clock.add(31 * time.Minute)
	if code, _, _ := b.do("GET", "/", nil); code != http.StatusSeeOther {
		t.Fatalf("idle session still valid: %d", code)
	}
}

func bundleDigests(t *testing.T, e *env, host string) map[string]string {
	t.Helper()
	st, err := e.db.Bundle(context.Background(), host)
	if err != nil {
		t.Fatal(err)
	}
	if st.Envelope == nil {
		return nil
	}
	b, err := fleet.Verifier{Key: e.pub, Host: host}.Verify(context.Background(), st.Envelope, 0)
	if err != nil {
		t.Fatalf("host %s's bundle does not verify: %v", host, err)
	}
	out := map[string]string{}
	for _, h := range b.Hashes {
		out[h.SHA256] = h.Verdict
	}
	return out
}

func TestApproveFromQueue(t *testing.T) {
	e := newEnv(t)
	e.enroll("h1", "one", "web")
	e.enroll("h2", "two", "db")
	sum := sha256.Sum256([]byte(randHex(t, 16)))
	sha := hex.EncodeToString(sum[:])
	path := "/tmp/unknown-" + randHex(t, 4)
	e.unknownExec("h1", 1, sha, path, true, time.Now())

	b := e.browser()
	_, csrf := b.login(e.pw)
	code, _, page := b.do("GET", "/queue", nil)
	if code != http.StatusOK || !strings.Contains(page, sha) || !strings.Contains(page, path) {
		t.Fatalf("queue page (%d) lacks %s or %s:\n%s", code, sha, path, page)
	}
	for _, scope := range []string{"global", "host:h1", "tag:web"} {
		if !strings.Contains(page, "<option>"+scope+"</option>") {
			t.Errorf("queue page offers no scope %s", scope)
		}
	}
	// A POST without the CSRF token, or with another one, changes nothing.
	for _, tok := range []string{"", "x" + csrf[1:]} {
		code, _, _ = b.do("POST", "/queue/decide", url.Values{"csrf": {tok}, "sha256": {sha}, "scope": {"global"}, "decision": {"approve"}})
		if code != http.StatusForbidden {
			t.Fatalf("decide with CSRF token %q: %d, want 403", tok, code)
		}
	}
	rules, err := e.admin.ListRules(context.Background(), &fleetv1.ListRulesRequest{})
	if err != nil || len(rules.GetRules()) != 0 {
		t.Fatalf("rules after refused POSTs: %v %v", rules.GetRules(), err)
	}
	// A cross-site POST is refused even with the token.
	req, _ := http.NewRequest("POST", e.ts.URL+"/queue/decide", strings.NewReader(url.Values{"csrf": {csrf}, "sha256": {sha},
		"scope": {"global"}, "decision": {"approve"}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Sec-Fetch-Site", "cross-site")
	resp, err := b.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("cross-site POST: %d, want 403", resp.StatusCode)
	}

	// Approve for tag:web: h1 gets it, h2 does not.
	code, hdr, _ := b.do("POST", "/queue/decide", url.Values{"csrf": {csrf}, "sha256": {sha}, "scope": {"tag:web"}, "decision": {"approve"}})
	if code != http.StatusSeeOther || hdr.Get("Location") != "/queue" {
		t.Fatalf("approve: %d %q", code, hdr.Get("Location"))
	}
	if got := bundleDigests(t, e, "h1")[sha]; got != fleet.Allow {
		t.Fatalf("h1's bundle: %s is %q, want allow", sha, got)
	}
	if got, ok := bundleDigests(t, e, "h2")[sha]; ok {
		t.Fatalf("h2 (not tagged web) got %s: %q", sha, got)
	}
	code, _, page = b.do("GET", "/queue", nil)
	if code != http.StatusOK || strings.Contains(page, `data-sha256="`+sha) || !strings.Contains(page, "approve "+sha+" for tag:web") {
		t.Fatalf("queue after approval (%d): want the digest gone and the outcome shown:\n%s", code, page)
	}
	// The rules page shows it with its scope.
	code, _, page = b.do("GET", "/rules", nil)
	if code != http.StatusOK || !strings.Contains(page, sha) || !strings.Contains(page, "tag:web") {
		t.Fatalf("rules page (%d) lacks the rule:\n%s", code, page)
	}

	// Deny another digest globally: every host's bundle denies it.
	sum2 := sha256.Sum256([]byte(randHex(t, 16)))
	sha2 := hex.EncodeToString(sum2[:])
	e.unknownExec("h2", 1, sha2, "/tmp/x", false, time.Now())
	code, _, _ = b.do("POST", "/queue/decide", url.Values{"csrf": {csrf}, "sha256": {sha2}, "scope": {"global"}, "decision": {"deny"}})
	if code != http.StatusSeeOther {
		t.Fatalf("deny: %d", code)
	}
	for _, h := range []string{"h1", "h2"} {
		if got := bundleDigests(t, e, h)[sha2]; got != fleet.Deny {
			t.Fatalf("%s's bundle: %s is %q, want deny", h, sha2, got)
		}
	}
	// A bad decision is an error shown to the user, not a rule.
	code, _, _ = b.do("POST", "/queue/decide", url.Values{"csrf": {csrf}, "sha256": {"not-a-digest"}, "scope": {"global"}, "decision": {"approve"}})
	if code != http.StatusSeeOther {
		t.Fatalf("bad digest: %d", code)
	}
	_, _, page = b.do("GET", "/queue", nil)
	if !strings.Contains(page, `class="flash bad"`) {
		t.Fatalf("bad digest: no error shown:\n%s", page)
	}
}

func TestRulesAndHosts(t *testing.T) {
	e := newEnv(t)
	e.enroll("h1", "one")
	b := e.browser()
	_, csrf := b.login(e.pw)
	sum := sha256.Sum256([]byte(randHex(t, 16)))
	sha := hex.EncodeToString(sum[:])
	code, _, _ := b.do("POST", "/rules", url.Values{"csrf": {csrf}, "kind": {"sha256"}, "value": {sha}, "verdict": {"deny"}, "scope": {"host:h1"}})
	if code != http.StatusSeeOther {
		t.Fatalf("add rule: %d", code)
	}
	if got := bundleDigests(t, e, "h1")[sha]; got != fleet.Deny {
		t.Fatalf("h1's bundle: %q", got)
	}
	_, _, page := b.do("GET", "/hosts/h1", nil)
	if !strings.Contains(page, sha[:16]) {
		t.Fatalf("host page lacks its rule:\n%s", page)
	}
	// Bad scope: refused with the API's reason.
	code, _, _ = b.do("POST", "/rules", url.Values{"csrf": {csrf}, "kind": {"sha256"}, "value": {sha}, "verdict": {"allow"}, "scope": {"planet:mars"}})
	_, _, page = b.do("GET", "/rules", nil)
	if code != http.StatusSeeOther || !strings.Contains(page, `class="flash bad"`) {
		t.Fatalf("bad scope (%d) not reported:\n%s", code, page)
	}
	rules, _ := e.admin.ListRules(context.Background(), &fleetv1.ListRulesRequest{})
	if len(rules.GetRules()) != 1 {
		t.Fatalf("rules: %v", rules.GetRules())
	}
	// Delete it.
	id := rules.GetRules()[0].GetId()
	if code, _, _ := b.do("POST", fmt.Sprintf("/rules/%d/delete", id), url.Values{"csrf": {csrf}}); code != http.StatusSeeOther {
		t.Fatalf("delete: %d", code)
	}
	if _, ok := bundleDigests(t, e, "h1")[sha]; ok {
		t.Fatal("deleted rule still in h1's bundle")
	}
	// Tags and revocation.
	if code, _, _ := b.do("POST", "/hosts/h1/tags", url.Values{"csrf": {csrf}, "add": {"web, prod"}}); code != http.StatusSeeOther {
		t.Fatalf("tag: %d", code)
	}
	hs, _ := e.admin.ListHosts(context.Background(), &fleetv1.ListHostsRequest{})
	if got := strings.Join(hs.GetHosts()[0].GetTags(), ","); got != "prod,web" && got != "web,prod" {
		t.Fatalf("tags: %q", got)
	}
	b.do("POST", "/hosts/h1/revoke", url.Values{"csrf": {csrf}, "confirm": {"wrong"}})
	if hs, _ = e.admin.ListHosts(context.Background(), &fleetv1.ListHostsRequest{}); hs.GetHosts()[0].GetRevoked() {
		t.Fatal("revoked without confirmation")
	}
	b.do("POST", "/hosts/h1/revoke", url.Values{"csrf": {csrf}, "confirm": {"h1"}})
	if hs, _ = e.admin.ListHosts(context.Background(), &fleetv1.ListHostsRequest{}); !hs.GetHosts()[0].GetRevoked() {
		t.Fatal("not revoked")
	}
	if code, _, _ := b.do("GET", "/hosts/nosuch", nil); code != http.StatusNotFound {
		t.Fatalf("unknown host page: %d", code)
	}
}

func TestEscaping(t *testing.T) {
	e := newEnv(t)
	marker := "m" + randHex(t, 6)
	evil := `<script>alert("` + marker + `")</script>`
	e.enroll("h1", evil)
	e.unknownExec("h1", 1, hex.EncodeToString(make([]byte, 32)), "/tmp/"+evil, true, time.Now())
	b := e.browser()
	b.login(e.pw)
	for _, p := range []string{"/", "/hosts/h1", "/events", "/queue"} {
		_, hdr, page := b.do("GET", p, nil)
		if strings.Contains(page, `<script>alert("`+marker) {
			t.Errorf("%s: the hostname is not escaped", p)
		}
		if !strings.Contains(page, marker) {
			t.Errorf("%s: the hostname is not shown at all", p)
		}
		if csp := hdr.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") {
			t.Errorf("%s: CSP %q", p, csp)
		}
	}
}

func TestPagination(t *testing.T) {
	e := newEnv(t)
	for i := range 120 {
		e.enroll(fmt.Sprintf("host-%03d", i), "")
	}
	b := e.browser()
	b.login(e.pw)
	rows := regexp.MustCompile(`<a href="/hosts/host-\d+">`)
	for page, want := range map[string]int{"": 50, "?page=2": 50, "?page=3": 20, "?page=99": 20} {
		_, _, body := b.do("GET", "/"+page, nil)
		if got := len(rows.FindAllString(body, -1)); got != want {
			t.Errorf("page %q: %d rows, want %d", page, got, want)
		}
	}
	_, _, body := b.do("GET", "/?page=3", nil)
	if !strings.Contains(body, "host-119") || strings.Contains(body, "host-099") {
		t.Error("page 3 shows the wrong hosts")
	}
}

func TestEventFilters(t *testing.T) {
	e := newEnv(t)
	e.enroll("h1", "one")
	e.enroll("h2", "two")
	base := time.Date(2026, 1, 2, 10, 0, 0, 0, time.UTC)
	mk := func(i int) string {
		s := sha256.Sum256([]byte(fmt.Sprint(i, randHex(t, 4))))
		return hex.EncodeToString(s[:])
	}
	shas := []string{mk(0), mk(1), mk(2)}
	e.unknownExec("h1", 1, shas[0], "/a", true, base)                  // refused
	e.unknownExec("h1", 2, shas[1], "/b", false, base.Add(time.Hour))  // would-block
	e.unknownExec("h2", 1, shas[2], "/c", true, base.Add(2*time.Hour)) // refused, other host
	b := e.browser()
	b.login(e.pw)
	for _, c := range []struct {
		q    string
		want []int
	}{
		{"", []int{0, 1, 2}},
		{"?host=h1", []int{0, 1}},
		{"?verdict=refused", []int{0, 2}},
		{"?verdict=would-block", []int{1}},
		{"?kind=fork", nil},
		{"?since=2026-01-02T10:30", []int{1, 2}},
		{"?until=2026-01-02T11:30", []int{0, 1}},
		{"?host=h1&verdict=refused&kind=exec", []int{0}},
	} {
		code, _, page := b.do("GET", "/events"+c.q, nil)
		if code != http.StatusOK {
			t.Fatalf("%s: %d", c.q, code)
		}
		for i, s := range shas {
			want := false
			for _, w := range c.want {
				want = want || w == i
			}
			if got := strings.Contains(page, `title="`+s+`"`); got != want {
				t.Errorf("events%s: event %d shown %v, want %v", c.q, i, got, want)
			}
		}
	}
	_, _, page := b.do("GET", "/events?since=yesterday", nil)
	if !strings.Contains(page, `id="filter-error"`) {
		t.Error("a bad time is not reported")
	}
}

func TestPasswordFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, console.PasswordFile)
	if _, _, err := console.LoadOrCreatePassword(p, false); err == nil {
		t.Fatal("a missing password file without create is not an error")
	}
	pw, created, err := console.LoadOrCreatePassword(p, true)
	if err != nil || !created || len(pw) < 20 {
		t.Fatalf("create: %q %v %v", pw, created, err)
	}
	fi, err := filepathStat(p)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode: %v %v", fi, err)
	}
	again, created, err := console.LoadOrCreatePassword(p, true)
	if err != nil || created || again != pw {
		t.Fatalf("second start: %q %v %v, want the same password", again, created, err)
	}
	short := filepath.Join(dir, "short")
	writeFile(t, short, "abc\n")
	if _, _, err := console.LoadOrCreatePassword(short, false); err == nil || !strings.Contains(err.Error(), "shorter") {
		t.Fatalf("short password: %v", err)
	}
	if _, err := console.New(console.Config{Password: "x"}); err == nil {
		t.Fatal("console with no API and a short password")
	}
}

// TestRolloutFromConsole: a hash deny added as a preview for the canary
// tag reaches only the canary host, as a would-be deny; the rules page
// shows the stage and the chosen hosts; Promote makes it staged (a deny)
// and then full (every host in scope).
func TestRolloutFromConsole(t *testing.T) {
	e := newEnv(t)
	e.enroll("h1", "one", "canary")
	e.enroll("h2", "two")
	b := e.browser()
	_, csrf := b.login(e.pw)
	sum := sha256.Sum256([]byte(randHex(t, 16)))
	sha := hex.EncodeToString(sum[:])
	hashOf := func(host string) (fleet.HashRule, bool) {
		t.Helper()
		st, err := e.db.Bundle(context.Background(), host)
		if err != nil || st.Envelope == nil {
			t.Fatalf("%s: bundle: %v", host, err)
		}
		bu, err := fleet.Verifier{Key: e.pub, Host: host}.Verify(context.Background(), st.Envelope, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range bu.Hashes {
			if h.SHA256 == sha {
				return h, true
			}
		}
		return fleet.HashRule{}, false
	}
	code, _, _ := b.do("POST", "/rules", url.Values{"csrf": {csrf}, "kind": {"sha256"}, "value": {sha}, "verdict": {"deny"}, "scope": {"global"},
		"stage": {"preview"}, "percent": {"0"}, "rollout_tag": {"canary"}})
	if code != http.StatusSeeOther {
		t.Fatalf("add rule: %d", code)
	}
	if h, ok := hashOf("h1"); !ok || h.Mode != fleet.Monitor || h.Verdict != fleet.Deny {
		t.Fatalf("canary host in preview: %+v %v, want a would-be deny", h, ok)
	}
	if h, ok := hashOf("h2"); ok {
		t.Fatalf("host outside the preview got %+v", h)
	}
	_, _, page := b.do("GET", "/rules", nil)
	if !strings.Contains(page, "preview tag:canary") || !strings.Contains(page, "1/2") || !strings.Contains(page, "/promote") {
		t.Fatalf("rules page lacks the rollout state:\n%s", page)
	}
	rules, _ := e.admin.ListRules(context.Background(), &fleetv1.ListRulesRequest{})
	id := rules.GetRules()[0].GetId()
	if code, _, _ := b.do("POST", fmt.Sprintf("/rules/%d/promote", id), url.Values{"csrf": {csrf}}); code != http.StatusSeeOther {
		t.Fatalf("promote: %d", code)
	}
	if h, ok := hashOf("h1"); !ok || h.Mode != "" {
		t.Fatalf("canary host when staged: %+v %v, want the deny as written", h, ok)
	}
	if _, ok := hashOf("h2"); ok {
		t.Fatal("host outside the rollout got the staged rule")
	}
	b.do("POST", fmt.Sprintf("/rules/%d/promote", id), url.Values{"csrf": {csrf}})
	if h, ok := hashOf("h2"); !ok || h.Mode != "" || h.Verdict != fleet.Deny {
		t.Fatalf("after promotion to full, h2: %+v %v", h, ok)
	}
	if _, _, page = b.do("GET", "/rules", nil); strings.Contains(page, "/promote") {
		t.Fatal("a fully rolled out rule still offers Promote")
	}
	// Promote without a CSRF token: refused.
	if code, _, _ := b.do("POST", fmt.Sprintf("/rules/%d/promote", id), url.Values{}); code == http.StatusSeeOther {
		t.Fatal("promote without CSRF accepted")
	}
}

// TestApproveSignerFromQueue: a queue row whose code hosts reported as
// listed by a catalog signer has an "Approve signer" button; the pasted key
// must be that signer's; approving puts the signer in the scoped hosts'
// verified bundles and takes every digest it lists off the queue.
func TestApproveSignerFromQueue(t *testing.T) {
	e := newEnv(t)
	e.enroll("h1", "one", "web")
	e.enroll("h2", "two", "db")
	pub, _, err := sign.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	pem, _ := sign.MarshalPublicKey(pub)
	keyID, _ := sign.KeyID(pub)
	otherPub, _, _ := sign.GenerateKey()
	otherPEM, _ := sign.MarshalPublicKey(otherPub)
	shas := make([]string, 3)
	for i := range shas {
		sum := sha256.Sum256([]byte(randHex(t, 16)))
		shas[i] = hex.EncodeToString(sum[:])
	}
	// shas[0] (h1) and shas[1] (h2) are listed by keyID; shas[2] by none.
	for i, host := range []string{"h1", "h2", "h1"} {
		ev := &vigilv1.Event{Id: uint64(i + 1), Seq: uint64(i + 1), Time: timestamppb.Now(), Kind: "exec",
			Process: &vigilv1.Process{Pid: 7, Exe: "/tmp/t"},
			Trust:   &vigilv1.Trust{Sha256: shas[i], Verdict: "unknown", Mode: "lockdown"},
			Verdict: &vigilv1.Verdict{Action: "deny", Refused: true}}
		if i < 2 {
			ev.Trust.CatalogSigners = []string{keyID}
		}
		if _, err := e.db.Append(context.Background(), fleetdb.Upload{Host: host, AfterID: uint64(i), ThroughID: uint64(i + 1), Events: []*vigilv1.Event{ev}}); err != nil {
			t.Fatal(err)
		}
	}
	b := e.browser()
	_, csrf := b.login(e.pw)
	code, _, page := b.do("GET", "/queue", nil)
	if code != http.StatusOK || strings.Count(page, `<button type="submit" class="approve-signer">Approve signer</button>`) != 2 || strings.Count(html.UnescapeString(page), `<span class="mono">`+keyID+`</span>`) != 2 || strings.Count(page, "Approve signer") != 2 {
		t.Fatalf("queue page (%d): want an Approve signer button on the two rows %s lists:\n%s", code, keyID, page)
	}
	// Another key than the one listed is refused: no rule.
	code, _, _ = b.do("POST", "/queue/signer", url.Values{"csrf": {csrf}, "signer": {keyID}, "signer_key": {string(otherPEM)}, "scope": {"tag:web"}})
	if code != http.StatusSeeOther {
		t.Fatalf("approve with another key: %d", code)
	}
	if rs, _ := e.admin.ListRules(context.Background(), &fleetv1.ListRulesRequest{}); len(rs.GetRules()) != 0 {
		t.Fatalf("a mismatched key made rules: %v", rs.GetRules())
	}
	if _, _, page = b.do("GET", "/queue", nil); !strings.Contains(page, `class="flash bad"`) {
		t.Fatalf("mismatched key: no error shown:\n%s", page)
	}
	code, _, _ = b.do("POST", "/queue/signer", url.Values{"csrf": {csrf}, "signer": {keyID}, "signer_key": {string(pem)}, "scope": {"tag:web"}})
	if code != http.StatusSeeOther {
		t.Fatalf("approve signer: %d", code)
	}
	signers := func(host string) []string {
		st, err := e.db.Bundle(context.Background(), host)
		if err != nil || st.Envelope == nil {
			t.Fatalf("host %s's bundle: %v", host, err)
		}
		bu, err := fleet.Verifier{Key: e.pub, Host: host}.Verify(context.Background(), st.Envelope, 0)
		if err != nil {
			t.Fatalf("host %s's bundle does not verify: %v", host, err)
		}
		var out []string
		for _, s := range bu.Signers {
			out = append(out, s.PublicKey)
		}
		return out
	}
	if got := signers("h1"); len(got) != 1 || got[0] != string(pem) {
		t.Fatalf("h1's bundle signers: %v, want the approved key", got)
	}
	if got := signers("h2"); len(got) != 0 {
		t.Fatalf("h2 (not tagged web) got signers %v", got)
	}
	code, _, page = b.do("GET", "/queue", nil)
	if code != http.StatusOK || strings.Contains(page, `data-sha256="`+shas[0]) || strings.Contains(page, `data-sha256="`+shas[1]) ||
		!strings.Contains(page, `data-sha256="`+shas[2]) || !strings.Contains(html.UnescapeString(page), "approve signer "+keyID+" for tag:web") {
		t.Fatalf("queue after approving the signer (%d): want both listed digests gone, the other kept, the outcome shown:\n%s", code, page)
	}
}
