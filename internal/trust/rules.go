package trust

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"database/sql"
	"fmt"
	"slices"
	"time"

	"github.com/vigil-hips/vigil/internal/sign"
)

func sortDigests(ds [][32]byte) {
	slices.SortFunc(ds, func(a, b [32]byte) int { return bytes.Compare(a[:], b[:]) })
}

// Approve trusts sha explicitly, replacing an explicit deny. The digest
// leaves the pending list.
func (db *DB) Approve(ctx context.Context, sha [32]byte, comment string) error {
	return db.setRule(ctx, sha, ruleApprove, comment)
}

// Deny denies sha explicitly, whatever else trusts it; it replaces an
// explicit approve. The digest leaves the pending list.
func (db *DB) Deny(ctx context.Context, sha [32]byte, comment string) error {
	return db.setRule(ctx, sha, ruleDeny, comment)
}

func (db *DB) setRule(ctx context.Context, sha [32]byte, verdict int, comment string) error {
	what := "approve"
	if verdict == ruleDeny {
		what = "deny"
	}
	return db.write(ctx, fmt.Sprintf("%s %x", what, sha), func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx,
			`INSERT INTO rules (sha, verdict, comment, time_ns) VALUES (?, ?, ?, ?)
			 ON CONFLICT (sha) DO UPDATE SET verdict = excluded.verdict, comment = excluded.comment, time_ns = excluded.time_ns`,
			sha[:], verdict, comment, time.Now().UnixNano()); err != nil {
			return err
		}
		return forgetPending(ctx, tx, sha)
	})
}

// Forget removes the explicit verdict on sha; other sources decide again.
// No verdict is ErrNotFound.
func (db *DB) Forget(ctx context.Context, sha [32]byte) error {
	return db.write(ctx, fmt.Sprintf("forget %x", sha), func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM rules WHERE sha = ?`, sha[:])
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("no explicit verdict: %w", ErrNotFound)
		}
		return nil
	})
}

// Rule is an explicit verdict by hash.
type Rule struct {
	SHA     [32]byte
	Verdict Verdict // Trusted or Denied
	Comment string
	Time    time.Time
}

// Rules lists the explicit verdicts, in digest order.
func (db *DB) Rules(ctx context.Context) ([]Rule, error) {
	rows, err := db.db.QueryContext(ctx, `SELECT sha, verdict, comment, time_ns FROM rules ORDER BY sha`)
	if err != nil {
		return nil, fmt.Errorf("trust rules: %w", err)
	}
	defer rows.Close()
	var out []Rule
	for rows.Next() {
		var (
			sha   []byte
			v, ns int64
			r     Rule
		)
		if err := rows.Scan(&sha, &v, &r.Comment, &ns); err != nil {
			return nil, fmt.Errorf("trust rules: %w", err)
		}
		copy(r.SHA[:], sha)
		r.Verdict = Trusted
		if v == ruleDeny {
			r.Verdict = Denied
		}
		r.Time = time.Unix(0, ns)
		out = append(out, r)
	}
	return out, rows.Err()
}

// Signer is an approved signing key.
type Signer struct {
	KeyID    string
	Key      ed25519.PublicKey
	Comment  string
	Time     time.Time
	Catalogs int // catalogs stored from this signer
}

// ApproveSigner approves pub as a signer of catalogs and returns its key
// ID. Approving an approved key again updates its comment only.
func (db *DB) ApproveSigner(ctx context.Context, pub ed25519.PublicKey, comment string) (string, error) {
	if len(pub) != ed25519.PublicKeySize {
		return "", fmt.Errorf("approve signer: key is %d bytes, want %d (ed25519)", len(pub), ed25519.PublicKeySize)
	}
	id, err := sign.KeyID(pub)
	if err != nil {
		return "", fmt.Errorf("approve signer: %w", err)
	}
	err = db.write(ctx, "approve signer "+id, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx,
			`INSERT INTO signers (key_id, pub, comment, time_ns) VALUES (?, ?, ?, ?)
			 ON CONFLICT (key_id) DO UPDATE SET comment = excluded.comment`,
			id, []byte(pub), comment, time.Now().UnixNano())
		return err
	})
	return id, err
}

// RevokeSigner removes an approved signer and its catalogs: what only
// they trusted is no longer trusted. keyID is the key's ID; an unknown
// signer is ErrNotFound.
func (db *DB) RevokeSigner(ctx context.Context, keyID string) error {
	return db.write(ctx, "revoke signer "+keyID, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM signers WHERE key_id = ?`, keyID)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("not an approved signer: %w", ErrNotFound)
		}
		return nil
	})
}

// Signers lists the approved signers, by key ID.
func (db *DB) Signers(ctx context.Context) ([]Signer, error) {
	rows, err := db.db.QueryContext(ctx, `SELECT s.key_id, s.pub, s.comment, s.time_ns,
		(SELECT COUNT(*) FROM catalogs c WHERE c.key_id = s.key_id) FROM signers s ORDER BY s.key_id`)
	if err != nil {
		return nil, fmt.Errorf("trust signers: %w", err)
	}
	defer rows.Close()
	var out []Signer
	for rows.Next() {
		var (
			s   Signer
			pub []byte
			ns  int64
		)
		if err := rows.Scan(&s.KeyID, &pub, &s.Comment, &ns, &s.Catalogs); err != nil {
			return nil, fmt.Errorf("trust signers: %w", err)
		}
		s.Key = ed25519.PublicKey(pub)
		s.Time = time.Unix(0, ns)
		out = append(out, s)
	}
	return out, rows.Err()
}
