package agent

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/agent/agenttest"
	"github.com/vigil-hips/vigil/internal/metrics"
	"github.com/vigil-hips/vigil/internal/sensor"
	"github.com/vigil-hips/vigil/internal/server"
	"github.com/vigil-hips/vigil/internal/sign"
	"github.com/vigil-hips/vigil/internal/store"
	"github.com/vigil-hips/vigil/internal/trust"
)

// TestCatalogSignersClaimed: events about unknown code carry the key IDs
// of the signers not approved on the host whose catalogs in catalog_dir
// list its digest (sorted, without duplicates, at most maxClaimed), as
// they come out of the pipeline. A catalog whose signature names an
// approved key but does not verify (forged) claims nothing, nor does an
// event about trusted or denied code. Approving a signer adds its catalog
// (its digests are trusted, it claims nothing more; an older catalog it
// supersedes claims nothing either); revoking it makes its catalogs claim
// again, and approving it once more adds them again, even with no reload
// between the two; a catalog_dir emptied claims nothing.
func TestCatalogSignersClaimed(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	db, err := trust.Open(ctx, filepath.Join(dir, trust.FileName))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	st, err := store.Open(ctx, filepath.Join(dir, "events.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })

	type key struct {
		pub  ed25519.PublicKey
		priv ed25519.PrivateKey
		id   string
	}
	newKey := func() key {
		pub, priv, err := sign.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := sign.KeyID(pub)
		return key{pub, priv, id}
	}
	approved, k, k2 := newKey(), newKey(), newKey()
	if _, err := db.ApproveSigner(ctx, approved.pub, ""); err != nil {
		t.Fatal(err)
	}
	d, e, trustedD, many := sum("D"), sum("E"), sum("T"), sum("many")
	catDir := filepath.Join(dir, "catalogs")
	os.Mkdir(catDir, 0o755)
	issued := time.Now().Add(-time.Hour)
	writeCat := func(file string, priv ed25519.PrivateKey, name string, ds ...[32]byte) []byte {
		t.Helper()
		b, err := trust.SignCatalog(ctx, priv, trust.NewCatalog(name, ds, issued))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(catDir, file), b, 0o644); err != nil {
			t.Fatal(err)
		}
		return b
	}
	writeCat("k.catalog", k.priv, "k", d, many)
	// An older catalog of K's of the same name: once K is approved the
	// newer one supersedes it, and what only it lists is neither trusted
	// nor claimed.
	old := sum("old")
	issued = issued.Add(-time.Minute)
	writeCat("k-old.catalog", k.priv, "k", d, old, sum("old too"))
	issued = issued.Add(time.Minute)
	writeCat("k-again.catalog", k.priv, "k-again", d) // K twice for D: once in the event
	writeCat("k2.catalog", k2.priv, "k2", d)
	writeCat("approved.catalog", approved.priv, "approved", trustedD)
	// Forged: the approved key's signature over another payload.
	forged := writeCat("forged.catalog", approved.priv, "forged", sum("x"))
	var env sign.Envelope
	if err := json.Unmarshal(forged, &env); err != nil {
		t.Fatal(err)
	}
	payload, _ := json.Marshal(trust.NewCatalog("forged", [][32]byte{e}, issued))
	env.Payload = base64.StdEncoding.EncodeToString(payload)
	forged, _ = json.Marshal(&env)
	os.WriteFile(filepath.Join(catDir, "forged.catalog"), forged, 0o644)
	if _, err := db.AddCatalog(ctx, forged); !errors.Is(err, trust.ErrBadSignature) {
		t.Fatalf("the forged catalog: %v, want ErrBadSignature", err)
	}
	// More signers than an event reports for one digest.
	var manyIDs []string
	for i := range maxClaimed + 2 {
		m := newKey()
		manyIDs = append(manyIDs, m.id)
		writeCat(fmt.Sprintf("many-%d.catalog", i), m.priv, "many", many)
	}
	manyIDs = append(manyIDs, k.id)
	slices.Sort(manyIDs)

	fake := &compilingSensor{Sensor: agenttest.New(sensor.Info{Backend: sensor.BackendTracepoint})}
	var s sensor.Sensor = fake
	a := &agent{cfg: Config{StateDir: dir}, log: slog.New(slog.DiscardHandler),
		xc:      &execState{db: db, catDone: map[string]string{}, pending: make(chan trust.Attempt, pendingQueue)},
		metrics: metrics.New(), broker: server.NewBroker(), local: make(chan *vigilv1.Event, localQueue), store: st}
	a.sensor.Store(&s)
	src := fmt.Sprintf("version: 1\nname: lockdown\nmode: enforce\nrules: []\ntrust:\n  mode: lockdown\n  sources: [catalogs]\n  catalog_dir: %s\n", catDir)
	if _, err := a.applyPolicy("lockdown.yaml", []byte(src)); err != nil {
		t.Fatal(err)
	}
	sub := a.broker.Subscribe()
	defer sub.Close()
	if err := fake.Start(ctx); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.pipeline(ctx, fake) }()
	defer func() { cancel(); <-done }()

	seq := uint64(0)
	// through sends an execution control event through the pipeline and
	// returns the catalog signers it came out with.
	through := func(verdict string, sha [32]byte) []string {
		t.Helper()
		seq++
		ev := &vigilv1.Event{Seq: seq, Kind: "exec", Backend: "tracepoint", Time: timestamppb.Now(),
			Process: &vigilv1.Process{Pid: 42, Exe: "/usr/bin/bash"},
			Detail:  &vigilv1.Event_Exec{Exec: &vigilv1.Exec{File: &vigilv1.File{Path: "/tmp/x"}}},
			Trust:   &vigilv1.Trust{Sha256: hex.EncodeToString(sha[:]), Verdict: verdict, Mode: "lockdown"}}
		if !fake.Emit(ev) {
			t.Fatal("sensor stopped")
		}
		for deadline := time.After(10 * time.Second); ; {
			select {
			case got := <-sub.C():
				if got.GetSeq() == seq {
					return got.GetTrust().GetCatalogSigners()
				}
			case <-deadline:
				t.Fatalf("event %d did not come out of the pipeline", seq)
			}
		}
	}
	check := func(what, verdict string, sha [32]byte, want ...string) {
		t.Helper()
		if got := through(verdict, sha); !slices.Equal(got, want) {
			t.Errorf("%s: catalog signers %v, want %v", what, got, want)
		}
	}
	reload := func() {
		t.Helper()
		if err := a.reloadExecControl(ctx); err != nil {
			t.Fatal(err)
		}
	}

	kk2 := slices.Sorted(slices.Values([]string{k.id, k2.id}))
	check("unknown D (catalogs of K, K again and K2)", "unknown", d, kk2...)
	check("unknown E (forged catalog naming the approved key)", "unknown", e, nil...)
	check("trusted D", "trusted", d, nil...)
	check("denied D", "denied", d, nil...)
	check("unknown code in no catalog", "unknown", sum("nowhere"), nil...)
	check("unknown digest of many signers", "unknown", many, manyIDs[:maxClaimed]...)
	check("unknown digest of K's older catalog", "unknown", old, k.id)

	// K approved: its catalogs are added, only K2 still claims D.
	if _, err := db.ApproveSigner(ctx, k.pub, ""); err != nil {
		t.Fatal(err)
	}
	reload()
	if cats, _ := db.Catalogs(ctx); !slices.ContainsFunc(cats, func(c trust.CatalogInfo) bool { return c.KeyID == k.id }) {
		t.Fatalf("K approved, its catalog not added: %v", cats)
	}
	check("unknown D, K approved", "unknown", d, k2.id)
	reload() // the older catalog of K's is superseded now
	check("unknown digest of K's superseded catalog, K approved", "unknown", old, nil...)
	hasK := func() bool {
		cats, err := db.Catalogs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return slices.ContainsFunc(cats, func(c trust.CatalogInfo) bool { return c.KeyID == k.id && c.Name == "k" && c.Digests == 2 })
	}
	// K revoked: its catalogs are gone from the database and claim again.
	if err := db.RevokeSigner(ctx, k.id); err != nil {
		t.Fatal(err)
	}
	reload()
	check("unknown D, K revoked", "unknown", d, kk2...)
	check("unknown digest of K's older catalog, K revoked", "unknown", old, k.id)
	// K approved once more: its catalogs are added again.
	if _, err := db.ApproveSigner(ctx, k.pub, ""); err != nil {
		t.Fatal(err)
	}
	reload()
	if !hasK() {
		t.Fatal("K approved again, its catalog not added again")
	}
	check("unknown D, K approved again", "unknown", d, k2.id)
	// Revoked and approved again with no reload in between: the agent
	// still sees its catalogs are gone from the database.
	if err := db.RevokeSigner(ctx, k.id); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ApproveSigner(ctx, k.pub, ""); err != nil {
		t.Fatal(err)
	}
	reload()
	if !hasK() {
		t.Fatal("K revoked and approved again between two reloads, its catalog not added again")
	}
	// catalog_dir emptied: nothing is claimed.
	if err := os.RemoveAll(catDir); err != nil {
		t.Fatal(err)
	}
	reload()
	check("unknown D, catalog_dir gone", "unknown", d, nil...)
}
