package bpfsensor

import (
	"errors"
	"fmt"
)

// ObjectIDs returns the ids of the sensor's loaded programs, maps and
// links, for tamper protection. Call it after Start.
func (s *Sensor) ObjectIDs() (progs, maps, links []uint32, err error) {
	if s.objs == nil {
		return nil, nil, nil, errors.New("bpf sensor: not started")
	}
	for name, p := range s.objs.Programs {
		info, err := p.Info()
		if err != nil {
			return nil, nil, nil, fmt.Errorf("program %s info: %w", name, err)
		}
		if id, ok := info.ID(); ok {
			progs = append(progs, uint32(id))
		}
	}
	for name, m := range s.objs.Maps {
		info, err := m.Info()
		if err != nil {
			return nil, nil, nil, fmt.Errorf("map %s info: %w", name, err)
		}
		if id, ok := info.ID(); ok {
			maps = append(maps, uint32(id))
		}
	}
	for _, l := range s.links {
		info, err := l.Info()
		if err != nil {
			return nil, nil, nil, fmt.Errorf("link info: %w", err)
		}
		links = append(links, uint32(info.ID))
	}
	return progs, maps, links, nil
}
