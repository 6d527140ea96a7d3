// Package admin makes and checks signed administrator tokens: the only way
// to stop, upgrade, unprotect or re-policy a protected agent.
//
// A token is a DSSE envelope (internal/sign) of PayloadType whose payload
// is Claims: the action, the host it is for (/etc/machine-id), an expiry
// and a random nonce, plus the policy digest for apply-policy. The agent
// checks the signature against the admin key set at install, the host,
// the expiry and that the nonce was never used before (Nonces).
package admin

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/vigil-hips/vigil/internal/sign"
)

// PayloadType is the DSSE payload type of admin tokens.
const PayloadType = "application/vnd.vigil.admin-token+json"

// DefaultHostIDFile names this host.
const DefaultHostIDFile = "/etc/machine-id"

// MaxTTL is the longest validity a token may claim: a leaked token is
// useful for at most this long, and used nonces are kept no longer.
const MaxTTL = 24 * time.Hour

// Action is what a token allows.
type Action string

// Actions.
const (
	ActionStop        Action = "stop"
	ActionApplyPolicy Action = "apply-policy"
	ActionUnprotect   Action = "unprotect"
	ActionUpgrade     Action = "upgrade"
	// ActionApprove trusts or denies one digest or signer (Subject).
	ActionApprove Action = "approve"
)

// Valid reports whether a is a known action.
func (a Action) Valid() bool {
	switch a {
	case ActionStop, ActionApplyPolicy, ActionUnprotect, ActionUpgrade, ActionApprove:
		return true
	}
	return false
}

// Claims is a token's payload.
type Claims struct {
	Action  Action    `json:"action"`
	Host    string    `json:"host"`
	Expires time.Time `json:"expires"`
	Nonce   string    `json:"nonce"`
	// PolicyDigest binds an apply-policy token to one policy (its
	// canonical digest, policy.Policy.Digest).
	PolicyDigest string `json:"policy_digest,omitempty"`
	// Subject binds an approve token to one change: ApproveSubject of it.
	Subject string `json:"subject,omitempty"`
}

// ApproveSubject names one approve request: "sha256:HEX" or "signer:KEYID",
// prefixed "deny:" for a deny or a revocation.
func ApproveSubject(sha256Hex, signerKeyID string, deny bool) string {
	s := "sha256:" + strings.ToLower(sha256Hex)
	if signerKeyID != "" {
		s = "signer:" + signerKeyID
	}
	if deny {
		s = "deny:" + s
	}
	return s
}

// Errors a token is refused with (wrapped).
var (
	ErrNoToken      = errors.New("no admin token: this agent is protected; make one with `vigil admin sign`")
	ErrBadSignature = errors.New("token signature does not verify with the admin key")
	ErrMalformed    = errors.New("malformed token")
	ErrExpired      = errors.New("token expired")
	ErrWrongHost    = errors.New("token is for another host")
	ErrWrongAction  = errors.New("token is for another action")
	ErrWrongPolicy  = errors.New("token is for another policy")
	ErrWrongSubject = errors.New("token is for another approval")
	ErrReplayed     = errors.New("token already used")
)

// NewNonce returns a random 128-bit nonce, hex.
func NewNonce() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// Sign makes a token: the JSON form of a DSSE envelope.
func Sign(ctx context.Context, priv ed25519.PrivateKey, c Claims) ([]byte, error) {
	if !c.Action.Valid() {
		return nil, fmt.Errorf("action %q: want stop, apply-policy, unprotect or upgrade", c.Action)
	}
	if c.Host == "" {
		return nil, errors.New("no host id")
	}
	if c.Nonce == "" {
		return nil, errors.New("no nonce")
	}
	if c.Action == ActionApplyPolicy && c.PolicyDigest == "" {
		return nil, errors.New("an apply-policy token needs the policy's digest")
	}
	payload, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	env, err := sign.Sign(ctx, priv, PayloadType, payload)
	if err != nil {
		return nil, err
	}
	out, err := json.MarshalIndent(env, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}

// Nonces remembers used nonces until their token expires.
type Nonces interface {
	// UseNonce records nonce as used until expires; it fails with an
	// error wrapping ErrReplayed if it was used before.
	UseNonce(ctx context.Context, nonce string, expires time.Time) error
}

// Verifier checks tokens for one agent.
type Verifier struct {
	Key    ed25519.PublicKey
	Host   string
	Nonces Nonces
	// Now is the clock; nil: time.Now.
	Now func() time.Time
}

// Request is what a token is checked against.
type Request struct {
	Action Action
	// PolicyDigest: for apply-policy, the digest of the policy sent.
	PolicyDigest string
	// Subject: for approve, ApproveSubject of the request.
	Subject string
}

// Verify checks token for req and, if it passes, spends its nonce. The
// order is: signature, form, action, host, expiry, policy, then the
// nonce (a refused token does not spend its nonce).
func (v *Verifier) Verify(ctx context.Context, token []byte, req Request) (*Claims, error) {
	if len(strings.TrimSpace(string(token))) == 0 {
		return nil, ErrNoToken
	}
	var env sign.Envelope
	if err := json.Unmarshal(token, &env); err != nil {
		return nil, fmt.Errorf("%w: not a DSSE envelope: %v", ErrMalformed, err)
	}
	payload, err := sign.Verify(ctx, v.Key, PayloadType, &env)
	if err != nil {
		if errors.Is(err, sign.ErrBadSignature) {
			return nil, ErrBadSignature
		}
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	var c Claims
	dec := json.NewDecoder(strings.NewReader(string(payload)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("%w: payload: %v", ErrMalformed, err)
	}
	if c.Nonce == "" || c.Expires.IsZero() {
		return nil, fmt.Errorf("%w: no nonce or no expiry", ErrMalformed)
	}
	if c.Action != req.Action {
		return nil, fmt.Errorf("%w: token allows %q, this is %q", ErrWrongAction, c.Action, req.Action)
	}
	if c.Host != v.Host {
		return nil, fmt.Errorf("%w: token host %q, this host %q", ErrWrongHost, c.Host, v.Host)
	}
	now := time.Now()
	if v.Now != nil {
		now = v.Now()
	}
	if !now.Before(c.Expires) {
		return nil, fmt.Errorf("%w at %s", ErrExpired, c.Expires.UTC().Format(time.RFC3339))
	}
	if c.Expires.Sub(now) > MaxTTL {
		return nil, fmt.Errorf("%w: expires %s, more than %s from now", ErrMalformed, c.Expires.UTC().Format(time.RFC3339), MaxTTL)
	}
	if req.Action == ActionApplyPolicy && c.PolicyDigest != req.PolicyDigest {
		return nil, fmt.Errorf("%w: token digest %s, policy sent %s", ErrWrongPolicy, c.PolicyDigest, req.PolicyDigest)
	}
	if req.Action == ActionApprove && c.Subject != req.Subject {
		return nil, fmt.Errorf("%w: token approves %s, request is %s", ErrWrongSubject, c.Subject, req.Subject)
	}
	if v.Nonces == nil {
		return nil, errors.New("no nonce store: cannot rule out a replay")
	}
	if err := v.Nonces.UseNonce(ctx, c.Nonce, c.Expires); err != nil {
		return nil, err
	}
	return &c, nil
}

// HostID reads a host id file (/etc/machine-id).
func HostID(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("host id: %w", err)
	}
	id := strings.TrimSpace(string(b))
	if id == "" {
		return "", fmt.Errorf("host id: %s is empty", path)
	}
	return id, nil
}

// MemNonces is an in-memory Nonces, for tests and for an agent without a
// store.
type MemNonces struct {
	used map[string]time.Time
}

// UseNonce implements Nonces.
func (m *MemNonces) UseNonce(_ context.Context, nonce string, expires time.Time) error {
	if m.used == nil {
		m.used = map[string]time.Time{}
	}
	if _, ok := m.used[nonce]; ok {
		return fmt.Errorf("%w: nonce %s", ErrReplayed, nonce)
	}
	m.used[nonce] = expires
	return nil
}
