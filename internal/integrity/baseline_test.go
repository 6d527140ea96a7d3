package integrity

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"testing"

	"github.com/vigil-hips/vigil/internal/sign"
)

func TestBaselineSignedRoundTrip(t *testing.T) {
	ctx := context.Background()
	pub, priv, err := sign.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	s := collect(host(), Program{ID: 3, Type: "CGroupDevice", Name: "sd_devices", Tag: "bbbb"})
	file, err := SignBaseline(ctx, priv, s)
	if err != nil {
		t.Fatal(err)
	}
	got, err := OpenBaseline(ctx, pub, file)
	if err != nil {
		t.Fatal(err)
	}
	if r := Compare(got, s); len(r.Findings) != 0 {
		t.Fatalf("baseline read back differs from the state: %v", r.Findings)
	}
	other, _, _ := sign.GenerateKey()
	if _, err := OpenBaseline(ctx, other, file); !errors.Is(err, sign.ErrBadSignature) {
		t.Fatalf("other key: %v", err)
	}
	// Change the payload (allow a second program) and keep the signature.
	env, _ := sign.ReadEnvelope(file)
	forged, _ := sign.Sign(ctx, priv, BaselinePayloadType, []byte(`{"version":1,"state":{}}`))
	env.Payload = forged.Payload
	if _, err := OpenBaseline(ctx, pub, mustJSON(t, env)); !errors.Is(err, sign.ErrBadSignature) {
		t.Fatalf("swapped payload: %v", err)
	}
	if _, err := OpenBaseline(ctx, pub, bytes.ReplaceAll(file, []byte("payloadType"), []byte("x"))); err == nil {
		t.Fatal("not an envelope: accepted")
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
