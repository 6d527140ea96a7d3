package bpfsensor

import (
	"errors"
	"fmt"
	"maps"

	"github.com/cilium/ebpf"

	"github.com/vigil-hips/vigil/internal/sensor"
)

// execState is the execution control last written to the kernel.
type execState struct {
	cfg   sensor.ExecControl
	trust map[[32]byte]uint32 // as in xc_trust
	anon  map[sensorXcFileKey]bool
	epoch uint32
}

var xcModes = map[string]sensorXcMode{
	sensor.ExecOff:      sensorXcModeXC_OFF,
	sensor.ExecMonitor:  sensorXcModeXC_MONITOR,
	sensor.ExecLockdown: sensorXcModeXC_LOCKDOWN,
}

// SetExecControl implements sensor.ExecController. Only the LSM backend
// decides in the kernel; see fanotify.go for the tracepoint backend.
//
// The trust set is written as a difference against what the kernel holds,
// then the epoch is bumped in the same store as the mode: cached verdicts
// of the old epoch are re-read from xc_trust (without hashing again) at
// their next use, so an approval holds for the next exec and a revocation
// too.
func (s *Sensor) SetExecControl(xc *sensor.ExecControl) error {
	mode, ok := xcModes[xc.Mode]
	if !ok {
		return fmt.Errorf("execution control mode %q: want off, monitor or lockdown", xc.Mode)
	}
	if s.backend != sensor.BackendLSM {
		return s.setUserExecControl(xc)
	}
	if s.objs == nil {
		return errors.New("execution control: sensor not started")
	}
	s.xcMu.Lock()
	defer s.xcMu.Unlock()
	old := s.xc
	if old == nil {
		old = &execState{trust: map[[32]byte]uint32{}, anon: map[sensorXcFileKey]bool{}}
	}
	next := &execState{cfg: *xc, trust: make(map[[32]byte]uint32, len(xc.Trust)),
		anon: map[sensorXcFileKey]bool{}, epoch: old.epoch + 1}
	for d, ok := range xc.Trust {
		v := uint32(sensorXcVerdictXC_V_DENIED)
		if ok {
			v = uint32(sensorXcVerdictXC_V_TRUSTED)
		}
		next.trust[d] = v
	}
	if uint32(len(next.trust)) > s.objs.Maps[sensorMapXcTrust].MaxEntries() {
		return fmt.Errorf("execution control: %d digests, the kernel map holds %d", len(next.trust),
			s.objs.Maps[sensorMapXcTrust].MaxEntries())
	}
	for _, f := range xc.AnonAllow {
		next.anon[sensorXcFileKey{Ino: f.Ino, Dev: kernelDev(f.Dev)}] = true
	}

	var putK [][32]byte
	var putV []uint32
	for d, v := range next.trust {
		if ov, ok := old.trust[d]; !ok || ov != v {
			putK, putV = append(putK, d), append(putV, v)
		}
	}
	var delK [][32]byte
	for d := range old.trust {
		if _, ok := next.trust[d]; !ok {
			delK = append(delK, d)
		}
	}
	trust := s.objs.Maps[sensorMapXcTrust]
	if err := batchPut(trust, putK, putV); err != nil {
		return fmt.Errorf("execution control: write trust set: %w", err)
	}
	if err := batchDelete(trust, delK); err != nil {
		return fmt.Errorf("execution control: prune trust set: %w", err)
	}
	anon := s.objs.Maps[sensorMapXcAnonAllow]
	for k := range old.anon {
		if !next.anon[k] {
			if err := anon.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("execution control: anonymous-exec allowlist: %w", err)
			}
		}
	}
	for k := range next.anon {
		if err := anon.Put(k, uint32(1)); err != nil {
			return fmt.Errorf("execution control: anonymous-exec allowlist: %w", err)
		}
	}
	cfg := sensorXcCfg{Mode: mode, Epoch: next.epoch, UnlinkedDeny: b32(xc.UnlinkedDeny), AnonDeny: b32(xc.AnonDeny)}
	if err := s.objs.Maps[sensorMapXcConfig].Put(uint32(0), cfg); err != nil {
		return fmt.Errorf("execution control: write config: %w", err)
	}
	s.xc = next
	s.log.Info("execution control set", "mode", xc.Mode, "digests", len(next.trust),
		"changed", len(putK), "removed", len(delK), "epoch", next.epoch)
	return nil
}

// batchPut writes keys and values, in batches where the kernel offers it.
func batchPut(m *ebpf.Map, keys [][32]byte, vals []uint32) error {
	const chunk = 4096
	for i := 0; i < len(keys); i += chunk {
		j := min(i+chunk, len(keys))
		_, err := m.BatchUpdate(keys[i:j], vals[i:j], nil)
		if errors.Is(err, ebpf.ErrNotSupported) {
			for k := i; k < j; k++ {
				if err := m.Put(keys[k], vals[k]); err != nil {
					return err
				}
			}
			continue
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// batchDelete deletes keys, in batches where the kernel offers it.
func batchDelete(m *ebpf.Map, keys [][32]byte) error {
	for _, k := range keys {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
	}
	return nil
}

func b32(b bool) uint32 {
	if b {
		return 1
	}
	return 0
}

// execControl returns a copy of the execution control in force, or nil.
func (s *Sensor) execControl() *sensor.ExecControl {
	s.xcMu.Lock()
	defer s.xcMu.Unlock()
	if s.xc == nil {
		return nil
	}
	c := s.xc.cfg
	c.Trust = maps.Clone(c.Trust)
	return &c
}
