package store

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"
)

func TestUseNonce(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "events.db")
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	exp := time.Now().Add(time.Hour)
	if err := s.UseNonce(ctx, "a", exp); err != nil {
		t.Fatal(err)
	}
	if err := s.UseNonce(ctx, "a", exp); !errors.Is(err, ErrNonceUsed) {
		t.Fatalf("replay: %v, want ErrNonceUsed", err)
	}
	if err := s.UseNonce(ctx, "b", exp); err != nil {
		t.Fatal(err)
	}
	s.Close()
	// Kept across a restart.
	s, err = Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.UseNonce(ctx, "a", exp); !errors.Is(err, ErrNonceUsed) {
		t.Fatalf("replay after reopen: %v, want ErrNonceUsed", err)
	}
}
