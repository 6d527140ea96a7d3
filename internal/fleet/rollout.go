package fleet

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
)

// Staged rollout (docs/fleet.md): a rule can go first to part of the hosts
// in its scope — a percentage of them, chosen by a hash of the host id, or
// those with a tag, or both — in one of two stages, and is then promoted:
//
//	preview  the chosen hosts get it in monitor mode: a policy with every
//	         rule in monitor mode, a hash deny as a would-be deny; an allow
//	         (hash or signer) has no preview and is not sent
//	staged   the chosen hosts get it as written
//	full     every host in the scope gets it as written (no rollout)
//
// Promotion goes preview → staged → full.

// Rollout stages.
const (
	StageFull    = ""
	StagePreview = "preview"
	StageStaged  = "staged"
)

// Rollout is a rule's rollout; the zero value is full.
type Rollout struct {
	Stage   string
	Percent uint32 // 0–100 of the hosts in scope, by HostPercentile
	Tag     string // hosts with this tag, besides Percent
}

// Validate checks a rollout.
func (r Rollout) Validate() error {
	switch r.Stage {
	case StageFull:
		if r.Percent != 0 || r.Tag != "" {
			return fmt.Errorf("rollout: a percentage or tag needs stage preview or staged")
		}
		return nil
	case StagePreview, StageStaged:
	default:
		return fmt.Errorf("rollout stage %q: want preview, staged or full", r.Stage)
	}
	if r.Percent > 100 {
		return fmt.Errorf("rollout: %d%%, at most 100", r.Percent)
	}
	if r.Percent == 0 && r.Tag == "" {
		return fmt.Errorf("rollout %s: give a percentage (1-100) or a tag", r.Stage)
	}
	if strings.ContainsAny(r.Tag, " ,\t\n") {
		return fmt.Errorf("rollout tag %q", r.Tag)
	}
	return nil
}

// Promote returns the next stage: preview → staged → full.
func (r Rollout) Promote() (Rollout, error) {
	switch r.Stage {
	case StagePreview:
		r.Stage = StageStaged
		return r, nil
	case StageStaged:
		return Rollout{}, nil
	}
	return r, fmt.Errorf("the rule is rolled out to its whole scope already")
}

// String is the rollout state for people: "full", "preview 10% +tag:canary".
func (r Rollout) String() string {
	if r.Stage == StageFull {
		return "full"
	}
	var b strings.Builder
	b.WriteString(r.Stage)
	if r.Percent > 0 {
		fmt.Fprintf(&b, " %d%%", r.Percent)
	}
	if r.Tag != "" {
		b.WriteString(" tag:" + r.Tag)
	}
	return b.String()
}

// HostPercentile is the host's place in every rollout, 0–99: the first 8
// bytes of SHA-256(host id), mod 100. The same host is in every rollout of
// N% or more for N > its percentile, so a rollout grows over the same
// hosts and a canary host is the same for every rule.
func HostPercentile(host string) uint32 {
	sum := sha256.Sum256([]byte(host))
	return uint32(binary.BigEndian.Uint64(sum[:8]) % 100)
}

// Chosen reports whether host (with tags) is among the hosts of the
// rollout; every host is in a full rollout. The rule's scope is checked
// apart (InScope).
func (r Rollout) Chosen(host string, tags []string) bool {
	if r.Stage == StageFull {
		return true
	}
	if r.Tag != "" && slices.Contains(tags, r.Tag) {
		return true
	}
	return HostPercentile(host) < r.Percent
}
