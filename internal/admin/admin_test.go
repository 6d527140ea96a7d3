package admin

import (
	"context"
	"crypto/ed25519"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/vigil-hips/vigil/internal/sign"
)

func TestVerify(t *testing.T) {
	ctx := context.Background()
	pub, priv, err := sign.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	_, otherPriv, err := sign.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 24, 6, 0, 0, 0, time.UTC)
	const host = "0123456789abcdef0123456789abcdef"
	mk := func(t *testing.T, key ed25519.PrivateKey, c Claims) []byte {
		t.Helper()
		if c.Nonce == "" {
			c.Nonce, _ = NewNonce()
		}
		tok, err := Sign(ctx, key, c)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	good := Claims{Action: ActionStop, Host: host, Expires: now.Add(10 * time.Minute)}
	for _, tc := range []struct {
		name  string
		key   ed25519.PrivateKey
		c     Claims
		req   Request
		token []byte
		want  error
	}{
		{name: "valid", key: priv, c: good, req: Request{Action: ActionStop}},
		{name: "expired", key: priv, c: Claims{Action: ActionStop, Host: host, Expires: now.Add(-time.Second)}, req: Request{Action: ActionStop}, want: ErrExpired},
		{name: "expires now", key: priv, c: Claims{Action: ActionStop, Host: host, Expires: now}, req: Request{Action: ActionStop}, want: ErrExpired},
		{name: "too long", key: priv, c: Claims{Action: ActionStop, Host: host, Expires: now.Add(MaxTTL + time.Minute)}, req: Request{Action: ActionStop}, want: ErrMalformed},
		{name: "foreign host", key: priv, c: Claims{Action: ActionStop, Host: "other", Expires: now.Add(time.Minute)}, req: Request{Action: ActionStop}, want: ErrWrongHost},
		{name: "bad signature", key: otherPriv, c: good, req: Request{Action: ActionStop}, want: ErrBadSignature},
		{name: "wrong action", key: priv, c: good, req: Request{Action: ActionApplyPolicy, PolicyDigest: "x"}, want: ErrWrongAction},
		{name: "policy digest", key: priv, c: Claims{Action: ActionApplyPolicy, Host: host, Expires: now.Add(time.Minute), PolicyDigest: "sha256:aa"}, req: Request{Action: ActionApplyPolicy, PolicyDigest: "sha256:aa"}},
		{name: "other policy", key: priv, c: Claims{Action: ActionApplyPolicy, Host: host, Expires: now.Add(time.Minute), PolicyDigest: "sha256:aa"}, req: Request{Action: ActionApplyPolicy, PolicyDigest: "sha256:bb"}, want: ErrWrongPolicy},
		{name: "empty", token: []byte(" \n"), req: Request{Action: ActionStop}, want: ErrNoToken},
		{name: "garbage", token: []byte("{"), req: Request{Action: ActionStop}, want: ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := &Verifier{Key: pub, Host: host, Nonces: &MemNonces{}, Now: func() time.Time { return now }}
			tok := tc.token
			if tok == nil {
				tok = mk(t, tc.key, tc.c)
			}
			c, err := v.Verify(ctx, tok, tc.req)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				if c.Action != tc.c.Action || c.Host != host {
					t.Fatalf("claims %+v", c)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("Verify: %v, want %v", err, tc.want)
			}
		})
	}
}

func TestReplay(t *testing.T) {
	ctx := context.Background()
	pub, priv, _ := sign.GenerateKey()
	now := time.Now()
	nonce, _ := NewNonce()
	tok, err := Sign(ctx, priv, Claims{Action: ActionStop, Host: "h", Expires: now.Add(time.Minute), Nonce: nonce})
	if err != nil {
		t.Fatal(err)
	}
	v := &Verifier{Key: pub, Host: "h", Nonces: &MemNonces{}}
	if _, err := v.Verify(ctx, tok, Request{Action: ActionStop}); err != nil {
		t.Fatalf("first use: %v", err)
	}
	if _, err := v.Verify(ctx, tok, Request{Action: ActionStop}); !errors.Is(err, ErrReplayed) {
		t.Fatalf("second use: %v, want ErrReplayed", err)
	}
	// A refused token does not spend its nonce: the same nonce in a
	// wrong-host token, then in a good one.
	nonce2, _ := NewNonce()
	bad, _ := Sign(ctx, priv, Claims{Action: ActionStop, Host: "other", Expires: now.Add(time.Minute), Nonce: nonce2})
	if _, err := v.Verify(ctx, bad, Request{Action: ActionStop}); !errors.Is(err, ErrWrongHost) {
		t.Fatalf("foreign: %v", err)
	}
	good, _ := Sign(ctx, priv, Claims{Action: ActionStop, Host: "h", Expires: now.Add(time.Minute), Nonce: nonce2})
	if _, err := v.Verify(ctx, good, Request{Action: ActionStop}); err != nil {
		t.Fatalf("good after refused: %v", err)
	}
}

func TestSignRefusesIncomplete(t *testing.T) {
	_, priv, _ := sign.GenerateKey()
	ctx := context.Background()
	exp := time.Now().Add(time.Minute)
	for _, c := range []Claims{
		{Action: "reboot", Host: "h", Nonce: "n", Expires: exp},
		{Action: ActionStop, Nonce: "n", Expires: exp},
		{Action: ActionStop, Host: "h", Expires: exp},
		{Action: ActionApplyPolicy, Host: "h", Nonce: "n", Expires: exp},
	} {
		if _, err := Sign(ctx, priv, c); err == nil {
			t.Errorf("Sign(%+v): no error", c)
		}
	}
}

// TestApproveSubject: an approve token allows exactly one change.
func TestApproveSubject(t *testing.T) {
	ctx := context.Background()
	pub, priv, _ := sign.GenerateKey()
	v := &Verifier{Key: pub, Host: "h", Nonces: &MemNonces{}}
	sha := strings.Repeat("AB", 32)
	subject := ApproveSubject(sha, "", false)
	if subject != "sha256:"+strings.ToLower(sha) || ApproveSubject("", "SHA256:k", true) != "deny:signer:SHA256:k" {
		t.Fatalf("subjects %q", subject)
	}
	tok := func() []byte {
		nonce, _ := NewNonce()
		b, err := Sign(ctx, priv, Claims{Action: ActionApprove, Host: "h", Expires: time.Now().Add(time.Minute), Nonce: nonce, Subject: subject})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	if _, err := v.Verify(ctx, tok(), Request{Action: ActionApprove, Subject: ApproveSubject(sha, "", true)}); !errors.Is(err, ErrWrongSubject) {
		t.Fatalf("token for an approval used for a deny: %v, want ErrWrongSubject", err)
	}
	if _, err := v.Verify(ctx, tok(), Request{Action: ActionApprove, Subject: ApproveSubject(strings.Repeat("cd", 32), "", false)}); !errors.Is(err, ErrWrongSubject) {
		t.Fatalf("token for another digest: %v, want ErrWrongSubject", err)
	}
	if _, err := v.Verify(ctx, tok(), Request{Action: ActionApprove, Subject: subject}); err != nil {
		t.Fatalf("matching approve token: %v", err)
	}
}
