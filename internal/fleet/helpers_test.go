package fleet_test

import (
	"encoding/base64"
	"encoding/json"
	"testing"

	"github.com/vigil-hips/vigil/internal/sign"
)

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// forge keeps env's signatures and replaces its payload.
func forge(t *testing.T, env, payload []byte) []byte {
	t.Helper()
	e, err := sign.ReadEnvelope(env)
	if err != nil {
		t.Fatal(err)
	}
	e.Payload = b64(payload)
	out, _ := json.Marshal(e)
	return out
}
