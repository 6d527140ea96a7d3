package fleetsrv_test

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	fleetv1 "github.com/vigil-hips/vigil/api/vigil/fleet/v1"
	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/fleet/fleetdb"
	"github.com/vigil-hips/vigil/internal/fleet/fleetsrv"
	"github.com/vigil-hips/vigil/internal/ocsf"
)

// TestOCSFExportOfUploads: the server exports each uploaded event once (a
// retried batch is not exported again), as OCSF with the host's id and
// name and the event's disposition.
func TestOCSFExportOfUploads(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ocsf.jsonl")
	exp, err := ocsf.New(ocsf.Config{File: path, Product: ocsf.Product{Name: "Vigil server"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	e := start(t, true, func(c *fleetsrv.Config) {
		c.Export = func(h fleetdb.Host, evs []*vigilv1.Event) {
			if _, err := exp.Export(ocsf.Host{ID: h.ID, Hostname: h.Hostname}, evs); err != nil {
				t.Error(err)
			}
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
	up(5, 10, trusted) // a retry
	up(10, 12, execEvent(12, blocked, "unknown", false))
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
