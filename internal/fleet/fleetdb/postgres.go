package fleetdb

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/proto"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/fleet"
)

// Postgres is the scale-out store: Store and EventSink on a PostgreSQL
// database that any number of `vigil server` replicas share. What
// replicas could race on is decided by the database:
//
//   - a bundle version is allocated under the row lock of the host's
//     bundle (SELECT ... FOR UPDATE; the first bundle by the primary
//     key): two replicas remaking the same host's bundle cannot both
//     store version N, the second gets ErrConflict;
//   - an upload holds its host's row lock from reading the last event id
//     to writing the new one, so the loss count and duplicate skipping
//     see every upload of a host in some order;
//   - queue counts are added in place (INSERT ... ON CONFLICT DO UPDATE),
//     digests in sorted order so concurrent uploads of the same digests
//     cannot deadlock;
//   - a transaction that still fails on a deadlock or a serialization
//     error is run again (pgRetries times).
//
// The schema is made or migrated at Open under an advisory lock, so
// replicas starting together do not race on it.
type Postgres struct {
	pool *pgxpool.Pool
	storedHook
}

var (
	_ Store         = (*Postgres)(nil)
	_ EventSink     = (*Postgres)(nil)
	_ BatchAppender = (*Postgres)(nil)
	_ StoreNotifier = (*Postgres)(nil)
)

// pgSchemaVersion is the newest schema; pgMigrations[i] takes the
// database from version i to i+1.
const pgSchemaVersion = 3

var pgMigrations = []string{`
CREATE TABLE secrets (
	hash    BYTEA PRIMARY KEY,
	name    TEXT NOT NULL,
	created TIMESTAMPTZ NOT NULL,
	expires TIMESTAMPTZ -- NULL: never
);
CREATE TABLE hosts (
	id              TEXT PRIMARY KEY,
	hostname        TEXT NOT NULL,
	tags            TEXT[] NOT NULL,
	enrolled        TIMESTAMPTZ,
	last_seen       TIMESTAMPTZ,
	revoked         BOOLEAN NOT NULL DEFAULT false,
	cert_serial     TEXT NOT NULL,
	applied_version BIGINT NOT NULL DEFAULT 0,
	agent_version   TEXT NOT NULL DEFAULT '',
	backend         TEXT NOT NULL DEFAULT '',
	exec_mode       TEXT NOT NULL DEFAULT '',
	kernel_lost     BIGINT NOT NULL DEFAULT 0,
	last_event_id   BIGINT NOT NULL DEFAULT 0,
	events_lost     BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE rules (
	id      BIGSERIAL PRIMARY KEY,
	kind    TEXT NOT NULL,
	value   TEXT NOT NULL,
	verdict TEXT NOT NULL,
	scope   TEXT NOT NULL,
	comment TEXT NOT NULL,
	created TIMESTAMPTZ NOT NULL,
	UNIQUE (kind, value, scope)
);
CREATE TABLE bundles (
	host           TEXT PRIMARY KEY,
	version        BIGINT NOT NULL,
	rules_digest   TEXT NOT NULL,
	payload        BYTEA NOT NULL,
	signed_version BIGINT NOT NULL DEFAULT 0,
	envelope       BYTEA
);
CREATE TABLE events (
	id       BIGSERIAL PRIMARY KEY,
	host     TEXT NOT NULL,
	agent_id BIGINT NOT NULL,
	time     TIMESTAMPTZ NOT NULL,
	kind     TEXT NOT NULL,
	sha256   TEXT,   -- execution control's digest, for analytics
	verdict  TEXT,   -- execution control's verdict
	refused  BOOLEAN NOT NULL,
	event    BYTEA NOT NULL -- vigil.v1.Event, protobuf
);
CREATE INDEX events_host ON events (host, id);
CREATE INDEX events_time ON events (time);
CREATE TABLE queue (
	sha       TEXT PRIMARY KEY,
	count     BIGINT NOT NULL,
	refused   BIGINT NOT NULL,
	first_seen TIMESTAMPTZ NOT NULL,
	last_seen  TIMESTAMPTZ NOT NULL
);
CREATE TABLE queue_seen (
	sha       TEXT NOT NULL,
	kind      SMALLINT NOT NULL, -- 0 host, 1 process, 2 path
	what      TEXT NOT NULL,
	last_seen TIMESTAMPTZ NOT NULL,
	PRIMARY KEY (sha, kind, what)
);
`, `
ALTER TABLE rules ADD COLUMN rollout_stage   TEXT    NOT NULL DEFAULT '';
ALTER TABLE rules ADD COLUMN rollout_percent INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rules ADD COLUMN rollout_tag     TEXT    NOT NULL DEFAULT '';
CREATE INDEX events_kind ON events (kind, id);
`, `
ALTER TABLE hosts ADD COLUMN guarantees TEXT NOT NULL DEFAULT ''; -- JSON array of {control, level, why}
`}

// pgMigrateLock is the advisory lock key held while the schema is made.
const pgMigrateLock = 0x76696769 // "vigi"

// pgRetries bounds how often a transaction is run again after a deadlock
// or a serialization failure.
const pgRetries = 5

// OpenPostgres connects to the database at url (postgres://...) and makes
// or migrates the schema. A database whose schema is newer than this
// binary knows is refused.
func OpenPostgres(ctx context.Context, url string) (*Postgres, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("open fleet database: %w", err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open fleet database: %w", err)
	}
	p := &Postgres{pool: pool}
	if err := p.migrate(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("open fleet database %s@%s/%s: %w", cfg.ConnConfig.User, cfg.ConnConfig.Host, cfg.ConnConfig.Database, err)
	}
	return p, nil
}

func (p *Postgres) migrate(ctx context.Context) error {
	return pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, pgMigrateLock); err != nil {
			return fmt.Errorf("schema lock: %w", err)
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS vigil_schema (version INTEGER NOT NULL)`); err != nil {
			return fmt.Errorf("schema: %w", err)
		}
		var v int
		err := tx.QueryRow(ctx, `SELECT version FROM vigil_schema`).Scan(&v)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			if _, err := tx.Exec(ctx, `INSERT INTO vigil_schema (version) VALUES (0)`); err != nil {
				return fmt.Errorf("schema: %w", err)
			}
		case err != nil:
			return fmt.Errorf("schema: %w", err)
		}
		if v > pgSchemaVersion {
			return fmt.Errorf("schema version %d is newer than this server's (%d): upgrade the server", v, pgSchemaVersion)
		}
		for ; v < pgSchemaVersion; v++ {
			if _, err := tx.Exec(ctx, pgMigrations[v]); err != nil {
				return fmt.Errorf("schema migration %d→%d: %w", v, v+1, err)
			}
		}
		_, err = tx.Exec(ctx, `UPDATE vigil_schema SET version = $1`, pgSchemaVersion)
		return err
	})
}

// Close closes the connection pool.
func (p *Postgres) Close() error { p.pool.Close(); return nil }

// retryable: the transaction lost a race the database detected.
func retryable(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "40P01" || pe.Code == "40001")
}

func (p *Postgres) tx(ctx context.Context, what string, fn func(tx pgx.Tx) error) error {
	var err error
	for range pgRetries {
		if err = pgx.BeginFunc(ctx, p.pool, fn); err == nil || !retryable(err) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

func tsOrNil(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

func tsOf(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.UTC()
}

// ---------------------------------------------------------------- secrets

func (p *Postgres) AddSecret(ctx context.Context, name string, hash []byte, expires time.Time) error {
	_, err := p.pool.Exec(ctx, `INSERT INTO secrets (hash, name, created, expires) VALUES ($1, $2, now(), $3)
		ON CONFLICT (hash) DO UPDATE SET name = excluded.name, expires = excluded.expires`, hash, name, tsOrNil(expires))
	if err != nil {
		return fmt.Errorf("add enrollment secret: %w", err)
	}
	return nil
}

func (p *Postgres) CheckSecret(ctx context.Context, hash []byte, now time.Time) (string, error) {
	var (
		name    string
		expires *time.Time
	)
	err := p.pool.QueryRow(ctx, `SELECT name, expires FROM secrets WHERE hash = $1`, hash).Scan(&name, &expires)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return "", ErrBadSecret
	case err != nil:
		return "", fmt.Errorf("check enrollment secret: %w", err)
	case expires != nil && now.After(*expires):
		return "", ErrBadSecret
	}
	return name, nil
}

// ---------------------------------------------------------------- hosts

const pgHostCols = `id, hostname, tags, enrolled, last_seen, revoked, cert_serial, applied_version,
	agent_version, backend, exec_mode, kernel_lost, last_event_id, events_lost, guarantees`

type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

func pgScanHost(r pgx.Row) (Host, error) {
	var (
		h                  Host
		enrolled, lastSeen *time.Time
		guarantees         string
	)
	err := r.Scan(&h.ID, &h.Hostname, &h.Tags, &enrolled, &lastSeen, &h.Revoked, &h.CertSerial, &h.AppliedVersion,
		&h.AgentVersion, &h.Backend, &h.ExecMode, &h.KernelLost, &h.LastEventID, &h.EventsLost, &guarantees)
	h.Enrolled, h.LastSeen = tsOf(enrolled), tsOf(lastSeen)
	if err == nil {
		if h.Guarantees, err = decodeGuarantees(guarantees); err != nil {
			err = fmt.Errorf("host %s: %w", h.ID, err)
		}
	}
	if h.Tags == nil {
		h.Tags = []string{}
	}
	return h, err
}

func pgHost(ctx context.Context, q querier, id string, lock bool) (Host, error) {
	sql := `SELECT ` + pgHostCols + ` FROM hosts WHERE id = $1`
	if lock {
		sql += ` FOR UPDATE`
	}
	h, err := pgScanHost(q.QueryRow(ctx, sql, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return h, fmt.Errorf("host %q: %w", id, ErrNotFound)
	}
	return h, err
}

func sortedTags(tags []string) []string {
	t := slices.Clone(tags)
	slices.Sort(t)
	t = slices.Compact(t)
	if t == nil {
		t = []string{}
	}
	return t
}

func (p *Postgres) Enroll(ctx context.Context, h Host) (Host, error) {
	var out Host
	err := p.tx(ctx, "enroll "+h.ID, func(tx pgx.Tx) error {
		// Insert or lock: two replicas enrolling the same host id are
		// serialized on its row; the later certificate wins.
		if _, err := tx.Exec(ctx, `INSERT INTO hosts (id, hostname, tags, enrolled, last_seen, cert_serial) VALUES ($1, $2, $3, $4, $4, '')
			ON CONFLICT (id) DO NOTHING`, h.ID, h.Hostname, sortedTags(h.Tags), tsOrNil(h.Enrolled)); err != nil {
			return err
		}
		old, err := pgHost(ctx, tx, h.ID, true)
		if err != nil {
			return err
		}
		if old.Revoked {
			return ErrRevoked
		}
		// Enrolling again means a new agent event store: its ids start over.
		if _, err := tx.Exec(ctx, `UPDATE hosts SET hostname = $2, tags = $3, cert_serial = $4, enrolled = $5, last_seen = $5,
			last_event_id = 0 WHERE id = $1`, h.ID, h.Hostname, sortedTags(append(old.Tags, h.Tags...)), h.CertSerial, tsOrNil(h.Enrolled)); err != nil {
			return err
		}
		out, err = pgHost(ctx, tx, h.ID, false)
		return err
	})
	return out, err
}

func (p *Postgres) Host(ctx context.Context, id string) (Host, error) {
	return pgHost(ctx, p.pool, id, false)
}

func (p *Postgres) Hosts(ctx context.Context) ([]Host, error) {
	rows, err := p.pool.Query(ctx, `SELECT `+pgHostCols+` FROM hosts ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("hosts: %w", err)
	}
	defer rows.Close()
	var out []Host
	for rows.Next() {
		h, err := pgScanHost(rows)
		if err != nil {
			return nil, fmt.Errorf("hosts: %w", err)
		}
		out = append(out, h)
	}
	return out, rows.Err()
}

func (p *Postgres) TagHost(ctx context.Context, id string, add, remove []string) (Host, error) {
	var out Host
	err := p.tx(ctx, "tag "+id, func(tx pgx.Tx) error {
		h, err := pgHost(ctx, tx, id, true)
		if err != nil {
			return err
		}
		tags := slices.DeleteFunc(append(h.Tags, add...), func(t string) bool { return slices.Contains(remove, t) })
		if _, err := tx.Exec(ctx, `UPDATE hosts SET tags = $2 WHERE id = $1`, id, sortedTags(tags)); err != nil {
			return err
		}
		out, err = pgHost(ctx, tx, id, false)
		return err
	})
	return out, err
}

func (p *Postgres) RevokeHost(ctx context.Context, id string) (Host, error) {
	var out Host
	err := p.tx(ctx, "revoke "+id, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE hosts SET revoked = true WHERE id = $1`, id)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("host %q: %w", id, ErrNotFound)
		}
		out, err = pgHost(ctx, tx, id, false)
		return err
	})
	return out, err
}

func (p *Postgres) Seen(ctx context.Context, id string, r Report, now time.Time) error {
	_, err := p.pool.Exec(ctx, `UPDATE hosts SET last_seen = $2, applied_version = $3, agent_version = $4,
		backend = $5, exec_mode = $6, kernel_lost = $7, guarantees = $8 WHERE id = $1`,
		id, tsOrNil(now), r.AppliedVersion, r.AgentVersion, r.Backend, r.ExecMode, r.KernelLost, encodeGuarantees(r.Guarantees))
	if err != nil {
		return fmt.Errorf("host %s seen: %w", id, err)
	}
	return nil
}

// ---------------------------------------------------------------- rules

func (p *Postgres) AddRule(ctx context.Context, r Rule) (Rule, error) {
	if r.Created.IsZero() {
		r.Created = time.Now()
	}
	if err := r.Rollout.Validate(); err != nil {
		return r, fmt.Errorf("add rule: %w", err)
	}
	// The same rule again (kind, value, scope) replaces the verdict and
	// the rollout, as in SQLite.
	err := p.pool.QueryRow(ctx, `INSERT INTO rules (kind, value, verdict, scope, comment, created, rollout_stage, rollout_percent, rollout_tag)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
		ON CONFLICT (kind, value, scope) DO UPDATE SET verdict = excluded.verdict, comment = excluded.comment, created = excluded.created,
			rollout_stage = excluded.rollout_stage, rollout_percent = excluded.rollout_percent, rollout_tag = excluded.rollout_tag
		RETURNING id`, r.Kind, r.Value, r.Verdict, r.Scope, r.Comment, r.Created, r.Rollout.Stage, int64(r.Rollout.Percent), r.Rollout.Tag).Scan(&r.ID)
	if err != nil {
		return r, fmt.Errorf("add rule: %w", err)
	}
	return r, nil
}

func (p *Postgres) SetRollout(ctx context.Context, id uint64, ro fleet.Rollout) (Rule, error) {
	if err := ro.Validate(); err != nil {
		return Rule{}, fmt.Errorf("rule %d: %w", id, err)
	}
	var (
		r       Rule
		percent int64
	)
	err := p.pool.QueryRow(ctx, `UPDATE rules SET rollout_stage = $1, rollout_percent = $2, rollout_tag = $3 WHERE id = $4
		RETURNING id, kind, value, verdict, scope, comment, created, rollout_stage, rollout_percent, rollout_tag`,
		ro.Stage, int64(ro.Percent), ro.Tag, id).Scan(&r.ID, &r.Kind, &r.Value, &r.Verdict, &r.Scope, &r.Comment, &r.Created,
		&r.Rollout.Stage, &percent, &r.Rollout.Tag)
	if errors.Is(err, pgx.ErrNoRows) {
		return Rule{}, fmt.Errorf("rule %d: %w", id, ErrNotFound)
	}
	if err != nil {
		return Rule{}, fmt.Errorf("rule %d: rollout: %w", id, err)
	}
	r.Created, r.Rollout.Percent = r.Created.UTC(), uint32(percent)
	return r, nil
}

func (p *Postgres) DeleteRule(ctx context.Context, id uint64) error {
	tag, err := p.pool.Exec(ctx, `DELETE FROM rules WHERE id = $1`, id)
	if err != nil {
		return fmt.Errorf("delete rule %d: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("rule %d: %w", id, ErrNotFound)
	}
	return nil
}

func (p *Postgres) Rules(ctx context.Context) ([]Rule, error) {
	rows, err := p.pool.Query(ctx, `SELECT id, kind, value, verdict, scope, comment, created, rollout_stage, rollout_percent, rollout_tag
		FROM rules ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("rules: %w", err)
	}
	defer rows.Close()
	var out []Rule
	for rows.Next() {
		var (
			r       Rule
			percent int64
		)
		if err := rows.Scan(&r.ID, &r.Kind, &r.Value, &r.Verdict, &r.Scope, &r.Comment, &r.Created,
			&r.Rollout.Stage, &percent, &r.Rollout.Tag); err != nil {
			return nil, fmt.Errorf("rules: %w", err)
		}
		r.Created, r.Rollout.Percent = r.Created.UTC(), uint32(percent)
		out = append(out, r)
	}
	return out, rows.Err()
}

// ---------------------------------------------------------------- bundles

func (p *Postgres) Bundle(ctx context.Context, host string) (BundleState, error) {
	b := BundleState{Host: host}
	err := p.pool.QueryRow(ctx, `SELECT version, rules_digest, payload, signed_version, envelope FROM bundles WHERE host = $1`, host).
		Scan(&b.Version, &b.RulesDigest, &b.Payload, &b.SignedVersion, &b.Envelope)
	if errors.Is(err, pgx.ErrNoRows) {
		return b, nil
	}
	if err != nil {
		return b, fmt.Errorf("bundle of %s: %w", host, err)
	}
	return b, nil
}

func (p *Postgres) NewBundle(ctx context.Context, host string, version uint64, rulesDigest string, payload, envelope []byte) error {
	return p.tx(ctx, "new bundle for "+host, func(tx pgx.Tx) error {
		var cur uint64
		err := tx.QueryRow(ctx, `SELECT version FROM bundles WHERE host = $1 FOR UPDATE`, host).Scan(&cur)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			if version != 1 {
				return fmt.Errorf("%w: version %d after 0", ErrConflict, version)
			}
			// The first bundle: the primary key decides between replicas.
			tag, err := tx.Exec(ctx, `INSERT INTO bundles (host, version, rules_digest, payload, signed_version, envelope)
				VALUES ($1, 1, $2, $3, $4, $5) ON CONFLICT (host) DO NOTHING`,
				host, rulesDigest, payload, signedVersion(envelope, 1), envelope)
			if err == nil && tag.RowsAffected() == 0 {
				return fmt.Errorf("%w: version 1 made by another server", ErrConflict)
			}
			return err
		case err != nil:
			return err
		}
		if version != cur+1 {
			return fmt.Errorf("%w: version %d after %d", ErrConflict, version, cur)
		}
		if envelope != nil {
			_, err = tx.Exec(ctx, `UPDATE bundles SET version = $2, rules_digest = $3, payload = $4, signed_version = $2, envelope = $5
				WHERE host = $1`, host, version, rulesDigest, payload, envelope)
		} else {
			_, err = tx.Exec(ctx, `UPDATE bundles SET version = $2, rules_digest = $3, payload = $4 WHERE host = $1`,
				host, version, rulesDigest, payload)
		}
		return err
	})
}

func signedVersion(envelope []byte, v uint64) uint64 {
	if envelope == nil {
		return 0
	}
	return v
}

func (p *Postgres) SignBundle(ctx context.Context, host string, version uint64, envelope []byte) error {
	return p.tx(ctx, "sign bundle for "+host, func(tx pgx.Tx) error {
		var cur, signed uint64
		err := tx.QueryRow(ctx, `SELECT version, signed_version FROM bundles WHERE host = $1 FOR UPDATE`, host).Scan(&cur, &signed)
		if errors.Is(err, pgx.ErrNoRows) {
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
		_, err = tx.Exec(ctx, `UPDATE bundles SET signed_version = $2, envelope = $3 WHERE host = $1`, host, version, envelope)
		return err
	})
}

func (p *Postgres) Unsigned(ctx context.Context) ([]BundleState, error) {
	rows, err := p.pool.Query(ctx, `SELECT host, version, rules_digest, payload, signed_version FROM bundles
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

func (p *Postgres) Append(ctx context.Context, u Upload) (uint64, error) {
	lasts, err := p.AppendBatch(ctx, []Upload{u})
	if err != nil {
		return 0, err
	}
	return lasts[0], nil
}

// AppendBatch stores uploads as Append would one after the other, in one
// transaction (the stream's consumer applies what it fetched at once: the
// queue's hot rows are written once per batch, not once per upload). An
// upload that cannot be stored fails the whole batch.
func (p *Postgres) AppendBatch(ctx context.Context, us []Upload) ([]uint64, error) {
	type state struct {
		last, lost uint64
		hostname   string
	}
	var ids []string
	for _, u := range us {
		if u.ThroughID < u.AfterID {
			return nil, fmt.Errorf("upload from %s: through id %d before after id %d", u.Host, u.ThroughID, u.AfterID)
		}
		ids = append(ids, u.Host)
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	what := "upload from " + ids[0]
	if len(ids) > 1 {
		what = fmt.Sprintf("%d uploads from %d hosts", len(us), len(ids))
	}
	lasts := make([]uint64, len(us))
	fresh := make([][]*vigilv1.Event, len(us))
	from := make([]Host, len(us))
	err := p.tx(ctx, what, func(tx pgx.Tx) error {
		clear(fresh) // a retried transaction starts over
		// The hosts' row locks order their uploads across replicas; taken
		// in id order, so two batches cannot deadlock on them.
		rows, err := tx.Query(ctx, `SELECT id, last_event_id, events_lost, hostname FROM hosts WHERE id = ANY($1) ORDER BY id FOR UPDATE`, ids)
		if err != nil {
			return err
		}
		hosts := map[string]*state{}
		for rows.Next() {
			var (
				id string
				st state
			)
			if err := rows.Scan(&id, &st.last, &st.lost, &st.hostname); err != nil {
				rows.Close()
				return err
			}
			hosts[id] = &st
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		var evRows [][]any
		agg := queuedAggs{}
		for i, u := range us {
			st := hosts[u.Host]
			if st == nil {
				return fmt.Errorf("host %q: %w", u.Host, ErrNotFound)
			}
			from[i] = Host{ID: u.Host, Hostname: st.hostname}
			if u.AfterID > st.last {
				st.lost += u.AfterID - st.last // store ids never sent (pruned before upload)
			}
			for _, ev := range u.Events {
				id := ev.GetId()
				if id <= st.last || id <= u.AfterID || id > u.ThroughID {
					continue // a duplicate of what arrived before, or outside what the batch covers
				}
				row, err := eventRow(u.Host, ev, agg)
				if err != nil {
					return err
				}
				evRows = append(evRows, row)
				fresh[i] = append(fresh[i], ev)
			}
			st.last = max(st.last, u.ThroughID)
			lasts[i] = st.last
		}
		if len(evRows) > 0 {
			if _, err := tx.CopyFrom(ctx, pgx.Identifier{"events"},
				[]string{"host", "agent_id", "time", "kind", "sha256", "verdict", "refused", "event"}, pgx.CopyFromRows(evRows)); err != nil {
				return err
			}
		}
		if err := pgEnqueue(ctx, tx, agg); err != nil {
			return err
		}
		var hid []string
		var last, lost []int64
		for _, id := range ids {
			hid, last, lost = append(hid, id), append(last, int64(hosts[id].last)), append(lost, int64(hosts[id].lost))
		}
		_, err = tx.Exec(ctx, `UPDATE hosts h SET last_event_id = v.last, events_lost = v.lost
			FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS v(id, last, lost) WHERE h.id = v.id`, hid, last, lost)
		return err
	})
	if err != nil {
		return nil, err
	}
	p.stored(from, fresh)
	return lasts, nil
}

// eventRow is ev's row of the events table; unknown code adds to agg.
func eventRow(host string, ev *vigilv1.Event, agg queuedAggs) ([]any, error) {
	blob, err := proto.Marshal(ev)
	if err != nil {
		return nil, fmt.Errorf("event %d: %w", ev.GetId(), err)
	}
	t := ev.GetTime().AsTime()
	var sha, verdict *string
	if tr := ev.GetTrust(); tr != nil {
		s, v := strings.ToLower(tr.GetSha256()), tr.GetVerdict()
		sha, verdict = &s, &v
	}
	agg.add(host, ev, t)
	return []any{host, int64(ev.GetId()), t, ev.GetKind(), sha, verdict, ev.GetVerdict().GetRefused(), blob}, nil
}

// pgEnqueue adds an upload's queued digests, in sorted order (concurrent
// uploads lock the same queue rows in the same order).
func pgEnqueue(ctx context.Context, tx pgx.Tx, agg queuedAggs) error {
	if len(agg) == 0 {
		return nil
	}
	shas := make([]string, 0, len(agg))
	for s := range agg {
		shas = append(shas, s)
	}
	slices.Sort(shas)
	b := &pgx.Batch{}
	for _, sha := range shas {
		a := agg[sha]
		b.Queue(`INSERT INTO queue (sha, count, refused, first_seen, last_seen) VALUES ($1, $2, $3, $4, $5)
			ON CONFLICT (sha) DO UPDATE SET count = queue.count + excluded.count, refused = queue.refused + excluded.refused,
				first_seen = least(queue.first_seen, excluded.first_seen), last_seen = greatest(queue.last_seen, excluded.last_seen)`,
			sha, a.count, a.refused, a.first, a.last)
		for kind, seen := range a.seen {
			whats := newestSeen(seen)
			slices.Sort(whats) // lock order
			for _, w := range whats {
				b.Queue(`INSERT INTO queue_seen (sha, kind, what, last_seen) VALUES ($1, $2, $3, $4)
					ON CONFLICT (sha, kind, what) DO UPDATE SET last_seen = greatest(queue_seen.last_seen, excluded.last_seen)`,
					sha, kind, w, seen[w])
			}
			if len(whats) > 0 {
				b.Queue(`DELETE FROM queue_seen WHERE sha = $1 AND kind = $2 AND what NOT IN
					(SELECT what FROM queue_seen WHERE sha = $1 AND kind = $2 ORDER BY last_seen DESC, what LIMIT $3)`, sha, kind, maxSeen)
			}
		}
	}
	return tx.SendBatch(ctx, b).Close()
}

func (p *Postgres) Events(ctx context.Context, host string, limit int) ([]HostEvent, error) {
	if limit <= 0 {
		limit = 100
	}
	q := `SELECT host, agent_id, event FROM events`
	args := []any{limit}
	if host != "" {
		q += ` WHERE host = $2`
		args = append(args, host)
	}
	rows, err := p.pool.Query(ctx, q+` ORDER BY id DESC LIMIT $1`, args...)
	if err != nil {
		return nil, fmt.Errorf("events: %w", err)
	}
	defer rows.Close()
	out, _, err := pageEvents(rows, EventFilter{Limit: limit})
	slices.Reverse(out)
	return out, err
}

func (p *Postgres) QueryEvents(ctx context.Context, f EventFilter) ([]HostEvent, int, error) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	if f.Verdict != "" && !slices.Contains(Verdicts, f.Verdict) {
		return nil, 0, fmt.Errorf("events: verdict %q: want one of %s", f.Verdict, strings.Join(Verdicts, ", "))
	}
	// Host, kind and time in SQL; the verdict, inside the event, here
	// (MatchVerdict, the same as SQLite's).
	q := `SELECT host, agent_id, event FROM events WHERE true`
	var args []any
	arg := func(v any) string {
		args = append(args, v)
		return fmt.Sprintf("$%d", len(args))
	}
	if f.Host != "" {
		q += ` AND host = ` + arg(f.Host)
	}
	if f.Kind != "" {
		q += ` AND kind = ` + arg(f.Kind)
	}
	if !f.Since.IsZero() {
		q += ` AND time >= ` + arg(f.Since)
	}
	if !f.Until.IsZero() {
		q += ` AND time < ` + arg(f.Until)
	}
	rows, err := p.pool.Query(ctx, q+` ORDER BY id DESC`, args...)
	if err != nil {
		return nil, 0, fmt.Errorf("events: %w", err)
	}
	defer rows.Close()
	return pageEvents(rows, f)
}

func (p *Postgres) Queue(ctx context.Context) ([]QueueEntry, error) {
	rows, err := p.pool.Query(ctx, `SELECT q.sha, q.count, q.refused, q.first_seen, q.last_seen,
		coalesce((SELECT json_agg(json_build_array(s.kind, s.what) ORDER BY s.last_seen DESC, s.what) FROM queue_seen s WHERE s.sha = q.sha), '[]')
		FROM queue q ORDER BY q.last_seen DESC, q.sha`)
	if err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	defer rows.Close()
	var out []QueueEntry
	for rows.Next() {
		var (
			e    QueueEntry
			seen []byte
		)
		if err := rows.Scan(&e.SHA256, &e.Count, &e.Refused, &e.FirstSeen, &e.LastSeen, &seen); err != nil {
			return nil, fmt.Errorf("queue: %w", err)
		}
		e.FirstSeen, e.LastSeen = e.FirstSeen.UTC(), e.LastSeen.UTC()
		var pairs [][2]json.RawMessage
		if err := json.Unmarshal(seen, &pairs); err != nil {
			return nil, fmt.Errorf("queue: %w", err)
		}
		for _, pr := range pairs {
			var (
				kind int
				what string
			)
			if json.Unmarshal(pr[0], &kind) != nil || json.Unmarshal(pr[1], &what) != nil {
				return nil, fmt.Errorf("queue %s: bad seen entry %s", e.SHA256, seen)
			}
			e.addSeen(kind, what)
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

func (p *Postgres) DequeueSigner(ctx context.Context, keyID string) ([]string, error) {
	keyID = strings.TrimSpace(keyID)
	var shas []string
	err := p.tx(ctx, "dequeue signer "+keyID, func(tx pgx.Tx) error {
		shas = nil
		// Lock the queue rows in sha order, as uploads do.
		rows, err := tx.Query(ctx, `DELETE FROM queue WHERE sha IN
			(SELECT q.sha FROM queue q WHERE EXISTS (SELECT 1 FROM queue_seen s WHERE s.sha = q.sha AND s.kind = $1 AND s.what = $2)
			ORDER BY q.sha FOR UPDATE) RETURNING sha`, seenSigner, keyID)
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
		slices.Sort(shas)
		_, err = tx.Exec(ctx, `DELETE FROM queue_seen WHERE sha = ANY($1)`, shas)
		return err
	})
	return shas, err
}

func (p *Postgres) Dequeue(ctx context.Context, sha256 string) error {
	sha256 = strings.ToLower(sha256)
	return p.tx(ctx, "dequeue "+sha256, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM queue WHERE sha = $1`, sha256); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `DELETE FROM queue_seen WHERE sha = $1`, sha256)
		return err
	})
}
