package agent_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/admin"
	"github.com/vigil-hips/vigil/internal/sign"
)

func tamperEvents(t *testing.T, r *running, want int) []*vigilv1.Event {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s, err := r.client.Events(context.Background(), &vigilv1.EventsRequest{Kinds: []string{"tamper"}})
		if err != nil {
			t.Fatal(err)
		}
		var evs []*vigilv1.Event
		for {
			ev, err := s.Recv()
			if err != nil {
				break
			}
			evs = append(evs, ev)
		}
		if len(evs) >= want || time.Now().After(deadline) {
			return evs
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Without BPF LSM protection is degraded to detection: status says so,
// and an injection the sensor sees aimed at the agent is also a tamper
// event (one aimed elsewhere is not).
func TestTamperDegradedToDetection(t *testing.T) {
	r := start(t, testConfig(t))
	st, err := r.client.Status(context.Background(), &vigilv1.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var prot *vigilv1.Feature
	for _, f := range st.GetFeatures() {
		if f.GetName() == "tamper_protection" {
			prot = f
		}
	}
	if prot == nil || prot.Available || !strings.Contains(prot.Detail, "degraded to detection") {
		t.Fatalf("tamper_protection feature: %v", prot)
	}
	inject := func(seq uint64, target uint32) *vigilv1.Event {
		return &vigilv1.Event{Seq: seq, Kind: "inject", Backend: "tracepoint", Hook: "tracepoint/syscalls/sys_enter_ptrace",
			Process: &vigilv1.Process{Pid: 4242, Comm: "gdb"},
			Detail:  &vigilv1.Event_Inject{Inject: &vigilv1.Inject{Method: "ptrace_attach", TargetPid: target}}}
	}
	r.sensor.Emit(inject(1, uint32(os.Getpid())), inject(2, 1))
	evs := tamperEvents(t, r, 1)
	if len(evs) != 1 {
		t.Fatalf("%d tamper events, want 1: %v", len(evs), evs)
	}
	tm := evs[0].GetTamper()
	if evs[0].GetProcess().GetPid() != 4242 || tm.GetMethod() != "ptrace" || tm.GetRefused() ||
		!strings.Contains(tm.GetTarget(), "pid ") {
		t.Fatalf("tamper event %v", evs[0])
	}
}

// With an admin key, Stop needs a valid token: unsigned, foreign-host and
// wrongly signed requests are refused with PermissionDenied and a reason;
// a valid one stops the agent; it is refused as replayed by a restarted
// agent.
func TestStopNeedsToken(t *testing.T) {
	cfg := testConfig(t)
	dir := t.TempDir()
	pub, priv, err := sign.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	_, otherPriv, _ := sign.GenerateKey()
	pubPEM, _ := sign.MarshalPublicKey(pub)
	cfg.AdminKeyPath = filepath.Join(dir, "admin.pub")
	cfg.HostIDFile = filepath.Join(dir, "machine-id")
	if err := os.WriteFile(cfg.AdminKeyPath, pubPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg.HostIDFile, []byte("host-a\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	token := func(key []byte, host string) []byte {
		n, _ := admin.NewNonce()
		tok, err := admin.Sign(context.Background(), key, admin.Claims{Action: admin.ActionStop, Host: host,
			Expires: time.Now().Add(time.Minute), Nonce: n})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	r := start(t, cfg)
	for name, tc := range map[string]struct {
		token []byte
		want  string
	}{
		"none":          {nil, "no admin token"},
		"foreign host":  {token(priv, "host-b"), "another host"},
		"bad signature": {token(otherPriv, "host-a"), "does not verify"},
	} {
		_, err := r.client.Stop(context.Background(), &vigilv1.StopRequest{Token: tc.token})
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want PermissionDenied mentioning %q", name, err, tc.want)
		}
	}
	valid := token(priv, "host-a")
	if _, err := r.client.Stop(context.Background(), &vigilv1.StopRequest{Token: valid}); err != nil {
		t.Fatalf("valid token: %v", err)
	}
	select {
	case err := <-r.done:
		if err != nil {
			t.Fatalf("agent: %v", err)
		}
		r.cancel = nil
	case <-time.After(15 * time.Second):
		t.Fatal("agent did not stop on a valid token")
	}

	r2 := start(t, cfg)
	_, err = r2.client.Stop(context.Background(), &vigilv1.StopRequest{Token: valid})
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "already used") {
		t.Fatalf("replayed token after restart: %v", err)
	}
}
