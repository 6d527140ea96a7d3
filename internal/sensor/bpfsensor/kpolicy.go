package bpfsensor

import (
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/vigil-hips/vigil/internal/sensor"
)

// Limits of the kernel form of a policy (sensor.h).
const (
	MaxRuleEntries = 512 // MAX_RULES
	MaxSets        = 64  // bits of a set mask
	UIDRanges      = 4   // UID_RANGES
	// MaxDigests is how many digests one policy may name in process.sha256
	// and, expanded to their catalogs' digests, process.signer: half of
	// sha_sets, which holds the slot in force and the next.
	MaxDigests = 8192
)

// Kinds and ops as rule bits.
func kindBit(k sensorEventKind) uint32 { return 1 << k }
func opBit(o sensorEventOp) uint64     { return 1 << o }

// PathKey names a directory entry by its parent directory's identity and
// its name: the kernel's path_key without the slot.
type PathKey struct {
	ParentDev uint64 // as stat(2) reports it
	ParentIno uint64
	Name      string
}

// NameHash is the hash the kernel computes of a name (name_hash in
// policy.bpf.h): little-endian 64-bit words, the last zero-padded; per
// word h = (h ^ w) * P, h ^= h >> 29; then h ^= length.
func NameHash(name string) uint64 {
	const seed, prime = 0xcbf29ce484222325, 0x100000001b3
	h := uint64(seed)
	b := []byte(name)
	for off := 0; off < len(b); off += 8 {
		var word [8]byte
		copy(word[:], b[off:])
		h ^= binary.LittleEndian.Uint64(word[:])
		h *= prime
		h ^= h >> 29
	}
	return h ^ uint64(len(b))
}

// kernelDev converts a stat(2) device number to the kernel's dev_t
// (major<<20 | minor).
func kernelDev(u uint64) uint32 {
	major := (u >> 8 & 0xfff) | (u >> 32 &^ 0xfff)
	minor := (u & 0xff) | (u >> 12 &^ 0xff)
	return uint32(major<<20 | minor)
}

// KernelPolicy is a policy compiled into the contents of the kernel's
// policy maps. Compile builds it; Sensor.ApplyPolicy loads it.
type KernelPolicy struct {
	Digest  string   // of the source policy
	RuleIDs []string // rule_index -> rule id
	Entries []sensorRule
	Paths   map[PathKey]sensorPathBits
	Cgroups map[uint64]uint64   // cgroup id -> set bits
	Digests map[[32]byte]uint64 // process.sha256 digest -> set bits
	Kinds   uint32              // kinds some entry is about
}

// NeedsDigests reports whether kp decides on executables' digests.
func (kp *KernelPolicy) NeedsDigests() bool { return kp != nil && len(kp.Digests) > 0 }

// Validate checks the policy fits the kernel's maps.
func (kp *KernelPolicy) Validate() error {
	if len(kp.Entries) > MaxRuleEntries {
		return fmt.Errorf("policy needs %d kernel rule entries, the kernel holds %d", len(kp.Entries), MaxRuleEntries)
	}
	if len(kp.Digests) > MaxDigests {
		return fmt.Errorf("policy names %d distinct digests in process.sha256 and process.signer (its signers' catalogs, expanded), more than the kernel holds (%d)", len(kp.Digests), MaxDigests)
	}
	for i, e := range kp.Entries {
		if int(e.RuleIndex) >= len(kp.RuleIDs) {
			return fmt.Errorf("entry %d: rule index %d out of range", i, e.RuleIndex)
		}
		if e.Action == sensorVerdictActionACT_SKIP && (int(e.SkipTo) <= i || int(e.SkipTo) > len(kp.Entries)) {
			return fmt.Errorf("entry %d: skip to %d", i, e.SkipTo)
		}
	}
	return nil
}

// loadedPolicy is what decoding an event needs to name its rule.
type loadedPolicy struct {
	digest  string
	ruleIDs []string
}

// ApplyPolicy loads kp into the inactive slot, then makes it active with
// one store. Until that store the previous policy decides; after it, the
// new one — never a mix. A nil kp removes the policy.
func (s *Sensor) ApplyPolicy(kp *KernelPolicy) error {
	if kp != nil {
		if err := kp.Validate(); err != nil {
			return err
		}
	}
	s.policyMu.Lock()
	defer s.policyMu.Unlock()
	if s.objs == nil {
		return errors.New("apply policy: sensor not started")
	}
	cfgMap := s.objs.Maps[sensorMapPolicy]
	var cfg sensorPolicyCfg
	if err := cfgMap.Lookup(uint32(0), &cfg); err != nil {
		return fmt.Errorf("apply policy: read config: %w", err)
	}
	next := (cfg.ActiveSlot + 1) % 2
	if err := s.clearSlot(next); err != nil {
		return fmt.Errorf("apply policy: clear slot %d: %w", next, err)
	}
	slot := &cfg.Slots[next]
	slot.Version, slot.Nrules, slot.Kinds, slot.Ndigests = 0, 0, 0, 0
	if kp != nil {
		if err := s.fillSlot(next, kp); err != nil {
			return fmt.Errorf("apply policy: %w", err)
		}
		s.version++
		slot.Version = s.version
		slot.Nrules = uint32(len(kp.Entries))
		slot.Kinds = kp.Kinds
		slot.Ndigests = uint32(len(kp.Digests))
		s.mu.Lock()
		s.policies[s.version] = loadedPolicy{digest: kp.Digest, ruleIDs: kp.RuleIDs}
		s.mu.Unlock()
	}
	// First the slot's config, with the active slot unchanged; execs are
	// hashed from here on if the new policy needs digests ...
	needs := kp.NeedsDigests()
	if needs {
		cfg.HashExec = 1
	}
	if err := cfgMap.Update(uint32(0), &cfg, ebpf.UpdateExist); err != nil {
		return fmt.Errorf("apply policy: write slot config: %w", err)
	}
	// ... so the processes that were running before get theirs now ...
	if needs && s.backend == sensor.BackendLSM {
		s.fillExeDigests()
	}
	// ... then the switch.
	cfg.ActiveSlot = next
	cfg.HashExec = b32(needs)
	if err := cfgMap.Update(uint32(0), &cfg, ebpf.UpdateExist); err != nil {
		return fmt.Errorf("apply policy: activate: %w", err)
	}
	return nil
}

// fillSlot writes kp's rules and sets into slot.
func (s *Sensor) fillSlot(slot uint32, kp *KernelPolicy) error {
	rules := s.objs.Maps[sensorMapRules]
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return err
	}
	zeros := make([]uint64, ncpu)
	for i := range kp.Entries {
		idx := slot*MaxRuleEntries + uint32(i)
		if err := rules.Update(idx, &kp.Entries[i], ebpf.UpdateAny); err != nil {
			return fmt.Errorf("write rule %d: %w", i, err)
		}
		if err := s.objs.Maps[sensorMapRuleHits].Update(idx, zeros, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("reset rule %d hits: %w", i, err)
		}
	}
	paths := s.objs.Maps[sensorMapPathSets]
	for k, v := range kp.Paths {
		key := sensorPathKey{ParentIno: k.ParentIno, NameHash: NameHash(k.Name), ParentDev: kernelDev(k.ParentDev), Slot: slot}
		if err := paths.Update(&key, &v, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("write path set entry %+v: %w", k, err)
		}
	}
	digests := s.objs.Maps[sensorMapShaSets]
	for d, bits := range kp.Digests {
		key := sensorShaKey{Sha: sensorXcDigest{B: d}, Slot: slot}
		if err := digests.Update(&key, &bits, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("write sha256 set entry %x: %w", d, err)
		}
	}
	cgroups := s.objs.Maps[sensorMapCgroupSets]
	for id, bits := range kp.Cgroups {
		key := sensorCgroupKey{Id: id, Slot: slot}
		if err := cgroups.Update(&key, &bits, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("write cgroup set entry %d: %w", id, err)
		}
	}
	return nil
}

// clearSlot deletes a slot's set entries (its rules are overwritten).
func (s *Sensor) clearSlot(slot uint32) error {
	if err := deleteWhere[sensorPathKey, sensorPathBits](s.objs.Maps[sensorMapPathSets],
		func(k *sensorPathKey) bool { return k.Slot == slot }); err != nil {
		return err
	}
	if err := deleteWhere[sensorShaKey, uint64](s.objs.Maps[sensorMapShaSets],
		func(k *sensorShaKey) bool { return k.Slot == slot }); err != nil {
		return err
	}
	return deleteWhere[sensorCgroupKey, uint64](s.objs.Maps[sensorMapCgroupSets],
		func(k *sensorCgroupKey) bool { return k.Slot == slot })
}

// deleteWhere deletes the entries of hash map m (values of type V) whose
// key matches.
func deleteWhere[K, V any](m *ebpf.Map, match func(*K) bool) error {
	var (
		k     K
		v     V
		stale []K
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		if match(&k) {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return err
	}
	for i := range stale {
		if err := m.Delete(&stale[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
	}
	return nil
}

// ruleOf names the rule of a verdict the kernel recorded.
func (s *Sensor) ruleOf(version uint32, index uint16) (rule, digest string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.policies[version]
	if !ok {
		return fmt.Sprintf("#%d (policy version %d)", index, version), ""
	}
	if int(index) < len(p.ruleIDs) {
		rule = p.ruleIDs[index]
	}
	return rule, p.digest
}

// PathKeyFor returns the key of path: its parent directory's identity and
// its name. The parent must exist; the entry itself need not.
func PathKeyFor(path string) (PathKey, error) {
	clean := filepath.Clean(path)
	if !filepath.IsAbs(clean) || clean == "/" {
		return PathKey{}, fmt.Errorf("path %q: want an absolute path below /", path)
	}
	var st unix.Stat_t
	dir := filepath.Dir(clean)
	if err := unix.Stat(dir, &st); err != nil {
		return PathKey{}, fmt.Errorf("path %q: parent directory: %w", path, err)
	}
	return PathKey{ParentDev: st.Dev, ParentIno: st.Ino, Name: filepath.Base(clean)}, nil
}

// RuleHits returns how many decisions each rule of the active policy has
// made since it was applied, by rule id.
func (s *Sensor) RuleHits() (map[string]uint64, error) {
	s.policyMu.Lock()
	defer s.policyMu.Unlock()
	if s.objs == nil {
		return nil, errors.New("rule hits: sensor not started")
	}
	var cfg sensorPolicyCfg
	if err := s.objs.Maps[sensorMapPolicy].Lookup(uint32(0), &cfg); err != nil {
		return nil, fmt.Errorf("rule hits: read config: %w", err)
	}
	slot := cfg.ActiveSlot % 2
	sc := cfg.Slots[slot]
	s.mu.Lock()
	p, ok := s.policies[sc.Version]
	s.mu.Unlock()
	if sc.Version == 0 || !ok {
		return nil, nil
	}
	var rule sensorRule
	var perCPU []uint64
	hits := make(map[string]uint64, len(p.ruleIDs))
	for i := uint32(0); i < sc.Nrules; i++ {
		idx := slot*MaxRuleEntries + i
		if err := s.objs.Maps[sensorMapRules].Lookup(idx, &rule); err != nil {
			return nil, fmt.Errorf("rule hits: rule %d: %w", i, err)
		}
		if err := s.objs.Maps[sensorMapRuleHits].Lookup(idx, &perCPU); err != nil {
			return nil, fmt.Errorf("rule hits: counter %d: %w", i, err)
		}
		if rule.Action == sensorVerdictActionACT_SKIP || int(rule.RuleIndex) >= len(p.ruleIDs) {
			continue
		}
		id := p.ruleIDs[rule.RuleIndex]
		for _, n := range perCPU {
			hits[id] += n
		}
	}
	return hits, nil
}
