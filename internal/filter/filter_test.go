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
	cfg.Name = name
	c := &client{name: name, altitude: alt, cfg: cfg, out: make(chan *vigilv1.ServerMessage, 16), kick: make(chan string, 1), gone: make(chan struct{}),
		pending: map[uint64]chan *vigilv1.AuthReply{}, cache: map[string]bool{}, rules: map[string][]byte{},
		auth: []*vigilv1.Subscription{{Type: "auth", Kinds: []string{"exec"}}}}
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

	ok, vs := s.Authorize(execEvent("/x/good"), "k1")
	if !ok || len(vs) != 2 || vs[0].Client != "high@200" || vs[1].Client != "low@10" {
		t.Fatalf("allow round: %v %v", ok, vs)
	}
	ok, vs = s.Authorize(execEvent("/x/bad"), "k2")
	if ok || len(vs) != 1 || vs[0].Answer != "deny" || vs[0].Reason != "bad" {
		t.Fatalf("deny ends the round: %v %v", ok, vs)
	}
	// low's allow of k1 was cacheable.
	_, vs = s.Authorize(execEvent("/x/good"), "k1")
	if vs[1].Answer != "cached" || vs[0].Answer != "allow" {
		t.Fatalf("cached: %v", vs)
	}
}

func TestAuthorizeMisses(t *testing.T) {
	s := NewServer(Options{})
	closed := fakeClient(t, s, "silent", 5, ClientConfig{DeadlineMS: 30, MissMode: FailClosed, MaxMisses: 2}, nil)
	start := time.Now()
	ok, vs := s.Authorize(execEvent("/x"), "")
	if took := time.Since(start); ok || vs[0].Answer != "missed" || vs[0].Applied != "deny" || took > 500*time.Millisecond {
		t.Fatalf("fail-closed miss: %v %v after %v", ok, vs, took)
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
	ok, vs = s.Authorize(execEvent("/x"), "")
	if took := time.Since(start); !ok || vs[0].Answer != "gone" || took > time.Second {
		t.Fatalf("gone: %v %v after %v", ok, vs, took)
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
	if allow := s.ask(cs[0], execEvent("/x"), "", v); allow || v.Answer != "gone" || time.Since(start) > time.Second {
		t.Fatalf("ask of an unregistered client: allow %v, %v after %v", allow, v, time.Since(start))
	}
}
