// Package fleetdb is the fleet server's storage: hosts, enrollment
// secrets, rules and bundles (Store), and the events the agents upload with
// the approval queue they feed (EventSink). SQLite (pure Go, one file in the
// server's state directory) implements both; the interfaces are what a
// PostgreSQL store and a streaming event sink will implement for the
// scale-out deployment (docs/fleet.md).
package fleetdb

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/fleet"
)

// Errors (wrapped).
var (
	ErrNotFound   = errors.New("not found")
	ErrRevoked    = errors.New("host is revoked")
	ErrBadSecret  = errors.New("unknown or expired enrollment secret")
	ErrConflict   = errors.New("conflict")
	ErrOldVersion = errors.New("bundle version is not newer")
)

// Host is an enrolled host.
type Host struct {
	ID         string
	Hostname   string
	Tags       []string
	Enrolled   time.Time
	LastSeen   time.Time
	Revoked    bool
	CertSerial string // hex serial of its current client certificate
	// From the agent's last Sync.
	AppliedVersion uint64
	AgentVersion   string
	Backend        string
	ExecMode       string
	KernelLost     uint64
	Guarantees     []*vigilv1.Guarantee
	// Event upload.
	LastEventID uint64
	EventsLost  uint64
}

// Report is what an agent says in Sync.
type Report struct {
	AppliedVersion uint64
	AgentVersion   string
	Backend        string
	ExecMode       string
	KernelLost     uint64
	Guarantees     []*vigilv1.Guarantee // what the kernel lets it guarantee
}

// Rule is a rule on the server (kinds and verdicts: internal/fleet).
type Rule struct {
	ID      uint64
	Kind    string
	Value   string
	Verdict string
	Scope   string
	Comment string
	Created time.Time
	// Rollout is the rule's staged rollout (zero: every host in scope).
	Rollout fleet.Rollout
}

// BundleState is a host's bundles: the newest made (Version, Payload) and
// the newest signed (SignedVersion, Envelope), which is what agents get.
// They differ while a bundle waits for an offline signature.
type BundleState struct {
	Host          string
	Version       uint64
	RulesDigest   string
	Payload       []byte
	SignedVersion uint64
	Envelope      []byte
}

// Store holds hosts, secrets, rules and bundles.
type Store interface {
	// AddSecret stores an enrollment secret by its hash; zero expires:
	// never.
	AddSecret(ctx context.Context, name string, hash []byte, expires time.Time) error
	// CheckSecret returns the name of the secret of hash, or ErrBadSecret.
	CheckSecret(ctx context.Context, hash []byte, now time.Time) (string, error)
	// Enroll records host (new, or enrolling again with a new
	// certificate, which replaces the old one); a revoked host is
	// ErrRevoked. Tags given are added to the host's. Enrolling again
	// resets the host's last event id (a new agent state directory, a new
	// event store).
	Enroll(ctx context.Context, h Host) (Host, error)
	Host(ctx context.Context, id string) (Host, error)
	Hosts(ctx context.Context) ([]Host, error)
	TagHost(ctx context.Context, id string, add, remove []string) (Host, error)
	RevokeHost(ctx context.Context, id string) (Host, error)
	// Seen records a Sync: the time and the agent's report.
	Seen(ctx context.Context, id string, r Report, now time.Time) error

	// AddRule adds r, or replaces the verdict, comment and rollout of the
	// rule of the same kind, value and scope.
	AddRule(ctx context.Context, r Rule) (Rule, error)
	// SetRollout changes a rule's rollout (ErrNotFound if there is no
	// rule id).
	SetRollout(ctx context.Context, id uint64, ro fleet.Rollout) (Rule, error)
	DeleteRule(ctx context.Context, id uint64) error
	Rules(ctx context.Context) ([]Rule, error)

	Bundle(ctx context.Context, host string) (BundleState, error)
	// NewBundle records a newly made bundle for host: version must be the
	// stored version + 1 (ErrConflict otherwise). envelope may be nil (to
	// be signed offline).
	NewBundle(ctx context.Context, host string, version uint64, rulesDigest string, payload, envelope []byte) error
	// SignBundle stores the envelope of host's bundle version, which must
	// be newer than the signed one (ErrOldVersion) and not newer than
	// the newest made.
	SignBundle(ctx context.Context, host string, version uint64, envelope []byte) error
	// Unsigned lists the bundles waiting for a signature.
	Unsigned(ctx context.Context) ([]BundleState, error)

	Close() error
}

// QueueEntry is unknown code seen on the fleet.
type QueueEntry struct {
	SHA256    string
	Count     uint64
	Refused   uint64
	Hosts     []string
	FirstSeen time.Time
	LastSeen  time.Time
	Processes []string // "HOST PID EXE", most recent first
	Paths     []string
	// Signers: key ids of catalog signers the hosts reported as listing
	// the digest (Trust.catalog_signers), most recent first.
	Signers []string
}

// Seen kinds of queue_seen rows.
const (
	seenHost = iota
	seenProcess
	seenPath
	seenSigner
	seenKinds
)

// seenRow is one queue_seen row's kind and what.
type seenRow struct {
	kind int
	what string
}

// seenOf lists what ev adds to its queued digest's seen rows.
func seenOf(host string, ev *vigilv1.Event) []seenRow {
	proc := host + " " + strconv.FormatUint(uint64(ev.GetProcess().GetPid()), 10) + " " + ev.GetProcess().GetExe()
	var out []seenRow
	for kind, what := range []string{host, proc, eventPath(ev)} {
		if what != "" {
			out = append(out, seenRow{kind, what})
		}
	}
	for _, k := range ev.GetTrust().GetCatalogSigners() {
		if k = strings.TrimSpace(k); k != "" { // key ids are case-sensitive (SHA256:base64)
			out = append(out, seenRow{seenSigner, k})
		}
	}
	return out
}

// addSeen files what under its kind in e.
func (e *QueueEntry) addSeen(kind int, what string) {
	switch kind {
	case seenHost:
		e.Hosts = append(e.Hosts, what)
	case seenProcess:
		e.Processes = append(e.Processes, what)
	case seenPath:
		e.Paths = append(e.Paths, what)
	case seenSigner:
		e.Signers = append(e.Signers, what)
	}
}

// HostEvent is an event and the host it came from.
type HostEvent struct {
	Host  string
	Event *vigilv1.Event
}

// Upload is one batch an agent uploaded: its events cover the agent's
// store ids (AfterID, ThroughID].
type Upload struct {
	Host      string
	AfterID   uint64
	ThroughID uint64
	Events    []*vigilv1.Event
}

// EventFilter selects events (empty fields: any).
type EventFilter struct {
	Host    string
	Kind    string
	Verdict string    // MatchVerdict's words
	Since   time.Time // at or after
	Until   time.Time // before
	Offset  int
	Limit   int
}

// Verdicts MatchVerdict knows.
var Verdicts = []string{"refused", "would-block", "deny", "kill", "alert", "allow", "unknown", "trusted", "denied"}

// MatchVerdict reports whether ev has verdict v: refused (the operation
// was refused), would-block (a deny or kill that was not carried out), a
// policy action, or an execution control verdict.
func MatchVerdict(ev *vigilv1.Event, v string) bool {
	vd := ev.GetVerdict()
	switch v {
	case "":
		return true
	case "refused":
		return vd.GetRefused()
	case "would-block":
		return !vd.GetRefused() && (vd.GetAction() == "deny" || vd.GetAction() == "kill")
	case "deny", "kill", "alert", "allow":
		return vd.GetAction() == v
	}
	return ev.GetTrust().GetVerdict() == v
}

// EventSink takes the agents' events, counts what never arrived and keeps
// the approval queue.
type EventSink interface {
	// Append stores an upload and returns the host's last event id.
	// Events at or below the last id are duplicates (a retry) and
	// skipped; ids between the last id and AfterID never arrived and
	// are counted as lost.
	Append(ctx context.Context, u Upload) (uint64, error)
	Events(ctx context.Context, host string, limit int) ([]HostEvent, error)
	// QueryEvents returns the events matching f, the newest first, after
	// skipping f.Offset of them, at most f.Limit (0: 100); and how many
	// match in all.
	QueryEvents(ctx context.Context, f EventFilter) (evs []HostEvent, total int, err error)
	Queue(ctx context.Context) ([]QueueEntry, error)
	// Dequeue takes sha256 off the queue (it was approved or denied).
	Dequeue(ctx context.Context, sha256 string) error
	// DequeueSigner takes every digest reported as listed by the catalog
	// signer keyID off the queue (the signer was approved), and returns
	// them, sorted.
	DequeueSigner(ctx context.Context, keyID string) ([]string, error)
}

// StoredFunc is told, after each commit that stored events, which events
// an upload newly stored, and its host (ID and Hostname only, read with
// the host's cursor): an event already stored (a retried upload) or
// outside the upload's range is left out, so every event reaches it once,
// whichever path stored it (an upload straight to the database, or the
// stream's consumer). It runs on the storing goroutine: it must not block.
type StoredFunc func(h Host, evs []*vigilv1.Event)

// StoreNotifier is an EventSink that tells a StoredFunc what it stored.
type StoreNotifier interface {
	// OnStored sets the function (nil: none), or says why it cannot.
	OnStored(fn StoredFunc) error
}

// storedHook is the StoreNotifier part of the stores.
type storedHook struct{ fn atomic.Pointer[StoredFunc] }

func (h *storedHook) OnStored(fn StoredFunc) error {
	if fn == nil {
		h.fn.Store(nil)
		return nil
	}
	h.fn.Store(&fn)
	return nil
}

// stored tells the function, if any, what each upload newly stored:
// fresh[i], from host hosts[i].
func (h *storedHook) stored(hosts []Host, fresh [][]*vigilv1.Event) {
	fn := h.fn.Load()
	if fn == nil {
		return
	}
	for i, evs := range fresh {
		if len(evs) > 0 {
			(*fn)(hosts[i], evs)
		}
	}
}

// BatchAppender is an EventSink that stores several uploads in one
// transaction, as Append would one after the other; an upload that
// cannot be stored fails the batch. The stream's consumer uses it when the
// analytics store has it.
type BatchAppender interface {
	AppendBatch(ctx context.Context, us []Upload) ([]uint64, error)
}

// guarantee is a Guarantee as the stores keep it: a JSON array in a text
// column.
type guarantee struct {
	Control string `json:"control"`
	Level   string `json:"level"`
	Why     string `json:"why,omitempty"`
}

func encodeGuarantees(gs []*vigilv1.Guarantee) string {
	out := make([]guarantee, 0, len(gs))
	for _, g := range gs {
		out = append(out, guarantee{Control: g.GetControl(), Level: g.GetLevel(), Why: g.GetWhy()})
	}
	b, _ := json.Marshal(out) // strings only: cannot fail
	return string(b)
}

func decodeGuarantees(s string) ([]*vigilv1.Guarantee, error) {
	if s == "" {
		return nil, nil
	}
	var in []guarantee
	if err := json.Unmarshal([]byte(s), &in); err != nil {
		return nil, fmt.Errorf("guarantees: %w", err)
	}
	out := make([]*vigilv1.Guarantee, 0, len(in))
	for _, g := range in {
		out = append(out, &vigilv1.Guarantee{Control: g.Control, Level: g.Level, Why: g.Why})
	}
	return out, nil
}

// eventRows is what both stores' query results offer (database/sql's
// *Rows, pgx's Rows).
type eventRows interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
}

// pageEvents reads rows of (host, agent id, event blob), newest first,
// keeps those with f's verdict (it lives inside the event, so both stores
// filter it here) and returns f's page of them with how many match in all.
func pageEvents(rows eventRows, f EventFilter) ([]HostEvent, int, error) {
	var (
		out   []HostEvent
		total int
	)
	for rows.Next() {
		var (
			he   HostEvent
			id   uint64
			blob []byte
		)
		if err := rows.Scan(&he.Host, &id, &blob); err != nil {
			return nil, 0, fmt.Errorf("events: %w", err)
		}
		he.Event = new(vigilv1.Event)
		if err := proto.Unmarshal(blob, he.Event); err != nil {
			return nil, 0, fmt.Errorf("events: decode: %w", err)
		}
		if !MatchVerdict(he.Event, f.Verdict) {
			continue
		}
		total++
		if total > f.Offset && len(out) < f.Limit {
			he.Event.Id = id
			out = append(out, he)
		}
	}
	return out, total, rows.Err()
}

// queuedAgg is what a batch of uploads adds to a queued digest: the stores
// write each digest's rows once per batch, not once per event.
type queuedAgg struct {
	count, refused uint64
	first, last    time.Time
	seen           [seenKinds]map[string]time.Time // by seen kind: what → last seen
}

// queuedAggs are a batch's queued digests.
type queuedAggs map[string]*queuedAgg

// add counts ev, made at t on host, if it is unknown code.
func (agg queuedAggs) add(host string, ev *vigilv1.Event, t time.Time) {
	d, ok := queued(ev)
	if !ok {
		return
	}
	a := agg[d]
	if a == nil {
		a = &queuedAgg{first: t, last: t}
		for i := range a.seen {
			a.seen[i] = map[string]time.Time{}
		}
		agg[d] = a
	}
	a.count++
	if ev.GetVerdict().GetRefused() {
		a.refused++
	}
	if t.Before(a.first) {
		a.first = t
	}
	if t.After(a.last) {
		a.last = t
	}
	for _, r := range seenOf(host, ev) {
		if t.After(a.seen[r.kind][r.what]) {
			a.seen[r.kind][r.what] = t
		}
	}
}

// newestSeen returns the whats of seen that can stay (the newest maxSeen,
// ties by name): the rest would be trimmed at once, so no store writes
// them.
func newestSeen(seen map[string]time.Time) []string {
	whats := make([]string, 0, len(seen))
	for w := range seen {
		whats = append(whats, w)
	}
	slices.SortFunc(whats, func(x, y string) int {
		if c := seen[y].Compare(seen[x]); c != 0 {
			return c
		}
		return cmp.Compare(x, y)
	})
	return whats[:min(len(whats), maxSeen)]
}
