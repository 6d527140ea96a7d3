package fleetdb

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/fleet"

	_ "modernc.org/sqlite" // database/sql driver "sqlite"
)

// FileName is the database's name in the server's state directory.
const FileName = "fleet.db"

// maxSeen bounds the hosts, processes and paths kept per queued digest.
const maxSeen = 32

const schema = `
CREATE TABLE IF NOT EXISTS secrets (
	hash       BLOB PRIMARY KEY,
	name       TEXT NOT NULL,
	created_ns INTEGER NOT NULL,
	expires_ns INTEGER NOT NULL -- 0: never
);
CREATE TABLE IF NOT EXISTS hosts (
	id              TEXT PRIMARY KEY,
	hostname        TEXT NOT NULL,
	tags            TEXT NOT NULL, -- JSON array, sorted
	enrolled_ns     INTEGER NOT NULL,
	last_seen_ns    INTEGER NOT NULL,
	revoked         INTEGER NOT NULL DEFAULT 0,
	cert_serial     TEXT NOT NULL,
	applied_version INTEGER NOT NULL DEFAULT 0,
	agent_version   TEXT NOT NULL DEFAULT '',
	backend         TEXT NOT NULL DEFAULT '',
	exec_mode       TEXT NOT NULL DEFAULT '',
	kernel_lost     INTEGER NOT NULL DEFAULT 0,
	last_event_id   INTEGER NOT NULL DEFAULT 0,
	events_lost     INTEGER NOT NULL DEFAULT 0,
	guarantees      TEXT NOT NULL DEFAULT '' -- JSON array of {control, level, why}
);
CREATE TABLE IF NOT EXISTS rules (
	id         INTEGER PRIMARY KEY AUTOINCREMENT,
	kind       TEXT NOT NULL,
	value      TEXT NOT NULL,
	verdict    TEXT NOT NULL,
	scope      TEXT NOT NULL,
	comment    TEXT NOT NULL,
	created_ns INTEGER NOT NULL,
	rollout_stage   TEXT NOT NULL DEFAULT '',
	rollout_percent INTEGER NOT NULL DEFAULT 0,
	rollout_tag     TEXT NOT NULL DEFAULT '',
	UNIQUE (kind, value, scope)
);
CREATE TABLE IF NOT EXISTS bundles (
	host           TEXT PRIMARY KEY,
	version        INTEGER NOT NULL,
	rules_digest   TEXT NOT NULL,
	payload        BLOB NOT NULL,
	signed_version INTEGER NOT NULL DEFAULT 0,
	envelope       BLOB
);
CREATE TABLE IF NOT EXISTS events (
	id       INTEGER PRIMARY KEY AUTOINCREMENT,
	host     TEXT NOT NULL,
	agent_id INTEGER NOT NULL,
	time_ns  INTEGER NOT NULL,
	kind     TEXT NOT NULL,
	event    BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_host ON events(host, id);
CREATE TABLE IF NOT EXISTS queue (
	sha      TEXT PRIMARY KEY,
	count    INTEGER NOT NULL,
	refused  INTEGER NOT NULL,
	first_ns INTEGER NOT NULL,
	last_ns  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS queue_seen (
	sha     TEXT NOT NULL,
	kind    INTEGER NOT NULL, -- 0 host, 1 process, 2 path
	what    TEXT NOT NULL,
	last_ns INTEGER NOT NULL,
	PRIMARY KEY (sha, kind, what)
);
`

// SQLite is the embedded store: Store and EventSink in one SQLite file.
type SQLite struct {
	db *sql.DB
	storedHook

	appends    chan appendReq // to the group-commit writer (Append)
	closed     chan struct{}
	closeOnce  sync.Once
	writerDone chan struct{}
}

var (
	_ Store         = (*SQLite)(nil)
	_ EventSink     = (*SQLite)(nil)
	_ StoreNotifier = (*SQLite)(nil)
)

// OpenSQLite opens (creating if needed) the database at path.
func OpenSQLite(ctx context.Context, path string) (*SQLite, error) {
	if strings.ContainsRune(path, '?') {
		return nil, fmt.Errorf("open fleet database %s: path must not contain '?'", path)
	}
	q := url.Values{}
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(NORMAL)")
	q.Add("_pragma", "busy_timeout(10000)")
	q.Set("_txlock", "immediate")
	db, err := sql.Open("sqlite", path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("open fleet database %s: %w", path, err)
	}
	if _, err := db.ExecContext(ctx, schema); err != nil {
		db.Close()
		return nil, fmt.Errorf("open fleet database %s: create schema: %w", path, err)
	}
	if err := migrate(ctx, db); err != nil {
		db.Close()
		return nil, fmt.Errorf("open fleet database %s: %w", path, err)
	}
	s := &SQLite{db: db, appends: make(chan appendReq), closed: make(chan struct{}), writerDone: make(chan struct{})}
	go s.writer()
	return s, nil
}

// migrations are columns added since the first schema, for databases made
// before them: table, column, definition.
var migrations = [][3]string{
	{"rules", "rollout_stage", "TEXT NOT NULL DEFAULT ''"},
	{"rules", "rollout_percent", "INTEGER NOT NULL DEFAULT 0"},
	{"rules", "rollout_tag", "TEXT NOT NULL DEFAULT ''"},
	{"hosts", "guarantees", "TEXT NOT NULL DEFAULT ''"},
}

func migrate(ctx context.Context, db *sql.DB) error {
	for _, m := range migrations {
		var n int
		if err := db.QueryRowContext(ctx, `SELECT count(*) FROM pragma_table_info(?) WHERE name = ?`, m[0], m[1]).Scan(&n); err != nil {
			return fmt.Errorf("migrate %s.%s: %w", m[0], m[1], err)
		}
		if n == 0 {
			if _, err := db.ExecContext(ctx, fmt.Sprintf("ALTER TABLE %s ADD COLUMN %s %s", m[0], m[1], m[2])); err != nil {
				return fmt.Errorf("migrate %s.%s: %w", m[0], m[1], err)
			}
		}
	}
	return nil
}

// Close closes the database.
func (s *SQLite) Close() error {
	s.closeOnce.Do(func() { close(s.closed) })
	<-s.writerDone // a group being stored finishes first
	return s.db.Close()
}

func (s *SQLite) tx(ctx context.Context, what string, fn func(tx *sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	defer tx.Rollback() //nolint:errcheck // no-op after Commit
	if err := fn(tx); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("%s: commit: %w", what, err)
	}
	return nil
}

func ns(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNS(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

// ---------------------------------------------------------------- secrets

func (s *SQLite) AddSecret(ctx context.Context, name string, hash []byte, expires time.Time) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO secrets (hash, name, created_ns, expires_ns) VALUES (?, ?, ?, ?)
		ON CONFLICT (hash) DO UPDATE SET name = excluded.name, expires_ns = excluded.expires_ns`,
		hash, name, time.Now().UnixNano(), ns(expires))
	if err != nil {
		return fmt.Errorf("add enrollment secret: %w", err)
	}
	return nil
}

func (s *SQLite) CheckSecret(ctx context.Context, hash []byte, now time.Time) (string, error) {
	var (
		name    string
		expires int64
	)
	err := s.db.QueryRowContext(ctx, `SELECT name, expires_ns FROM secrets WHERE hash = ?`, hash).Scan(&name, &expires)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return "", ErrBadSecret
	case err != nil:
		return "", fmt.Errorf("check enrollment secret: %w", err)
	case expires != 0 && now.UnixNano() > expires:
		return "", ErrBadSecret
	}
	return name, nil
}

// ---------------------------------------------------------------- hosts

const hostCols = `id, hostname, tags, enrolled_ns, last_seen_ns, revoked, cert_serial, applied_version,
	agent_version, backend, exec_mode, kernel_lost, last_event_id, events_lost, guarantees`

type scanner interface{ Scan(...any) error }

func scanHost(r scanner) (Host, error) {
	var (
		h                  Host
		tags, guarantees   string
		enrolled, lastSeen int64
	)
	err := r.Scan(&h.ID, &h.Hostname, &tags, &enrolled, &lastSeen, &h.Revoked, &h.CertSerial, &h.AppliedVersion,
		&h.AgentVersion, &h.Backend, &h.ExecMode, &h.KernelLost, &h.LastEventID, &h.EventsLost, &guarantees)
	if err != nil {
		return h, err
	}
	if h.Guarantees, err = decodeGuarantees(guarantees); err != nil {
		return h, fmt.Errorf("host %s: %w", h.ID, err)
	}
	if err := json.Unmarshal([]byte(tags), &h.Tags); err != nil {
		return h, fmt.Errorf("host %s: tags: %w", h.ID, err)
	}
	h.Enrolled, h.LastSeen = fromNS(enrolled), fromNS(lastSeen)
	return h, nil
}

func hostIn(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, id string) (Host, error) {
	h, err := scanHost(q.QueryRowContext(ctx, `SELECT `+hostCols+` FROM hosts WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return h, fmt.Errorf("host %q: %w", id, ErrNotFound)
	}
	return h, err
}

func tagsJSON(tags []string) string {
	t := slices.Clone(tags)
	slices.Sort(t)
	t = slices.Compact(t)
	if t == nil {
		t = []string{}
	}
	b, _ := json.Marshal(t)
	return string(b)
}

func (s *SQLite) Enroll(ctx context.Context, h Host) (Host, error) {
	var out Host
	err := s.tx(ctx, "enroll "+h.ID, func(tx *sql.Tx) error {
		old, err := hostIn(ctx, tx, h.ID)
		switch {
		case err == nil && old.Revoked:
			return ErrRevoked
		case err == nil:
			// The credential lives in the agent's state directory next to its
			// event store: enrolling again means a new store, whose ids start
			// over.
			_, err = tx.ExecContext(ctx, `UPDATE hosts SET hostname = ?, tags = ?, cert_serial = ?, enrolled_ns = ?, last_seen_ns = ?,
				last_event_id = 0 WHERE id = ?`,
				h.Hostname, tagsJSON(append(old.Tags, h.Tags...)), h.CertSerial, ns(h.Enrolled), ns(h.Enrolled), h.ID)
		case errors.Is(err, ErrNotFound):
			_, err = tx.ExecContext(ctx, `INSERT INTO hosts (id, hostname, tags, enrolled_ns, last_seen_ns, cert_serial) VALUES (?, ?, ?, ?, ?, ?)`,
				h.ID, h.Hostname, tagsJSON(h.Tags), ns(h.Enrolled), ns(h.Enrolled), h.CertSerial)
		}
		if err != nil {
			return err
		}
		out, err = hostIn(ctx, tx, h.ID)
		return err
	})
	return out, err
}

func (s *SQLite) Host(ctx context.Context, id string) (Host, error) {
	return hostIn(ctx, s.db, id)
}

func (s *SQLite) Hosts(ctx context.Context) ([]Host, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+hostCols+` FROM hosts ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("hosts: %w", err)
	}
	defer rows.Close()
	var out []Host
	for rows.Next() {
		h, err := scanHost(rows)
		if err != nil {
			return nil, fmt.Errorf("hosts: %w", err)
		}
		out = append(out, h)
	}
	return out, rows.Err()
}

func (s *SQLite) TagHost(ctx context.Context, id string, add, remove []string) (Host, error) {
	var out Host
	err := s.tx(ctx, "tag "+id, func(tx *sql.Tx) error {
		h, err := hostIn(ctx, tx, id)
		if err != nil {
			return err
		}
		tags := slices.DeleteFunc(append(h.Tags, add...), func(t string) bool { return slices.Contains(remove, t) })
		if _, err := tx.ExecContext(ctx, `UPDATE hosts SET tags = ? WHERE id = ?`, tagsJSON(tags), id); err != nil {
			return err
		}
		out, err = hostIn(ctx, tx, id)
		return err
	})
	return out, err
}

func (s *SQLite) RevokeHost(ctx context.Context, id string) (Host, error) {
	var out Host
	err := s.tx(ctx, "revoke "+id, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE hosts SET revoked = 1 WHERE id = ?`, id)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("host %q: %w", id, ErrNotFound)
		}
		out, err = hostIn(ctx, tx, id)
		return err
	})
	return out, err
}

func (s *SQLite) Seen(ctx context.Context, id string, r Report, now time.Time) error {
	_, err := s.db.ExecContext(ctx, `UPDATE hosts SET last_seen_ns = ?, applied_version = ?, agent_version = ?,
		backend = ?, exec_mode = ?, kernel_lost = ?, guarantees = ? WHERE id = ?`,
		ns(now), r.AppliedVersion, r.AgentVersion, r.Backend, r.ExecMode, r.KernelLost, encodeGuarantees(r.Guarantees), id)
	if err != nil {
		return fmt.Errorf("host %s seen: %w", id, err)
	}
	return nil
}

// ---------------------------------------------------------------- rules

func (s *SQLite) AddRule(ctx context.Context, r Rule) (Rule, error) {
	if r.Created.IsZero() {
		r.Created = time.Now()
	}
	// The same rule again (kind, value, scope) replaces the verdict: an
	// approve after a deny is the approve.
	if err := r.Rollout.Validate(); err != nil {
		return r, fmt.Errorf("add rule: %w", err)
	}
	err := s.db.QueryRowContext(ctx, `INSERT INTO rules (kind, value, verdict, scope, comment, created_ns, rollout_stage, rollout_percent, rollout_tag)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (kind, value, scope) DO UPDATE SET verdict = excluded.verdict, comment = excluded.comment, created_ns = excluded.created_ns,
			rollout_stage = excluded.rollout_stage, rollout_percent = excluded.rollout_percent, rollout_tag = excluded.rollout_tag
		RETURNING id`, r.Kind, r.Value, r.Verdict, r.Scope, r.Comment, ns(r.Created), r.Rollout.Stage, r.Rollout.Percent, r.Rollout.Tag).Scan(&r.ID)
	if err != nil {
		return r, fmt.Errorf("add rule: %w", err)
	}
	return r, nil
}

func (s *SQLite) SetRollout(ctx context.Context, id uint64, ro fleet.Rollout) (Rule, error) {
	if err := ro.Validate(); err != nil {
		return Rule{}, fmt.Errorf("rule %d: %w", id, err)
	}
	res, err := s.db.ExecContext(ctx, `UPDATE rules SET rollout_stage = ?, rollout_percent = ?, rollout_tag = ? WHERE id = ?`,
		ro.Stage, ro.Percent, ro.Tag, id)
	if err != nil {
		return Rule{}, fmt.Errorf("rule %d: rollout: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return Rule{}, fmt.Errorf("rule %d: %w", id, ErrNotFound)
	}
	rules, err := s.Rules(ctx)
	if err != nil {
		return Rule{}, err
	}
	for _, r := range rules {
		if r.ID == id {
			return r, nil
		}
	}
	return Rule{}, fmt.Errorf("rule %d: %w", id, ErrNotFound)
}

func (s *SQLite) DeleteRule(ctx context.Context, id uint64) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM rules WHERE id = ?`, id)
	if err != nil {
		return fmt.Errorf("delete rule %d: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("rule %d: %w", id, ErrNotFound)
	}
	return nil
}

func (s *SQLite) Rules(ctx context.Context) ([]Rule, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, kind, value, verdict, scope, comment, created_ns, rollout_stage, rollout_percent, rollout_tag FROM rules ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("rules: %w", err)
	}
	defer rows.Close()
	var out []Rule
	for rows.Next() {
		var (
			r       Rule
			created int64
		)
		if err := rows.Scan(&r.ID, &r.Kind, &r.Value, &r.Verdict, &r.Scope, &r.Comment, &created,
			&r.Rollout.Stage, &r.Rollout.Percent, &r.Rollout.Tag); err != nil {
			return nil, fmt.Errorf("rules: %w", err)
		}
		r.Created = fromNS(created)
		out = append(out, r)
	}
	return out, rows.Err()
}

// ---------------------------------------------------------------- bundles

func (s *SQLite) Bundle(ctx context.Context, host string) (BundleState, error) {
	b := BundleState{Host: host}
	err := s.db.QueryRowContext(ctx, `SELECT version, rules_digest, payload, signed_version, envelope FROM bundles WHERE host = ?`, host).
		Scan(&b.Version, &b.RulesDigest, &b.Payload, &b.SignedVersion, &b.Envelope)
	if errors.Is(err, sql.ErrNoRows) {
		return b, nil // no bundle yet: version 0
	}
	if err != nil {
		return b, fmt.Errorf("bundle of %s: %w", host, err)
	}
	return b, nil
}

func (s *SQLite) NewBundle(ctx context.Context, host string, version uint64, rulesDigest string, payload, envelope []byte) error {
	return s.tx(ctx, "new bundle for "+host, func(tx *sql.Tx) error {
		var cur uint64
		err := tx.QueryRowContext(ctx, `SELECT version FROM bundles WHERE host = ?`, host).Scan(&cur)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		if version != cur+1 {
			return fmt.Errorf("%w: version %d after %d", ErrConflict, version, cur)
		}
		if envelope != nil {
			_, err = tx.ExecContext(ctx, `INSERT INTO bundles (host, version, rules_digest, payload, signed_version, envelope) VALUES (?1, ?2, ?3, ?4, ?2, ?5)
				ON CONFLICT (host) DO UPDATE SET version = ?2, rules_digest = ?3, payload = ?4, signed_version = ?2, envelope = ?5`,
				host, version, rulesDigest, payload, envelope)
		} else {
			_, err = tx.ExecContext(ctx, `INSERT INTO bundles (host, version, rules_digest, payload) VALUES (?1, ?2, ?3, ?4)
				ON CONFLICT (host) DO UPDATE SET version = ?2, rules_digest = ?3, payload = ?4`,
				host, version, rulesDigest, payload)
		}
		return err
	})
}

func (s *SQLite) SignBundle(ctx context.Context, host string, version uint64, envelope []byte) error {
	return s.tx(ctx, "sign bundle for "+host, func(tx *sql.Tx) error {
		var cur, signed uint64
		err := tx.QueryRowContext(ctx, `SELECT version, signed_version FROM bundles WHERE host = ?`, host).Scan(&cur, &signed)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("no bundle for %q: %w", host, ErrNotFound)
		}
		if err != nil {
			return err
		}
		if version <= signed {
			return fmt.Errorf("%w: version %d, signed already %d", ErrOldVersion, version, signed)
		}
		if version > cur {
			return fmt.Errorf("%w: version %d was never made (newest %d)", ErrConflict, version, cur)
		}
		_, err = tx.ExecContext(ctx, `UPDATE bundles SET signed_version = ?, envelope = ? WHERE host = ?`, version, envelope, host)
		return err
	})
}

func (s *SQLite) Unsigned(ctx context.Context) ([]BundleState, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT host, version, rules_digest, payload, signed_version FROM bundles
		WHERE version > signed_version ORDER BY host`)
	if err != nil {
		return nil, fmt.Errorf("unsigned bundles: %w", err)
	}
	defer rows.Close()
	var out []BundleState
	for rows.Next() {
		var b BundleState
		if err := rows.Scan(&b.Host, &b.Version, &b.RulesDigest, &b.Payload, &b.SignedVersion); err != nil {
			return nil, fmt.Errorf("unsigned bundles: %w", err)
		}
		out = append(out, b)
	}
	return out, rows.Err()
}

// ---------------------------------------------------------------- events

// queued reports whether ev is unknown code for the approval queue, and
// its digest.
func queued(ev *vigilv1.Event) (string, bool) {
	t := ev.GetTrust()
	if t == nil || t.GetSha256() == "" || t.GetVerdict() != "unknown" {
		return "", false
	}
	return strings.ToLower(t.GetSha256()), true
}

func eventPath(ev *vigilv1.Event) string {
	switch d := ev.Detail.(type) {
	case *vigilv1.Event_Exec:
		return d.Exec.GetFile().GetPath()
	case *vigilv1.Event_ImageLoad:
		return d.ImageLoad.GetFile().GetPath()
	case *vigilv1.Event_MemExec:
		return d.MemExec.GetFile().GetPath()
	}
	return ""
}

// Append stores u. Concurrent calls are committed together (group
// commit): SQLite has one writer, and a transaction per upload, each
// rewriting the queue's hot rows, held the embedded server to a few
// hundred events per second (docs/benchmarks.md). One goroutine takes the
// uploads waiting when it is free and stores them with AppendBatch; a
// batch that fails is stored again upload by upload, so one bad upload
// (an unknown host) fails only its own call.
func (s *SQLite) Append(ctx context.Context, u Upload) (uint64, error) {
	req := appendReq{ctx: ctx, u: u, done: make(chan appendRes, 1)}
	select {
	case s.appends <- req:
	case <-ctx.Done():
		return 0, fmt.Errorf("upload from %s: %w", u.Host, ctx.Err())
	case <-s.closed:
		return 0, fmt.Errorf("upload from %s: database closed", u.Host)
	}
	// The writer always answers: waiting for it (not for ctx) means an
	// upload the caller gave up on is not being stored behind its back.
	r := <-req.done
	return r.last, r.err
}

// maxGroup bounds the uploads one group commit stores.
const maxGroup = 256

type appendReq struct {
	ctx  context.Context
	u    Upload
	done chan appendRes
}

type appendRes struct {
	last uint64
	err  error
}

// writer runs the group commits until Close.
func (s *SQLite) writer() {
	defer close(s.writerDone)
	for {
		var group []appendReq
		select {
		case r := <-s.appends:
			group = append(group, r)
		case <-s.closed:
			return
		}
	more:
		for len(group) < maxGroup {
			select {
			case r := <-s.appends:
				group = append(group, r)
			default:
				break more
			}
		}
		s.commitGroup(group)
	}
}

func (s *SQLite) commitGroup(group []appendReq) {
	live := group[:0:0]
	for _, r := range group {
		if err := r.ctx.Err(); err != nil {
			r.done <- appendRes{err: fmt.Errorf("upload from %s: %w", r.u.Host, err)}
			continue
		}
		live = append(live, r)
	}
	if len(live) == 0 {
		return
	}
	us := make([]Upload, len(live))
	for i, r := range live {
		us[i] = r.u
	}
	// The first caller's context bounds the transaction, without its
	// cancellation: the others are waiting on the same commit.
	ctx := context.WithoutCancel(live[0].ctx)
	lasts, err := s.AppendBatch(ctx, us)
	if err == nil {
		for i, r := range live {
			r.done <- appendRes{last: lasts[i]}
		}
		return
	}
	if len(live) == 1 {
		live[0].done <- appendRes{err: err}
		return
	}
	for _, r := range live {
		lasts, err := s.AppendBatch(ctx, []Upload{r.u})
		if err != nil {
			r.done <- appendRes{err: err}
			continue
		}
		r.done <- appendRes{last: lasts[0]}
	}
}

// AppendBatch stores uploads as Append would one after the other, in one
// transaction, writing each queued digest's rows once. An upload that
// cannot be stored fails the whole batch.
func (s *SQLite) AppendBatch(ctx context.Context, us []Upload) ([]uint64, error) {
	if len(us) == 0 {
		return nil, nil
	}
	for _, u := range us {
		if u.ThroughID < u.AfterID {
			return nil, fmt.Errorf("upload from %s: through id %d before after id %d", u.Host, u.ThroughID, u.AfterID)
		}
	}
	what := "upload from " + us[0].Host
	if len(us) > 1 {
		what = fmt.Sprintf("%d uploads", len(us))
	}
	type cursor struct {
		last, lost uint64
		hostname   string
	}
	lasts := make([]uint64, len(us))
	fresh := make([][]*vigilv1.Event, len(us))
	from := make([]Host, len(us))
	err := s.tx(ctx, what, func(tx *sql.Tx) error {
		hosts := map[string]*cursor{}
		ins, err := tx.PrepareContext(ctx, `INSERT INTO events (host, agent_id, time_ns, kind, event) VALUES (?, ?, ?, ?, ?)`)
		if err != nil {
			return err
		}
		defer ins.Close()
		agg := queuedAggs{}
		for i, u := range us {
			c := hosts[u.Host]
			if c == nil {
				c = &cursor{}
				if err := tx.QueryRowContext(ctx, `SELECT last_event_id, events_lost, hostname FROM hosts WHERE id = ?`, u.Host).Scan(&c.last, &c.lost, &c.hostname); err != nil {
					if errors.Is(err, sql.ErrNoRows) {
						return fmt.Errorf("host %q: %w", u.Host, ErrNotFound)
					}
					return err
				}
				hosts[u.Host] = c
			}
			from[i] = Host{ID: u.Host, Hostname: c.hostname}
			if u.AfterID > c.last {
				c.lost += u.AfterID - c.last // store ids that were never sent (pruned before upload)
			}
			for _, ev := range u.Events {
				id := ev.GetId()
				if id <= c.last || id <= u.AfterID || id > u.ThroughID {
					continue // a duplicate of what arrived before, or outside what the batch covers
				}
				blob, err := proto.Marshal(ev)
				if err != nil {
					return fmt.Errorf("event %d: %w", id, err)
				}
				t := ev.GetTime().AsTime()
				if _, err := ins.ExecContext(ctx, u.Host, id, t.UnixNano(), ev.GetKind(), blob); err != nil {
					return err
				}
				agg.add(u.Host, ev, t)
				fresh[i] = append(fresh[i], ev)
			}
			c.last = max(c.last, u.ThroughID)
			lasts[i] = c.last
		}
		if err := sqliteEnqueue(ctx, tx, agg); err != nil {
			return err
		}
		for id, c := range hosts {
			if _, err := tx.ExecContext(ctx, `UPDATE hosts SET last_event_id = ?, events_lost = ? WHERE id = ?`, c.last, c.lost, id); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.stored(from, fresh)
	return lasts, nil
}

// sqliteEnqueue adds a batch's queued digests to the approval queue.
func sqliteEnqueue(ctx context.Context, tx *sql.Tx, agg queuedAggs) error {
	for sha, a := range agg {
		if _, err := tx.ExecContext(ctx, `INSERT INTO queue (sha, count, refused, first_ns, last_ns) VALUES (?1, ?2, ?3, ?4, ?5)
			ON CONFLICT (sha) DO UPDATE SET count = count + ?2, refused = refused + ?3,
				first_ns = min(first_ns, ?4), last_ns = max(last_ns, ?5)`, sha, a.count, a.refused, a.first.UnixNano(), a.last.UnixNano()); err != nil {
			return err
		}
		for kind, seen := range a.seen {
			whats := newestSeen(seen)
			for _, w := range whats {
				if _, err := tx.ExecContext(ctx, `INSERT INTO queue_seen (sha, kind, what, last_ns) VALUES (?1, ?2, ?3, ?4)
					ON CONFLICT (sha, kind, what) DO UPDATE SET last_ns = max(last_ns, ?4)`, sha, kind, w, seen[w].UnixNano()); err != nil {
					return err
				}
			}
			if len(whats) > 0 {
				if _, err := tx.ExecContext(ctx, `DELETE FROM queue_seen WHERE sha = ?1 AND kind = ?2 AND what NOT IN
					(SELECT what FROM queue_seen WHERE sha = ?1 AND kind = ?2 ORDER BY last_ns DESC, what LIMIT ?3)`, sha, kind, maxSeen); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func (s *SQLite) Events(ctx context.Context, host string, limit int) ([]HostEvent, error) {
	if limit <= 0 {
		limit = 100
	}
	q := `SELECT host, agent_id, event FROM events`
	var args []any
	if host != "" {
		q += ` WHERE host = ?`
		args = append(args, host)
	}
	rows, err := s.db.QueryContext(ctx, q+` ORDER BY id DESC LIMIT ?`, append(args, limit)...)
	if err != nil {
		return nil, fmt.Errorf("events: %w", err)
	}
	defer rows.Close()
	out, _, err := pageEvents(rows, EventFilter{Limit: limit})
	slices.Reverse(out)
	return out, err
}

func (s *SQLite) QueryEvents(ctx context.Context, f EventFilter) ([]HostEvent, int, error) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	if f.Verdict != "" && !slices.Contains(Verdicts, f.Verdict) {
		return nil, 0, fmt.Errorf("events: verdict %q: want one of %s", f.Verdict, strings.Join(Verdicts, ", "))
	}
	// Host, kind and time in SQL; the verdict, inside the event, here.
	q := `SELECT host, agent_id, event FROM events WHERE 1`
	var args []any
	if f.Host != "" {
		q += ` AND host = ?`
		args = append(args, f.Host)
	}
	if f.Kind != "" {
		q += ` AND kind = ?`
		args = append(args, f.Kind)
	}
	if !f.Since.IsZero() {
		q += ` AND time_ns >= ?`
		args = append(args, ns(f.Since))
	}
	if !f.Until.IsZero() {
		q += ` AND time_ns < ?`
		args = append(args, ns(f.Until))
	}
	rows, err := s.db.QueryContext(ctx, q+` ORDER BY id DESC`, args...)
	if err != nil {
		return nil, 0, fmt.Errorf("events: %w", err)
	}
	defer rows.Close()
	return pageEvents(rows, f)
}

func (s *SQLite) Queue(ctx context.Context) ([]QueueEntry, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT sha, count, refused, first_ns, last_ns FROM queue ORDER BY last_ns DESC, sha`)
	if err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	var out []QueueEntry
	for rows.Next() {
		var (
			e           QueueEntry
			first, last int64
		)
		if err := rows.Scan(&e.SHA256, &e.Count, &e.Refused, &first, &last); err != nil {
			rows.Close()
			return nil, fmt.Errorf("queue: %w", err)
		}
		e.FirstSeen, e.LastSeen = fromNS(first), fromNS(last)
		out = append(out, e)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	for i := range out {
		seen, err := s.db.QueryContext(ctx, `SELECT kind, what FROM queue_seen WHERE sha = ? ORDER BY last_ns DESC, what`, out[i].SHA256)
		if err != nil {
			return nil, fmt.Errorf("queue: %w", err)
		}
		for seen.Next() {
			var (
				kind int
				what string
			)
			if err := seen.Scan(&kind, &what); err != nil {
				seen.Close()
				return nil, fmt.Errorf("queue: %w", err)
			}
			out[i].addSeen(kind, what)
		}
		seen.Close()
	}
	return out, nil
}

func (s *SQLite) DequeueSigner(ctx context.Context, keyID string) ([]string, error) {
	keyID = strings.TrimSpace(keyID)
	var shas []string
	err := s.tx(ctx, "dequeue signer "+keyID, func(tx *sql.Tx) error {
		shas = nil
		rows, err := tx.QueryContext(ctx, `SELECT DISTINCT sha FROM queue_seen WHERE kind = ? AND what = ? ORDER BY sha`, seenSigner, keyID)
		if err != nil {
			return err
		}
		for rows.Next() {
			var sha string
			if err := rows.Scan(&sha); err != nil {
				rows.Close()
				return err
			}
			shas = append(shas, sha)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, sha := range shas {
			if _, err := tx.ExecContext(ctx, `DELETE FROM queue WHERE sha = ?`, sha); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, `DELETE FROM queue_seen WHERE sha = ?`, sha); err != nil {
				return err
			}
		}
		return nil
	})
	return shas, err
}

func (s *SQLite) Dequeue(ctx context.Context, sha256 string) error {
	sha256 = strings.ToLower(sha256)
	return s.tx(ctx, "dequeue "+sha256, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM queue WHERE sha = ?`, sha256); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `DELETE FROM queue_seen WHERE sha = ?`, sha256)
		return err
	})
}
