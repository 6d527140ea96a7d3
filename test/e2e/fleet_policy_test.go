package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	fleetv1 "github.com/vigil-hips/vigil/api/vigil/fleet/v1"
	"github.com/vigil-hips/vigil/internal/testutil"
)

// TestFleetPolicyFromBundle (BPF LSM): a behavior policy delivered by a
// signed bundle to a real agent, without a restart. First a monitor-mode
// policy: the write it names still succeeds and the would-be deny is
// recorded with its rule; then an enforce-mode policy: the same write,
// which succeeded before the bundle arrived, fails with EPERM and the
// refusal names the fleet rule. Deleting the rule lets the write through
// again. A policy with a trust block is refused by the server.
func TestFleetPolicyFromBundle(t *testing.T) {
	testutil.RequireBPFLSM(t)
	dir := t.TempDir()
	bin := vigilBin(t)
	if out, err := exec.Command(bin, "keys", "generate", "--out", filepath.Join(dir, "admin")).CombinedOutput(); err != nil {
		t.Fatalf("vigil keys generate: %v\n%s", err, out)
	}
	srv := startFleetServer(t, filepath.Join(dir, "server"), "--signing-key", filepath.Join(dir, "admin.key"))
	secret, err := srv.fleet("secret", "create", "--name", "e2e")
	if err != nil {
		t.Fatal(err)
	}
	secretFile := filepath.Join(dir, "secret")
	os.WriteFile(secretFile, bytes.TrimSpace(secret), 0o600)
	hostID := randomID(t)
	hostIDFile := filepath.Join(dir, "machine-id")
	os.WriteFile(hostIDFile, []byte(hostID+"\n"), 0o644)

	// What the policies name, made at run time.
	marker := randomID(t)[:12]
	target := filepath.Join(dir, "data-"+marker, "file")
	os.MkdirAll(filepath.Dir(target), 0o755)
	if err := os.WriteFile(target, []byte("v0"), 0o644); err != nil {
		t.Fatal(err)
	}
	write := func() error {
		f, err := os.OpenFile(target, os.O_WRONLY|os.O_TRUNC, 0)
		if err != nil {
			return err
		}
		return f.Close()
	}

	a := startAgent(t, "--admin-key", filepath.Join(dir, "admin.pub"), "--protect=false", "--host-id-file", hostIDFile,
		"--fleet-server", srv.addr, "--fleet-ca", srv.ca, "--fleet-enroll-secret-file", secretFile, "--fleet-poll", "2s")
	if err := write(); err != nil {
		t.Fatalf("before any bundle: %v, want the write to succeed", err)
	}

	addPolicy := func(mode, rule string) string {
		t.Helper()
		y := fmt.Sprintf("version: 1\nname: fleet-%s\nmode: %s\nrules:\n- id: %s\n  on: [file_modify]\n  action: deny\n  match: {target: {path_prefix: %s}}\n",
			mode, mode, rule, filepath.Dir(target))
		f := filepath.Join(dir, rule+".yaml")
		os.WriteFile(f, []byte(y), 0o644)
		out, err := srv.fleet("rule", "add", "--kind", "policy", "--file", f, "--scope", "host:"+hostID, "--comment", "fleet-"+mode, "-o", "json")
		if err != nil {
			t.Fatal(err)
		}
		r := &fleetv1.Rule{}
		if err := protojson.Unmarshal(out, r); err != nil || r.GetId() == 0 {
			t.Fatalf("rule add: %v: %s", err, out)
		}
		return strconv.FormatUint(r.GetId(), 10)
	}
	// verdictFor waits for an event of rule.
	verdictFor := func(rule string, since time.Time) error {
		return within(30*time.Second, func() error {
			if err := write(); err != nil {
				return fmt.Errorf("write under the monitor policy: %w", err)
			}
			for _, ev := range a.verdicts(t, since) {
				if v := ev.GetVerdict(); v.GetRule() == rule {
					if v.GetRefused() || v.GetMode() != "monitor" {
						t.Fatalf("monitor rule %s: verdict %v, want a would-be verdict", rule, v)
					}
					return nil
				}
			}
			return errors.New("no event of the rule yet")
		})
	}

	monRule := "fleet-mon-" + marker
	since := time.Now()
	monID := addPolicy("monitor", monRule)
	if err := verdictFor(monRule, since); err != nil {
		t.Fatalf("monitor-mode fleet policy: %v\nagent log:\n%s", err, a.log)
	}
	if _, err := srv.fleet("rule", "delete", monID); err != nil {
		t.Fatal(err)
	}

	denyRule := "fleet-deny-" + marker
	since = time.Now()
	denyID := addPolicy("enforce", denyRule)
	if err := within(30*time.Second, func() error {
		if err := write(); !errors.Is(err, syscall.EPERM) {
			return fmt.Errorf("write: %v, want EPERM", err)
		}
		return nil
	}); err != nil {
		t.Fatalf("enforce-mode fleet policy: %v\nagent log:\n%s", err, a.log)
	}
	if err := within(30*time.Second, func() error {
		for _, ev := range a.verdicts(t, since) {
			if v := ev.GetVerdict(); v.GetRule() == denyRule && v.GetRefused() && v.GetMode() == "enforce" {
				return nil
			}
		}
		return errors.New("no refused event naming the fleet rule")
	}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(target); len(b) != 0 && string(b) != "v0" {
		t.Fatalf("target changed: %q", b)
	}

	// The rule deleted: the next bundle has no policy, the write runs.
	if _, err := srv.fleet("rule", "delete", denyID); err != nil {
		t.Fatal(err)
	}
	if err := within(30*time.Second, write); err != nil {
		t.Fatalf("after the rule was deleted: %v", err)
	}

	// A trust block in a fleet policy is refused at the server.
	tf := filepath.Join(dir, "trust.yaml")
	os.WriteFile(tf, []byte("version: 1\nname: t\nmode: enforce\nrules: []\ntrust: {mode: monitor}\n"), 0o644)
	if out, err := srv.fleet("rule", "add", "--kind", "policy", "--file", tf, "--comment", "t"); err == nil || !bytes.Contains(out, []byte("trust block")) {
		t.Fatalf("a fleet policy with a trust block: %v %s, want refused", err, out)
	}
}
