// Package server serves the agent API (vigil.v1.Agent) over gRPC on a unix
// socket, and fans newly stored events out to followers (Broker).
package server

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/store"
)

// Kinds are the event kinds the API knows (the Event.kind comment in
// vigil.proto). Queries for other kinds are refused, so a typo is an error
// rather than an empty result.
var Kinds = []string{"exec", "fork", "exit", "image_load", "mem_exec", "inject", "kernel", "file_modify", "gap", "integrity", "tamper", "filter", "open"}

// Config is what the server serves.
type Config struct {
	Store  *store.Store
	Broker *Broker
	// Status returns the agent's current status.
	Status func(ctx context.Context) *vigilv1.StatusResponse
	// ApplyPolicy makes a policy file the policy in force. An error
	// wrapping BadPolicy is the caller's (InvalidArgument); nil: the
	// server refuses ApplyPolicy (Unimplemented).
	ApplyPolicy func(name string, content []byte) (*vigilv1.PolicyStatus, error)
	BadPolicy   error
	// AuthorizePolicy, when set, decides first whether an ApplyPolicy
	// call may go ahead (a protected agent wants a signed token); its
	// error carries the gRPC status (PermissionDenied).
	AuthorizePolicy func(ctx context.Context, req *vigilv1.ApplyPolicyRequest) error
	// AuthorizeApprove, when set, decides first whether an Approve may
	// go on (protected mode: a signed admin token).
	AuthorizeApprove func(ctx context.Context, req *vigilv1.ApproveRequest) error
	// Pending, Approve and StopAgent serve the RPCs of the same names;
	// nil: Unimplemented. Their errors carry a gRPC status where they
	// need one other than Internal (status.Error).
	Pending   func(ctx context.Context, req *vigilv1.PendingRequest) (*vigilv1.PendingResponse, error)
	Approve   func(ctx context.Context, req *vigilv1.ApproveRequest) (*vigilv1.ApproveResponse, error)
	StopAgent func(ctx context.Context, req *vigilv1.StopRequest) (*vigilv1.StopResponse, error)
}

// Server is the gRPC Agent service.
type Server struct {
	vigilv1.UnimplementedAgentServer
	cfg  Config
	grpc *grpc.Server
}

// New returns a server; Serve starts it.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil || cfg.Broker == nil || cfg.Status == nil {
		return nil, errors.New("server: Store, Broker and Status are required")
	}
	s := &Server{cfg: cfg, grpc: grpc.NewServer()}
	vigilv1.RegisterAgentServer(s.grpc, s)
	return s, nil
}

// Serve serves on ln until Stop. It returns nil after Stop.
func (s *Server) Serve(ln net.Listener) error {
	if err := s.grpc.Serve(ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("server: %w", err)
	}
	return nil
}

// Shutdown stops accepting calls and waits for running ones until ctx is
// done, then cuts them off. Close the Broker first so that followers end.
func (s *Server) Shutdown(ctx context.Context) {
	done := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		s.grpc.Stop()
		<-done
	}
}

// ApplyPolicy implements vigilv1.AgentServer.
func (s *Server) ApplyPolicy(ctx context.Context, req *vigilv1.ApplyPolicyRequest) (*vigilv1.ApplyPolicyResponse, error) {
	if s.cfg.ApplyPolicy == nil {
		return nil, status.Error(codes.Unimplemented, "this agent does not take policies")
	}
	if len(req.Content) == 0 {
		return nil, status.Error(codes.InvalidArgument, "empty policy")
	}
	name := req.Name
	if name == "" {
		name = "policy"
	}
	if s.cfg.AuthorizePolicy != nil {
		if err := s.cfg.AuthorizePolicy(ctx, req); err != nil {
			return nil, err
		}
	}
	st, err := s.cfg.ApplyPolicy(name, req.Content)
	if err != nil {
		code := codes.FailedPrecondition
		if s.cfg.BadPolicy != nil && errors.Is(err, s.cfg.BadPolicy) {
			code = codes.InvalidArgument
		}
		return nil, status.Error(code, err.Error())
	}
	return &vigilv1.ApplyPolicyResponse{Policy: st}, nil
}

// Pending implements vigilv1.AgentServer.
func (s *Server) Pending(ctx context.Context, req *vigilv1.PendingRequest) (*vigilv1.PendingResponse, error) {
	return call(ctx, s.cfg.Pending, req, "execution control is not running")
}

// Approve implements vigilv1.AgentServer.
func (s *Server) Approve(ctx context.Context, req *vigilv1.ApproveRequest) (*vigilv1.ApproveResponse, error) {
	if s.cfg.AuthorizeApprove != nil && s.cfg.Approve != nil {
		if err := s.cfg.AuthorizeApprove(ctx, req); err != nil {
			return nil, err
		}
	}
	return call(ctx, s.cfg.Approve, req, "execution control is not running")
}

// Stop implements vigilv1.AgentServer.
func (s *Server) Stop(ctx context.Context, req *vigilv1.StopRequest) (*vigilv1.StopResponse, error) {
	return call(ctx, s.cfg.StopAgent, req, "this agent cannot be stopped through the API")
}

// call runs an optional handler: Unimplemented with why when it is nil,
// its error as-is when it carries a gRPC status, Internal otherwise.
func call[Req, Resp any](ctx context.Context, h func(context.Context, Req) (Resp, error), req Req, why string) (Resp, error) {
	var zero Resp
	if h == nil {
		return zero, status.Error(codes.Unimplemented, why)
	}
	resp, err := h(ctx, req)
	if err != nil {
		if _, ok := status.FromError(err); ok {
			return zero, err
		}
		return zero, status.Error(codes.Internal, err.Error())
	}
	return resp, nil
}

// Status implements vigilv1.AgentServer.
func (s *Server) Status(ctx context.Context, _ *vigilv1.StatusRequest) (*vigilv1.StatusResponse, error) {
	return s.cfg.Status(ctx), nil
}

// Events implements vigilv1.AgentServer: stored events matching the
// request, oldest first, then (with follow) new ones as they are stored.
//
// Nothing is lost or repeated between the two parts: the subscription is
// made before the store is read, the stored part ends at the last id
// stored at that moment, and the live part skips ids up to there. A
// follower that falls behind the broker catches up from the store.
func (s *Server) Events(req *vigilv1.EventsRequest, stream grpc.ServerStreamingServer[vigilv1.Event]) error {
	ctx := stream.Context()
	f, err := filterFrom(req)
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	var sub *Subscription
	if req.GetFollow() {
		sub = s.cfg.Broker.Subscribe()
		defer sub.Close()
		last, err := s.cfg.Store.LastID(ctx)
		if err != nil {
			return status.Error(codes.Internal, err.Error())
		}
		if last == 0 {
			// Nothing stored yet: everything arrives through sub.
			return s.follow(ctx, stream, sub, f, 0)
		}
		f.MaxID = last
	}
	if err := s.cfg.Store.Scan(ctx, f, stream.Send); err != nil {
		return scanError(ctx, err)
	}
	if sub == nil {
		return nil
	}
	return s.follow(ctx, stream, sub, f, f.MaxID)
}

// follow streams live events with id > last that match f.
func (s *Server) follow(ctx context.Context, stream grpc.ServerStreamingServer[vigilv1.Event], sub *Subscription, f store.Filter, last uint64) error {
	live := f
	live.Limit, live.Latest, live.MaxID = 0, false, 0
	// Ids are checked against last, not by Match, so that events that could
	// not be stored (id 0) still pass.
	last = max(last, live.AfterID)
	live.AfterID = 0
	for {
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case ev, ok := <-sub.C():
			if !ok {
				return nil // the agent is stopping
			}
			if sub.TakeLagged() {
				// Events were dropped for this follower; all of them
				// are stored (events are published after storing).
				catchUp := live
				catchUp.AfterID = last
				err := s.cfg.Store.Scan(ctx, catchUp, func(e *vigilv1.Event) error {
					last = e.GetId()
					return stream.Send(e)
				})
				if err != nil {
					return scanError(ctx, err)
				}
			}
			// Id 0: could not be stored; it is only ever seen live.
			if ev.GetId() != 0 && ev.GetId() <= last {
				continue
			}
			if !live.Match(ev) {
				continue
			}
			if err := stream.Send(ev); err != nil {
				return err
			}
			if ev.GetId() != 0 {
				last = ev.GetId()
			}
		}
	}
}

func scanError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return status.FromContextError(ctx.Err()).Err()
	}
	if _, ok := status.FromError(err); ok {
		return err // a stream.Send error
	}
	return status.Error(codes.Internal, err.Error())
}

// filterFrom turns a request into a store filter.
func filterFrom(req *vigilv1.EventsRequest) (store.Filter, error) {
	for _, k := range req.GetKinds() {
		if !slices.Contains(Kinds, k) {
			return store.Filter{}, fmt.Errorf("unknown event kind %q (kinds: %s)", k, strings.Join(Kinds, ", "))
		}
	}
	f := store.Filter{
		Kinds:    req.GetKinds(),
		PID:      req.GetPid(),
		AfterID:  req.GetAfterId(),
		AfterSeq: req.GetAfterSeq(),
		Limit:    int(req.GetLimit()),
		Latest:   req.GetLatest(),
	}
	if req.GetSince() != nil {
		if err := req.GetSince().CheckValid(); err != nil {
			return store.Filter{}, fmt.Errorf("since: %w", err)
		}
		f.Since = req.GetSince().AsTime()
	}
	return f, nil
}

// Listen opens the API socket at path: the directory is created (mode
// 0700) if missing, a stale socket left by a dead agent is removed, and a
// socket a live agent answers on is left alone with an error. The socket
// is made mode 0600.
func Listen(path string) (net.Listener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("socket directory %s: %w", dir, err)
	}
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("socket %s: %w", path, err)
	case fi.Mode().Type() != fs.ModeSocket:
		return nil, fmt.Errorf("socket %s: exists and is not a socket; remove it or choose another socket path", path)
	default:
		conn, err := net.DialTimeout("unix", path, 2*time.Second)
		if err == nil {
			conn.Close()
			return nil, fmt.Errorf("socket %s: another agent is already listening on it; stop it first (or choose another socket path)", path)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("socket %s: exists and cannot be checked: %w", path, err)
		}
		// Nobody listens: left behind by an agent that died.
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("socket %s: remove stale socket: %w", path, err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	return ln, nil
}
