package bpfsensor

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Pinning (LSM backend, Config.PinDir): the sensor's maps and links are
// pinned in bpffs, so that enforcement outlives the agent's userspace. If
// the agent dies (crash, OOM, SIGKILL), the programs stay attached and
// keep deciding from the last policy and trust set. A restarted agent
// takes over without a gap:
//
//  1. its collection reuses the pinned maps (PinByName): the new programs
//     decide from the same state the old ones do;
//  2. it attaches its programs while the old links are still attached
//     (both decide, identically);
//  3. then it detaches the old links and pins its own.
//
// When the pinned maps cannot be reused (another Vigil version changed
// them), the new maps start empty; the old links then stay attached until
// the agent has applied its policy (FinishHandover), so the old
// enforcement holds until the new one is in force.
//
// A clean stop (Close) removes the pins: enforcement ends with the agent.
//
//	PinDir/maps/NAME      the maps (not the global-variable sections)
//	PinDir/links/PROGRAM  the links

func (s *Sensor) pinPaths() (maps, links string) {
	return filepath.Join(s.cfg.PinDir, "maps"), filepath.Join(s.cfg.PinDir, "links")
}

// pinnableMap: maps shared across agents. Global-variable sections
// (.rodata holds this agent's pid) are per load.
func pinnableMap(name string) bool { return !strings.HasPrefix(name, ".") }

// preparePins marks the spec's maps for pinning; fresh drops pins left by
// an incompatible version first.
func (s *Sensor) preparePins(spec *ebpf.CollectionSpec, opts *ebpf.CollectionOptions, fresh bool) error {
	mapDir, _ := s.pinPaths()
	if fresh {
		if err := os.RemoveAll(mapDir); err != nil {
			return fmt.Errorf("remove stale map pins: %w", err)
		}
	}
	if err := os.MkdirAll(mapDir, 0o700); err != nil {
		return fmt.Errorf("pin dir: %w", err)
	}
	for name, ms := range spec.Maps {
		if pinnableMap(name) {
			ms.Pinning = ebpf.PinByName
		}
	}
	opts.Maps.PinPath = mapDir
	return nil
}

// oldLinks loads the links a previous agent pinned, by program name.
func (s *Sensor) oldLinks() map[string]link.Link {
	_, linkDir := s.pinPaths()
	entries, err := os.ReadDir(linkDir)
	if err != nil {
		return nil
	}
	old := map[string]link.Link{}
	for _, e := range entries {
		l, err := link.LoadPinnedLink(filepath.Join(linkDir, e.Name()), nil)
		if err != nil {
			s.log.Warn("pinned link not loaded", "link", e.Name(), "err", err)
			continue
		}
		old[e.Name()] = l
	}
	return old
}

// pinLinks pins this agent's links (after the old ones are gone).
func (s *Sensor) pinLinks() error {
	_, linkDir := s.pinPaths()
	if err := os.MkdirAll(linkDir, 0o700); err != nil {
		return err
	}
	for name, l := range s.linkByProg {
		if err := l.Pin(filepath.Join(linkDir, name)); err != nil {
			return fmt.Errorf("pin link %s: %w", name, err)
		}
	}
	return nil
}

// detachOld detaches the previous agent's links.
func (s *Sensor) detachOld() {
	for name, l := range s.handover {
		if err := l.Unpin(); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.log.Warn("old link not unpinned", "link", name, "err", err)
		}
		l.Close()
	}
	if len(s.handover) > 0 {
		s.log.Info("took over from the previous agent's pinned programs", "links", len(s.handover))
	}
	s.handover = nil
}

// FinishHandover implements sensor.Handover: the agent has applied its
// policy; the previous agent's programs (kept when its maps could not be
// reused) are detached and this agent's links pinned in their place.
func (s *Sensor) FinishHandover() error {
	if s.cfg.PinDir == "" || s.backend != "lsm" {
		return nil
	}
	s.detachOld()
	return s.pinLinks()
}

// unpinAll removes every pin (a clean stop).
func (s *Sensor) unpinAll() {
	if s.cfg.PinDir == "" {
		return
	}
	for _, l := range s.linkByProg {
		l.Unpin()
	}
	if s.objs != nil {
		for name, m := range s.objs.Maps {
			if pinnableMap(name) {
				m.Unpin()
			}
		}
	}
	os.RemoveAll(s.cfg.PinDir)
}
