// Package agenttest has a fake sensor for tests of the agent and of what
// stands on it (server, CLI): no kernel needed.
package agenttest

import (
	"context"
	"errors"
	"maps"
	"sync"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/sensor"
)

// Sensor is a sensor.Sensor whose events the test emits.
type Sensor struct {
	info sensor.Info
	in   chan *vigilv1.Event
	out  chan *vigilv1.Event
	gate chan struct{} // Start waits for it to close
	fail chan struct{} // closed by Fail
	done chan struct{} // closed when the sensor stops delivering

	mu       sync.Mutex
	stats    sensor.Stats
	started  bool
	closed   bool
	failOnce sync.Once
}

// New returns a fake sensor that reports info.
func New(info sensor.Info) *Sensor {
	gate := make(chan struct{})
	close(gate)
	return &Sensor{
		info:  info,
		in:    make(chan *vigilv1.Event),
		out:   make(chan *vigilv1.Event, 1024),
		gate:  gate,
		fail:  make(chan struct{}),
		done:  make(chan struct{}),
		stats: sensor.Stats{ByKind: map[string]uint64{}},
	}
}

// HoldStart makes Start block until the returned function is called, like
// a sensor slow to attach.
func (s *Sensor) HoldStart() (release func()) {
	gate := make(chan struct{})
	s.mu.Lock()
	s.gate = gate
	s.mu.Unlock()
	var once sync.Once
	return func() { once.Do(func() { close(gate) }) }
}

// Start implements sensor.Sensor.
func (s *Sensor) Start(ctx context.Context) error {
	s.mu.Lock()
	gate := s.gate
	if s.started {
		s.mu.Unlock()
		return errors.New("fake sensor: already started")
	}
	s.started = true
	s.mu.Unlock()
	select {
	case <-gate:
	case <-ctx.Done():
		return ctx.Err()
	}
	go s.run(ctx)
	return nil
}

func (s *Sensor) run(ctx context.Context) {
	defer close(s.done)
	defer close(s.out)
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.fail:
			return
		case ev := <-s.in:
			s.mu.Lock()
			s.stats.Received++
			s.stats.ByKind[ev.GetKind()]++
			s.mu.Unlock()
			s.out <- ev
		}
	}
}

// Emit hands events to the sensor's stream, in order. It returns false if
// the sensor stopped first.
func (s *Sensor) Emit(evs ...*vigilv1.Event) bool {
	for _, ev := range evs {
		select {
		case s.in <- ev:
		case <-s.done:
			return false
		}
	}
	return true
}

// AddLost counts n events as lost in the kernel.
func (s *Sensor) AddLost(n uint64) {
	s.mu.Lock()
	s.stats.Lost += n
	s.mu.Unlock()
}

// Fail makes the sensor stop delivering, as if it broke.
func (s *Sensor) Fail() { s.failOnce.Do(func() { close(s.fail) }) }

// Events implements sensor.Sensor.
func (s *Sensor) Events() <-chan *vigilv1.Event { return s.out }

// Info implements sensor.Sensor.
func (s *Sensor) Info() sensor.Info { return s.info }

// Stats implements sensor.Sensor.
func (s *Sensor) Stats() sensor.Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.ByKind = maps.Clone(s.stats.ByKind)
	return st
}

// Close implements sensor.Sensor.
func (s *Sensor) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return nil
}

// Closed reports whether Close was called.
func (s *Sensor) Closed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}
