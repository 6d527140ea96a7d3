// Package probe finds out what the running kernel offers Vigil and which
// guarantee each kind of control can give here.
package probe

import vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"

// Report is what the kernel offers.
type Report struct {
	KernelRelease string
	BPFLSM        bool
	Features      []*vigilv1.Feature
	Guarantees    []Guarantee
}

// Guarantee levels.
const (
	SyncBlock     = "synchronous block"
	KillAfterExec = "kill after the fact"
	ObserveOnly   = "observe only"
)

// Guarantee says what one kind of control can do on this kernel, and why.
type Guarantee struct {
	Control string
	Level   string
	Why     string
}

// Run probes the running kernel.
func Run() Report {
	return Report{}
}
