package trust

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/vigil-hips/vigil/internal/sign"
)

// CatalogPayloadType is the DSSE payload type of a trust catalog.
const CatalogPayloadType = "application/vnd.vigil.catalog+json"

var (
	// ErrUnapprovedSigner: no signature of the catalog is by an approved
	// signer (AddCatalog) or by the given key (VerifyCatalog).
	ErrUnapprovedSigner = errors.New("not signed by an approved signer")
	// ErrBadSignature: a signature names an approved key but does not
	// verify. It is sign.ErrBadSignature.
	ErrBadSignature = sign.ErrBadSignature
	// ErrStaleCatalog: the database holds a newer catalog of the same name
	// from the same signer.
	ErrStaleCatalog = errors.New("older than the stored catalog of that name")
)

// Catalog is a catalog's payload: a named list of SHA-256 digests that
// its signer vouches for. JSON:
//
//	{"name": "tools", "digests": ["<64 hex>", ...], "issued": "2026-01-02T15:04:05Z"}
type Catalog struct {
	Name    string    `json:"name"`
	Digests []string  `json:"digests"`
	Issued  time.Time `json:"issued"`
}

// NewCatalog returns a catalog of digests, sorted and without duplicates,
// issued at issued (truncated to seconds, UTC).
func NewCatalog(name string, digests [][32]byte, issued time.Time) Catalog {
	ds := append([][32]byte(nil), digests...)
	sortDigests(ds)
	c := Catalog{Name: name, Issued: issued.UTC().Truncate(time.Second), Digests: []string{}}
	for i, d := range ds {
		if i > 0 && d == ds[i-1] {
			continue
		}
		c.Digests = append(c.Digests, hex.EncodeToString(d[:]))
	}
	return c
}

// Parse checks c and returns its digests.
func (c Catalog) Parse() ([][32]byte, error) {
	if strings.TrimSpace(c.Name) == "" {
		return nil, errors.New("catalog has no name")
	}
	if c.Issued.IsZero() {
		return nil, errors.New("catalog has no issued time")
	}
	out := make([][32]byte, 0, len(c.Digests))
	for i, s := range c.Digests {
		d, err := ParseDigest(s)
		if err != nil {
			return nil, fmt.Errorf("catalog digest %d: %w", i+1, err)
		}
		out = append(out, d)
	}
	return out, nil
}

// SignCatalog signs c with priv and returns the envelope in its JSON form
// (the catalog file).
func SignCatalog(ctx context.Context, priv ed25519.PrivateKey, c Catalog) ([]byte, error) {
	if _, err := c.Parse(); err != nil {
		return nil, err
	}
	payload, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	env, err := sign.Sign(ctx, priv, CatalogPayloadType, payload)
	if err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(env, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// VerifiedCatalog is a catalog whose signature verified.
type VerifiedCatalog struct {
	Catalog
	KeyID   string     // the key that signed it
	SHA     [][32]byte // its digests, parsed
	Payload []byte     // the signed payload
}

// VerifyCatalog checks that the catalog file envelope is signed by one of
// keys and well formed. A signature by none of the keys is
// ErrUnapprovedSigner; a signature that names one of them and does not
// verify is ErrBadSignature.
func VerifyCatalog(ctx context.Context, envelope []byte, keys ...ed25519.PublicKey) (*VerifiedCatalog, error) {
	env, err := sign.ReadEnvelope(envelope)
	if err != nil {
		return nil, err
	}
	if env.PayloadType != CatalogPayloadType {
		return nil, fmt.Errorf("envelope holds %q, not a catalog (%s)", env.PayloadType, CatalogPayloadType)
	}
	sigIDs := map[string]bool{}
	anonymous := false
	var signedBy []string
	for _, s := range env.Signatures {
		anonymous = anonymous || s.KeyID == ""
		if s.KeyID != "" && !sigIDs[s.KeyID] {
			sigIDs[s.KeyID] = true
			signedBy = append(signedBy, s.KeyID)
		}
	}
	var badErr error
	for _, k := range keys {
		id, err := sign.KeyID(k)
		if err != nil {
			return nil, err
		}
		// A signature without a key ID is tried with every key.
		if !anonymous && !sigIDs[id] {
			continue
		}
		payload, err := sign.Verify(ctx, k, CatalogPayloadType, env)
		if err != nil {
			if errors.Is(err, sign.ErrBadSignature) {
				if sigIDs[id] {
					badErr = err
				}
				continue
			}
			return nil, err
		}
		c, ds, err := decodeCatalog(payload)
		if err != nil {
			return nil, err
		}
		return &VerifiedCatalog{Catalog: c, KeyID: id, SHA: ds, Payload: payload}, nil
	}
	if badErr != nil {
		return nil, badErr
	}
	if len(signedBy) == 0 {
		return nil, ErrUnapprovedSigner
	}
	return nil, fmt.Errorf("%w: signed by %s", ErrUnapprovedSigner, strings.Join(signedBy, ", "))
}

// decodeCatalog decodes and checks a catalog payload: the one decoder of
// VerifyCatalog and ReadCatalogClaim, so both are as strict.
func decodeCatalog(payload []byte) (Catalog, [][32]byte, error) {
	var c Catalog
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return Catalog{}, nil, fmt.Errorf("catalog payload: %w", err)
	}
	ds, err := c.Parse()
	if err != nil {
		return Catalog{}, nil, err
	}
	return c, ds, nil
}

// CatalogClaim is what a catalog file says of itself, its signature NOT
// checked: the keys its signatures name and the digests it lists.
//
// A host cannot check the signature of a signer it does not approve: it
// does not hold that signer's public key, only the key ID a signature
// names, which anyone can write. A claim therefore trusts nothing. It only
// tells the fleet which signer an admin could consider approving; approving
// that signer with its real public key is what verifies the catalog, when
// AddCatalog adds it then (a forged catalog is refused there and trusts
// nothing).
type CatalogClaim struct {
	Catalog
	// KeyIDs are the key IDs the signatures name, sorted, without
	// duplicates; a name that is not of the form of a key ID
	// (sign.IsKeyID) is left out, as no key could have it.
	KeyIDs []string
	SHA    [][32]byte // its digests, parsed
}

// ReadCatalogClaim reads a catalog file (a DSSE envelope) WITHOUT
// verifying its signatures (see CatalogClaim): the envelope must hold a
// catalog (CatalogPayloadType) whose payload is as well formed as
// VerifyCatalog requires.
func ReadCatalogClaim(envelope []byte) (*CatalogClaim, error) {
	env, err := sign.ReadEnvelope(envelope)
	if err != nil {
		return nil, err
	}
	if env.PayloadType != CatalogPayloadType {
		return nil, fmt.Errorf("envelope holds %q, not a catalog (%s)", env.PayloadType, CatalogPayloadType)
	}
	// Standard or URL-safe base64, as DSSE allows.
	payload, err := env.DecodeB64Payload()
	if err != nil {
		return nil, fmt.Errorf("catalog payload: %w", err)
	}
	c, ds, err := decodeCatalog(payload)
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, s := range env.Signatures {
		if sign.IsKeyID(s.KeyID) {
			ids = append(ids, s.KeyID)
		}
	}
	slices.Sort(ids)
	return &CatalogClaim{Catalog: c, KeyIDs: slices.Compact(ids), SHA: ds}, nil
}

// CatalogInfo describes a stored catalog.
type CatalogInfo struct {
	Name    string
	KeyID   string
	Issued  time.Time
	Digests int
	// SHA256 is the hex SHA-256 of the signed payload: it names this
	// version of the catalog.
	SHA256 string
	Added  time.Time
}

// AddCatalog verifies a catalog file (a DSSE envelope) against the
// approved signers and stores it: every digest it lists is then trusted
// (source "catalog:KEYID") while its signer stays approved. A catalog with
// a bad signature (ErrBadSignature) or from a key that is not approved
// (ErrUnapprovedSigner) is refused and trusts nothing. A catalog replaces
// the stored one of the same name from the same signer, unless that one was
// issued later (ErrStaleCatalog).
func (db *DB) AddCatalog(ctx context.Context, envelope []byte) (CatalogInfo, error) {
	signers, err := db.Signers(ctx)
	if err != nil {
		return CatalogInfo{}, err
	}
	keys := make([]ed25519.PublicKey, len(signers))
	for i, s := range signers {
		keys[i] = s.Key
	}
	vc, err := VerifyCatalog(ctx, envelope, keys...)
	if err != nil {
		return CatalogInfo{}, fmt.Errorf("add catalog: %w", err)
	}
	sum := sha256.Sum256(vc.Payload)
	info := CatalogInfo{
		Name: vc.Name, KeyID: vc.KeyID, Issued: vc.Issued, Digests: len(vc.SHA),
		SHA256: hex.EncodeToString(sum[:]), Added: time.Now(),
	}
	err = db.write(ctx, "add catalog "+vc.Name, func(tx *sql.Tx) error {
		var (
			oldID     int64
			oldIssued string
		)
		err := tx.QueryRowContext(ctx, `SELECT id, issued FROM catalogs WHERE key_id = ? AND name = ?`,
			vc.KeyID, vc.Name).Scan(&oldID, &oldIssued)
		switch {
		case errors.Is(err, sql.ErrNoRows):
		case err != nil:
			return err
		default:
			if t, perr := time.Parse(time.RFC3339Nano, oldIssued); perr == nil && t.After(vc.Issued) {
				return fmt.Errorf("issued %s: %w (issued %s)", vc.Issued.Format(time.RFC3339), ErrStaleCatalog, oldIssued)
			}
			if _, err := tx.ExecContext(ctx, `DELETE FROM catalogs WHERE id = ?`, oldID); err != nil {
				return err
			}
		}
		res, err := tx.ExecContext(ctx,
			`INSERT INTO catalogs (key_id, name, issued, digest, envelope, count, time_ns) VALUES (?, ?, ?, ?, ?, ?, ?)`,
			vc.KeyID, vc.Name, vc.Issued.UTC().Format(time.RFC3339Nano), info.SHA256, envelope, len(vc.SHA), info.Added.UnixNano())
		if err != nil {
			return err
		}
		id, err := res.LastInsertId()
		if err != nil {
			return err
		}
		stmt, err := tx.PrepareContext(ctx, `INSERT OR IGNORE INTO catalog_digests (sha, catalog_id) VALUES (?, ?)`)
		if err != nil {
			return err
		}
		defer stmt.Close()
		for _, d := range vc.SHA {
			if _, err := stmt.ExecContext(ctx, d[:], id); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return CatalogInfo{}, err
	}
	return info, nil
}

// Catalogs lists the stored catalogs, by signer and name.
func (db *DB) Catalogs(ctx context.Context) ([]CatalogInfo, error) {
	rows, err := db.db.QueryContext(ctx,
		`SELECT name, key_id, issued, count, digest, time_ns FROM catalogs ORDER BY key_id, name`)
	if err != nil {
		return nil, fmt.Errorf("trust catalogs: %w", err)
	}
	defer rows.Close()
	var out []CatalogInfo
	for rows.Next() {
		var (
			c      CatalogInfo
			issued string
			ns     int64
		)
		if err := rows.Scan(&c.Name, &c.KeyID, &issued, &c.Digests, &c.SHA256, &ns); err != nil {
			return nil, fmt.Errorf("trust catalogs: %w", err)
		}
		c.Issued, _ = time.Parse(time.RFC3339Nano, issued)
		c.Added = time.Unix(0, ns)
		out = append(out, c)
	}
	return out, rows.Err()
}

// SignedDigests returns, for each of keyIDs that is an approved signer,
// the digests listed in the stored catalogs whose signature verifies with
// its key: what a policy's process.signer condition names. Every stored
// catalog is verified again here, against each key asked about, whichever
// key it was stored under (a catalog signed by several keys counts for
// each). A key that is not an approved signer is absent from the result:
// without its public key nothing verifies. problems names stored catalogs
// that no longer verify with the key they were stored under (the database
// was changed behind Vigil's back); they count for nothing.
func (db *DB) SignedDigests(ctx context.Context, keyIDs []string) (map[string][][32]byte, []string, error) {
	want := map[string]bool{}
	for _, id := range keyIDs {
		want[id] = true
	}
	signers, err := db.Signers(ctx)
	if err != nil {
		return nil, nil, err
	}
	keys := map[string]ed25519.PublicKey{}
	out := map[string][][32]byte{}
	for _, s := range signers {
		if want[s.KeyID] {
			keys[s.KeyID] = s.Key
			out[s.KeyID] = [][32]byte{}
		}
	}
	if len(keys) == 0 {
		return out, nil, nil
	}
	rows, err := db.db.QueryContext(ctx, `SELECT key_id, name, envelope FROM catalogs ORDER BY key_id, name`)
	if err != nil {
		return nil, nil, fmt.Errorf("trust catalogs: %w", err)
	}
	type stored struct {
		keyID, name string
		envelope    []byte
	}
	var cats []stored
	for rows.Next() {
		var c stored
		if err := rows.Scan(&c.keyID, &c.name, &c.envelope); err != nil {
			rows.Close()
			return nil, nil, fmt.Errorf("trust catalogs: %w", err)
		}
		cats = append(cats, c)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("trust catalogs: %w", err)
	}
	var problems []string
	for id, key := range keys {
		seen := map[[32]byte]bool{}
		for _, c := range cats {
			vc, err := VerifyCatalog(ctx, c.envelope, key)
			if err != nil {
				if c.keyID == id {
					problems = append(problems, fmt.Sprintf("catalog %s of %s does not verify, it counts for nothing: %v", c.name, id, err))
				}
				continue
			}
			for _, d := range vc.SHA {
				if !seen[d] {
					seen[d] = true
					out[id] = append(out[id], d)
				}
			}
		}
		sortDigests(out[id])
	}
	return out, problems, nil
}
