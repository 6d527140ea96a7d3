package filter

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
)

// Tuning.
const (
	helloTimeout  = 10 * time.Second // a client must introduce itself within this
	outQueue      = 1024             // messages waiting to be sent to a client
	verdictCache  = 1 << 14          // cacheable verdicts kept per client
	disconnectWhy = "missed %d deadlines in a row"
)

// Options are what the filter server needs from the agent.
type Options struct {
	// Config lists the approved clients; nil refuses every client with
	// ConfigErr as the reason.
	Config    *Config
	ConfigErr error
	Log       *slog.Logger
	// CatalogSigner returns the key id of a catalog signer that vouches
	// for a digest (trust database), or "".
	CatalogSigner func(ctx context.Context, sha [32]byte) string
	// Rules sets the kernel deny rules of a client (rule YAML by id); an
	// empty map removes them. It returns an error naming a bad rule.
	Rules func(client string, rules map[string][]byte) error
	// Report receives the events the filter makes (kind "filter").
	Report func(ev *vigilv1.Event)
	// AuthChanged is called when a client with an auth subscription
	// registers or leaves, or clears its mutes: verdicts the kernel keeps
	// must be dropped, and open permission events are wanted only while
	// open is true (some client authorizes opens).
	AuthChanged func(open bool)
}

// The kinds a client may authorize. An auth subscription that names no
// kind authorizes exec: open events are many, a client asks for them.
const (
	KindExec = "exec"
	KindOpen = "open"
)

// Server serves vigil.v1.Filter.
type Server struct {
	vigilv1.UnimplementedFilterServer
	opts Options
	grpc *grpc.Server

	mu      sync.Mutex
	clients []*client // by altitude, highest first
	nextID  atomic.Uint64
}

// NewServer returns a filter server; Serve starts it.
func NewServer(opts Options) *Server {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.Report == nil {
		opts.Report = func(*vigilv1.Event) {}
	}
	s := &Server{opts: opts, grpc: grpc.NewServer(grpc.Creds(peerCreds{}))}
	vigilv1.RegisterFilterServer(s.grpc, s)
	return s
}

// Serve serves on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	if err := s.grpc.Serve(ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("filter: %w", err)
	}
	return nil
}

// Shutdown disconnects every client and stops serving.
func (s *Server) Shutdown() { s.grpc.Stop() }

// client is one connected client.
type client struct {
	name     string
	altitude uint32
	pid      int32 // the connecting process: its opens are not asked about
	cfg      ClientConfig
	notify   []*vigilv1.Subscription
	auth     []*vigilv1.Subscription

	out    chan *vigilv1.ServerMessage
	kick   chan string // closes the session, with the reason
	kicked sync.Once
	gone   chan struct{} // closed when unregistered

	mu      sync.Mutex
	pending map[uint64]chan *vigilv1.AuthReply
	mutes   *vigilv1.Mute
	cache   map[string]bool // cacheable allow verdicts, by file key
	rules   map[string][]byte
	misses  int
	dropped uint64
}

func (c *client) id() string { return fmt.Sprintf("%s@%d", c.name, c.altitude) }

func (c *client) disconnect(why string) {
	c.kicked.Do(func() { c.kick <- why })
}

func (c *client) send(m *vigilv1.ServerMessage) bool {
	select {
	case c.out <- m:
		return true
	default:
		c.mu.Lock()
		c.dropped++
		c.mu.Unlock()
		return false
	}
}

// identify reads the connecting process's executable and its digest.
func identify(pid int32) (exe string, sha [32]byte, err error) {
	proc := fmt.Sprintf("/proc/%d/exe", pid)
	exe, err = os.Readlink(proc)
	if err != nil {
		return "", sha, fmt.Errorf("executable of pid %d: %w", pid, err)
	}
	f, err := os.Open(proc) // the file itself, even if renamed or deleted since
	if err != nil {
		return exe, sha, fmt.Errorf("executable of pid %d: %w", pid, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return exe, sha, fmt.Errorf("hash %s: %w", exe, err)
	}
	copy(sha[:], h.Sum(nil))
	return exe, sha, nil
}

// approve finds the configuration that approves a client.
func (s *Server) approve(ctx context.Context, name string, sha [32]byte) (*ClientConfig, error) {
	if s.opts.Config == nil {
		why := s.opts.ConfigErr
		if why == nil {
			why = ErrNoConfig
		}
		return nil, why
	}
	for i := range s.opts.Config.Clients {
		c := &s.opts.Config.Clients[i]
		if c.Name != name {
			continue
		}
		if c.SHA256 != "" && strings.EqualFold(c.SHA256, hex.EncodeToString(sha[:])) {
			return c, nil
		}
		if c.CatalogSigner != "" && s.opts.CatalogSigner != nil && s.opts.CatalogSigner(ctx, sha) == c.CatalogSigner {
			return c, nil
		}
		return nil, fmt.Errorf("client %q is approved, but not with this executable (sha256 %s)", name, hex.EncodeToString(sha[:]))
	}
	return nil, fmt.Errorf("no approved client is named %q", name)
}

func (s *Server) report(action, who, why string, pid int32, exe string, sha *[32]byte) {
	fs := &vigilv1.FilterSession{Client: who, Action: action, Reason: why, Pid: uint32(pid), Exe: exe}
	if sha != nil {
		fs.Sha256 = hex.EncodeToString(sha[:])
	}
	s.opts.Report(&vigilv1.Event{
		Time:    timestamppb.Now(),
		Kind:    "filter",
		Process: &vigilv1.Process{Pid: uint32(pid), Exe: exe},
		Detail:  &vigilv1.Event_FilterSession{FilterSession: fs},
	})
}

// Connect implements vigilv1.FilterServer: one client's session.
func (s *Server) Connect(stream grpc.BidiStreamingServer[vigilv1.ClientMessage, vigilv1.ServerMessage]) error {
	ctx := stream.Context()
	pi, err := peerOf(ctx)
	if err != nil {
		return status.Error(codes.Unauthenticated, err.Error())
	}
	exe, sha, err := identify(pi.PID)
	if err != nil {
		s.report("refused", "", err.Error(), pi.PID, exe, nil)
		return status.Error(codes.PermissionDenied, err.Error())
	}
	hello, err := recvHello(stream)
	if err != nil {
		s.report("refused", "", err.Error(), pi.PID, exe, &sha)
		return err
	}
	who := fmt.Sprintf("%s@%d", hello.Name, hello.Altitude)
	cfg, err := s.approve(ctx, hello.Name, sha)
	if err != nil {
		why := "not approved: " + err.Error()
		s.opts.Log.Warn("filter client refused", "client", who, "pid", pi.PID, "exe", exe, "why", why)
		s.report("refused", who, why, pi.PID, exe, &sha)
		return status.Error(codes.PermissionDenied, why)
	}
	c := &client{name: hello.Name, altitude: hello.Altitude, pid: pi.PID, cfg: *cfg,
		out: make(chan *vigilv1.ServerMessage, outQueue), kick: make(chan string, 1), gone: make(chan struct{}),
		pending: map[uint64]chan *vigilv1.AuthReply{}, cache: map[string]bool{}, rules: map[string][]byte{}}
	for _, sub := range hello.Subscriptions {
		switch sub.Type {
		case "notify":
			c.notify = append(c.notify, sub)
		case "auth":
			if err := authKinds(sub); err != nil {
				s.report("refused", who, err.Error(), pi.PID, exe, &sha)
				return status.Error(codes.InvalidArgument, err.Error())
			}
			c.auth = append(c.auth, sub)
		default:
			return status.Errorf(codes.InvalidArgument, "subscription type %q: want notify or auth", sub.Type)
		}
	}
	if err := s.register(c); err != nil {
		s.report("refused", who, err.Error(), pi.PID, exe, &sha)
		return err
	}
	s.opts.Log.Info("filter client connected", "client", who, "pid", pi.PID, "exe", exe)
	s.report("connected", who, "", pi.PID, exe, &sha)
	why := s.session(ctx, stream, c)
	s.unregister(c)
	s.opts.Log.Info("filter client disconnected", "client", who, "why", why)
	s.report("disconnected", who, why, pi.PID, exe, &sha)
	return nil
}

func recvHello(stream grpc.BidiStreamingServer[vigilv1.ClientMessage, vigilv1.ServerMessage]) (*vigilv1.Hello, error) {
	type res struct {
		m   *vigilv1.ClientMessage
		err error
	}
	ch := make(chan res, 1)
	go func() {
		m, err := stream.Recv()
		ch <- res{m, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, r.err
		}
		h := r.m.GetHello()
		if h == nil || h.Name == "" {
			return nil, status.Error(codes.InvalidArgument, "the first message must be Hello with a name")
		}
		return h, nil
	case <-time.After(helloTimeout):
		return nil, status.Error(codes.DeadlineExceeded, "no Hello within "+helloTimeout.String())
	}
}

// authKinds checks the kinds of an auth subscription: exec and open are
// what the kernel path can wait for; none means exec.
func authKinds(sub *vigilv1.Subscription) error {
	if len(sub.Kinds) == 0 {
		sub.Kinds = []string{KindExec}
	}
	for _, k := range sub.Kinds {
		if k != KindExec && k != KindOpen {
			return fmt.Errorf("auth subscription kind %q: want %s or %s", k, KindExec, KindOpen)
		}
	}
	return nil
}

func (s *Server) register(c *client) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, o := range s.clients {
		if o.altitude == c.altitude {
			return status.Errorf(codes.AlreadyExists, "altitude %d is taken by %s", c.altitude, o.id())
		}
		if o.name == c.name {
			return status.Errorf(codes.AlreadyExists, "client %s is already connected", c.name)
		}
	}
	s.clients = append(s.clients, c)
	slices.SortFunc(s.clients, func(a, b *client) int { return int(b.altitude) - int(a.altitude) })
	if len(c.auth) > 0 {
		s.authChangedLocked()
	}
	return nil
}

// authChangedLocked tells the agent that what decides changed. The caller
// holds s.mu (the callback sees the clients in the order they changed).
func (s *Server) authChangedLocked() {
	if s.opts.AuthChanged == nil {
		return
	}
	open := false
	for _, c := range s.clients {
		open = open || c.authorizes(KindOpen)
	}
	s.opts.AuthChanged(open)
}

// authorizes: c has an auth subscription for kind.
func (c *client) authorizes(kind string) bool {
	for _, sub := range c.auth {
		if slices.Contains(sub.Kinds, kind) {
			return true
		}
	}
	return false
}

// OpenAuth says whether a connected client authorizes opens.
func (s *Server) OpenAuth() bool {
	for _, c := range s.snapshot() {
		if c.authorizes(KindOpen) {
			return true
		}
	}
	return false
}

// unregister removes c, fails its pending requests and removes its rules.
func (s *Server) unregister(c *client) {
	s.mu.Lock()
	s.clients = slices.DeleteFunc(s.clients, func(o *client) bool { return o == c })
	if len(c.auth) > 0 {
		s.authChangedLocked()
	}
	s.mu.Unlock()
	c.mu.Lock()
	close(c.gone)
	for id, ch := range c.pending {
		close(ch)
		delete(c.pending, id)
	}
	hadRules := len(c.rules) > 0
	c.rules = map[string][]byte{}
	c.mu.Unlock()
	if hadRules && s.opts.Rules != nil {
		if err := s.opts.Rules(c.name, nil); err != nil {
			s.opts.Log.Error("filter client's kernel rules not removed", "client", c.id(), "err", err)
		}
	}
}

// session runs a registered client until it leaves or is disconnected; it
// returns why.
func (s *Server) session(ctx context.Context, stream grpc.BidiStreamingServer[vigilv1.ClientMessage, vigilv1.ServerMessage], c *client) string {
	if err := stream.Send(&vigilv1.ServerMessage{Msg: &vigilv1.ServerMessage_Welcome{Welcome: &vigilv1.Welcome{
		Client: c.id(), DeadlineMs: uint32(c.cfg.Deadline() / time.Millisecond), MissMode: c.cfg.MissMode,
	}}}); err != nil {
		return "send: " + err.Error()
	}
	sendErr := make(chan error, 1)
	done := make(chan struct{})
	rulesDone := make(chan struct{})
	defer func() {
		close(done)
		<-rulesDone // unregister must see the last rule applied
	}()
	go func() {
		for {
			select {
			case m := <-c.out:
				if err := stream.Send(m); err != nil {
					sendErr <- err
					return
				}
			case <-done:
				return
			}
		}
	}()
	// Kernel rules are applied one after the other, off the receiving
	// goroutine (a policy change takes time), and no later than the
	// session: unregister must see the last of them.
	rules := make(chan *vigilv1.ClientMessage, 16)
	go func() {
		defer close(rulesDone)
		for {
			select {
			case m := <-rules:
				s.handle(c, m)
			case <-done:
				return
			}
		}
	}()
	// Everything else is handled as it arrives: an answer wakes the
	// decision waiting for it with no other goroutine in between.
	recvErr := make(chan error, 1)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			switch m.Msg.(type) {
			case *vigilv1.ClientMessage_AddRule, *vigilv1.ClientMessage_RemoveRule:
				select {
				case rules <- m:
				case <-done:
					return
				}
			default:
				s.handle(c, m)
			}
		}
	}()
	for {
		select {
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				return "the client closed its session"
			}
			return "receive: " + err.Error()
		case err := <-sendErr:
			return "send: " + err.Error()
		case why := <-c.kick:
			return why
		case <-ctx.Done():
			return "connection closed"
		}
	}
}

func (s *Server) handle(c *client, m *vigilv1.ClientMessage) {
	switch msg := m.Msg.(type) {
	case *vigilv1.ClientMessage_AuthReply:
		c.mu.Lock()
		ch := c.pending[msg.AuthReply.Id]
		delete(c.pending, msg.AuthReply.Id)
		c.mu.Unlock()
		if ch != nil {
			ch <- msg.AuthReply // buffered 1
		}
	case *vigilv1.ClientMessage_Mute:
		c.mu.Lock()
		cleared := msg.Mute.Clear && c.mutes != nil
		if msg.Mute.Clear || c.mutes == nil {
			c.mutes = &vigilv1.Mute{}
		}
		c.mutes.Exe = append(c.mutes.Exe, msg.Mute.Exe...)
		c.mutes.PathPrefix = append(c.mutes.PathPrefix, msg.Mute.PathPrefix...)
		c.mu.Unlock()
		if cleared && len(c.auth) > 0 {
			// The client is asked about what it muted: the kernel may
			// keep verdicts taken while it was not.
			s.mu.Lock()
			s.authChangedLocked()
			s.mu.Unlock()
		}
	case *vigilv1.ClientMessage_AddRule:
		s.setRule(c, msg.AddRule.Id, msg.AddRule.RuleYaml)
	case *vigilv1.ClientMessage_RemoveRule:
		s.setRule(c, msg.RemoveRule, nil)
	}
}

// setRule adds (yaml set) or removes a client's kernel rule and answers.
func (s *Server) setRule(c *client, id string, yaml []byte) {
	res := &vigilv1.RuleResult{Id: id}
	switch {
	case !c.cfg.KernelRules:
		res.Error = "this client is not approved for kernel rules"
	case s.opts.Rules == nil:
		res.Error = "this agent takes no kernel rules"
	case id == "":
		res.Error = "a rule needs an id"
	default:
		c.mu.Lock()
		next := map[string][]byte{}
		for k, v := range c.rules {
			next[k] = v
		}
		if yaml == nil {
			delete(next, id)
		} else {
			next[id] = yaml
		}
		c.mu.Unlock()
		if err := s.opts.Rules(c.name, next); err != nil {
			res.Error = err.Error()
		} else {
			c.mu.Lock()
			c.rules = next
			c.mu.Unlock()
		}
	}
	c.send(&vigilv1.ServerMessage{Msg: &vigilv1.ServerMessage_RuleResult{RuleResult: res}})
}

// eventFacts are what subscriptions and mutes look at.
func eventFacts(ev *vigilv1.Event) (kind, exe, path string) {
	kind, exe = ev.GetKind(), ev.GetProcess().GetExe()
	switch d := ev.Detail.(type) {
	case *vigilv1.Event_Exec:
		path = d.Exec.GetFile().GetPath()
	case *vigilv1.Event_ImageLoad:
		path = d.ImageLoad.GetFile().GetPath()
	case *vigilv1.Event_MemExec:
		path = d.MemExec.GetFile().GetPath()
	case *vigilv1.Event_FileModify:
		path = d.FileModify.GetFile().GetPath()
	case *vigilv1.Event_Kernel:
		path = d.Kernel.GetFile().GetPath()
	case *vigilv1.Event_FileOpen:
		path = d.FileOpen.GetFile().GetPath()
	}
	return kind, exe, path
}

func under(path string, prefixes []string) bool {
	for _, p := range prefixes {
		if path == p || strings.HasPrefix(path, strings.TrimSuffix(p, "/")+"/") {
			return true
		}
	}
	return false
}

func matches(subs []*vigilv1.Subscription, kind, exe, path string) bool {
	for _, sub := range subs {
		if len(sub.Kinds) > 0 && !slices.Contains(sub.Kinds, kind) {
			continue
		}
		if len(sub.Exe) > 0 && !slices.Contains(sub.Exe, exe) {
			continue
		}
		if len(sub.PathPrefix) > 0 && !under(path, sub.PathPrefix) {
			continue
		}
		return true
	}
	return false
}

func (c *client) muted(exe, path string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mutes == nil {
		return false
	}
	return slices.Contains(c.mutes.Exe, exe) || (path != "" && under(path, c.mutes.PathPrefix))
}

func (s *Server) snapshot() []*client {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.clients)
}

// Publish hands stored events to the clients subscribed to them (notify).
// It never blocks: a client that falls behind loses events (counted).
func (s *Server) Publish(evs []*vigilv1.Event) {
	cs := s.snapshot()
	if len(cs) == 0 {
		return
	}
	for _, ev := range evs {
		kind, exe, path := eventFacts(ev)
		for _, c := range cs {
			if matches(c.notify, kind, exe, path) && !c.muted(exe, path) {
				c.send(&vigilv1.ServerMessage{Msg: &vigilv1.ServerMessage_Event{Event: ev}})
			}
		}
	}
}

// Decision is the clients' decision about one exec or open.
type Decision struct {
	Allow bool
	// Clients are the answers, in the order asked.
	Clients []*vigilv1.ClientVerdict
	// Cacheable: an allow that holds for any process until the file
	// changes: every client that could be asked about this file (by any
	// process) has a cacheable allow for it, and none of them selects by
	// process. The kernel may keep it.
	Cacheable bool
}

// Authorize asks the clients subscribed to ev (auth), highest altitude
// first, and returns whether it may go on and each client's answer. A
// deny ends the round. Each client gets at most its deadline; a client
// that misses it counts by its miss mode, and one that misses too many in
// a row is disconnected. key names the file's content state (identity and
// change times): cacheable verdicts are kept under it. An open by a
// client's own process is allowed without asking (a scanner opens the
// file it is asked about: asking would go round without end).
func (s *Server) Authorize(ev *vigilv1.Event, key string) Decision {
	kind, exe, path := eventFacts(ev)
	cs := s.snapshot()
	if kind == KindOpen {
		pid := int32(ev.GetProcess().GetPid())
		for _, c := range cs {
			if c.pid == pid {
				return Decision{Allow: true}
			}
		}
	}
	if key != "" {
		key = kind + ":" + key
	}
	d := Decision{Allow: true, Cacheable: key != ""}
	for _, c := range cs {
		if !c.authorizes(kind) {
			continue
		}
		byProcess := c.byProcess(kind)
		if !matches(c.auth, kind, exe, path) || c.muted(exe, path) {
			// Not asked about this one; maybe about the same file
			// for another process (or after its mutes are cleared).
			d.Cacheable = d.Cacheable && !byProcess && !c.mutesPath()
			continue
		}
		v := &vigilv1.ClientVerdict{Client: c.id()}
		d.Clients = append(d.Clients, v)
		c.mu.Lock()
		cached := key != "" && c.cache[key]
		c.mu.Unlock()
		if cached {
			v.Answer, v.Applied = "cached", "allow"
			d.Cacheable = d.Cacheable && !byProcess
			continue
		}
		start := time.Now()
		allow, cacheable := s.ask(c, ev, key, v)
		v.LatencyUs = uint64(time.Since(start) / time.Microsecond)
		if !allow {
			d.Allow, d.Cacheable = false, false
			return d
		}
		d.Cacheable = d.Cacheable && cacheable && !byProcess
	}
	return d
}

// byProcess: whether c is asked about kind can depend on the process
// (a subscription or a mute by executable).
func (c *client) byProcess(kind string) bool {
	for _, sub := range c.auth {
		if slices.Contains(sub.Kinds, kind) && len(sub.Exe) > 0 {
			return true
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mutes != nil && len(c.mutes.Exe) > 0
}

// mutesPath: c has muted some paths.
func (c *client) mutesPath() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mutes != nil && len(c.mutes.PathPrefix) > 0
}

// ask asks one client and fills v; it returns whether c lets ev go on,
// and whether that is a cacheable allow.
func (s *Server) ask(c *client, ev *vigilv1.Event, key string, v *vigilv1.ClientVerdict) (allow, cacheable bool) {
	deadline := c.cfg.Deadline()
	id := s.nextID.Add(1)
	ch := make(chan *vigilv1.AuthReply, 1)
	c.mu.Lock()
	c.pending[id] = ch
	c.mu.Unlock()
	req := &vigilv1.ServerMessage{Msg: &vigilv1.ServerMessage_Auth{Auth: &vigilv1.AuthRequest{
		Id: id, Event: ev, Deadline: timestamppb.New(time.Now().Add(deadline)),
	}}}
	missed := func(answer string) (bool, bool) {
		c.mu.Lock()
		delete(c.pending, id)
		c.misses++
		n := c.misses
		c.mu.Unlock()
		v.Answer = answer
		allow := c.cfg.MissMode != FailClosed
		v.Applied = map[bool]string{true: "allow", false: "deny"}[allow]
		if answer == "missed" && n >= c.cfg.MaxMisses {
			why := fmt.Sprintf(disconnectWhy, n)
			s.opts.Log.Warn("filter client disconnected", "client", c.id(), "why", why)
			c.disconnect(why)
		}
		return allow, false
	}
	if !c.send(req) {
		return missed("missed")
	}
	timer := time.NewTimer(deadline)
	defer timer.Stop()
	select {
	case r, ok := <-ch:
		if !ok {
			return missed("gone")
		}
		c.mu.Lock()
		c.misses = 0
		if r.Allow && r.Cacheable && key != "" {
			if len(c.cache) >= verdictCache {
				clear(c.cache)
			}
			c.cache[key] = true
		}
		c.mu.Unlock()
		v.Reason = r.Reason
		if r.Allow {
			v.Answer, v.Applied = "allow", "allow"
			return true, r.Cacheable
		}
		v.Answer, v.Applied = "deny", "deny"
		return false, false
	case <-c.gone:
		// Unregistered before or while the request was pending.
		return missed("gone")
	case <-timer.C:
		return missed("missed")
	}
}

// Clients lists the connected clients, highest altitude first.
func (s *Server) Clients() []string {
	var out []string
	for _, c := range s.snapshot() {
		out = append(out, c.id())
	}
	return out
}
