package filter

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/sign"
)

func TestConfigSignAndLoad(t *testing.T) {
	ctx := context.Background()
	pub, priv, _ := sign.GenerateKey()
	otherPub, _, _ := sign.GenerateKey()
	cfg := Config{Clients: []ClientConfig{{Name: "scanner", SHA256: strings.Repeat("ab", 32), MissMode: FailClosed}}}
	b, err := SignConfig(ctx, priv, cfg)
	if err != nil {
		t.Fatal(err)
	}
	path := t.TempDir() + "/clients.json"
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := LoadConfig(ctx, path, pub)
	if err != nil || len(got.Clients) != 1 || got.Clients[0].MaxMisses != DefaultMaxMisses || got.Clients[0].Deadline() != DefaultDeadline {
		t.Fatalf("LoadConfig: %+v, %v", got, err)
	}
	if _, err := LoadConfig(ctx, path, otherPub); err == nil || !strings.Contains(err.Error(), "not signed by the admin key") {
		t.Fatalf("another key: %v", err)
	}
	for _, bad := range []ClientConfig{
		{Name: "x"},
		{Name: "x", SHA256: "abc"},
		{Name: "x", SHA256: strings.Repeat("ab", 32), MissMode: "sometimes"},
		{Name: "x", SHA256: strings.Repeat("ab", 32), CatalogSigner: "SHA256:k"},
	} {
		if _, err := SignConfig(ctx, priv, Config{Clients: []ClientConfig{bad}}); err == nil {
			t.Errorf("config %+v accepted", bad)
		}
	}
}

// fakeClient registers a client whose answers come from answer (nil: it
// never answers).
func fakeClient(t *testing.T, s *Server, name string, alt uint32, cfg ClientConfig, answer func(*vigilv1.AuthRequest) *vigilv1.AuthReply) *client {
	t.Helper()
	return fakeAuthClient(t, s, name, alt, 0, cfg, &vigilv1.Subscription{Type: "auth", Kinds: []string{"exec"}}, answer)
}

// fakeAuthClient registers a client of process pid with one auth
// subscription.
func fakeAuthClient(t *testing.T, s *Server, name string, alt uint32, pid int32, cfg ClientConfig, sub *vigilv1.Subscription, answer func(*vigilv1.AuthRequest) *vigilv1.AuthReply) *client {
	t.Helper()
	cfg.Name = name
	c := &client{name: name, altitude: alt, pid: pid, cfg: cfg, out: make(chan *vigilv1.ServerMessage, 16), kick: make(chan string, 1), gone: make(chan struct{}),
		pending: map[uint64]chan *vigilv1.AuthReply{}, cache: map[string]bool{}, rules: map[string][]byte{},
		auth: []*vigilv1.Subscription{sub}}
	if err := s.register(c); err != nil {
		t.Fatal(err)
	}
	go func() {
		for m := range c.out {
			if req := m.GetAuth(); req != nil && answer != nil {
				if r := answer(req); r != nil {
					s.handle(c, &vigilv1.ClientMessage{Msg: &vigilv1.ClientMessage_AuthReply{AuthReply: r}})
				}
			}
		}
	}()
	t.Cleanup(func() { close(c.out) })
	return c
}

func execEvent(path string) *vigilv1.Event {
	return &vigilv1.Event{Kind: "exec", Detail: &vigilv1.Event_Exec{Exec: &vigilv1.Exec{File: &vigilv1.File{Path: path}}}}
}

func TestAuthorize(t *testing.T) {
	s := NewServer(Options{})
	allow := func(r *vigilv1.AuthRequest) *vigilv1.AuthReply {
		return &vigilv1.AuthReply{Id: r.Id, Allow: true, Cacheable: true}
	}
	denyBad := func(r *vigilv1.AuthRequest) *vigilv1.AuthReply {
		return &vigilv1.AuthReply{Id: r.Id, Allow: !strings.Contains(r.Event.GetExec().GetFile().GetPath(), "bad"), Reason: "bad"}
	}
	cfg := ClientConfig{DeadlineMS: 50, MissMode: FailOpen, MaxMisses: 2}
	fakeClient(t, s, "low", 10, cfg, allow)
	fakeClient(t, s, "high", 200, cfg, denyBad)

	d := s.Authorize(execEvent("/x/good"), "k1")
	if vs := d.Clients; !d.Allow || len(vs) != 2 || vs[0].Client != "high@200" || vs[1].Client != "low@10" {
		t.Fatalf("allow round: %+v", d)
	}
	if d.Cacheable {
		t.Fatal("high's allow was not cacheable, the decision is")
	}
	d = s.Authorize(execEvent("/x/bad"), "k2")
	if vs := d.Clients; d.Allow || d.Cacheable || len(vs) != 1 || vs[0].Answer != "deny" || vs[0].Reason != "bad" {
		t.Fatalf("deny ends the round: %+v", d)
	}
	// low's allow of k1 was cacheable.
	d = s.Authorize(execEvent("/x/good"), "k1")
	if vs := d.Clients; vs[1].Answer != "cached" || vs[0].Answer != "allow" {
		t.Fatalf("cached: %v", vs)
	}
}

func TestAuthorizeMisses(t *testing.T) {
	s := NewServer(Options{})
	closed := fakeClient(t, s, "silent", 5, ClientConfig{DeadlineMS: 30, MissMode: FailClosed, MaxMisses: 2}, nil)
	start := time.Now()
	d := s.Authorize(execEvent("/x"), "")
	if took := time.Since(start); d.Allow || d.Clients[0].Answer != "missed" || d.Clients[0].Applied != "deny" || took > 500*time.Millisecond {
		t.Fatalf("fail-closed miss: %+v after %v", d, took)
	}
	s.Authorize(execEvent("/x"), "")
	select {
	case why := <-closed.kick:
		if !strings.Contains(why, "missed 2 deadlines") {
			t.Fatalf("disconnect reason %q", why)
		}
	default:
		t.Fatal("a client missing max_misses deadlines in a row is not disconnected")
	}
	s.unregister(closed)

	// Gone in the middle of a decision: answered at once by the miss mode.
	gone := fakeClient(t, s, "gone", 6, ClientConfig{DeadlineMS: 5000, MissMode: FailOpen, MaxMisses: 3}, nil)
	go func() { time.Sleep(50 * time.Millisecond); s.unregister(gone) }()
	start = time.Now()
	d = s.Authorize(execEvent("/x"), "")
	if took := time.Since(start); !d.Allow || d.Clients[0].Answer != "gone" || took > time.Second {
		t.Fatalf("gone: %+v after %v", d, took)
	}
}

func TestSubscriptionsAndMutes(t *testing.T) {
	subs := []*vigilv1.Subscription{{Kinds: []string{"exec"}, PathPrefix: []string{"/srv/"}}}
	if !matches(subs, "exec", "/bin/sh", "/srv/app") || matches(subs, "exec", "/bin/sh", "/srvx") || matches(subs, "fork", "", "/srv/a") {
		t.Fatal("matches")
	}
	c := &client{mutes: &vigilv1.Mute{Exe: []string{"/usr/bin/make"}, PathPrefix: []string{"/tmp"}}}
	if !c.muted("/usr/bin/make", "") || !c.muted("/bin/cc", "/tmp/x") || c.muted("/bin/cc", "/srv/x") {
		t.Fatal("muted")
	}
}

// A client that unregistered between the snapshot and the request is
// answered for at once, not after its deadline.
func TestAuthorizeClientGoneBeforeAsked(t *testing.T) {
	s := NewServer(Options{})
	c := fakeClient(t, s, "late", 7, ClientConfig{DeadlineMS: 5000, MissMode: FailClosed, MaxMisses: 3}, nil)
	cs := s.snapshot()
	s.unregister(c)
	start := time.Now()
	v := &vigilv1.ClientVerdict{}
	if allow, _ := s.ask(cs[0], execEvent("/x"), "", v); allow || v.Answer != "gone" || time.Since(start) > time.Second {
		t.Fatalf("ask of an unregistered client: allow %v, %v after %v", allow, v, time.Since(start))
	}
}

func openEvent(pid uint32, exe, path string) *vigilv1.Event {
	return &vigilv1.Event{Kind: "open", Process: &vigilv1.Process{Pid: pid, Exe: exe},
		Detail: &vigilv1.Event_FileOpen{FileOpen: &vigilv1.FileOpen{File: &vigilv1.File{Path: path}}}}
}

// Open authorization: asked only of clients that subscribed to open,
// cached apart from exec, never asked about a client's own opens; the
// agent is told when open permission events are wanted.
func TestAuthorizeOpen(t *testing.T) {
	var wantOpen []bool
	s := NewServer(Options{AuthChanged: func(open bool) { wantOpen = append(wantOpen, open) }})
	cfg := ClientConfig{DeadlineMS: 1000, MissMode: FailOpen, MaxMisses: 3}
	var asked []string // kind path, in order
	answer := func(r *vigilv1.AuthRequest) *vigilv1.AuthReply {
		_, _, path := eventFacts(r.Event)
		asked = append(asked, r.Event.Kind+" "+path)
		return &vigilv1.AuthReply{Id: r.Id, Allow: !strings.HasSuffix(path, "bad"), Cacheable: true}
	}
	fakeClient(t, s, "execs", 300, cfg, answer)
	if len(wantOpen) != 1 || wantOpen[0] {
		t.Fatalf("an exec client: open events wanted %v, want [false]", wantOpen)
	}
	both := fakeAuthClient(t, s, "both", 200, 4242, cfg, &vigilv1.Subscription{Type: "auth", Kinds: []string{"exec", "open"}, PathPrefix: []string{"/srv"}}, answer)
	if len(wantOpen) != 2 || !wantOpen[1] || !s.OpenAuth() {
		t.Fatalf("an open client: open events wanted %v", wantOpen)
	}

	d := s.Authorize(openEvent(100, "/bin/cat", "/srv/good"), "k1")
	if !d.Allow || !d.Cacheable || len(d.Clients) != 1 || d.Clients[0].Client != "both@200" || d.Clients[0].Answer != "allow" {
		t.Fatalf("open of a good file: %+v", d)
	}
	d = s.Authorize(openEvent(101, "/bin/less", "/srv/good"), "k1")
	if !d.Allow || !d.Cacheable || d.Clients[0].Answer != "cached" {
		t.Fatalf("second open of a good file: %+v", d)
	}
	// The open's verdict says nothing about an exec of the same file.
	d = s.Authorize(execEvent("/srv/good"), "k1")
	if len(d.Clients) != 2 || d.Clients[1].Client != "both@200" || d.Clients[1].Answer != "allow" {
		t.Fatalf("exec after a cached open: %+v", d)
	}
	d = s.Authorize(openEvent(100, "/bin/cat", "/srv/bad"), "k2")
	if d.Allow || d.Cacheable || d.Clients[0].Answer != "deny" {
		t.Fatalf("open of a bad file: %+v", d)
	}
	// Out of the subscription's paths: nobody asked, and nobody would be
	// for another process either.
	d = s.Authorize(openEvent(100, "/bin/cat", "/etc/bad"), "k3")
	if !d.Allow || !d.Cacheable || len(d.Clients) != 0 {
		t.Fatalf("open outside the subscription: %+v", d)
	}
	// The client's own open: allowed, nobody asked.
	n := len(asked)
	d = s.Authorize(openEvent(4242, "/opt/scanner", "/srv/bad"), "k2")
	if !d.Allow || d.Cacheable || len(d.Clients) != 0 || len(asked) != n {
		t.Fatalf("the client's own open: %+v, asked %v", d, asked[n:])
	}
	if want := []string{"open /srv/good", "exec /srv/good", "exec /srv/good", "open /srv/bad"}; strings.Join(asked, ",") != strings.Join(want, ",") {
		t.Fatalf("asked %q, want %q", asked, want)
	}

	// A client that selects by executable: no answer holds for every
	// process, even where it was not asked.
	fakeAuthClient(t, s, "picky", 100, 4343, cfg, &vigilv1.Subscription{Type: "auth", Kinds: []string{"open"}, Exe: []string{"/bin/vi"}}, answer)
	if d := s.Authorize(openEvent(100, "/bin/cat", "/etc/x"), "k4"); !d.Allow || d.Cacheable || len(d.Clients) != 0 {
		t.Fatalf("open with a client that selects by process: %+v", d)
	}
	// Path mutes: a verdict taken while muted does not outlive the mutes.
	s.unregister(s.find(t, "picky@100"))
	s.handle(both, &vigilv1.ClientMessage{Msg: &vigilv1.ClientMessage_Mute{Mute: &vigilv1.Mute{PathPrefix: []string{"/srv/muted"}}}})
	if d := s.Authorize(openEvent(100, "/bin/cat", "/srv/muted/bad"), "k5"); !d.Allow || d.Cacheable || len(d.Clients) != 0 {
		t.Fatalf("open of a muted path: %+v", d)
	}
	n = len(wantOpen)
	s.handle(both, &vigilv1.ClientMessage{Msg: &vigilv1.ClientMessage_Mute{Mute: &vigilv1.Mute{Clear: true}}})
	if len(wantOpen) != n+1 {
		t.Fatal("clearing mutes does not drop the verdicts the kernel keeps")
	}
	s.unregister(both)
	if last := wantOpen[len(wantOpen)-1]; last || s.OpenAuth() {
		t.Fatalf("the open client left: open events still wanted (%v)", wantOpen)
	}
}

func (s *Server) find(t *testing.T, id string) *client {
	t.Helper()
	for _, c := range s.snapshot() {
		if c.id() == id {
			return c
		}
	}
	t.Fatalf("no client %s", id)
	return nil
}

func TestAuthKinds(t *testing.T) {
	sub := &vigilv1.Subscription{Type: "auth"}
	if err := authKinds(sub); err != nil || len(sub.Kinds) != 1 || sub.Kinds[0] != KindExec {
		t.Fatalf("no kinds: %v, %v (want exec)", sub.Kinds, err)
	}
	if err := authKinds(&vigilv1.Subscription{Kinds: []string{"open", "exec"}}); err != nil {
		t.Fatal(err)
	}
	if err := authKinds(&vigilv1.Subscription{Kinds: []string{"exec", "mmap"}}); err == nil || !strings.Contains(err.Error(), `"mmap"`) {
		t.Fatalf("an auth kind the kernel path cannot wait for: %v", err)
	}
}
