package sign

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestSignVerifyRoundTrip(t *testing.T) {
	ctx := context.Background()
	pub, priv, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	privPEM, err := MarshalPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	pubPEM, err := MarshalPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	for name, raw := range map[string][]byte{"pem": privPEM, "raw": priv, "seed": priv.Seed()} {
		k, err := ParsePrivateKey(raw)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !k.Equal(priv) {
			t.Fatalf("%s: parsed key differs", name)
		}
	}
	for name, raw := range map[string][]byte{"pem": pubPEM, "raw": pub} {
		k, err := ParsePublicKey(raw)
		if err != nil || !k.Equal(pub) {
			t.Fatalf("%s: %v", name, err)
		}
	}
	env, err := Sign(ctx, priv, "application/x-test", []byte(`{"a":1}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(env)
	env2, err := ReadEnvelope(b)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Verify(ctx, pub, "application/x-test", env2)
	if err != nil || string(got) != `{"a":1}` {
		t.Fatalf("verify: %q %v", got, err)
	}
	if _, err := Verify(ctx, pub, "application/x-other", env2); err == nil {
		t.Fatal("wrong payload type accepted")
	}
	other, _, _ := GenerateKey()
	if _, err := Verify(ctx, other, "application/x-test", env2); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("other key: %v, want ErrBadSignature", err)
	}
	env2.Payload = env2.Payload[:len(env2.Payload)-4] + "AAAA"
	if _, err := Verify(ctx, pub, "application/x-test", env2); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("tampered payload: %v, want ErrBadSignature", err)
	}
	if _, err := ParsePrivateKey([]byte("junk")); err == nil {
		t.Fatal("junk key accepted")
	}
}

func TestIsKeyID(t *testing.T) {
	pub, _, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	id, err := KeyID(pub)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		s    string
		want bool
	}{
		{id, true},
		{"", false},
		{id[len("SHA256:"):], false},             // no prefix
		{"sha256:" + id[len("SHA256:"):], false}, // prefix is case-sensitive
		{id + "=", false},                        // padded
		{id[:len(id)-1], false},                  // short
		{id + "A", false},                        // long
		{"SHA256:" + strings.Repeat("!", 43), false},
	} {
		if got := IsKeyID(tc.s); got != tc.want {
			t.Errorf("IsKeyID(%q) = %v, want %v", tc.s, got, tc.want)
		}
	}
}
