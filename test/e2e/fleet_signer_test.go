package e2e

import (
	"context"
	"crypto/rand"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	fleetv1 "github.com/vigil-hips/vigil/api/vigil/fleet/v1"
	"github.com/vigil-hips/vigil/internal/fleet"
	"github.com/vigil-hips/vigil/internal/sign"
	"github.com/vigil-hips/vigil/internal/testutil"
	"github.com/vigil-hips/vigil/internal/testworkload"
)

// TestFleetApproveBySigner: a real agent in lockdown on a fanotify-marked
// tmpfs, whose policy's catalog_dir holds a catalog signed by a vendor key
// the host does not approve, refuses the code the catalog lists and
// reports the vendor's key id with it: the server's queue entry lists it
// as a signer. Approving that signer through the admin API (its public
// key) makes the code run on the agent within 10 s: the agent gets the
// signer in its bundle, approves it and adds the catalog. The digest is
// off the queue; code the catalog does not list is still refused.
func TestFleetApproveBySigner(t *testing.T) {
	testutil.RequireRoot(t)
	mnt := testTmpfs(t)
	dir := t.TempDir()
	bin := vigilBin(t)
	for _, k := range []string{"admin", "vendor"} {
		if out, err := exec.Command(bin, "keys", "generate", "--out", filepath.Join(dir, k)).CombinedOutput(); err != nil {
			t.Fatalf("vigil keys generate: %v\n%s", err, out)
		}
	}
	vendorPEM, err := os.ReadFile(filepath.Join(dir, "vendor.pub"))
	if err != nil {
		t.Fatal(err)
	}
	vendorPub, err := sign.ParsePublicKey(vendorPEM)
	if err != nil {
		t.Fatal(err)
	}
	vendorID, err := sign.KeyID(vendorPub)
	if err != nil {
		t.Fatal(err)
	}
	srv := startFleetServer(t, filepath.Join(dir, "server"), "--signing-key", filepath.Join(dir, "admin.key"))
	// The agent starts after the vendor's catalog is in its catalog_dir.
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	tag := make([]byte, 16)
	rand.Read(tag)
	vendorTool, vendorSHA := variant(t, exe, filepath.Join(mnt, "vendor-tool"), tag...)
	other, _ := variant(t, exe, filepath.Join(mnt, "other"), append(tag, 1)...)
	catDir := filepath.Join(dir, "catalogs")
	if err := os.Mkdir(catDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := vigilRun(t, "catalog", "sign", "--key", filepath.Join(dir, "vendor.key"), "--name", "vendor",
		"--out", filepath.Join(catDir, "vendor.catalog"), vendorTool); code != 0 {
		t.Fatalf("vigil catalog sign: exit %d: %s", code, stderr)
	}
	a := startFleetAgent(t, srv, dir, mnt, filepath.Join(dir, "admin.pub"), catDir)

	// Refused: the vendor is not approved, its catalog trusts nothing.
	if err := testworkload.Noop(vendorTool); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("exec of code in the unapproved vendor's catalog: %v, want EPERM", err)
	}
	entry := srv.waitQueued(t, vendorSHA, a.agent)
	if !slices.Equal(entry.GetSigners(), []string{vendorID}) || entry.GetRefused() == 0 {
		t.Fatalf("queue entry: signers %q, refused %d; want [%s] and refused\n%v", entry.GetSigners(), entry.GetRefused(), vendorID, entry)
	}

	// Approved by signer through the admin API (`vigil fleet approve
	// --signer` makes the same call).
	adminConn, err := grpc.NewClient("unix://"+srv.adminSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer adminConn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	approved := time.Now()
	rule, err := fleetv1.NewFleetAdminClient(adminConn).Approve(ctx, &fleetv1.ApproveRequest{SignerKey: string(vendorPEM), Scope: "global"})
	if err != nil {
		t.Fatal(err)
	}
	if rule.GetKind() != fleet.KindSigner {
		t.Fatalf("approve by signer made rule %v", rule)
	}
	// Off the queue when Approve returns. (Checked before the execs below:
	// those refused before the agent has the new bundle are new attempts,
	// queued again, as they should be.)
	if e, err := srv.queueEntry(vendorSHA); err != nil || e != nil {
		t.Fatalf("the signer's digest after the approval: %v %v, want off the queue", e, err)
	}
	if err := within(10*time.Second, func() error { return testworkload.Noop(vendorTool) }); err != nil {
		t.Fatalf("code of the approved signer's catalog still refused %s after the approval: %v\nagent log:\n%s",
			time.Since(approved), err, a.log)
	}
	t.Logf("the approved signer's code ran on the real agent %s after the approval", time.Since(approved).Round(time.Millisecond))
	// The approval is of the signer's catalog, not of the tmpfs.
	if err := testworkload.Noop(other); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("exec of code in no catalog after the approval: %v, want EPERM", err)
	}
}
