package trust

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"time"
)

// Bounds of the pending list, so that a flood of unknown code cannot grow
// the database without limit.
var (
	// maxPending is how many digests the pending list keeps (the most
	// recently seen).
	maxPending = 10000
	// maxSeen is how many paths and how many processes a digest keeps
	// (the most recent).
	maxSeen = 16
)

// Attempt is one load of code no trust source knew.
type Attempt struct {
	SHA     [32]byte
	Path    string // the file's name (display data)
	Exe     string // executable of the process that tried
	PID     uint32
	Refused bool // lockdown refused it; else it ran (monitor)
	Time    time.Time
}

// PendingCode is unknown code seen, with what tried it.
type PendingCode struct {
	SHA       [32]byte
	Paths     []string // names it was seen under, most recent first
	Count     uint64   // attempts
	Refused   uint64   // attempts refused
	FirstSeen time.Time
	LastSeen  time.Time
	Processes []string // "PID EXE" of the processes that tried, most recent first
}

// RecordPending records an attempt to load unknown code. It does not
// change Generation: pending code changes no verdict. It is one write
// transaction (about a millisecond): call it off the path that decides.
func (db *DB) RecordPending(ctx context.Context, a Attempt) error {
	if a.Time.IsZero() {
		a.Time = time.Now()
	}
	ns := a.Time.UnixNano()
	refused := 0
	if a.Refused {
		refused = 1
	}
	tx, err := db.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("record pending %x: %w", a.SHA, err)
	}
	defer tx.Rollback() //nolint:errcheck // no-op after Commit
	exec := func(q string, args ...any) {
		if err == nil {
			_, err = tx.ExecContext(ctx, q, args...)
		}
	}
	var known bool
	if err = tx.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM pending WHERE sha = ?)`, a.SHA[:]).Scan(&known); err != nil {
		return fmt.Errorf("record pending %x: %w", a.SHA, err)
	}
	exec(`INSERT INTO pending (sha, count, refused, first_ns, last_ns) VALUES (?1, 1, ?2, ?3, ?3)
		ON CONFLICT (sha) DO UPDATE SET count = count + 1, refused = refused + ?2,
			first_ns = min(first_ns, ?3), last_ns = max(last_ns, ?3)`, a.SHA[:], refused, ns)
	seen := func(kind int, what string) {
		if what == "" {
			return
		}
		exec(`INSERT INTO pending_seen (sha, kind, what, last_ns) VALUES (?1, ?2, ?3, ?4)
			ON CONFLICT (sha, kind, what) DO UPDATE SET last_ns = max(last_ns, ?4)`, a.SHA[:], kind, what, ns)
		exec(`DELETE FROM pending_seen WHERE sha = ?1 AND kind = ?2 AND what NOT IN
			(SELECT what FROM pending_seen WHERE sha = ?1 AND kind = ?2 ORDER BY last_ns DESC LIMIT ?3)`,
			a.SHA[:], kind, maxSeen)
	}
	seen(0, a.Path)
	proc := a.Exe
	if a.PID != 0 {
		proc = strconv.FormatUint(uint64(a.PID), 10) + " " + a.Exe
	}
	seen(1, proc)
	if !known && err == nil {
		// A new digest: drop the least recently seen beyond maxPending.
		exec(`DELETE FROM pending_seen WHERE sha IN
			(SELECT sha FROM pending ORDER BY last_ns DESC LIMIT -1 OFFSET ?)`, maxPending)
		exec(`DELETE FROM pending WHERE sha IN
			(SELECT sha FROM pending ORDER BY last_ns DESC LIMIT -1 OFFSET ?)`, maxPending)
	}
	if err != nil {
		return fmt.Errorf("record pending %x: %w", a.SHA, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("record pending %x: %w", a.SHA, err)
	}
	return nil
}

// forgetPending drops sha from the pending list.
func forgetPending(ctx context.Context, tx *sql.Tx, sha [32]byte) error {
	if _, err := tx.ExecContext(ctx, `DELETE FROM pending WHERE sha = ?`, sha[:]); err != nil {
		return err
	}
	_, err := tx.ExecContext(ctx, `DELETE FROM pending_seen WHERE sha = ?`, sha[:])
	return err
}

// Pending lists the pending code that is still Unknown under srcs (code
// trusted or denied since it was seen is left out), most recently seen
// first, at most limit items (0: all).
func (db *DB) Pending(ctx context.Context, srcs Sources, limit int) ([]PendingCode, error) {
	rows, err := db.db.QueryContext(ctx,
		`SELECT sha, count, refused, first_ns, last_ns FROM pending ORDER BY last_ns DESC, sha`)
	if err != nil {
		return nil, fmt.Errorf("pending: %w", err)
	}
	var all []PendingCode
	for rows.Next() {
		var (
			p         PendingCode
			sha       []byte
			first, ls int64
		)
		if err := rows.Scan(&sha, &p.Count, &p.Refused, &first, &ls); err != nil {
			rows.Close()
			return nil, fmt.Errorf("pending: %w", err)
		}
		copy(p.SHA[:], sha)
		p.FirstSeen, p.LastSeen = time.Unix(0, first), time.Unix(0, ls)
		all = append(all, p)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("pending: %w", err)
	}
	out := all[:0]
	for _, p := range all {
		if limit > 0 && len(out) >= limit {
			break
		}
		d, err := db.Lookup(ctx, p.SHA, srcs)
		if err != nil {
			return nil, err
		}
		if d.Verdict != Unknown {
			continue
		}
		if p.Paths, p.Processes, err = db.pendingSeen(ctx, p.SHA); err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

func (db *DB) pendingSeen(ctx context.Context, sha [32]byte) (paths, procs []string, err error) {
	rows, err := db.db.QueryContext(ctx,
		`SELECT kind, what FROM pending_seen WHERE sha = ? ORDER BY last_ns DESC, what`, sha[:])
	if err != nil {
		return nil, nil, fmt.Errorf("pending: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			kind int
			what string
		)
		if err := rows.Scan(&kind, &what); err != nil {
			return nil, nil, fmt.Errorf("pending: %w", err)
		}
		if kind == 0 {
			paths = append(paths, what)
		} else {
			procs = append(procs, what)
		}
	}
	return paths, procs, rows.Err()
}
