// Package store is the agent's local event store: an embedded SQLite
// database (pure Go, WAL mode) holding the protobuf encoding of every event
// next to the columns queries filter on.
//
// Each stored event gets an id: the row id, increasing and never reused
// (AUTOINCREMENT), so it stays unique across agent restarts and pruning,
// unlike the kernel seq, which restarts with the BPF programs.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/bits"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	_ "modernc.org/sqlite" // database/sql driver "sqlite"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
)

// Retention defaults.
const (
	DefaultMaxAge  = 7 * 24 * time.Hour
	DefaultMaxRows = 1_000_000
)

// pageSize is how many rows Scan reads per query, so a long scan never holds
// a read transaction open (which would keep the WAL from being checkpointed).
const pageSize = 512

// pruneChunk bounds one DELETE so pruning never holds the write lock long.
const pruneChunk = 10_000

// Retention bounds what the store keeps. Zero values mean no bound.
type Retention struct {
	MaxAge  time.Duration // events older than this (by event time) are pruned
	MaxRows int64         // only the newest MaxRows events are kept
}

// Store is an open event store. It is safe for concurrent use.
type Store struct {
	db *sql.DB

	appendMu sync.Mutex   // serializes Append, which owns the fields below
	inserts  [8]*sql.Stmt // by log2 of the rows: 1, 2, 4 … insertRows
	buf      []byte       // the batch's blobs
	ends     []int        // where each blob ends in buf
	args     []any
}

// Filter selects events. Zero fields do not filter.
type Filter struct {
	Kinds    []string  // any of these kinds
	PID      uint32    // process.pid
	AfterID  uint64    // id > AfterID
	MaxID    uint64    // id <= MaxID
	AfterSeq uint64    // seq > AfterSeq
	Since    time.Time // time >= Since
	Limit    int       // at most Limit events
	// Latest makes Limit take the most recent matching events instead of
	// the oldest. Events are always returned oldest first.
	Latest bool
}

// Match reports whether ev passes the filter's conditions (Limit and
// Latest aside). It is the in-memory twin of the SQL the store runs, for
// events that arrive live.
func (f Filter) Match(ev *vigilv1.Event) bool {
	if len(f.Kinds) > 0 && !slices.Contains(f.Kinds, ev.GetKind()) {
		return false
	}
	if f.PID != 0 && ev.GetProcess().GetPid() != f.PID {
		return false
	}
	if f.AfterID != 0 && ev.GetId() <= f.AfterID {
		return false
	}
	if f.MaxID != 0 && ev.GetId() > f.MaxID {
		return false
	}
	if f.AfterSeq != 0 && ev.GetSeq() <= f.AfterSeq {
		return false
	}
	if !f.Since.IsZero() && timeNS(ev) < f.Since.UnixNano() {
		return false
	}
	return true
}

const schema = `
CREATE TABLE IF NOT EXISTS events (
	id      INTEGER PRIMARY KEY AUTOINCREMENT,
	seq     INTEGER NOT NULL,
	time_ns INTEGER NOT NULL,
	kind    TEXT    NOT NULL,
	pid     INTEGER NOT NULL,
	exe     TEXT    NOT NULL,
	event   BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS events_time ON events(time_ns);
CREATE INDEX IF NOT EXISTS events_kind ON events(kind, id);
-- No index on pid: pids are spread at random, and keeping an index of
-- them cost about 40% of every append (BenchmarkAppend: 15 → 9 µs of CPU
-- an event) for a query people make by hand. A pid query reads the table
-- in id order, once over all its pages.
DROP INDEX IF EXISTS events_pid;
`

// Open opens (creating if needed) the store in the SQLite file at path.
func Open(ctx context.Context, path string) (*Store, error) {
	q := url.Values{}
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(NORMAL)")
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "foreign_keys(ON)")
	// A multi-row INSERT keeps a statement journal; in memory it costs
	// no write(2) per page.
	q.Add("_pragma", "temp_store(MEMORY)")
	q.Set("_txlock", "immediate")
	if strings.ContainsRune(path, '?') {
		return nil, fmt.Errorf("open event store %s: path must not contain '?'", path)
	}
	dsn := path + "?" + q.Encode()
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open event store %s: %w", path, err)
	}
	if _, err := db.ExecContext(ctx, schema); err != nil {
		db.Close()
		return nil, fmt.Errorf("open event store %s: create schema: %w", path, err)
	}
	var mode string
	if err := db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		db.Close()
		return nil, fmt.Errorf("open event store %s: %w", path, err)
	}
	if !strings.EqualFold(mode, "wal") {
		db.Close()
		return nil, fmt.Errorf("open event store %s: journal mode is %q, want wal", path, mode)
	}
	return &Store{db: db}, nil
}

// Close closes the database.
func (s *Store) Close() error {
	s.appendMu.Lock()
	for _, stmt := range s.inserts {
		if stmt != nil {
			stmt.Close()
		}
	}
	s.appendMu.Unlock()
	return s.db.Close()
}

// insertRows is the most rows one INSERT statement carries. A batch is
// stored with statements of power-of-two sizes up to it (512 events: four
// statements), so every statement is prepared once, and each costs one
// trip through database/sql and the driver instead of one a row.
const insertRows = 128

// insertSQL is the INSERT of n rows.
func insertSQL(n int) string {
	const row = "(?, ?, ?, ?, ?, ?, ?)"
	return "INSERT INTO events (id, seq, time_ns, kind, pid, exe, event) VALUES " +
		row + strings.Repeat(", "+row, n-1)
}

// Append stores evs in one transaction, in order, and sets each event's Id.
// On error nothing is stored and no Id is set. Events must not be modified
// concurrently.
func (s *Store) Append(ctx context.Context, evs []*vigilv1.Event) error {
	if len(evs) == 0 {
		return nil
	}
	s.appendMu.Lock()
	defer s.appendMu.Unlock()
	// One buffer for every blob: the driver copies a blob when it binds
	// it, so the buffer is reused by the next Append.
	buf, ends := s.buf[:0], s.ends[:0]
	for _, ev := range evs {
		// The id is a column, not part of the blob: it is known only after
		// the insert, and Scan sets it from the column.
		var err error
		buf, err = proto.MarshalOptions{Deterministic: true}.MarshalAppend(buf, withoutID(ev))
		if err != nil {
			return fmt.Errorf("append events: encode event seq %d: %w", ev.GetSeq(), err)
		}
		ends = append(ends, len(buf))
	}
	s.buf, s.ends = buf, ends
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("append events: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // no-op after Commit
	// The ids are given, not left to SQLite: the next after the highest
	// ever used (sqlite_sequence outlives pruned rows), as AUTOINCREMENT
	// would choose them; the transaction holds the write lock.
	var last int64
	if err := tx.QueryRowContext(ctx, `SELECT max(
		coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0),
		coalesce((SELECT max(id) FROM events), 0))`).Scan(&last); err != nil {
		return fmt.Errorf("append events: last id: %w", err)
	}
	args := s.args[:0]
	for i := 0; i < len(evs); {
		n := insertRows
		for n > len(evs)-i {
			n /= 2
		}
		stmt, err := s.insert(ctx, n)
		if err != nil {
			return fmt.Errorf("append events: %w", err)
		}
		args = args[:0]
		for j := i; j < i+n; j++ {
			ev, start := evs[j], 0
			if j > 0 {
				start = ends[j-1]
			}
			args = append(args, last+int64(j)+1, int64(ev.GetSeq()), timeNS(ev), ev.GetKind(),
				int64(ev.GetProcess().GetPid()), ev.GetProcess().GetExe(), buf[start:ends[j]:ends[j]])
		}
		if _, err := tx.StmtContext(ctx, stmt).ExecContext(ctx, args...); err != nil {
			return fmt.Errorf("append events: insert: %w", err)
		}
		i += n
	}
	clear(args) // no blob or string kept alive until the next Append
	s.args = args[:0]
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("append events: commit: %w", err)
	}
	for i, ev := range evs {
		ev.Id = uint64(last) + uint64(i) + 1
	}
	return nil
}

// insert returns the prepared INSERT of n rows (n a power of two up to
// insertRows).
func (s *Store) insert(ctx context.Context, n int) (*sql.Stmt, error) {
	k := bits.TrailingZeros(uint(n))
	if s.inserts[k] == nil {
		stmt, err := s.db.PrepareContext(ctx, insertSQL(n))
		if err != nil {
			return nil, err
		}
		s.inserts[k] = stmt
	}
	return s.inserts[k], nil
}

// withoutID returns ev, or a shallow copy of it with Id cleared.
func withoutID(ev *vigilv1.Event) *vigilv1.Event {
	if ev.GetId() == 0 {
		return ev
	}
	c := proto.CloneOf(ev)
	c.Id = 0
	return c
}

// timeNS is the event time in ns since the epoch, 0 if unset.
func timeNS(ev *vigilv1.Event) int64 {
	if ev.GetTime() == nil {
		return 0
	}
	return ev.GetTime().AsTime().UnixNano()
}

// Query returns the events matching f, oldest first.
func (s *Store) Query(ctx context.Context, f Filter) ([]*vigilv1.Event, error) {
	var out []*vigilv1.Event
	err := s.Scan(ctx, f, func(ev *vigilv1.Event) error {
		out = append(out, ev)
		return nil
	})
	return out, err
}

// Scan calls fn for each event matching f, oldest first, and stops at the
// first error fn returns, returning it. Rows are read in pages, so fn may be
// slow (a network send) without holding the database.
func (s *Store) Scan(ctx context.Context, f Filter, fn func(*vigilv1.Event) error) error {
	if f.Limit < 0 {
		return fmt.Errorf("query events: negative limit %d", f.Limit)
	}
	if f.Latest && f.Limit > 0 {
		// Find the oldest of the newest Limit matches, then read forward
		// from just before it.
		where, args := f.where()
		var id int64
		err := s.db.QueryRowContext(ctx,
			"SELECT id FROM events"+where+" ORDER BY id DESC LIMIT 1 OFFSET ?",
			append(args, f.Limit-1)...).Scan(&id)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			// Fewer than Limit matches: all of them.
		case err != nil:
			return fmt.Errorf("query events: %w", err)
		default:
			f.AfterID = max(f.AfterID, uint64(id)-1)
		}
	}
	remaining := f.Limit
	for {
		n := pageSize
		if f.Limit > 0 {
			n = min(n, remaining)
		}
		if n == 0 {
			return nil
		}
		page, err := s.page(ctx, f, n)
		if err != nil {
			return err
		}
		for _, ev := range page {
			if err := fn(ev); err != nil {
				return err
			}
		}
		if len(page) < n {
			return nil
		}
		f.AfterID = page[len(page)-1].GetId()
		remaining -= len(page)
	}
}

func (s *Store) page(ctx context.Context, f Filter, n int) ([]*vigilv1.Event, error) {
	where, args := f.where()
	rows, err := s.db.QueryContext(ctx,
		"SELECT id, event FROM events"+where+" ORDER BY id LIMIT ?", append(args, n)...)
	if err != nil {
		return nil, fmt.Errorf("query events: %w", err)
	}
	defer rows.Close()
	out := make([]*vigilv1.Event, 0, n)
	for rows.Next() {
		var (
			id   int64
			blob []byte
		)
		if err := rows.Scan(&id, &blob); err != nil {
			return nil, fmt.Errorf("query events: %w", err)
		}
		ev := new(vigilv1.Event)
		if err := proto.Unmarshal(blob, ev); err != nil {
			return nil, fmt.Errorf("query events: decode event id %d: %w", id, err)
		}
		ev.Id = uint64(id)
		out = append(out, ev)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("query events: %w", err)
	}
	return out, nil
}

// where builds the WHERE clause for f's conditions (not Limit).
func (f Filter) where() (string, []any) {
	var (
		conds []string
		args  []any
	)
	if len(f.Kinds) > 0 {
		conds = append(conds, "kind IN (?"+strings.Repeat(", ?", len(f.Kinds)-1)+")")
		for _, k := range f.Kinds {
			args = append(args, k)
		}
	}
	if f.PID != 0 {
		conds = append(conds, "pid = ?")
		args = append(args, int64(f.PID))
	}
	if f.AfterID != 0 {
		conds = append(conds, "id > ?")
		args = append(args, int64(f.AfterID))
	}
	if f.MaxID != 0 {
		conds = append(conds, "id <= ?")
		args = append(args, int64(f.MaxID))
	}
	if f.AfterSeq != 0 {
		conds = append(conds, "seq > ?")
		args = append(args, int64(f.AfterSeq))
	}
	if !f.Since.IsZero() {
		conds = append(conds, "time_ns >= ?")
		args = append(args, f.Since.UnixNano())
	}
	if len(conds) == 0 {
		return "", nil
	}
	return " WHERE " + strings.Join(conds, " AND "), args
}

// LastID returns the highest id stored so far, 0 if none. Ids of later
// appends are all greater.
func (s *Store) LastID(ctx context.Context) (uint64, error) {
	// sqlite_sequence remembers the highest id even after its row was
	// pruned; it has no row before the first insert.
	var id int64
	err := s.db.QueryRowContext(ctx, `SELECT seq FROM sqlite_sequence WHERE name = 'events'`).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("last event id: %w", err)
	}
	return uint64(id), nil
}

// Count returns the number of stored events.
func (s *Store) Count(ctx context.Context) (int64, error) {
	var n int64
	if err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM events`).Scan(&n); err != nil {
		return 0, fmt.Errorf("count events: %w", err)
	}
	return n, nil
}

// Prune deletes events outside r (older than now-MaxAge, or beyond the
// newest MaxRows) and returns how many it deleted. It deletes in chunks,
// each its own transaction, so appends are not held up for long.
func (s *Store) Prune(ctx context.Context, r Retention, now time.Time) (int64, error) {
	var total int64
	if r.MaxAge > 0 {
		cutoff := now.Add(-r.MaxAge).UnixNano()
		n, err := s.deleteChunks(ctx,
			`DELETE FROM events WHERE id IN (SELECT id FROM events WHERE time_ns < ? LIMIT ?)`, cutoff)
		total += n
		if err != nil {
			return total, fmt.Errorf("prune events older than %s: %w", r.MaxAge, err)
		}
	}
	if r.MaxRows > 0 {
		// The id of the oldest row to keep; everything below it goes.
		var keep int64
		err := s.db.QueryRowContext(ctx,
			`SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET ?`, r.MaxRows-1).Scan(&keep)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			// At most MaxRows rows.
		case err != nil:
			return total, fmt.Errorf("prune events beyond %d rows: %w", r.MaxRows, err)
		default:
			n, err := s.deleteChunks(ctx,
				`DELETE FROM events WHERE id IN (SELECT id FROM events WHERE id < ? ORDER BY id LIMIT ?)`, keep)
			total += n
			if err != nil {
				return total, fmt.Errorf("prune events beyond %d rows: %w", r.MaxRows, err)
			}
		}
	}
	return total, nil
}

// deleteChunks runs query (whose last parameter is a chunk size) until it
// deletes fewer rows than a chunk.
func (s *Store) deleteChunks(ctx context.Context, query string, arg any) (int64, error) {
	var total int64
	for {
		res, err := s.db.ExecContext(ctx, query, arg, pruneChunk)
		if err != nil {
			return total, err
		}
		n, err := res.RowsAffected()
		if err != nil {
			return total, err
		}
		total += n
		if n < pruneChunk {
			return total, nil
		}
	}
}
