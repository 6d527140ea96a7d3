package trust

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/sign"
)

// Proto is p in the API's form.
func (p PendingCode) Proto() *vigilv1.PendingCode {
	return &vigilv1.PendingCode{
		Sha256:    hex.EncodeToString(p.SHA[:]),
		Paths:     p.Paths,
		Count:     p.Count,
		Refused:   p.Refused,
		FirstSeen: timestamppb.New(p.FirstSeen),
		LastSeen:  timestamppb.New(p.LastSeen),
		Processes: p.Processes,
	}
}

// PendingHandler serves the Pending RPC (server.Config.Pending) from db;
// srcs gives the sources the policy in force counts.
func PendingHandler(db *DB, srcs func() Sources) func(context.Context, *vigilv1.PendingRequest) (*vigilv1.PendingResponse, error) {
	return func(ctx context.Context, req *vigilv1.PendingRequest) (*vigilv1.PendingResponse, error) {
		items, err := db.Pending(ctx, srcs(), int(req.GetLimit()))
		if err != nil {
			return nil, err
		}
		resp := &vigilv1.PendingResponse{}
		for _, p := range items {
			resp.Items = append(resp.Items, p.Proto())
		}
		return resp, nil
	}
}

// ApproveHandler serves the Approve RPC (server.Config.Approve) on db:
//
//   - sha256: approve the digest (deny: deny it);
//   - signer_key (PEM or raw ed25519): approve the signer (deny: revoke it
//     and the trust its catalogs gave).
//
// applied, when set, runs after the database changed and before the reply:
// the agent updates its kernel verdict cache there, so the change is in
// force when `vigil approve` returns. Bad requests are InvalidArgument; a
// signer to revoke that is not approved is NotFound.
func ApproveHandler(db *DB, applied func(context.Context) error) func(context.Context, *vigilv1.ApproveRequest) (*vigilv1.ApproveResponse, error) {
	return func(ctx context.Context, req *vigilv1.ApproveRequest) (*vigilv1.ApproveResponse, error) {
		detail, err := approve(ctx, db, req)
		if err != nil {
			return nil, err
		}
		if applied != nil {
			if err := applied(ctx); err != nil {
				return nil, fmt.Errorf("%s recorded, but not in force yet: %w", detail, err)
			}
		}
		return &vigilv1.ApproveResponse{Detail: detail}, nil
	}
}

func approve(ctx context.Context, db *DB, req *vigilv1.ApproveRequest) (string, error) {
	hasSHA, hasKey := req.GetSha256() != "", len(req.GetSignerKey()) > 0
	switch {
	case hasSHA == hasKey:
		return "", status.Error(codes.InvalidArgument, "give either a sha256 digest or a signer key")
	case hasSHA:
		sha, err := ParseDigest(strings.ToLower(req.GetSha256()))
		if err != nil {
			return "", status.Error(codes.InvalidArgument, err.Error())
		}
		if req.GetDeny() {
			if err := db.Deny(ctx, sha, req.GetComment()); err != nil {
				return "", err
			}
			return fmt.Sprintf("denied %x", sha), nil
		}
		if err := db.Approve(ctx, sha, req.GetComment()); err != nil {
			return "", err
		}
		return fmt.Sprintf("approved %x", sha), nil
	}
	pub, err := sign.ParsePublicKey(req.GetSignerKey())
	if err != nil {
		return "", status.Error(codes.InvalidArgument, "signer key: "+err.Error())
	}
	if req.GetDeny() {
		id, err := sign.KeyID(pub)
		if err != nil {
			return "", status.Error(codes.InvalidArgument, "signer key: "+err.Error())
		}
		if err := db.RevokeSigner(ctx, id); err != nil {
			if errors.Is(err, ErrNotFound) {
				return "", status.Errorf(codes.NotFound, "signer %s is not approved", id)
			}
			return "", err
		}
		return "revoked signer " + id, nil
	}
	id, err := db.ApproveSigner(ctx, pub, req.GetComment())
	if err != nil {
		return "", err
	}
	return "approved signer " + id, nil
}
