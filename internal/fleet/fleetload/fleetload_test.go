package fleetload_test

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
	"github.com/vigil-hips/vigil/internal/fleet/fleetload"
	"github.com/vigil-hips/vigil/internal/fleet/fleetsrv"
	"github.com/vigil-hips/vigil/internal/fleet/fleetstream"
	"github.com/vigil-hips/vigil/internal/sign"
)

// serve runs a fleet server on loopback (SQLite; with stream, uploads go
// through an embedded JetStream) and returns its address and admin client.
func serve(t *testing.T, stream bool) (addr, caFile string, admin fleetv1.FleetAdminClient, srv *fleetsrv.Server) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	dir := t.TempDir()
	ca, _, err := fleet.LoadOrCreateCA(dir, "test CA")
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := ca.ServerCert([]string{"127.0.0.1"})
	db, err := fleetdb.OpenSQLite(ctx, filepath.Join(dir, fleetdb.FileName))
	if err != nil {
		t.Fatal(err)
	}
	_, priv, _ := sign.GenerateKey()
	cfg := fleetsrv.Config{Store: db, Sink: db, CA: ca, Cert: cert, SigningKey: priv}
	done := []func(){func() { db.Close() }}
	if stream {
		ns, err := fleetstream.Embedded(filepath.Join(dir, "js"))
		if err != nil {
			t.Fatal(err)
		}
		c, err := fleetstream.Connect(ctx, "", ns, "test")
		if err != nil {
			t.Fatal(err)
		}
		cons, err := c.Consumer(ctx)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Sink, cfg.Notices = &fleetstream.Sink{C: c, Store: db}, c
		applied := make(chan struct{})
		go func() { c.Apply(ctx, cons, db, &fleetstream.Stats{}, nil); close(applied) }()
		done = append([]func(){func() { <-applied; c.Close(); ns.Shutdown() }}, done...)
	}
	if srv, err = fleetsrv.New(cfg); err != nil {
		t.Fatal(err)
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	aln, _ := net.Listen("unix", filepath.Join(dir, "admin.sock"))
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln, aln) }()
	conn, err := grpc.NewClient("unix://"+filepath.Join(dir, "admin.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		cancel()
		<-served
		for _, f := range done {
			f()
		}
	})
	return ln.Addr().String(), filepath.Join(dir, "ca.pem"), fleetv1.NewFleetAdminClient(conn), srv
}

func TestLoadCountsWhatWasStored(t *testing.T) {
	for _, stream := range []bool{false, true} {
		t.Run(map[bool]string{false: "direct", true: "stream"}[stream], func(t *testing.T) {
			addr, caFile, admin, srv := serve(t, stream)
			secret := "load-test-secret-" + time.Now().Format("150405.000000")
			if err := srv.AddSecret(context.Background(), "load", secret); err != nil {
				t.Fatal(err)
			}
			sf, err := fleetload.WriteSecret(t.TempDir(), secret)
			if err != nil {
				t.Fatal(err)
			}
			res, err := fleetload.Run(context.Background(), fleetload.Config{Servers: []string{addr}, CAFile: caFile, SecretFile: sf,
				Admin: admin, Hosts: 20, EventsPerSec: 5, Duration: 3 * time.Second, Drain: 20 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%+v", res)
			if res.Enrolled != 20 || res.WatchStreams != 20 {
				t.Fatalf("enrolled %d, watching %d; want 20, 20", res.Enrolled, res.WatchStreams)
			}
			// About 3 ticks per host; a loaded machine may manage fewer.
			if res.EventsAcked < 20*5 || res.EventsAcked > res.EventsSent {
				t.Fatalf("acked %d of %d sent", res.EventsAcked, res.EventsSent)
			}
			if res.Lost != 0 || res.Stored != res.EventsAcked || res.ServerLost != 0 || res.UploadErrors != 0 {
				t.Fatalf("lost %d, stored %d of %d acked, server lost %d, upload errors %d (%v)",
					res.Lost, res.Stored, res.EventsAcked, res.ServerLost, res.UploadErrors, res.Errors)
			}
		})
	}
	// Bad input is refused before anything runs.
	if _, err := fleetload.Run(context.Background(), fleetload.Config{Hosts: 0}); err == nil {
		t.Fatal("a config without servers or hosts was accepted")
	}
}
