package tamper

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// DefaultPinDir is where the agent pins the tamper object. The bpf hook
// refuses BPF_OBJ_GET under /sys/fs/bpf/vigil to everyone but the agent.
const DefaultPinDir = "/sys/fs/bpf/vigil/tamper"

// Pin file names: "map_NAME" and "link_PROGRAM".
const (
	mapPrefix  = "map_"
	linkPrefix = "link_"
)

// pinned reports whether dir holds a pinned tamper object (its config map).
func pinned(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, mapPrefix+tamperobjMapTamperConfig))
	return err == nil
}

// load creates the object, fills its maps and attaches every program.
func (g *Guard) load(spec *ebpf.CollectionSpec) error {
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return fmt.Errorf("load programs: %w\n%+v", err, ve)
		}
		return fmt.Errorf("load programs: %w", err)
	}
	g.maps, g.progs = coll.Maps, coll.Programs
	if g.cfg.PinDir != "" {
		// Made first, so that fill protects it.
		if err := os.MkdirAll(g.cfg.PinDir, 0o700); err != nil {
			return fmt.Errorf("pin dir: %w", err)
		}
	}
	if err := g.fill(); err != nil {
		return err
	}
	for name, p := range g.progs {
		sec := spec.Programs[name].SectionName
		var l link.Link
		if strings.HasPrefix(sec, "tp_btf/") {
			l, err = link.AttachTracing(link.TracingOptions{Program: p})
		} else {
			l, err = link.AttachLSM(link.LSMOptions{Program: p})
		}
		if err != nil {
			return fmt.Errorf("attach %s: %w", sec, err)
		}
		g.links[name] = l
		g.hooks = append(g.hooks, sec)
	}
	return nil
}

// pin pins every map and link under PinDir.
func (g *Guard) pin() error {
	if err := os.MkdirAll(g.cfg.PinDir, 0o700); err != nil {
		return err
	}
	for name, m := range g.maps {
		if !pinnable(name) {
			continue
		}
		if err := m.Pin(filepath.Join(g.cfg.PinDir, mapPrefix+name)); err != nil {
			return fmt.Errorf("pin map %s: %w", name, err)
		}
	}
	for name, l := range g.links {
		if err := l.Pin(filepath.Join(g.cfg.PinDir, linkPrefix+name)); err != nil {
			return fmt.Errorf("pin link %s: %w", name, err)
		}
	}
	return nil
}

// adopt takes over the pinned object of an agent that died: the links
// were never detached, so there is no moment without protection. The
// maps are then pointed at this agent.
func (g *Guard) adopt(spec *ebpf.CollectionSpec) error {
	for name := range spec.Maps {
		if !pinnable(name) {
			continue
		}
		m, err := ebpf.LoadPinnedMap(filepath.Join(g.cfg.PinDir, mapPrefix+name), nil)
		if err != nil {
			return fmt.Errorf("map %s: %w", name, err)
		}
		g.maps[name] = m
	}
	for name, ps := range spec.Programs {
		l, err := link.LoadPinnedLink(filepath.Join(g.cfg.PinDir, linkPrefix+name), nil)
		if err != nil {
			return fmt.Errorf("link %s: %w", name, err)
		}
		g.links[name] = l
		g.hooks = append(g.hooks, ps.SectionName)
	}
	g.adopted = true
	return g.fill()
}

// dropStaleObjects removes protected object ids the dead agent left
// (its sensor's) but own: the new sensor's are added by ProtectIDs.
func (g *Guard) dropStaleObjects(own ObjectIDs) error {
	keep := map[tamperobjObjKey]bool{}
	for _, id := range own.Progs {
		keep[tamperobjObjKey{Type: uint32(tamperobjObjTypeOBJ_PROG), Id: id}] = true
	}
	for _, id := range own.Maps {
		keep[tamperobjObjKey{Type: uint32(tamperobjObjTypeOBJ_MAP), Id: id}] = true
	}
	for _, id := range own.Links {
		keep[tamperobjObjKey{Type: uint32(tamperobjObjTypeOBJ_LINK), Id: id}] = true
	}
	return deleteExcept(g.maps[tamperobjMapTamperObjs], keep)
}

// pinnable: the maps the programs use. The data sections (".bss": the
// placeholders that carry types into BTF) are not pinned: the kernel
// refuses to pin them (EPERM) and nothing needs them.
func pinnable(name string) bool { return !strings.HasPrefix(name, ".") }

// unpin removes the pins (an authorized stop).
func (g *Guard) unpin() {
	if g.cfg.PinDir == "" {
		return
	}
	for _, l := range g.links {
		l.Unpin()
	}
	for _, m := range g.maps {
		m.Unpin()
	}
	os.Remove(g.cfg.PinDir)
}

// Adopted reports whether the guard took over pinned objects.
func (g *Guard) Adopted() bool { return g.adopted }

// deleteExcept deletes every key of m not in keep.
func deleteExcept[K comparable](m *ebpf.Map, keep map[K]bool) error {
	var stale []K
	var k K
	var v uint32
	it := m.Iterate()
	for it.Next(&k, &v) {
		if !keep[k] {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return err
	}
	for _, k := range stale {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return err
		}
	}
	return nil
}
