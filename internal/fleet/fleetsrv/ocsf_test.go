package fleetsrv_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	fleetv1 "github.com/vigil-hips/vigil/api/vigil/fleet/v1"
	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/fleet/fleetdb"
	"github.com/vigil-hips/vigil/internal/fleet/fleetsrv"
	"github.com/vigil-hips/vigil/internal/fleet/fleetstream"
	"github.com/vigil-hips/vigil/internal/ocsf"
	"github.com/vigil-hips/vigil/internal/testutil"
)

// TestOCSFExportOfUploads: the server exports each uploaded event once (a
// retried batch is not exported again), as OCSF with the host's id and
// name and the event's disposition: with uploads stored straight to the
// database, and through a stream whose consumer applies them only after
// every upload, the retries included, was accepted (what the database
// holds then says nothing about what was already exported).
func TestOCSFExportOfUploads(t *testing.T) {
	t.Run("database", func(t *testing.T) { ocsfExport(t, false) })
	t.Run("stream", func(t *testing.T) { ocsfExport(t, true) })
}

func ocsfExport(t *testing.T, stream bool) {
	path := filepath.Join(t.TempDir(), "ocsf.jsonl")
	exp, err := ocsf.New(ocsf.Config{File: path, Product: ocsf.Product{Name: "Vigil server"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var apply func() // starts the stream's consumer
	e := start(t, true, func(c *fleetsrv.Config) {
		c.Export = func(h fleetdb.Host, evs []*vigilv1.Event) {
			if _, err := exp.Export(ocsf.Host{ID: h.ID, Hostname: h.Hostname}, evs); err != nil {
				t.Error(err)
			}
		}
		if stream {
			apply = streamSink(t, c)
		}
	})
	ctx := ctx5(t)
	a := e.mustEnroll("a")
	blocked, ran := digest("blocked tool"), digest("ran")
	up := func(after, through uint64, evs ...*vigilv1.Event) {
		t.Helper()
		if _, err := a.c.UploadEvents(ctx, &fleetv1.UploadEventsRequest{AfterId: after, ThroughId: through, Events: evs}); err != nil {
			t.Fatal(err)
		}
	}
	trusted := execEvent(7, ran, "trusted", false)
	trusted.Verdict = nil // execution control let it run
	up(0, 10, execEvent(3, blocked, "unknown", true), trusted)
	up(5, 10, trusted)                                         // a retry
	up(0, 10, execEvent(3, blocked, "unknown", true), trusted) // the same batch again
	up(10, 12, execEvent(12, blocked, "unknown", false))
	if stream {
		apply()
		if err := testutil.Within(10*time.Second, 50*time.Millisecond, func() error {
			if evs, err := e.store.Events(ctx, "a", 0); err != nil || len(evs) < 3 {
				return fmt.Errorf("stored %d of 3 events (%v)", len(evs), err)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := exp.Close(time.Second); err != nil {
		t.Fatal(err)
	}
	fh, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	got := map[string]string{}
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		var m struct {
			ClassUID int `json:"class_uid"`
			Metadata struct {
				UID string `json:"uid"`
			} `json:"metadata"`
			Device struct {
				UID, Hostname string
			} `json:"device"`
			Unmapped struct {
				Disposition string `json:"vigil_disposition"`
			} `json:"unmapped"`
		}
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatal(err)
		}
		if m.ClassUID != ocsf.ClassProcess || m.Device.UID != "a" || m.Device.Hostname != "sim-a" {
			t.Fatalf("exported %s", sc.Bytes())
		}
		if _, dup := got[m.Metadata.UID]; dup {
			t.Fatalf("event %s exported twice", m.Metadata.UID)
		}
		got[m.Metadata.UID] = m.Unmapped.Disposition
	}
	want := map[string]string{"a:3": ocsf.Blocked, "a:7": ocsf.Allowed, "a:12": ocsf.WouldBlock}
	if len(got) != len(want) {
		t.Fatalf("exported %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %q, want %q", k, got[k], v)
		}
	}
}

// streamSink puts an embedded JetStream between the server and its
// database (c.Sink), as `vigil server --stream embedded` does, and
// returns the function that starts applying the stream to the database.
func streamSink(t *testing.T, c *fleetsrv.Config) (apply func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ns, err := fleetstream.Embedded(filepath.Join(t.TempDir(), "js"))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := fleetstream.Connect(ctx, "", ns, "test")
	if err != nil {
		t.Fatal(err)
	}
	cons, err := conn.Consumer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	db := c.Sink
	c.Sink = &fleetstream.Sink{C: conn, Store: db}
	done := make(chan struct{})
	started := false
	t.Cleanup(func() {
		cancel()
		if started {
			<-done
		}
		conn.Close()
		ns.Shutdown()
	})
	return func() {
		started = true
		go func() { defer close(done); conn.Apply(ctx, cons, db, &fleetstream.Stats{}, nil) }()
	}
}
