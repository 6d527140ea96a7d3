// Package sign holds Vigil's admin keys (ed25519) and the signed envelope
// every admin artifact travels in: a DSSE envelope
// (https://github.com/secure-systems-lab/dsse), built and checked with the
// maintained go-securesystemslib/dsse implementation rather than by hand.
//
// The payload type names what is inside (for example
// "application/vnd.vigil.integrity-baseline+json"); Verify refuses an
// envelope of another type, so a signed policy cannot be replayed as a
// baseline. Key IDs are the SSH-style SHA-256 fingerprint of the public
// key: "SHA256:" and 43 characters of unpadded standard base64.
package sign

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/secure-systems-lab/go-securesystemslib/dsse"
)

// ErrBadSignature is returned (wrapped) when no signature of an envelope
// verifies with the given key.
var ErrBadSignature = errors.New("signature does not verify")

// Envelope is a DSSE envelope; its JSON form is the file format.
type Envelope = dsse.Envelope

// GenerateKey returns a new ed25519 admin key pair.
func GenerateKey() (ed25519.PublicKey, ed25519.PrivateKey, error) {
	return ed25519.GenerateKey(rand.Reader)
}

// KeyID is pub's key ID: its SSH-style SHA-256 fingerprint ("SHA256:"
// and 43 characters of unpadded standard base64), as `vigil keys id`
// prints it.
func KeyID(pub ed25519.PublicKey) (string, error) {
	return dsse.SHA256KeyID(pub)
}

// IsKeyID reports whether s has the form of a key ID (KeyID). It says
// nothing about whether any key has that ID.
func IsKeyID(s string) bool {
	b64, ok := strings.CutPrefix(s, "SHA256:")
	b, err := base64.RawStdEncoding.Strict().DecodeString(b64)
	return ok && err == nil && len(b) == sha256.Size
}

// MarshalPrivateKey encodes priv as a PKCS#8 "PRIVATE KEY" PEM block.
func MarshalPrivateKey(priv ed25519.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// MarshalPublicKey encodes pub as a PKIX "PUBLIC KEY" PEM block.
func MarshalPublicKey(pub ed25519.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("encode public key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// ParsePrivateKey accepts a PKCS#8 PEM block, a raw 64-byte ed25519
// private key or a raw 32-byte seed.
func ParsePrivateKey(b []byte) (ed25519.PrivateKey, error) {
	if blk, _ := pem.Decode(b); blk != nil {
		k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse private key PEM: %w", err)
		}
		priv, ok := k.(ed25519.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("private key is %T, want ed25519", k)
		}
		return priv, nil
	}
	switch len(b) {
	case ed25519.PrivateKeySize:
		return ed25519.PrivateKey(append([]byte(nil), b...)), nil
	case ed25519.SeedSize:
		return ed25519.NewKeyFromSeed(b), nil
	}
	return nil, fmt.Errorf("private key: not PEM and %d bytes is not a raw ed25519 key (64) or seed (32)", len(b))
}

// ParsePublicKey accepts a PKIX PEM block or a raw 32-byte ed25519 key.
func ParsePublicKey(b []byte) (ed25519.PublicKey, error) {
	if blk, _ := pem.Decode(b); blk != nil {
		k, err := x509.ParsePKIXPublicKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse public key PEM: %w", err)
		}
		pub, ok := k.(ed25519.PublicKey)
		if !ok {
			return nil, fmt.Errorf("public key is %T, want ed25519", k)
		}
		return pub, nil
	}
	if len(b) == ed25519.PublicKeySize {
		return ed25519.PublicKey(append([]byte(nil), b...)), nil
	}
	return nil, fmt.Errorf("public key: not PEM and %d bytes is not a raw ed25519 key (32)", len(b))
}

// LoadPrivateKey reads ParsePrivateKey's formats from a file.
func LoadPrivateKey(path string) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	k, err := ParsePrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// LoadPublicKey reads ParsePublicKey's formats from a file.
func LoadPublicKey(path string) (ed25519.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	k, err := ParsePublicKey(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// Sign wraps payload in a DSSE envelope of payloadType signed by priv.
func Sign(ctx context.Context, priv ed25519.PrivateKey, payloadType string, payload []byte) (*Envelope, error) {
	es, err := dsse.NewEnvelopeSigner(edKey{pub: priv.Public().(ed25519.PublicKey), priv: priv})
	if err != nil {
		return nil, err
	}
	env, err := es.SignPayload(ctx, payloadType, payload)
	if err != nil {
		return nil, fmt.Errorf("sign %s: %w", payloadType, err)
	}
	return env, nil
}

// Verify checks that env is of payloadType and carries a signature by pub,
// and returns the payload. A signature that does not verify is
// ErrBadSignature.
func Verify(ctx context.Context, pub ed25519.PublicKey, payloadType string, env *Envelope) ([]byte, error) {
	if env == nil {
		return nil, errors.New("no envelope")
	}
	if env.PayloadType != payloadType {
		return nil, fmt.Errorf("envelope holds %q, want %q", env.PayloadType, payloadType)
	}
	ev, err := dsse.NewEnvelopeVerifier(edKey{pub: pub})
	if err != nil {
		return nil, err
	}
	_, payload, err := ev.VerifyAndDecode(ctx, env)
	if err != nil {
		id, _ := KeyID(pub)
		return nil, fmt.Errorf("%w with key %s: %v", ErrBadSignature, id, err)
	}
	return payload, nil
}

// ReadEnvelope parses a DSSE envelope in its JSON form.
func ReadEnvelope(b []byte) (*Envelope, error) {
	var env Envelope
	if err := json.Unmarshal(b, &env); err != nil {
		return nil, fmt.Errorf("not a DSSE envelope: %w", err)
	}
	if env.PayloadType == "" || env.Payload == "" {
		return nil, errors.New("not a DSSE envelope: no payloadType or payload")
	}
	return &env, nil
}

// edKey is an ed25519 dsse.SignerVerifier; priv is nil for verify-only.
type edKey struct {
	pub  ed25519.PublicKey
	priv ed25519.PrivateKey
}

func (k edKey) Sign(_ context.Context, data []byte) ([]byte, error) {
	if k.priv == nil {
		return nil, errors.New("no private key")
	}
	return ed25519.Sign(k.priv, data), nil
}

func (k edKey) Verify(_ context.Context, data, sig []byte) error {
	if !ed25519.Verify(k.pub, data, sig) {
		return ErrBadSignature
	}
	return nil
}

func (k edKey) KeyID() (string, error)   { return KeyID(k.pub) }
func (k edKey) Public() crypto.PublicKey { return k.pub }
