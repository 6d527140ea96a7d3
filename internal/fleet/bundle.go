// Package fleet is what `vigil server` and its agents share: the signed
// bundle a host receives (its payload, signing and verification), the
// server's certificate authority, and the agent's client of the fleet API.
//
// A bundle is a DSSE envelope (internal/sign) of BundlePayloadType whose
// payload is Bundle: the rules in the host's scopes, the host it is for, a
// version that only grows, and when it was issued. An agent applies a
// bundle only when (Verifier.Verify):
//
//  1. it is an envelope of BundlePayloadType signed by the administrator
//     key the agent was installed with (--admin-key);
//  2. it names this host;
//  3. its version is greater than the highest version the agent applied
//     (persisted in the agent's state directory), so an old bundle cannot be
//     replayed to take back an approval or a deny;
//  4. its rules parse.
//
// Otherwise it is refused with one of the Err* errors (wrapped), and the
// agent keeps what it applied before.
package fleet

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/vigil-hips/vigil/internal/policy"
	"github.com/vigil-hips/vigil/internal/sign"
	"github.com/vigil-hips/vigil/internal/trust"
)

// BundlePayloadType is the DSSE payload type of a fleet bundle.
const BundlePayloadType = "application/vnd.vigil.fleet-bundle+json"

// Errors a bundle is refused with (wrapped).
var (
	ErrUnsigned     = errors.New("bundle is not a signed envelope")
	ErrBadSignature = errors.New("bundle signature does not verify with the admin key")
	ErrWrongHost    = errors.New("bundle is for another host")
	ErrOldVersion   = errors.New("bundle is not newer than the one applied (replayed or older)")
	ErrMalformed    = errors.New("malformed bundle")
)

// Verdicts of a hash rule.
const (
	Allow = "allow"
	Deny  = "deny"
)

// Rule kinds.
const (
	KindSHA256 = "sha256"
	KindSigner = "signer"
	KindPolicy = "policy"
)

// Bundle is a bundle's payload.
type Bundle struct {
	Host    string    `json:"host"`
	Version uint64    `json:"version"`
	Issued  time.Time `json:"issued"`
	// Hashes are allow/deny verdicts by content.
	Hashes []HashRule `json:"hashes"`
	// Signers are catalog signers the host approves (PEM public keys).
	Signers []SignerRule `json:"signers,omitempty"`
	// Policies are behavior policy YAML documents (no trust block). The
	// agent merges them after its local policy (docs/fleet.md).
	Policies []PolicyRule `json:"policies,omitempty"`
}

// HashRule is an allow or deny by SHA-256.
type HashRule struct {
	SHA256  string `json:"sha256"`
	Verdict string `json:"verdict"` // allow | deny
	Scope   string `json:"scope"`   // where it came from: global, tag:X, host:ID
	Rule    uint64 `json:"rule"`    // the server's rule id
	// Mode "monitor": a staged rollout's preview; the agent does not
	// enforce it and marks the events of the digest as would-be denied.
	Mode string `json:"mode,omitempty"`
}

// SignerRule approves a catalog signer.
type SignerRule struct {
	PublicKey string `json:"public_key"` // PEM
	Scope     string `json:"scope"`
	Rule      uint64 `json:"rule"`
}

// PolicyRule is a behavior policy document.
type PolicyRule struct {
	Name  string `json:"name"`
	YAML  string `json:"yaml"`
	Scope string `json:"scope"`
	Rule  uint64 `json:"rule"`
	// Mode "monitor": a staged rollout's preview; every rule of the
	// policy is in monitor mode, whatever the document says.
	Mode string `json:"mode,omitempty"`
}

// Monitor is the Mode of a rule delivered as a preview.
const Monitor = "monitor"

// Parse parses and validates the policy document as a local policy file
// is, and refuses a trust block: execution control on a host is the local
// policy's, and the fleet's part of it comes as hash and signer rules.
func (p PolicyRule) Parse() (*policy.Policy, error) {
	if strings.TrimSpace(p.Name) == "" {
		return nil, errors.New("a policy rule needs a name")
	}
	if p.Mode != "" && p.Mode != Monitor {
		return nil, fmt.Errorf("%s: mode %q, want monitor or none", p.Name, p.Mode)
	}
	pol, err := policy.Parse(p.Name, []byte(p.YAML))
	if err != nil {
		return nil, err
	}
	if pol.Trust != nil {
		return nil, fmt.Errorf("%s: a trust block in a fleet policy (execution control comes from the local policy; the fleet sends hash and signer rules)", p.Name)
	}
	if p.Mode == Monitor {
		pol = policy.AsMonitor(pol)
	}
	return pol, nil
}

// Canonical orders the rules so that the same rules make the same payload.
func (b *Bundle) Canonical() {
	slices.SortFunc(b.Hashes, func(x, y HashRule) int {
		return strings.Compare(x.SHA256+x.Verdict+x.Scope+x.Mode, y.SHA256+y.Verdict+y.Scope+y.Mode)
	})
	slices.SortFunc(b.Signers, func(x, y SignerRule) int { return strings.Compare(x.PublicKey+x.Scope, y.PublicKey+y.Scope) })
	slices.SortFunc(b.Policies, func(x, y PolicyRule) int { return strings.Compare(x.Name+x.Scope, y.Name+y.Scope) })
	if b.Hashes == nil {
		b.Hashes = []HashRule{}
	}
	b.Issued = b.Issued.UTC()
}

// RulesDigest is the hex SHA-256 of the rules alone (not host, version or
// time): two bundles with the same rules have the same digest.
func (b Bundle) RulesDigest() string {
	c := b
	c.Hashes = slices.Clone(b.Hashes)
	c.Signers = slices.Clone(b.Signers)
	c.Policies = slices.Clone(b.Policies)
	c.Canonical()
	j, _ := json.Marshal(struct {
		H []HashRule   `json:"h"`
		S []SignerRule `json:"s"`
		P []PolicyRule `json:"p"`
	}{c.Hashes, c.Signers, c.Policies})
	sum := sha256.Sum256(j)
	return hex.EncodeToString(sum[:])
}

// Marshal returns the payload's JSON, canonical.
func (b Bundle) Marshal() ([]byte, error) {
	b.Canonical()
	if err := b.Validate(); err != nil {
		return nil, err
	}
	return json.Marshal(b)
}

// Validate checks the fields and every rule.
func (b Bundle) Validate() error {
	var errs []error
	if b.Host == "" {
		errs = append(errs, errors.New("no host"))
	}
	if b.Version == 0 {
		errs = append(errs, errors.New("version 0 (versions start at 1)"))
	}
	if b.Issued.IsZero() {
		errs = append(errs, errors.New("no issue time"))
	}
	for i, h := range b.Hashes {
		if _, err := trust.ParseDigest(h.SHA256); err != nil {
			errs = append(errs, fmt.Errorf("hash rule %d: %w", i+1, err))
		}
		if h.Verdict != Allow && h.Verdict != Deny {
			errs = append(errs, fmt.Errorf("hash rule %d: verdict %q, want allow or deny", i+1, h.Verdict))
		}
		if h.Mode != "" && (h.Mode != Monitor || h.Verdict != Deny) {
			errs = append(errs, fmt.Errorf("hash rule %d: mode %q with verdict %s (a preview is a deny in monitor mode)", i+1, h.Mode, h.Verdict))
		}
	}
	for i, s := range b.Signers {
		if _, err := sign.ParsePublicKey([]byte(s.PublicKey)); err != nil {
			errs = append(errs, fmt.Errorf("signer rule %d: %w", i+1, err))
		}
	}
	for i, p := range b.Policies {
		if _, err := p.Parse(); err != nil {
			errs = append(errs, fmt.Errorf("policy rule %d: %w", i+1, err))
		}
	}
	return errors.Join(errs...)
}

// SignBundle signs b with the administrator key and returns the envelope's
// JSON form.
func SignBundle(ctx context.Context, priv ed25519.PrivateKey, b Bundle) ([]byte, error) {
	payload, err := b.Marshal()
	if err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	return SignPayload(ctx, priv, payload)
}

// SignPayload signs a bundle payload as it is (the offline flow signs what
// the server proposed, after checking it with ParsePayload).
func SignPayload(ctx context.Context, priv ed25519.PrivateKey, payload []byte) ([]byte, error) {
	if _, err := ParsePayload(payload); err != nil {
		return nil, err
	}
	env, err := sign.Sign(ctx, priv, BundlePayloadType, payload)
	if err != nil {
		return nil, err
	}
	return json.Marshal(env)
}

// ParsePayload decodes and validates a bundle payload (unverified).
func ParsePayload(payload []byte) (*Bundle, error) {
	var b Bundle
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if err := b.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return &b, nil
}

// PeekPayload returns the unverified payload of an envelope, for servers
// and tools that route bundles; never apply what it returns.
func PeekPayload(envelope []byte) (*Bundle, error) {
	env, err := sign.ReadEnvelope(envelope)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnsigned, err)
	}
	if env.PayloadType != BundlePayloadType {
		return nil, fmt.Errorf("%w: payload type %q", ErrMalformed, env.PayloadType)
	}
	raw, err := env.DecodeB64Payload()
	if err != nil {
		return nil, fmt.Errorf("%w: payload: %v", ErrMalformed, err)
	}
	return ParsePayload(raw)
}

// Verifier checks bundles for one host against the admin key.
type Verifier struct {
	Key  ed25519.PublicKey
	Host string
}

// Verify checks envelope (its JSON form) and returns its bundle if it may
// be applied over a bundle of version applied (0: none yet).
func (v Verifier) Verify(ctx context.Context, envelope []byte, applied uint64) (*Bundle, error) {
	if len(v.Key) != ed25519.PublicKeySize {
		return nil, errors.New("no admin key to verify bundles with")
	}
	env, err := sign.ReadEnvelope(envelope)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnsigned, err)
	}
	if len(env.Signatures) == 0 {
		return nil, ErrUnsigned
	}
	payload, err := sign.Verify(ctx, v.Key, BundlePayloadType, env)
	if err != nil {
		if errors.Is(err, sign.ErrBadSignature) {
			return nil, fmt.Errorf("%w: %v", ErrBadSignature, err)
		}
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	b, err := ParsePayload(payload)
	if err != nil {
		return nil, err
	}
	if b.Host != v.Host {
		return nil, fmt.Errorf("%w: it names %q, this host is %q", ErrWrongHost, b.Host, v.Host)
	}
	if b.Version <= applied {
		return nil, fmt.Errorf("%w: version %d, applied %d", ErrOldVersion, b.Version, applied)
	}
	return b, nil
}

// Reason is a short word for why a bundle was refused, for events and
// metrics: unsigned, bad-signature, wrong-host, old-version, malformed.
func Reason(err error) string {
	switch {
	case errors.Is(err, ErrUnsigned):
		return "unsigned"
	case errors.Is(err, ErrBadSignature):
		return "bad-signature"
	case errors.Is(err, ErrWrongHost):
		return "wrong-host"
	case errors.Is(err, ErrOldVersion):
		return "old-version"
	}
	return "malformed"
}

// ValidScope checks a scope: global, tag:NAME or host:ID.
func ValidScope(s string) error {
	switch {
	case s == "global":
		return nil
	case strings.HasPrefix(s, "tag:") && len(s) > 4 && !strings.ContainsAny(s[4:], " ,\t\n"):
		return nil
	case strings.HasPrefix(s, "host:") && len(s) > 5 && !strings.ContainsAny(s[5:], " ,\t\n"):
		return nil
	}
	return fmt.Errorf("scope %q: want global, tag:NAME or host:ID", s)
}

// InScope reports whether a rule of scope applies to host with tags.
func InScope(scope, host string, tags []string) bool {
	switch {
	case scope == "global":
		return true
	case strings.HasPrefix(scope, "tag:"):
		return slices.Contains(tags, scope[4:])
	case strings.HasPrefix(scope, "host:"):
		return scope[5:] == host
	}
	return false
}
