package integrity

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"

	"github.com/vigil-hips/vigil/internal/sign"
)

// BaselinePayloadType is the DSSE payload type of a signed baseline.
const BaselinePayloadType = "application/vnd.vigil.integrity-baseline+json"

// Baseline is the signed content of a baseline file.
type Baseline struct {
	Version int    `json:"version"`
	State   *State `json:"state"`
}

// SignBaseline encodes s as a DSSE envelope signed with priv.
func SignBaseline(ctx context.Context, priv ed25519.PrivateKey, s *State) ([]byte, error) {
	payload, err := json.Marshal(Baseline{Version: 1, State: s})
	if err != nil {
		return nil, err
	}
	env, err := sign.Sign(ctx, priv, BaselinePayloadType, payload)
	if err != nil {
		return nil, err
	}
	return json.MarshalIndent(env, "", "  ")
}

// OpenBaseline verifies a baseline file with pub and returns its state.
// A bad signature is sign.ErrBadSignature (wrapped).
func OpenBaseline(ctx context.Context, pub ed25519.PublicKey, file []byte) (*State, error) {
	env, err := sign.ReadEnvelope(file)
	if err != nil {
		return nil, fmt.Errorf("baseline: %w", err)
	}
	payload, err := sign.Verify(ctx, pub, BaselinePayloadType, env)
	if err != nil {
		return nil, fmt.Errorf("baseline: %w", err)
	}
	var b Baseline
	if err := json.Unmarshal(payload, &b); err != nil {
		return nil, fmt.Errorf("baseline payload: %w", err)
	}
	if b.Version != 1 || b.State == nil {
		return nil, fmt.Errorf("baseline payload: version %d, want 1 with a state", b.Version)
	}
	if b.State.Unreadable == nil {
		b.State.Unreadable = map[string]string{}
	}
	return b.State, nil
}
