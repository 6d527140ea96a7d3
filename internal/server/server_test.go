package server_test

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/server"
	"github.com/vigil-hips/vigil/internal/store"
)

type harness struct {
	store  *store.Store
	broker *server.Broker
	client vigilv1.AgentClient
	sock   string
}

func start(t *testing.T) *harness {
	t.Helper()
	dir := t.TempDir()
	st, err := store.Open(context.Background(), filepath.Join(dir, "events.db"))
	if err != nil {
		t.Fatal(err)
	}
	b := server.NewBroker()
	srv, err := server.New(server.Config{
		Store:  st,
		Broker: b,
		Status: func(context.Context) *vigilv1.StatusResponse {
			return &vigilv1.StatusResponse{Version: "test", SensorsAttached: true}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "run", "vigil.sock")
	ln, err := server.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		b.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		st.Close()
	})
	return &harness{store: st, broker: b, client: vigilv1.NewAgentClient(conn), sock: sock}
}

// put stores and publishes events, as the agent does.
func (h *harness) put(t *testing.T, evs ...*vigilv1.Event) {
	t.Helper()
	if err := h.store.Append(context.Background(), evs); err != nil {
		t.Fatal(err)
	}
	h.broker.Publish(evs)
}

func mk(seq uint64, kind string, pid uint32) *vigilv1.Event {
	return &vigilv1.Event{Seq: seq, Kind: kind, Time: timestamppb.Now(), Process: &vigilv1.Process{Pid: pid}}
}

func recvN(t *testing.T, s grpc.ServerStreamingClient[vigilv1.Event], n int) []*vigilv1.Event {
	t.Helper()
	var out []*vigilv1.Event
	for len(out) < n {
		ev, err := s.Recv()
		if err != nil {
			t.Fatalf("after %d events: %v", len(out), err)
		}
		out = append(out, ev)
	}
	return out
}

func TestSocketModes(t *testing.T) {
	h := start(t)
	fi, err := os.Stat(h.sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want 0600", fi.Mode().Perm())
	}
	di, err := os.Stat(filepath.Dir(h.sock))
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm() != 0o700 {
		t.Errorf("socket dir mode %v, want 0700", di.Mode().Perm())
	}
}

func TestListenRefusesLiveAndRemovesStale(t *testing.T) {
	h := start(t)
	_, err := server.Listen(h.sock)
	if err == nil || !strings.Contains(err.Error(), "another agent is already listening") {
		t.Fatalf("Listen on a live socket: %v", err)
	}

	// A stale socket: bound, then its listener gone without unlinking.
	stale := filepath.Join(t.TempDir(), "stale.sock")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	ln, err = server.Listen(stale)
	if err != nil {
		t.Fatalf("Listen on a stale socket: %v", err)
	}
	ln.Close()

	// Not a socket.
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o600)
	if _, err := server.Listen(file); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Listen on a file: %v", err)
	}
}

func TestStatus(t *testing.T) {
	h := start(t)
	st, err := h.client.Status(context.Background(), &vigilv1.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetVersion() != "test" || !st.GetSensorsAttached() {
		t.Fatalf("Status = %v", st)
	}
}

func TestEventsQuery(t *testing.T) {
	h := start(t)
	h.put(t, mk(1, "exec", 1), mk(2, "fork", 1), mk(3, "exec", 2), mk(4, "gap", 0))
	ctx := context.Background()

	s, err := h.client.Events(ctx, &vigilv1.EventsRequest{Kinds: []string{"exec", "gap"}})
	if err != nil {
		t.Fatal(err)
	}
	got := recvN(t, s, 3)
	if got[0].GetSeq() != 1 || got[1].GetSeq() != 3 || got[2].GetKind() != "gap" {
		t.Fatalf("got %v", got)
	}
	if _, err := s.Recv(); err != io.EOF {
		t.Fatalf("end of stream: %v, want EOF", err)
	}

	s, err = h.client.Events(ctx, &vigilv1.EventsRequest{Limit: 2, Latest: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := recvN(t, s, 2); got[0].GetId() != 3 || got[1].GetId() != 4 {
		t.Fatalf("latest 2: %v", got)
	}

	s, err = h.client.Events(ctx, &vigilv1.EventsRequest{Kinds: []string{"exce"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), `unknown event kind "exce"`) {
		t.Fatalf("bad kind: %v", err)
	}
}

func TestEventsFollow(t *testing.T) {
	h := start(t)
	h.put(t, mk(1, "exec", 1), mk(2, "exec", 1))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := h.client.Events(ctx, &vigilv1.EventsRequest{Follow: true, Limit: 1, Latest: true, Kinds: []string{"exec", "gap"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := recvN(t, s, 1); got[0].GetSeq() != 2 {
		t.Fatalf("stored part: %v", got)
	}
	four := mk(4, "exec", 1)
	h.put(t, mk(3, "fork", 1), four)
	// Published twice (as if it raced with the query): must not repeat.
	h.broker.Publish([]*vigilv1.Event{four})
	h.put(t, mk(5, "gap", 0))
	unstored := mk(6, "exec", 1) // id 0: the store failed; still delivered
	h.broker.Publish([]*vigilv1.Event{unstored})
	got := recvN(t, s, 3)
	if got[0].GetSeq() != 4 || got[1].GetSeq() != 5 || got[2].GetSeq() != 6 {
		t.Fatalf("live part: %v", got)
	}
	if got[0].GetId() != 4 || got[1].GetId() != 5 || got[2].GetId() != 0 {
		t.Fatalf("live ids: %v", got)
	}
	// The broker closing (agent stopping) ends the stream.
	h.broker.Close()
	if _, err := s.Recv(); err != io.EOF {
		t.Fatalf("after broker close: %v, want EOF", err)
	}
}

func TestEventsFollowEmptyStore(t *testing.T) {
	h := start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := h.client.Events(ctx, &vigilv1.EventsRequest{Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	waitSubscribed(t, h)
	h.put(t, mk(1, "exec", 1))
	if got := recvN(t, s, 1); got[0].GetId() != 1 {
		t.Fatalf("got %v", got)
	}
}

// waitSubscribed waits until a follower that just called Events has
// subscribed.
func waitSubscribed(t *testing.T, h *harness) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for h.broker.Subscribers() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("follower did not subscribe")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A follower that does not read while many events are published falls
// behind the broker; it must still see every event once, in order.
func TestEventsFollowLagging(t *testing.T) {
	h := start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h.put(t, mk(1, "exec", 1))
	s, err := h.client.Events(ctx, &vigilv1.EventsRequest{Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	recvN(t, s, 1)
	const n = 20_000
	for i := 0; i < n; i += 500 {
		batch := make([]*vigilv1.Event, 500)
		for j := range batch {
			batch[j] = mk(uint64(i+j+2), "exec", 1)
		}
		h.put(t, batch...)
	}
	got := recvN(t, s, n)
	for i, ev := range got {
		if ev.GetId() != uint64(i+2) {
			t.Fatalf("event %d: id %d, want %d", i, ev.GetId(), i+2)
		}
	}
	// And nothing more.
	h.put(t, mk(n+2, "exit", 1))
	if got := recvN(t, s, 1); got[0].GetKind() != "exit" {
		t.Fatalf("after catch-up: %v", got)
	}
	cancel()
	if _, err := s.Recv(); status.Code(err) != codes.Canceled && !errors.Is(err, context.Canceled) {
		t.Fatalf("after cancel: %v", err)
	}
}
