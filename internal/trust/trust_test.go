package trust

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/secure-systems-lab/go-securesystemslib/dsse"

	"github.com/vigil-hips/vigil/internal/sign"
)

func openTest(t testing.TB) *DB {
	t.Helper()
	db, err := Open(context.Background(), filepath.Join(t.TempDir(), FileName))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func digest(s string) [32]byte { return sha256.Sum256([]byte(s)) }

func TestDecidePrecedence(t *testing.T) {
	all := facts{denied: true, approved: true, catalogKey: "K", dpkgPkg: "coreutils", scanned: true}
	tests := []struct {
		name string
		f    facts
		srcs Sources
		want Decision
	}{
		{"deny beats everything", all, AllSources, Decision{Denied, "denied"}},
		{"deny counts with no source", facts{denied: true}, 0, Decision{Denied, "denied"}},
		{"approve beats catalog", facts{approved: true, catalogKey: "K", dpkgPkg: "p", scanned: true}, AllSources, Decision{Trusted, "approved"}},
		{"approve counts with no source", facts{approved: true}, 0, Decision{Trusted, "approved"}},
		{"catalog beats dpkg", facts{catalogKey: "K", dpkgPkg: "p", scanned: true}, AllSources, Decision{Trusted, "catalog:K"}},
		{"dpkg beats database", facts{dpkgPkg: "p", scanned: true}, AllSources, Decision{Trusted, "dpkg:p"}},
		{"database", facts{scanned: true}, AllSources, Decision{Trusted, "database"}},
		{"catalog off falls to dpkg", facts{catalogKey: "K", dpkgPkg: "p", scanned: true}, Dpkg | Database, Decision{Trusted, "dpkg:p"}},
		{"dpkg off: a dpkg file is in the database", facts{dpkgPkg: "p", scanned: true}, Database, Decision{Trusted, "database"}},
		{"database off: only dpkg's", facts{scanned: true}, Dpkg | Catalogs, Decision{Verdict: Unknown}},
		{"catalog only", facts{catalogKey: "K"}, Catalogs, Decision{Trusted, "catalog:K"}},
		{"catalog not counted", facts{catalogKey: "K"}, Dpkg | Database, Decision{Verdict: Unknown}},
		{"nothing known", facts{}, AllSources, Decision{Verdict: Unknown}},
	}
	for _, tt := range tests {
		if got := decide(tt.f, tt.srcs); got != tt.want {
			t.Errorf("%s: decide(%+v, %v) = %v, want %v", tt.name, tt.f, tt.srcs, got, tt.want)
		}
	}
}

func TestOpenRefusesNewerSchema(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), FileName)
	db, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.db.Exec(`UPDATE meta SET v = ? WHERE k = 'schema'`, schemaVersion+1); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if _, err := Open(ctx, path); err == nil || !strings.Contains(err.Error(), "newer") || !strings.Contains(err.Error(), path) {
		t.Fatalf("Open of a newer schema: %v", err)
	}
	if _, err := Open(ctx, filepath.Join(t.TempDir(), "no", "dir", FileName)); err == nil {
		t.Fatal("Open in a missing directory succeeded")
	}
}

func TestParseSources(t *testing.T) {
	s, err := ParseSources([]string{"dpkg", "catalogs"})
	if err != nil || s != Dpkg|Catalogs || s.String() != "catalogs,dpkg" {
		t.Fatalf("ParseSources = %v (%q), %v", s, s, err)
	}
	if _, err := ParseSources([]string{"rpm"}); err == nil {
		t.Fatal("ParseSources accepted rpm")
	}
}

func TestExplicitVerdictsAndGeneration(t *testing.T) {
	ctx := context.Background()
	db := openTest(t)
	gen := func() uint64 {
		t.Helper()
		g, err := db.Generation(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return g
	}
	lookup := func(sha [32]byte, srcs Sources) Decision {
		t.Helper()
		d, err := db.Lookup(ctx, sha, srcs)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	a := digest("a")
	g0 := gen()
	if d := lookup(a, AllSources); d.Verdict != Unknown || d.Source != "" {
		t.Fatalf("empty db: %v", d)
	}
	if err := db.Approve(ctx, a, "tool"); err != nil {
		t.Fatal(err)
	}
	g1 := gen()
	if g1 <= g0 {
		t.Fatalf("approve did not bump the generation: %d -> %d", g0, g1)
	}
	if d := lookup(a, 0); d != (Decision{Trusted, "approved"}) {
		t.Fatalf("approved, no sources: %v", d)
	}
	if err := db.Deny(ctx, a, "changed my mind"); err != nil {
		t.Fatal(err)
	}
	if g := gen(); g <= g1 {
		t.Fatalf("deny did not bump the generation")
	}
	if d := lookup(a, AllSources); d != (Decision{Denied, "denied"}) {
		t.Fatalf("denied: %v", d)
	}
	rules, err := db.Rules(ctx)
	if err != nil || len(rules) != 1 || rules[0].Verdict != Denied || rules[0].Comment != "changed my mind" {
		t.Fatalf("Rules = %+v, %v", rules, err)
	}
	if err := db.Forget(ctx, a); err != nil {
		t.Fatal(err)
	}
	if d := lookup(a, AllSources); d.Verdict != Unknown {
		t.Fatalf("forgotten: %v", d)
	}
	if err := db.Forget(ctx, a); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Forget twice: %v", err)
	}
	g := gen()
	if err := db.RecordPending(ctx, Attempt{SHA: a, Path: "/tmp/a"}); err != nil {
		t.Fatal(err)
	}
	if gen() != g {
		t.Fatal("RecordPending bumped the generation")
	}
}

// writeCatalog signs a catalog of digests with priv.
func writeCatalog(t *testing.T, priv ed25519.PrivateKey, name string, issued time.Time, ds ...[32]byte) []byte {
	t.Helper()
	b, err := SignCatalog(context.Background(), priv, NewCatalog(name, ds, issued))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func genKey(t *testing.T) (ed25519.PublicKey, ed25519.PrivateKey) {
	t.Helper()
	pub, priv, err := sign.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

func TestCatalogs(t *testing.T) {
	ctx := context.Background()
	db := openTest(t)
	pub, priv := genKey(t)
	_, otherPriv := genKey(t)
	x, y, z := digest("x"), digest("y"), digest("z")
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	cat := writeCatalog(t, priv, "tools", t0, x, y)

	trusted := func(sha [32]byte) bool {
		t.Helper()
		d, err := db.Lookup(ctx, sha, AllSources)
		if err != nil {
			t.Fatal(err)
		}
		return d.Verdict == Trusted
	}

	// Not yet approved: refused, trusts nothing.
	if _, err := db.AddCatalog(ctx, cat); !errors.Is(err, ErrUnapprovedSigner) {
		t.Fatalf("catalog of an unapproved key: %v", err)
	}
	id, err := db.ApproveSigner(ctx, pub, "release team")
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := sign.KeyID(pub); id != want {
		t.Fatalf("key id %s, want %s", id, want)
	}

	// Signed by a key that is not approved: refused.
	if _, err := db.AddCatalog(ctx, writeCatalog(t, otherPriv, "evil", t0, z)); !errors.Is(err, ErrUnapprovedSigner) {
		t.Fatalf("catalog of another key: %v", err)
	}
	// Bad signature (payload changed after signing): refused.
	var env sign.Envelope
	if err := json.Unmarshal(cat, &env); err != nil {
		t.Fatal(err)
	}
	forged, _ := json.Marshal(NewCatalog("tools", [][32]byte{x, y, z}, t0))
	env.Payload = b64(forged)
	bad, _ := json.Marshal(env)
	if _, err := db.AddCatalog(ctx, bad); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("catalog with a bad signature: %v", err)
	}
	if trusted(x) || trusted(y) || trusted(z) {
		t.Fatal("a refused catalog trusts something")
	}

	info, err := db.AddCatalog(ctx, cat)
	if err != nil {
		t.Fatal(err)
	}
	if info.Name != "tools" || info.KeyID != id || info.Digests != 2 || !info.Issued.Equal(t0) {
		t.Fatalf("CatalogInfo = %+v", info)
	}
	d, err := db.Lookup(ctx, x, AllSources)
	if err != nil || d != (Decision{Trusted, "catalog:" + id}) {
		t.Fatalf("x after catalog: %v, %v", d, err)
	}
	if d, _ := db.Lookup(ctx, x, Database|Dpkg); d.Verdict != Unknown {
		t.Fatalf("catalog counted without the Catalogs source: %v", d)
	}
	if trusted(z) {
		t.Fatal("z trusted though not in the catalog")
	}

	// A newer catalog of the same name replaces it; an older one is refused.
	if _, err := db.AddCatalog(ctx, writeCatalog(t, priv, "tools", t0.Add(time.Hour), y, z)); err != nil {
		t.Fatal(err)
	}
	if trusted(x) || !trusted(y) || !trusted(z) {
		t.Fatal("replacement catalog: want y, z trusted and x not")
	}
	if _, err := db.AddCatalog(ctx, cat); !errors.Is(err, ErrStaleCatalog) {
		t.Fatalf("older catalog: %v", err)
	}
	cats, err := db.Catalogs(ctx)
	if err != nil || len(cats) != 1 || cats[0].Digests != 2 {
		t.Fatalf("Catalogs = %+v, %v", cats, err)
	}

	// Explicit deny beats a catalog.
	if err := db.Deny(ctx, y, ""); err != nil {
		t.Fatal(err)
	}
	if d, _ := db.Lookup(ctx, y, AllSources); d.Verdict != Denied {
		t.Fatalf("denied y in a catalog: %v", d)
	}

	// Revoking the signer removes what its catalogs trusted.
	if err := db.RevokeSigner(ctx, id); err != nil {
		t.Fatal(err)
	}
	if trusted(z) {
		t.Fatal("z still trusted after its signer was revoked")
	}
	if cats, _ := db.Catalogs(ctx); len(cats) != 0 {
		t.Fatalf("catalogs of a revoked signer kept: %+v", cats)
	}
	if err := db.RevokeSigner(ctx, id); !errors.Is(err, ErrNotFound) {
		t.Fatalf("revoke twice: %v", err)
	}
}

func TestVerifyCatalog(t *testing.T) {
	ctx := context.Background()
	pub, priv := genKey(t)
	otherPub, _ := genKey(t)
	a := digest("a")
	cat := writeCatalog(t, priv, "one", time.Now(), a, a)
	vc, err := VerifyCatalog(ctx, cat, pub)
	if err != nil {
		t.Fatal(err)
	}
	if vc.Name != "one" || len(vc.SHA) != 1 || vc.SHA[0] != a {
		t.Fatalf("verified catalog: %+v", vc)
	}
	if _, err := VerifyCatalog(ctx, cat, otherPub); !errors.Is(err, ErrUnapprovedSigner) {
		t.Fatalf("other key: %v", err)
	}
	if _, err := VerifyCatalog(ctx, []byte("{}"), pub); err == nil {
		t.Fatal("empty envelope verified")
	}
	env, _ := sign.Sign(ctx, priv, "application/vnd.vigil.policy+yaml", []byte("x"))
	b, _ := json.Marshal(env)
	if _, err := VerifyCatalog(ctx, b, pub); err == nil {
		t.Fatal("an envelope of another payload type verified as a catalog")
	}
	// Well signed but not a catalog payload.
	env, _ = sign.Sign(ctx, priv, CatalogPayloadType, []byte(`{"name":"x","digests":["zz"],"issued":"2026-01-01T00:00:00Z"}`))
	b, _ = json.Marshal(env)
	if _, err := VerifyCatalog(ctx, b, pub); err == nil {
		t.Fatal("catalog with a bad digest verified")
	}
}

func TestPending(t *testing.T) {
	ctx := context.Background()
	db := openTest(t)
	a, b := digest("a"), digest("b")
	t0 := time.Unix(1700000000, 0)
	for i, at := range []Attempt{
		{SHA: a, Path: "/tmp/a", Exe: "/usr/bin/bash", PID: 10, Refused: true, Time: t0},
		{SHA: a, Path: "/tmp/a2", Exe: "/usr/bin/bash", PID: 11, Refused: true, Time: t0.Add(time.Second)},
		{SHA: a, Path: "/tmp/a", Exe: "/usr/bin/bash", PID: 10, Refused: false, Time: t0.Add(2 * time.Second)},
		{SHA: b, Path: "/tmp/b", Exe: "/usr/bin/python3", PID: 12, Refused: true, Time: t0.Add(3 * time.Second)},
	} {
		if err := db.RecordPending(ctx, at); err != nil {
			t.Fatalf("attempt %d: %v", i, err)
		}
	}
	ps, err := db.Pending(ctx, AllSources, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 2 || ps[0].SHA != b || ps[1].SHA != a {
		t.Fatalf("Pending = %+v, want b then a", ps)
	}
	pa := ps[1]
	if pa.Count != 3 || pa.Refused != 2 || !pa.FirstSeen.Equal(t0) || !pa.LastSeen.Equal(t0.Add(2*time.Second)) {
		t.Fatalf("a: %+v", pa)
	}
	if len(pa.Paths) != 2 || pa.Paths[0] != "/tmp/a" || pa.Paths[1] != "/tmp/a2" {
		t.Fatalf("a paths: %q", pa.Paths)
	}
	if len(pa.Processes) != 2 || pa.Processes[0] != "10 /usr/bin/bash" {
		t.Fatalf("a processes: %q", pa.Processes)
	}
	if ps, _ := db.Pending(ctx, AllSources, 1); len(ps) != 1 || ps[0].SHA != b {
		t.Fatalf("limit 1: %+v", ps)
	}

	// Approved code leaves the list.
	if err := db.Approve(ctx, b, ""); err != nil {
		t.Fatal(err)
	}
	// Code a catalog trusts leaves it while catalogs count.
	pub, priv := genKey(t)
	if _, err := db.ApproveSigner(ctx, pub, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := db.AddCatalog(ctx, writeCatalog(t, priv, "c", time.Now(), a)); err != nil {
		t.Fatal(err)
	}
	if ps, _ := db.Pending(ctx, AllSources, 0); len(ps) != 0 {
		t.Fatalf("pending after approve and catalog: %+v", ps)
	}
	if ps, _ := db.Pending(ctx, Database, 0); len(ps) != 1 || ps[0].SHA != a {
		t.Fatalf("pending without the catalog source: %+v", ps)
	}
}

func TestPendingBounded(t *testing.T) {
	ctx := context.Background()
	db := openTest(t)
	a := digest("a")
	for i := range maxSeen + 5 {
		if err := db.RecordPending(ctx, Attempt{SHA: a, Path: "/p" + string(rune('a'+i)), Exe: "/e", PID: uint32(i + 1),
			Time: time.Unix(int64(i), 0)}); err != nil {
			t.Fatal(err)
		}
	}
	ps, err := db.Pending(ctx, AllSources, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 1 || ps[0].Count != uint64(maxSeen+5) || len(ps[0].Paths) != maxSeen || len(ps[0].Processes) != maxSeen {
		t.Fatalf("pending: count %d, %d paths, %d processes", ps[0].Count, len(ps[0].Paths), len(ps[0].Processes))
	}
	if ps[0].Paths[0] != "/p"+string(rune('a'+maxSeen+4)) {
		t.Fatalf("most recent path first: %q", ps[0].Paths)
	}

	// At most maxPending digests: the least recently seen go.
	defer func(n int) { maxPending = n }(maxPending)
	maxPending = 3
	for i := range 5 {
		if err := db.RecordPending(ctx, Attempt{SHA: digest(fmt.Sprint(i)), Path: "/x", Time: time.Unix(int64(100+i), 0)}); err != nil {
			t.Fatal(err)
		}
	}
	ps, err = db.Pending(ctx, AllSources, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 3 || ps[0].SHA != digest("4") || ps[2].SHA != digest("2") {
		t.Fatalf("bounded pending list: %d items", len(ps))
	}
	var seen int
	db.db.QueryRow(`SELECT COUNT(DISTINCT sha) FROM pending_seen`).Scan(&seen)
	if seen != 3 {
		t.Fatalf("pending_seen keeps %d digests, want 3", seen)
	}
}

// TestTwoHandles is the CLI and the agent on one file at once: writes from
// both succeed, and each sees the other's changes.
func TestTwoHandles(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), FileName)
	h1, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer h1.Close()
	h2, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer h2.Close()
	g0, _ := h2.Generation(ctx)
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for i := range 100 {
		wg.Add(2)
		go func() { defer wg.Done(); errs <- h1.Approve(ctx, digest("h1"+string(rune(i))), "") }()
		go func() {
			defer wg.Done()
			errs <- h2.RecordPending(ctx, Attempt{SHA: digest("p" + string(rune(i))), Path: "/x"})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	g1, _ := h2.Generation(ctx)
	if g1 != g0+100 {
		t.Fatalf("generation seen by the other handle: %d -> %d, want +100", g0, g1)
	}
	if d, _ := h2.Lookup(ctx, digest("h1"+string(rune(7))), 0); d.Verdict != Trusted {
		t.Fatalf("other handle's approval: %v", d)
	}
}

func TestEachMatchesLookup(t *testing.T) {
	ctx := context.Background()
	db := openTest(t)
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "tool"), "#!/bin/sh\necho tool\n", 0o755)
	writeFile(t, filepath.Join(dir, "denied"), "#!/bin/sh\necho denied\n", 0o755)
	if _, err := Scan(ctx, db, []string{dir}, ScanOptions{}); err != nil {
		t.Fatal(err)
	}
	pub, priv := genKey(t)
	db.ApproveSigner(ctx, pub, "")
	if _, err := db.AddCatalog(ctx, writeCatalog(t, priv, "c", time.Now(), digest("cat"))); err != nil {
		t.Fatal(err)
	}
	db.Approve(ctx, digest("approved"), "")
	db.Deny(ctx, sha256.Sum256([]byte("#!/bin/sh\necho denied\n")), "")

	for _, srcs := range []Sources{0, Database, Catalogs, AllSources} {
		got := map[[32]byte]Decision{}
		err := db.Each(ctx, srcs, func(sha [32]byte, d Decision) error {
			if d.Verdict == Unknown {
				t.Errorf("Each gave an unknown digest")
			}
			want, err := db.Lookup(ctx, sha, srcs)
			if err != nil {
				return err
			}
			if d != want {
				t.Errorf("srcs %v: Each %x = %v, Lookup = %v", srcs, sha, d, want)
			}
			got[sha] = d
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		want := map[Sources]int{0: 2, Database: 3, Catalogs: 3, AllSources: 4}[srcs]
		if len(got) != want {
			t.Errorf("srcs %v: Each gave %d digests, want %d: %v", srcs, len(got), want, got)
		}
	}
	stop := errors.New("stop")
	if err := db.Each(ctx, AllSources, func([32]byte, Decision) error { return stop }); !errors.Is(err, stop) {
		t.Fatalf("Each did not return fn's error: %v", err)
	}
}

func BenchmarkLookup(b *testing.B) {
	ctx := context.Background()
	db := openTest(b)
	pub, priv, _ := sign.GenerateKey()
	db.ApproveSigner(ctx, pub, "")
	var ds [][32]byte
	for i := range 2000 {
		ds = append(ds, digest(string(rune(i))))
	}
	cat, err := SignCatalog(ctx, priv, NewCatalog("bench", ds, time.Now()))
	if err != nil {
		b.Fatal(err)
	}
	if _, err := db.AddCatalog(ctx, cat); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		d, err := db.Lookup(ctx, ds[i%len(ds)], AllSources)
		if err != nil || d.Verdict != Trusted {
			b.Fatal(d, err)
		}
	}
}

// TestSignedDigests: a signer's digests are those of the stored catalogs
// that verify with its key; another signer's catalogs, a catalog whose
// stored envelope no longer verifies, and keys that are not approved
// count for nothing.
func TestSignedDigests(t *testing.T) {
	ctx := context.Background()
	db := openTest(t)
	kPub, kPriv := genKey(t)
	lPub, lPriv := genKey(t)
	strangerPub, _ := genKey(t)
	k, err := db.ApproveSigner(ctx, kPub, "")
	if err != nil {
		t.Fatal(err)
	}
	l, err := db.ApproveSigner(ctx, lPub, "")
	if err != nil {
		t.Fatal(err)
	}
	stranger, _ := sign.KeyID(strangerPub)
	a, b, c, x := digest("a"), digest("b"), digest("c"), digest("x")
	now := time.Now()
	for _, cat := range [][]byte{
		writeCatalog(t, kPriv, "k1", now, a, b),
		writeCatalog(t, kPriv, "k2", now, b),
		writeCatalog(t, lPriv, "l1", now, c),
		writeCatalog(t, kPriv, "tampered", now, x),
	} {
		if _, err := db.AddCatalog(ctx, cat); err != nil {
			t.Fatal(err)
		}
	}
	// Change the stored envelope of "tampered": its payload now lists c,
	// and its signature no longer verifies.
	var env sign.Envelope
	var raw []byte
	if err := db.db.QueryRowContext(ctx, `SELECT envelope FROM catalogs WHERE name = 'tampered'`).Scan(&raw); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &env); err != nil {
		t.Fatal(err)
	}
	payload, _ := json.Marshal(NewCatalog("tampered", [][32]byte{c}, now))
	env.Payload = base64.StdEncoding.EncodeToString(payload)
	raw, _ = json.Marshal(env)
	if _, err := db.db.ExecContext(ctx, `UPDATE catalogs SET envelope = ? WHERE name = 'tampered'`, raw); err != nil {
		t.Fatal(err)
	}

	got, problems, err := db.SignedDigests(ctx, []string{k, l, stranger})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got[k]) != fmt.Sprint(sorted(a, b)) || fmt.Sprint(got[l]) != fmt.Sprint([][32]byte{c}) {
		t.Errorf("signed digests: K %x, L %x; want K a, b and L c", got[k], got[l])
	}
	if _, ok := got[stranger]; ok || len(got) != 2 {
		t.Errorf("a key that is not approved has digests: %v", got)
	}
	if len(problems) != 1 || !strings.Contains(problems[0], "tampered") {
		t.Errorf("problems %q, want the tampered catalog named", problems)
	}
	// Revoking K: its catalogs are gone, and so are its digests.
	if err := db.RevokeSigner(ctx, k); err != nil {
		t.Fatal(err)
	}
	if got, _, err := db.SignedDigests(ctx, []string{k, l}); err != nil || len(got) != 1 || len(got[l]) != 1 {
		t.Errorf("after revoking K: %x, %v", got, err)
	}
}

func sorted(ds ...[32]byte) [][32]byte {
	sortDigests(ds)
	return ds
}

// TestReadCatalogClaim: a catalog file's claim is read without its
// signer's key: the key IDs its signatures name and its digests, as
// strictly decoded as VerifyCatalog decodes; anything that is not a
// well-formed catalog is an error.
func TestReadCatalogClaim(t *testing.T) {
	ctx := context.Background()
	pubK, privK := genKey(t)
	pubL, privL := genKey(t)
	idK, _ := sign.KeyID(pubK)
	idL, _ := sign.KeyID(pubL)
	a, b := digest("a"), digest("b")
	// The name leads the payload: "~~~" there makes its standard base64
	// hold '+', so the URL-safe encoding differs.
	const name = "tools ~~~"
	good := writeCatalog(t, privK, name, time.Now(), b, a, a)
	envelope := func(payloadType string, payload []byte, keys ...ed25519.PrivateKey) *sign.Envelope {
		t.Helper()
		env := &sign.Envelope{PayloadType: payloadType, Payload: base64.StdEncoding.EncodeToString(payload)}
		for _, k := range keys {
			e, err := sign.Sign(ctx, k, payloadType, payload)
			if err != nil {
				t.Fatal(err)
			}
			env.Payload = e.Payload
			env.Signatures = append(env.Signatures, e.Signatures...)
		}
		return env
	}
	marshal := func(env *sign.Envelope) []byte { b, _ := json.Marshal(env); return b }
	payload, _ := json.Marshal(NewCatalog(name, [][32]byte{a, b}, time.Now()))
	// Signed by L and K, K twice, and a signature naming no well-formed key.
	several := envelope(CatalogPayloadType, payload, privL, privK, privK)
	several.Signatures = append(several.Signatures, dsse.Signature{KeyID: "not-a-key", Sig: several.Signatures[0].Sig})
	// The payload in URL-safe base64 (DSSE accepts either).
	urlSafe := envelope(CatalogPayloadType, payload, privK)
	urlSafe.Payload = base64.URLEncoding.EncodeToString(payload)
	if urlSafe.Payload == base64.StdEncoding.EncodeToString(payload) {
		t.Fatal("the URL-safe payload is the standard one: the case tests nothing")
	}
	// K's signature over another payload: the claim is read all the same
	// (it is not verified); VerifyCatalog would refuse it.
	tampered := envelope(CatalogPayloadType, payload, privK)
	other, _ := json.Marshal(NewCatalog(name, [][32]byte{a}, time.Now()))
	tampered.Payload = base64.StdEncoding.EncodeToString(other)

	for _, tc := range []struct {
		name     string
		file     []byte
		wantIDs  []string
		wantSHA  [][32]byte
		wantErr  string
		verifies bool // with K's key
	}{
		{name: "good catalog of an unapproved key", file: good, wantIDs: []string{idK}, wantSHA: sorted(a, b), verifies: true},
		{name: "several signers", file: marshal(several), wantIDs: slices.Sorted(slices.Values([]string{idK, idL})), wantSHA: sorted(a, b), verifies: true},
		{name: "URL-safe payload", file: marshal(urlSafe), wantIDs: []string{idK}, wantSHA: sorted(a, b), verifies: true},
		{name: "tampered payload", file: marshal(tampered), wantIDs: []string{idK}, wantSHA: [][32]byte{a}},
		{name: "no signature", file: marshal(envelope(CatalogPayloadType, payload)), wantSHA: sorted(a, b)},
		{name: "wrong payload type", file: marshal(envelope("application/vnd.vigil.policy+yaml", payload, privK)), wantErr: "not a catalog"},
		{name: "garbage", file: []byte("not json"), wantErr: "not a DSSE envelope"},
		{name: "empty envelope", file: []byte("{}"), wantErr: "not a DSSE envelope"},
		{name: "payload not base64", file: []byte(`{"payloadType":"` + CatalogPayloadType + `","payload":"%%%","signatures":[]}`), wantErr: "catalog payload"},
		{name: "bad digest", file: marshal(envelope(CatalogPayloadType, []byte(`{"name":"x","digests":["zz"],"issued":"2026-01-01T00:00:00Z"}`), privK)), wantErr: "catalog digest 1"},
		{name: "unknown field", file: marshal(envelope(CatalogPayloadType, []byte(`{"name":"x","digests":[],"issued":"2026-01-01T00:00:00Z","trust":"all"}`), privK)), wantErr: "unknown field"},
		{name: "no name", file: marshal(envelope(CatalogPayloadType, []byte(`{"name":" ","digests":[],"issued":"2026-01-01T00:00:00Z"}`), privK)), wantErr: "no name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ReadCatalogClaim(tc.file)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want one saying %q", err, tc.wantErr)
				}
				if _, verr := VerifyCatalog(ctx, tc.file, pubK); verr == nil {
					t.Fatal("VerifyCatalog accepts what ReadCatalogClaim refuses")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(c.KeyIDs, tc.wantIDs) || !slices.Equal(c.SHA, tc.wantSHA) || c.Name != name {
				t.Fatalf("claim: name %q key ids %v digests %x; want %v %x", c.Name, c.KeyIDs, c.SHA, tc.wantIDs, tc.wantSHA)
			}
			if _, err := VerifyCatalog(ctx, tc.file, pubK); (err == nil) != tc.verifies {
				t.Fatalf("VerifyCatalog with K: %v, want verified %v", err, tc.verifies)
			}
		})
	}
}
