// Package filterclient is the Go SDK of Vigil's filter API: a security
// program connects to the agent, receives the events it subscribed to,
// answers exec and open authorization requests before their deadline, and adds
// deny rules the kernel enforces. The agent accepts only clients the
// administrator approved (docs/filter-api.md).
//
//	c, err := filterclient.Connect(ctx, filterclient.Options{
//		Name: "scanner", Altitude: 200,
//		Auth: &filterclient.Subscription{Kinds: []string{"exec"}},
//		OnAuth: func(ev *vigilv1.Event) filterclient.Verdict {
//			return filterclient.Verdict{Allow: true, Cacheable: true}
//		},
//	})
//	if err != nil { ... }       // e.g. PermissionDenied: not approved
//	defer c.Close()
//	err = c.Run()               // until ctx is done or the agent goes away
package filterclient

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/sched"
)

// DefaultSocket is where the agent serves the filter API.
const DefaultSocket = "/run/vigil/filter.sock"

// Subscription selects events; empty lists match everything.
type Subscription struct {
	// Kinds are event kinds. Auth: "exec", "open" (every open of a file
	// on the marked filesystems: many; the client's own opens are not
	// asked about); none means "exec".
	Kinds      []string
	Exe        []string // the acting process's executable
	PathPrefix []string // the target file under one of these
}

func (s *Subscription) proto(typ string) *vigilv1.Subscription {
	return &vigilv1.Subscription{Type: typ, Kinds: s.Kinds, Exe: s.Exe, PathPrefix: s.PathPrefix}
}

// Path is the file an authorization request (or an exec, open, image
// load, file modification or kernel event) is about.
func Path(ev *vigilv1.Event) string {
	switch d := ev.GetDetail().(type) {
	case *vigilv1.Event_Exec:
		return d.Exec.GetFile().GetPath()
	case *vigilv1.Event_FileOpen:
		return d.FileOpen.GetFile().GetPath()
	case *vigilv1.Event_ImageLoad:
		return d.ImageLoad.GetFile().GetPath()
	case *vigilv1.Event_MemExec:
		return d.MemExec.GetFile().GetPath()
	case *vigilv1.Event_FileModify:
		return d.FileModify.GetFile().GetPath()
	case *vigilv1.Event_Kernel:
		return d.Kernel.GetFile().GetPath()
	}
	return ""
}

// Verdict is a client's answer to an authorization request.
type Verdict struct {
	Allow bool
	// Cacheable keeps the verdict (allow) until the file changes: the
	// client is not asked again for the same content.
	Cacheable bool
	Reason    string
}

// Options configure a client.
type Options struct {
	Socket   string // DefaultSocket when empty
	Name     string // as approved by the administrator
	Altitude uint32 // unique; higher altitudes are asked first
	Notify   []Subscription
	Auth     *Subscription // nil: no authorization requests
	// OnEvent receives notify events, in order, on Run's goroutine.
	OnEvent func(*vigilv1.Event)
	// OnAuth answers an authorization request. It runs on a goroutine of
	// its own; an answer after the deadline counts as a miss.
	OnAuth func(*vigilv1.Event) Verdict
}

// Client is a connected filter client.
type Client struct {
	opts    Options
	conn    *grpc.ClientConn
	stream  grpc.BidiStreamingClient[vigilv1.ClientMessage, vigilv1.ServerMessage]
	cancel  context.CancelFunc
	Welcome *vigilv1.Welcome

	sendMu sync.Mutex
	mu     sync.Mutex
	rules  map[string]chan string // rule id -> result
}

// Connect dials the agent, introduces the client and waits to be
// accepted. A refused client gets the agent's reason as the error.
func Connect(ctx context.Context, opts Options) (*Client, error) {
	if opts.Socket == "" {
		opts.Socket = DefaultSocket
	}
	if opts.Auth != nil && opts.OnAuth == nil {
		return nil, errors.New("filterclient: Auth without OnAuth")
	}
	conn, err := grpc.NewClient("unix://"+opts.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("filterclient: %w", err)
	}
	sctx, cancel := context.WithCancel(ctx)
	stream, err := vigilv1.NewFilterClient(conn).Connect(sctx)
	if err != nil {
		cancel()
		conn.Close()
		return nil, fmt.Errorf("filterclient: connect: %w", err)
	}
	c := &Client{opts: opts, conn: conn, stream: stream, cancel: cancel, rules: map[string]chan string{}}
	hello := &vigilv1.Hello{Name: opts.Name, Altitude: opts.Altitude}
	for i := range opts.Notify {
		hello.Subscriptions = append(hello.Subscriptions, opts.Notify[i].proto("notify"))
	}
	if opts.Auth != nil {
		hello.Subscriptions = append(hello.Subscriptions, opts.Auth.proto("auth"))
	}
	if err := c.send(&vigilv1.ClientMessage{Msg: &vigilv1.ClientMessage_Hello{Hello: hello}}); err != nil {
		c.Close()
		return nil, fmt.Errorf("filterclient: hello: %w", err)
	}
	m, err := stream.Recv()
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("filterclient: refused: %w", err)
	}
	if c.Welcome = m.GetWelcome(); c.Welcome == nil {
		c.Close()
		return nil, errors.New("filterclient: the agent did not answer Hello with Welcome")
	}
	return c, nil
}

func (c *Client) send(m *vigilv1.ClientMessage) error {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	return c.stream.Send(m)
}

// Run receives until the session ends: it returns nil when Close was
// called, the stream's error otherwise.
func (c *Client) Run() error {
	for {
		m, err := c.stream.Recv()
		if err != nil {
			if c.stream.Context().Err() != nil {
				return nil
			}
			return err
		}
		switch msg := m.Msg.(type) {
		case *vigilv1.ServerMessage_Event:
			if c.opts.OnEvent != nil {
				c.opts.OnEvent(msg.Event)
			}
		case *vigilv1.ServerMessage_Auth:
			req := msg.Auth
			go func() {
				v := c.opts.OnAuth(req.Event)
				c.send(&vigilv1.ClientMessage{Msg: &vigilv1.ClientMessage_AuthReply{AuthReply: &vigilv1.AuthReply{
					Id: req.Id, Allow: v.Allow, Cacheable: v.Cacheable, Reason: v.Reason,
				}}})
			}()
		case *vigilv1.ServerMessage_RuleResult:
			c.mu.Lock()
			ch := c.rules[msg.RuleResult.Id]
			delete(c.rules, msg.RuleResult.Id)
			c.mu.Unlock()
			if ch != nil {
				ch <- msg.RuleResult.Error
			}
		}
	}
}

// AddKernelRule adds a deny rule (one rule of the policy language, YAML;
// action deny or kill) that the kernel enforces until it is removed or the
// client goes away. Run must be running. It returns the agent's error.
func (c *Client) AddKernelRule(ctx context.Context, id string, ruleYAML []byte) error {
	return c.rule(ctx, id, &vigilv1.ClientMessage{Msg: &vigilv1.ClientMessage_AddRule{AddRule: &vigilv1.KernelRule{Id: id, RuleYaml: ruleYAML}}})
}

// RemoveKernelRule removes a rule added by AddKernelRule.
func (c *Client) RemoveKernelRule(ctx context.Context, id string) error {
	return c.rule(ctx, id, &vigilv1.ClientMessage{Msg: &vigilv1.ClientMessage_RemoveRule{RemoveRule: id}})
}

func (c *Client) rule(ctx context.Context, id string, m *vigilv1.ClientMessage) error {
	ch := make(chan string, 1)
	c.mu.Lock()
	c.rules[id] = ch
	c.mu.Unlock()
	if err := c.send(m); err != nil {
		return err
	}
	select {
	case e := <-ch:
		if e != "" {
			return errors.New(e)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(30 * time.Second):
		return errors.New("filterclient: no answer from the agent")
	}
}

// Mute stops events and requests about these executables or paths.
func (c *Client) Mute(exe, pathPrefixes []string) error {
	return c.send(&vigilv1.ClientMessage{Msg: &vigilv1.ClientMessage_Mute{Mute: &vigilv1.Mute{Exe: exe, PathPrefix: pathPrefixes}}})
}

// Close ends the session: the agent unregisters the client and removes
// its kernel rules.
func (c *Client) Close() error {
	c.cancel()
	return c.conn.Close()
}

// Realtime puts every thread of the client's process on real-time
// scheduling (SCHED_RR at the lowest priority, 1). Call it before
// Connect. An exec the client is asked about waits until the client is
// woken and answers; on a loaded machine that wait, not the client's
// work, is most of the tail of the round trip, and normal priorities
// (nice) do not shorten it. Use it only if what the client does per
// request is small and bounded: a real-time process that loops starves
// normal work on its CPU (up to the kernel's real-time throttle,
// sched_rt_runtime_us). It needs CAP_SYS_NICE or RLIMIT_RTPRIO ≥ 1
// (systemd: CPUSchedulingPolicy=rr, CPUSchedulingPriority=1 does the
// same for the whole service). See docs/filter-api.md.
func Realtime() error { return sched.Realtime() }
