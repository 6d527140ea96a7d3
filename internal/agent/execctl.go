package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/policy"
	"github.com/vigil-hips/vigil/internal/sensor"
	"github.com/vigil-hips/vigil/internal/trust"
)

// Execution control in the agent: the policy's trust block says the mode
// and which trust sources count; the trust database (trust.db in the state
// directory, written by `vigil trust scan`, `vigil approve` and the
// catalogs) says what they trust. The agent merges both into one set of
// digests and hands it to the sensor, which decides in the kernel. It
// reloads when the database or the catalog directory changes, and records
// the unknown code the sensor reports for `vigil pending`.
//
// Catalogs in catalog_dir whose signer the host does not approve trust
// nothing, but the agent keeps what they claim (trust.CatalogClaim): for
// each digest they list, the key IDs of their signers. An event about
// unknown code whose digest one of them lists carries those key IDs
// (Trust.catalog_signers), so the fleet server's queue can offer to
// approve the signer. The host cannot verify such a claim (it lacks the
// key); approving the signer with its real public key does, when the
// catalog is added then.

const (
	trustPoll    = 2 * time.Second // how often the database and catalogs are checked for changes
	pendingQueue = 1024            // attempts waiting to be recorded
	maxClaimed   = 8               // catalog signers reported per event, at most
)

// execState is the agent's execution control state; guarded by
// agent.policy.mu, like the policy it belongs to.
type execState struct {
	db     *trust.DB
	gen    uint64 // database generation in force
	catSig string // catalog directory listing last read
	// catDone holds the catalog files (by content digest) added or
	// superseded, each with the payload digest of the stored catalog that
	// accounts for it (trust.CatalogInfo.SHA256): done while the database
	// holds that one.
	catDone  map[string]string
	warnings []string // of the execution control in force
	pending  chan trust.Attempt
	// claims is what catalog_dir's catalogs by signers not approved
	// claim, read by the pipeline without a lock; replaced (never
	// changed) each time catalog_dir is read. nil: none.
	claims atomic.Pointer[catalogClaims]
}

// catalogClaims maps a digest to the key IDs (sorted, without duplicates,
// at most maxClaimed) of signers not approved on this host whose catalogs
// in catalog_dir list it: unverified claims (trust.CatalogClaim). Never
// changed once published.
type catalogClaims map[[32]byte][]string

// add files ids (sorted, without duplicates) under each of ds.
func (cc catalogClaims) add(ids []string, ds [][32]byte) {
	if len(ids) == 0 {
		return
	}
	if len(ids) > maxClaimed {
		ids = ids[:maxClaimed]
	}
	for _, d := range ds {
		have := cc[d]
		if len(have) == 0 {
			cc[d] = ids // shared by the digests of one catalog: read only
			continue
		}
		merged := slices.Compact(slices.Sorted(slices.Values(append(slices.Clone(have), ids...))))
		if len(merged) > maxClaimed {
			merged = merged[:maxClaimed]
		}
		cc[d] = merged
	}
}

func (a *agent) openTrust(ctx context.Context) error {
	db, err := trust.Open(ctx, filepath.Join(a.cfg.StateDir, trust.FileName))
	if err != nil {
		return err
	}
	a.xc = &execState{db: db, catDone: map[string]string{}, pending: make(chan trust.Attempt, pendingQueue)}
	return nil
}

// policySources is the trust sources the policy in force counts.
func (a *agent) policySources() trust.Sources {
	a.policy.mu.Lock()
	defer a.policy.mu.Unlock()
	if a.policy.p == nil || a.policy.p.Trust == nil {
		return 0
	}
	s, _ := trust.ParseSources(a.policy.p.Trust.Sources)
	return s
}

// buildExecControl merges the policy's trust block and the database into
// what the sensor enforces. Precedence (docs/trust.md): a digest denied by
// the policy, the database or the fleet bundle is denied; then the
// policy's allow list, the fleet bundle's allows and the database's
// trusted digests (by the sources the policy counts).
func (a *agent) buildExecControl(ctx context.Context, t *policy.Trust) (*sensor.ExecControl, []string, error) {
	if t == nil {
		return &sensor.ExecControl{Mode: sensor.ExecOff}, nil, nil
	}
	srcs, err := trust.ParseSources(t.Sources)
	if err != nil {
		return nil, nil, err
	}
	xc := &sensor.ExecControl{
		Mode:         string(t.Mode),
		Trust:        map[[32]byte]bool{},
		UnlinkedDeny: t.Unlinked == "deny",
		AnonDeny:     t.AnonymousExec == "deny",
	}
	err = a.xc.db.Each(ctx, srcs, func(sha [32]byte, d trust.Decision) error {
		switch d.Verdict {
		case trust.Trusted:
			xc.Trust[sha] = true
		case trust.Denied:
			xc.Trust[sha] = false
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("trust database: %w", err)
	}
	for _, h := range t.Allow {
		sha, _ := trust.ParseDigest(h)
		if v, ok := xc.Trust[sha]; !ok || v {
			xc.Trust[sha] = true
		}
	}
	for _, h := range t.Deny {
		sha, _ := trust.ParseDigest(h)
		xc.Trust[sha] = false
	}
	a.fleetMerge(xc.Trust)
	var warnings []string
	for _, p := range t.AnonymousExecAllow {
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			warnings = append(warnings, fmt.Sprintf("trust.anonymous_exec_allow %s: %v (not allowed until it exists and the policy is applied again)", p, err))
			continue
		}
		xc.AnonAllow = append(xc.AnonAllow, sensor.FileID{Dev: st.Dev, Ino: st.Ino})
	}
	return xc, warnings, nil
}

// setExecControlLocked makes the policy's trust block the execution control
// in force. The caller holds a.policy.mu. A sensor that cannot enforce it
// here (no BPF LSM and no fanotify marks) is a warning, not an error: the
// policy's rules still apply.
func (a *agent) setExecControlLocked(ctx context.Context, t *policy.Trust) ([]string, error) {
	ptr := a.sensor.Load()
	if ptr == nil {
		return nil, errors.New("the sensors are not attached yet")
	}
	gen, err := a.xc.db.Generation(ctx)
	if err != nil {
		return nil, fmt.Errorf("trust database: %w", err)
	}
	var (
		warnings []string
		claims   catalogClaims
	)
	if t != nil && t.CatalogDir != "" {
		a.xc.catSig = catalogSig(t.CatalogDir)
		var w []string
		w, claims = a.addCatalogs(ctx, t.CatalogDir)
		warnings = append(warnings, w...)
		if gen, err = a.xc.db.Generation(ctx); err != nil {
			return nil, fmt.Errorf("trust database: %w", err)
		}
	}
	// What catalog_dir holds now: a catalog added since (its signer
	// approved) claims nothing any more, nor one removed.
	a.xc.claims.Store(&claims)
	xc, w, err := a.buildExecControl(ctx, t)
	if err != nil {
		return nil, err
	}
	warnings = append(warnings, w...)
	ctl, ok := (*ptr).(sensor.ExecController)
	switch {
	case !ok && xc.Mode != sensor.ExecOff:
		warnings = append(warnings, "execution control not enforced: this sensor cannot")
	case ok:
		if err := ctl.SetExecControl(xc); err != nil {
			if !errors.Is(err, sensor.ErrNotSupported) {
				return nil, err
			}
			warnings = append(warnings, "execution control not enforced: "+err.Error())
		}
	}
	a.xc.gen, a.xc.warnings = gen, warnings
	for _, w := range warnings {
		a.log.Warn("execution control", "warning", w)
	}
	if xc.Mode != sensor.ExecOff {
		a.log.Info("execution control in force", "mode", xc.Mode, "digests", len(xc.Trust), "generation", gen)
	}
	return warnings, nil
}

// addCatalogs adds the catalog files of dir the database does not hold
// yet. A catalog that is refused (bad signature, signer not approved) is a
// warning; it is tried again when the database changes (a signer may have
// been approved since). A catalog added earlier that the database no
// longer holds is tried again too: revoking a signer deletes its catalogs,
// so approving it again must add them again.
//
// It also returns what the catalogs refused as not signed by an approved
// signer claim (catalogClaims). A catalog refused for a bad signature
// claims nothing: it names an approved key and does not verify with it
// (forged or damaged).
func (a *agent) addCatalogs(ctx context.Context, dir string) ([]string, catalogClaims) {
	claims := catalogClaims{}
	entries, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, claims
		}
		return []string{fmt.Sprintf("trust.catalog_dir: %v", err)}, claims
	}
	var warnings []string
	if stored, err := a.xc.db.Catalogs(ctx); err != nil {
		warnings = append(warnings, fmt.Sprintf("trust.catalog_dir: catalogs removed from the trust database not checked: %v", err))
	} else {
		held := map[string]bool{}
		for _, c := range stored {
			held[c.SHA256] = true
		}
		for key, payload := range a.xc.catDone {
			if !held[payload] {
				delete(a.xc.catDone, key)
			}
		}
	}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		path := filepath.Join(dir, e.Name())
		b, err := os.ReadFile(path)
		if err != nil {
			warnings = append(warnings, fmt.Sprintf("catalog %s: %v", path, err))
			continue
		}
		sum := sha256.Sum256(b)
		key := hex.EncodeToString(sum[:])
		if _, done := a.xc.catDone[key]; done {
			continue
		}
		info, err := a.xc.db.AddCatalog(ctx, b)
		switch {
		case err == nil:
			a.log.Info("catalog added", "file", path, "name", info.Name, "signer", info.KeyID, "digests", info.Digests)
			a.xc.catDone[key] = info.SHA256
		case errors.Is(err, trust.ErrStaleCatalog):
			// Superseded by a newer one of its signer: done while the
			// database holds that one.
			a.xc.catDone[key] = a.supersedingCatalog(ctx, b)
		case errors.Is(err, trust.ErrUnapprovedSigner):
			if c, err := trust.ReadCatalogClaim(b); err == nil {
				claims.add(c.KeyIDs, c.SHA)
			}
			warnings = append(warnings, fmt.Sprintf("catalog %s refused, it trusts nothing: %v", path, err))
		default:
			warnings = append(warnings, fmt.Sprintf("catalog %s refused, it trusts nothing: %v", path, err))
		}
	}
	return warnings, claims
}

// supersedingCatalog returns the payload digest of the stored catalog
// that supersedes the catalog file b (same name, from a signer b names);
// "" if there is none (b is then tried again next time).
func (a *agent) supersedingCatalog(ctx context.Context, b []byte) string {
	c, err := trust.ReadCatalogClaim(b)
	if err != nil {
		return ""
	}
	stored, err := a.xc.db.Catalogs(ctx)
	if err != nil {
		return ""
	}
	for _, s := range stored {
		if s.Name == c.Name && slices.Contains(c.KeyIDs, s.KeyID) {
			return s.SHA256
		}
	}
	return ""
}

// noteClaims sets the catalog signers of an event about unknown code to
// those catalog_dir's catalogs claim for its digest (unverified, see
// catalogClaims). It never blocks and takes no lock.
func (a *agent) noteClaims(ev *vigilv1.Event) {
	t := ev.GetTrust()
	if a.xc == nil || t == nil || t.Verdict != "unknown" || t.Sha256 == "" {
		return
	}
	cc := a.xc.claims.Load()
	if cc == nil || len(*cc) == 0 {
		return
	}
	sha, err := trust.ParseDigest(t.Sha256)
	if err != nil {
		return
	}
	if ids := (*cc)[sha]; len(ids) > 0 {
		t.CatalogSigners = slices.Clone(ids) // the index is shared, the event is not
	}
}

// catalogSig is a cheap signature of dir's listing: names, sizes, times.
func catalogSig(dir string) string {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err.Error()
	}
	var parts []string
	for _, e := range entries {
		if fi, err := e.Info(); err == nil {
			parts = append(parts, fmt.Sprintf("%s:%d:%d", e.Name(), fi.Size(), fi.ModTime().UnixNano()))
		}
	}
	sort.Strings(parts)
	return strings.Join(parts, "/")
}

// reloadExecControl applies the policy in force's trust block again (the
// database changed). Used by the Approve handler: the change is in force
// when it returns.
func (a *agent) reloadExecControl(ctx context.Context) error {
	a.policy.mu.Lock()
	defer a.policy.mu.Unlock()
	var t *policy.Trust
	if a.policy.p != nil {
		t = a.policy.p.Trust
	}
	_, err := a.setExecControlLocked(ctx, t)
	a.rebindSignersLocked(ctx) // an approved or revoked signer counts for process.signer at once
	return err
}

// trustLoop reloads execution control when the trust database or the
// catalog directory changes, until ctx is done.
func (a *agent) trustLoop(ctx context.Context) {
	tick := time.NewTicker(trustPoll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		a.policy.mu.Lock()
		var t *policy.Trust
		if a.policy.p != nil {
			t = a.policy.p.Trust
		}
		changed := false
		if t != nil {
			gen, err := a.xc.db.Generation(ctx)
			if err != nil {
				a.log.Warn("trust database", "err", err)
			}
			sig := ""
			if t.CatalogDir != "" {
				sig = catalogSig(t.CatalogDir)
			}
			changed = err == nil && (gen != a.xc.gen || sig != a.xc.catSig)
		}
		if changed {
			if _, err := a.setExecControlLocked(ctx, t); err != nil {
				a.log.Error("execution control not reloaded; the previous one stays in force", "err", err)
			}
		}
		a.rebindSignersLocked(ctx) // after the catalogs of catalog_dir were added
		a.policy.mu.Unlock()
	}
}

// notePending queues an execution control event about code no source
// trusts, for `vigil pending`. It never blocks the pipeline.
func (a *agent) notePending(ev *vigilv1.Event) {
	t := ev.GetTrust()
	if a.xc == nil || t == nil || t.Verdict == "trusted" || t.Sha256 == "" {
		return
	}
	sha, err := trust.ParseDigest(t.Sha256)
	if err != nil {
		return
	}
	at := trust.Attempt{SHA: sha, Exe: ev.GetProcess().GetExe(), PID: ev.GetProcess().GetPid(),
		Refused: ev.GetVerdict().GetRefused(), Time: ev.GetTime().AsTime()}
	switch d := ev.Detail.(type) {
	case *vigilv1.Event_Exec:
		at.Path = d.Exec.GetFile().GetPath()
	case *vigilv1.Event_ImageLoad:
		at.Path = d.ImageLoad.GetFile().GetPath()
	case *vigilv1.Event_MemExec:
		at.Path = d.MemExec.GetFile().GetPath()
	}
	select {
	case a.xc.pending <- at:
	default:
		a.log.Warn("pending queue full, attempt not recorded", "sha256", t.Sha256)
	}
}

// pendingLoop records queued attempts until ctx is done.
func (a *agent) pendingLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case at := <-a.xc.pending:
			if err := a.xc.db.RecordPending(ctx, at); err != nil && ctx.Err() == nil {
				a.log.Warn("pending code not recorded", "sha256", hex.EncodeToString(at.SHA[:]), "err", err)
			}
		}
	}
}
