package store

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ErrNonceUsed is returned by UseNonce for a nonce seen before.
var ErrNonceUsed = errors.New("nonce already used")

const nonceSchema = `
CREATE TABLE IF NOT EXISTS used_nonces (
	nonce      TEXT PRIMARY KEY,
	expires_ns INTEGER NOT NULL
);`

// UseNonce records an admin token's nonce as used until expires, and
// forgets nonces whose tokens have expired. A nonce recorded before (and
// not yet forgotten) is ErrNonceUsed. The table survives restarts, so a
// token cannot be replayed against a restarted agent either.
func (s *Store) UseNonce(ctx context.Context, nonce string, expires time.Time) error {
	if _, err := s.db.ExecContext(ctx, nonceSchema); err != nil {
		return fmt.Errorf("nonce table: %w", err)
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("use nonce: %w", err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `DELETE FROM used_nonces WHERE expires_ns < ?`, time.Now().UnixNano()); err != nil {
		return fmt.Errorf("use nonce: %w", err)
	}
	res, err := tx.ExecContext(ctx, `INSERT INTO used_nonces(nonce, expires_ns) VALUES(?, ?) ON CONFLICT(nonce) DO NOTHING`,
		nonce, expires.UnixNano())
	if err != nil {
		return fmt.Errorf("use nonce: %w", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("%w: %s", ErrNonceUsed, nonce)
	}
	return tx.Commit()
}
