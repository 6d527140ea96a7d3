// Package bpfsensor is the BPF implementation of sensor.Sensor, with two
// backends: BPF LSM hooks (when the kernel has BPF LSM active) and
// tracepoints (otherwise).
package bpfsensor

import (
	"fmt"
	"log/slog"

	"github.com/vigil-hips/vigil/internal/sensor"
)

// Config selects and sizes the sensor.
type Config struct {
	// Backend is "auto", "lsm" or "tracepoint".
	Backend string
	// RingBufBytes is the kernel ring buffer size: a power of two, a
	// multiple of the page size. 0 means the default.
	RingBufBytes int
	Logger       *slog.Logger
}

// New returns a sensor for this kernel. It does not attach; Start does.
func New(cfg Config) (sensor.Sensor, error) {
	return nil, fmt.Errorf("bpf sensor: %w", sensor.ErrNotSupported)
}
