// Package trust is the userspace half of execution control: the trust
// database that says, for a file's content (its SHA-256), whether it may run,
// and why.
//
// # Sources and precedence
//
// A digest can be known through these sources, decided in this order (the
// first that knows the digest decides; written once, in decide):
//
//  1. explicit deny by hash (Deny, `vigil approve --deny`): always counts;
//  2. explicit approve by hash (Approve, `vigil approve --sha256`): always counts;
//  3. catalogs (Catalogs): the digest is listed in a signed catalog from an
//     approved signer (ApproveSigner, AddCatalog);
//  4. dpkg (Dpkg): a trust scan found a file with this content where dpkg
//     installed it, with the MD5 dpkg recorded for it;
//  5. the scanned database (Database): a trust scan found a file with this
//     content;
//  6. otherwise the digest is Unknown.
//
// The policy chooses which of sources 3–5 count (Sources); explicit verdicts
// always count. A file dpkg vouches for is also in the scanned database, so
// with Database alone it is trusted as "database".
//
// # Processes
//
// The database is one SQLite file (pure Go, WAL mode, busy timeout) that the
// agent and the CLI open at the same time: `vigil trust scan` and
// `vigil catalog add` write it directly, the agent writes approvals and
// pending code. Every change bumps Generation in the same transaction, so the
// agent polls Generation cheaply and reloads its kernel verdict map (Each)
// when it moved.
//
// The agent calls, in short:
//
//	db, _ := trust.Open(ctx, filepath.Join(stateDir, trust.FileName))
//	gen, _ := db.Generation(ctx)                     // poll; reload when it moves
//	db.Each(ctx, srcs, func(sha [32]byte, d trust.Decision) error {...}) // fill the kernel map
//	sha, _ := trust.HashFD(fanotifyEventFD)           // hash what the kernel handed over, not a path
//	d, _ := db.Lookup(ctx, sha, srcs)                // an unknown file the kernel asked about
//	db.RecordPending(ctx, trust.Attempt{...})         // unknown code seen or refused (off the decision path)
//	db.Files(ctx, nil, fn)                            // scanned files with dev/inode/size/mtime/ctime, to seed a cache
//	server.Config{Pending: trust.PendingHandler(db, currentSources), Approve: trust.ApproveHandler(db, reload)}
package trust

import (
	"context"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strings"

	_ "modernc.org/sqlite" // database/sql driver "sqlite"
)

// FileName is the trust database's name in the agent's state directory.
const FileName = "trust.db"

// Verdict is what the trust database says about a digest.
type Verdict uint8

const (
	// Unknown: no counted source knows the digest.
	Unknown Verdict = iota
	// Trusted: the digest may run.
	Trusted
	// Denied: an administrator denied the digest explicitly.
	Denied
)

func (v Verdict) String() string {
	switch v {
	case Unknown:
		return "unknown"
	case Trusted:
		return "trusted"
	case Denied:
		return "denied"
	}
	return fmt.Sprintf("verdict(%d)", uint8(v))
}

// Decision is a verdict and the source that gave it.
type Decision struct {
	Verdict Verdict
	// Source names what decided: "denied" and "approved" (explicit
	// verdicts by hash), "catalog:KEYID" (a catalog signed by that key),
	// "dpkg:PACKAGE", "database"; empty for Unknown.
	Source string
}

func (d Decision) String() string {
	if d.Source == "" {
		return d.Verdict.String()
	}
	return d.Verdict.String() + " (" + d.Source + ")"
}

// Sources is the set of trust sources a policy counts. Explicit verdicts
// by hash (approve, deny) always count and have no bit.
type Sources uint8

const (
	// Database: files recorded by a trust scan.
	Database Sources = 1 << iota
	// Dpkg: scanned files whose content is what dpkg installed.
	Dpkg
	// Catalogs: digests in catalogs from approved signers.
	Catalogs

	// AllSources counts every source.
	AllSources = Database | Dpkg | Catalogs
)

var sourceNames = []struct {
	s    Sources
	name string
}{{Catalogs, "catalogs"}, {Dpkg, "dpkg"}, {Database, "database"}}

// ParseSources turns source names ("database", "dpkg", "catalogs") into a
// set; an unknown name is an error.
func ParseSources(names []string) (Sources, error) {
	var s Sources
next:
	for _, n := range names {
		for _, sn := range sourceNames {
			if n == sn.name {
				s |= sn.s
				continue next
			}
		}
		return 0, fmt.Errorf("unknown trust source %q (want database, dpkg or catalogs)", n)
	}
	return s, nil
}

func (s Sources) String() string {
	var names []string
	for _, sn := range sourceNames {
		if s&sn.s != 0 {
			names = append(names, sn.name)
		}
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ",")
}

// facts are what the database knows about one digest, before precedence.
type facts struct {
	denied, approved bool
	catalogKey       string // key ID of an approved signer listing it
	dpkgPkg          string // package whose file had this content
	scanned          bool   // a scanned file had this content
}

// decide is the precedence, in one place: explicit deny, explicit approve,
// catalog, dpkg, scanned database, unknown. Sources not in srcs do not
// count; explicit verdicts always do.
func decide(f facts, srcs Sources) Decision {
	switch {
	case f.denied:
		return Decision{Denied, "denied"}
	case f.approved:
		return Decision{Trusted, "approved"}
	case srcs&Catalogs != 0 && f.catalogKey != "":
		return Decision{Trusted, "catalog:" + f.catalogKey}
	case srcs&Dpkg != 0 && f.dpkgPkg != "":
		return Decision{Trusted, "dpkg:" + f.dpkgPkg}
	case srcs&Database != 0 && f.scanned:
		return Decision{Trusted, "database"}
	}
	return Decision{Verdict: Unknown}
}

// ParseDigest parses a hex SHA-256.
func ParseDigest(s string) ([32]byte, error) {
	var d [32]byte
	s = strings.TrimSpace(s)
	if len(s) != 64 {
		return d, fmt.Errorf("digest %q: want 64 hex digits (SHA-256)", s)
	}
	if _, err := hex.Decode(d[:], []byte(s)); err != nil {
		return d, fmt.Errorf("digest %q: not hex", s)
	}
	return d, nil
}

// DB is an open trust database. It is safe for concurrent use, and for use
// by several processes at once.
type DB struct {
	db     *sql.DB
	path   string
	lookup *sql.Stmt
}

// schemaVersion is the version of schema; a database of a newer version
// is refused.
const schemaVersion = 1

const schema = `
CREATE TABLE IF NOT EXISTS meta (
	k TEXT PRIMARY KEY,
	v INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (k, v) VALUES ('generation', 0);
INSERT OR IGNORE INTO meta (k, v) VALUES ('schema', 1);
-- explicit verdicts by hash: 1 approve, 2 deny
CREATE TABLE IF NOT EXISTS rules (
	sha     BLOB PRIMARY KEY,
	verdict INTEGER NOT NULL,
	comment TEXT NOT NULL,
	time_ns INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS signers (
	key_id  TEXT PRIMARY KEY,
	pub     BLOB NOT NULL,
	comment TEXT NOT NULL,
	time_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS catalogs (
	id       INTEGER PRIMARY KEY,
	key_id   TEXT NOT NULL REFERENCES signers(key_id) ON DELETE CASCADE,
	name     TEXT NOT NULL,
	issued   TEXT NOT NULL,
	digest   TEXT NOT NULL,
	envelope BLOB NOT NULL,
	count    INTEGER NOT NULL,
	time_ns  INTEGER NOT NULL,
	UNIQUE (key_id, name)
);
CREATE TABLE IF NOT EXISTS catalog_digests (
	sha        BLOB NOT NULL,
	catalog_id INTEGER NOT NULL REFERENCES catalogs(id) ON DELETE CASCADE,
	PRIMARY KEY (sha, catalog_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS catalog_digests_catalog ON catalog_digests(catalog_id);
-- scanned files; sha is NULL for a regular file that is not code (kept so
-- a re-scan need not open it again)
CREATE TABLE IF NOT EXISTS files (
	path     TEXT PRIMARY KEY,
	dev      INTEGER NOT NULL,
	ino      INTEGER NOT NULL,
	size     INTEGER NOT NULL,
	mtime_ns INTEGER NOT NULL,
	ctime_ns INTEGER NOT NULL,
	sha      BLOB,
	source   TEXT NOT NULL,
	-- dpkg lists the file (whether or not its content matched)
	dpkg     INTEGER NOT NULL,
	time_ns  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS files_sha ON files(sha) WHERE sha IS NOT NULL;
CREATE TABLE IF NOT EXISTS pending (
	sha      BLOB PRIMARY KEY,
	count    INTEGER NOT NULL,
	refused  INTEGER NOT NULL,
	first_ns INTEGER NOT NULL,
	last_ns  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pending_last ON pending(last_ns);
CREATE TABLE IF NOT EXISTS pending_seen (
	sha     BLOB NOT NULL,
	kind    INTEGER NOT NULL, -- 0 path, 1 process
	what    TEXT NOT NULL,
	last_ns INTEGER NOT NULL,
	PRIMARY KEY (sha, kind, what)
) WITHOUT ROWID;
`

// lookupQuery gathers a digest's facts in one statement.
const lookupQuery = `SELECT
	(SELECT verdict FROM rules WHERE sha = ?1),
	(SELECT MIN(c.key_id) FROM catalog_digests d
		JOIN catalogs c ON c.id = d.catalog_id
		JOIN signers s ON s.key_id = c.key_id
		WHERE d.sha = ?1),
	(SELECT MIN(substr(source, 6)) FROM files WHERE sha = ?1 AND source LIKE 'dpkg:%'),
	EXISTS (SELECT 1 FROM files WHERE sha = ?1)`

// Open opens (creating if needed) the trust database in the SQLite file
// at path.
func Open(ctx context.Context, path string) (*DB, error) {
	if strings.ContainsRune(path, '?') {
		return nil, fmt.Errorf("open trust database %s: path must not contain '?'", path)
	}
	q := url.Values{}
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(NORMAL)")
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "foreign_keys(ON)")
	q.Set("_txlock", "immediate")
	db, err := sql.Open("sqlite", path+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("open trust database %s: %w", path, err)
	}
	fail := func(err error) (*DB, error) {
		db.Close()
		return nil, fmt.Errorf("open trust database %s: %w", path, err)
	}
	if _, err := db.ExecContext(ctx, schema); err != nil {
		return fail(fmt.Errorf("create schema: %w", err))
	}
	var version int
	if err := db.QueryRowContext(ctx, `SELECT v FROM meta WHERE k = 'schema'`).Scan(&version); err != nil {
		return fail(err)
	}
	if version > schemaVersion {
		return fail(fmt.Errorf("schema version %d is newer than this vigil's (%d)", version, schemaVersion))
	}
	var mode string
	if err := db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return fail(err)
	}
	if !strings.EqualFold(mode, "wal") {
		return fail(fmt.Errorf("journal mode is %q, want wal", mode))
	}
	stmt, err := db.PrepareContext(ctx, lookupQuery)
	if err != nil {
		return fail(err)
	}
	return &DB{db: db, path: path, lookup: stmt}, nil
}

// Path is the file the database was opened from.
func (db *DB) Path() string { return db.path }

// Close closes the database.
func (db *DB) Close() error {
	db.lookup.Close()
	return db.db.Close()
}

// Generation is a number that changes with every change to the database
// (by any process), so a reader can poll it and reload when it moved.
func (db *DB) Generation(ctx context.Context) (uint64, error) {
	var g int64
	if err := db.db.QueryRowContext(ctx, `SELECT v FROM meta WHERE k = 'generation'`).Scan(&g); err != nil {
		return 0, fmt.Errorf("trust generation: %w", err)
	}
	return uint64(g), nil
}

// bump increments the generation inside tx.
func bump(ctx context.Context, tx *sql.Tx) error {
	_, err := tx.ExecContext(ctx, `UPDATE meta SET v = v + 1 WHERE k = 'generation'`)
	return err
}

// write runs fn in a write transaction and bumps the generation with it.
func (db *DB) write(ctx context.Context, what string, fn func(tx *sql.Tx) error) error {
	tx, err := db.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	defer tx.Rollback() //nolint:errcheck // no-op after Commit
	if err := fn(tx); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if err := bump(ctx, tx); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("%s: commit: %w", what, err)
	}
	return nil
}

// Lookup decides about one digest, counting the sources in srcs.
func (db *DB) Lookup(ctx context.Context, sha [32]byte, srcs Sources) (Decision, error) {
	f, err := db.facts(ctx, sha)
	if err != nil {
		return Decision{}, err
	}
	return decide(f, srcs), nil
}

func (db *DB) facts(ctx context.Context, sha [32]byte) (facts, error) {
	var (
		verdict  sql.NullInt64
		key, pkg sql.NullString
		scanned  bool
		f        facts
	)
	if err := db.lookup.QueryRowContext(ctx, sha[:]).Scan(&verdict, &key, &pkg, &scanned); err != nil {
		return f, fmt.Errorf("trust lookup %x: %w", sha, err)
	}
	f.denied = verdict.Valid && verdict.Int64 == ruleDeny
	f.approved = verdict.Valid && verdict.Int64 == ruleApprove
	f.catalogKey = key.String
	f.dpkgPkg = pkg.String
	f.scanned = scanned
	return f, nil
}

// Each calls fn for every digest the database trusts or denies under
// srcs, in digest order; Unknown digests are not visited. It reads a
// snapshot: changes made meanwhile show in the next Generation. An error
// from fn stops the walk and is returned.
func (db *DB) Each(ctx context.Context, srcs Sources, fn func(sha [32]byte, d Decision) error) error {
	all := map[[32]byte]*facts{}
	get := func(b []byte) *facts {
		var k [32]byte
		copy(k[:], b)
		f := all[k]
		if f == nil {
			f = &facts{}
			all[k] = f
		}
		return f
	}
	tx, err := db.db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return fmt.Errorf("trust each: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // read-only
	scan := func(query string, row func(sha []byte, s string, n int64)) error {
		rows, err := tx.QueryContext(ctx, query)
		if err != nil {
			return fmt.Errorf("trust each: %w", err)
		}
		defer rows.Close()
		for rows.Next() {
			var (
				sha []byte
				s   sql.NullString
				n   int64
			)
			if err := rows.Scan(&sha, &s, &n); err != nil {
				return fmt.Errorf("trust each: %w", err)
			}
			if len(sha) == 32 {
				row(sha, s.String, n)
			}
		}
		return rows.Err()
	}
	steps := []struct {
		query string
		row   func(sha []byte, s string, n int64)
	}{
		{`SELECT sha, NULL, verdict FROM rules`, func(sha []byte, _ string, v int64) {
			f := get(sha)
			f.denied = v == ruleDeny
			f.approved = v == ruleApprove
		}},
		{`SELECT d.sha, MIN(c.key_id), 0 FROM catalog_digests d
			JOIN catalogs c ON c.id = d.catalog_id
			JOIN signers s ON s.key_id = c.key_id GROUP BY d.sha`, func(sha []byte, k string, _ int64) {
			get(sha).catalogKey = k
		}},
		{`SELECT sha, MIN(CASE WHEN source LIKE 'dpkg:%' THEN substr(source, 6) END), 0
			FROM files WHERE sha IS NOT NULL GROUP BY sha`, func(sha []byte, pkg string, _ int64) {
			f := get(sha)
			f.scanned = true
			f.dpkgPkg = pkg
		}},
	}
	for _, s := range steps {
		if err := scan(s.query, s.row); err != nil {
			return err
		}
	}
	tx.Rollback() //nolint:errcheck // read-only; release the snapshot before calling out
	keys := make([][32]byte, 0, len(all))
	for k := range all {
		keys = append(keys, k)
	}
	sortDigests(keys)
	for _, k := range keys {
		d := decide(*all[k], srcs)
		if d.Verdict == Unknown {
			continue
		}
		if err := fn(k, d); err != nil {
			return err
		}
	}
	return nil
}

// Explicit verdicts as stored.
const (
	ruleApprove = 1
	ruleDeny    = 2
)

// ErrNotFound is returned (wrapped) when what is to be removed is not
// there.
var ErrNotFound = errors.New("not found")
