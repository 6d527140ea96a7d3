package fleetsrv_test

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	fleetv1 "github.com/vigil-hips/vigil/api/vigil/fleet/v1"
	"github.com/vigil-hips/vigil/internal/fleet"
	"github.com/vigil-hips/vigil/internal/fleet/fleetdb"
	"github.com/vigil-hips/vigil/internal/fleet/fleetsrv"
)

// TestReplicaRecheck: two servers on one database and no change notices
// (PostgreSQL without a stream): an agent watching replica B gets a rule
// approved on replica A at B's next recheck; with Recheck off it would
// not (B is never told), which the test shows first.
func TestReplicaRecheck(t *testing.T) {
	e := start(t, true) // replica A, with its database, CA and admin socket
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	startB := func(recheck time.Duration) string {
		db, err := fleetdb.OpenSQLite(ctx, filepath.Join(e.dir, fleetdb.FileName))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		ca, _, err := fleet.LoadOrCreateCA(e.dir, "test CA")
		if err != nil {
			t.Fatal(err)
		}
		cert, _ := ca.ServerCert([]string{"127.0.0.1"})
		srv, err := fleetsrv.New(fleetsrv.Config{Store: db, Sink: db, CA: ca, Cert: cert, SigningKey: e.priv, Recheck: recheck})
		if err != nil {
			t.Fatal(err)
		}
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		aln, _ := net.Listen("unix", filepath.Join(t.TempDir(), "admin.sock"))
		sctx, scancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- srv.Serve(sctx, ln, aln) }()
		t.Cleanup(func() { scancel(); <-done })
		return ln.Addr().String()
	}
	watch := func(addr, id string) fleetv1.Fleet_WatchClient {
		h := e.mustEnroll(id)
		conn, err := fleet.Dial(addr, e.caFile, h.cred)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		w, err := fleetv1.NewFleetClient(conn).Watch(ctx, &fleetv1.WatchRequest{})
		if err != nil {
			t.Fatal(err)
		}
		next(t, w, fleet.Verifier{Key: e.pub, Host: id}, 0) // version 1
		return w
	}
	silent := watch(startB(0), "silent")
	polled := watch(startB(300*time.Millisecond), "polled")

	conn, err := grpc.NewClient("unix://"+filepath.Join(e.dir, "admin.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := fleetv1.NewFleetAdminClient(conn).Approve(ctx, &fleetv1.ApproveRequest{Sha256: digest("tool"), Scope: "global"}); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if b := next(t, polled, fleet.Verifier{Key: e.pub, Host: "polled"}, 1); b.Version != 2 || len(b.Hashes) != 1 {
		t.Fatalf("polled replica: %+v", b)
	}
	t.Logf("the rule reached the agent on the rechecking replica %s after the approval on A", time.Since(t0).Round(time.Millisecond))
	got := make(chan error, 1)
	go func() { _, err := silent.Recv(); got <- err }()
	select {
	case err := <-got:
		t.Fatalf("a replica without notices or recheck pushed a change it was never told of (%v): the test cannot tell recheck from push", err)
	case <-time.After(time.Second):
	}
}
