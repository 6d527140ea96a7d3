package fleet_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/vigil-hips/vigil/internal/fleet"
	"github.com/vigil-hips/vigil/internal/sign"
)

func digest(s string) string {
	d := sha256.Sum256([]byte(s))
	return hex.EncodeToString(d[:])
}

func testBundle(host string, version uint64) fleet.Bundle {
	return fleet.Bundle{Host: host, Version: version, Issued: time.Now(),
		Hashes: []fleet.HashRule{{SHA256: digest("a"), Verdict: fleet.Allow, Scope: "global", Rule: 1},
			{SHA256: digest("b"), Verdict: fleet.Deny, Scope: "host:" + host, Rule: 2}}}
}

func TestVerifyBundle(t *testing.T) {
	ctx := context.Background()
	pub, priv, _ := sign.GenerateKey()
	_, other, _ := sign.GenerateKey()
	v := fleet.Verifier{Key: pub, Host: "host-a"}

	good, err := fleet.SignBundle(ctx, priv, testBundle("host-a", 3))
	if err != nil {
		t.Fatal(err)
	}
	b, err := v.Verify(ctx, good, 2)
	if err != nil {
		t.Fatalf("a good bundle: %v", err)
	}
	if b.Version != 3 || len(b.Hashes) != 2 || b.Hashes[1].SHA256 != digest("a") || b.Hashes[1].Verdict != fleet.Allow {
		t.Fatalf("verified bundle: %+v", b)
	}

	payload, _ := testBundle("host-a", 9).Marshal()
	unsignedEnv, _ := json.Marshal(sign.Envelope{PayloadType: fleet.BundlePayloadType, Payload: b64(payload)})
	badSig, _ := fleet.SignBundle(ctx, other, testBundle("host-a", 9))
	otherHost, _ := fleet.SignBundle(ctx, priv, testBundle("host-b", 9))
	wrongType, _ := sign.Sign(ctx, priv, "application/vnd.vigil.catalog+json", payload)
	wrongTypeJSON, _ := json.Marshal(wrongType)
	// A signature over one payload moved onto another.
	forged := forge(t, good, payload)

	for _, tc := range []struct {
		name    string
		env     []byte
		applied uint64
		want    error
	}{
		{"raw payload, no envelope", payload, 0, fleet.ErrUnsigned},
		{"envelope without signatures", unsignedEnv, 0, fleet.ErrUnsigned},
		{"not JSON", []byte("hello"), 0, fleet.ErrUnsigned},
		{"signed by another key", badSig, 0, fleet.ErrBadSignature},
		{"signature moved to another payload", forged, 0, fleet.ErrBadSignature},
		{"for another host", otherHost, 0, fleet.ErrWrongHost},
		{"replayed: same version", good, 3, fleet.ErrOldVersion},
		{"older version", good, 7, fleet.ErrOldVersion},
		{"another payload type", wrongTypeJSON, 0, fleet.ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := v.Verify(ctx, tc.env, tc.applied)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v (bundle %+v), want %v", err, b, tc.want)
			}
			if b != nil {
				t.Fatalf("a refused bundle was returned: %+v", b)
			}
		})
	}
}

func TestBundleValidate(t *testing.T) {
	ctx := context.Background()
	_, priv, _ := sign.GenerateKey()
	bad := testBundle("h", 1)
	bad.Hashes[0].SHA256 = "abc"
	if _, err := fleet.SignBundle(ctx, priv, bad); err == nil {
		t.Fatal("a bundle with a bad digest was signed")
	}
	bad = testBundle("h", 0)
	if _, err := fleet.SignBundle(ctx, priv, bad); err == nil {
		t.Fatal("a bundle of version 0 was signed")
	}
	bad = testBundle("h", 1)
	bad.Hashes[1].Verdict = "maybe"
	if _, err := fleet.SignBundle(ctx, priv, bad); err == nil {
		t.Fatal("a bundle with verdict maybe was signed")
	}
	bad = testBundle("h", 1)
	bad.Policies = []fleet.PolicyRule{{Name: "p", YAML: "version: 1\nrules: [{"}}
	if _, err := fleet.SignBundle(ctx, priv, bad); err == nil {
		t.Fatal("a bundle with a broken policy was signed")
	}
}

func TestRulesDigest(t *testing.T) {
	a, b := testBundle("h", 1), testBundle("h", 2)
	b.Hashes[0], b.Hashes[1] = b.Hashes[1], b.Hashes[0]
	if a.RulesDigest() != b.RulesDigest() {
		t.Fatal("same rules in another order, another version: digests differ")
	}
	b.Hashes[0].Verdict = fleet.Allow
	if a.RulesDigest() == b.RulesDigest() {
		t.Fatal("a verdict changed and the digest did not")
	}
}

func TestScopes(t *testing.T) {
	for _, tc := range []struct {
		scope string
		in    bool
	}{{"global", true}, {"tag:web", true}, {"tag:db", false}, {"host:h1", true}, {"host:h2", false}} {
		if got := fleet.InScope(tc.scope, "h1", []string{"web", "prod"}); got != tc.in {
			t.Errorf("InScope(%q) = %v, want %v", tc.scope, got, tc.in)
		}
		if err := fleet.ValidScope(tc.scope); err != nil {
			t.Errorf("ValidScope(%q): %v", tc.scope, err)
		}
	}
	for _, s := range []string{"", "tag:", "host:", "all", "tag:a b"} {
		if fleet.ValidScope(s) == nil {
			t.Errorf("ValidScope(%q) accepted", s)
		}
	}
}
