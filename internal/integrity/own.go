package integrity

import (
	"maps"
	"sync"

	"github.com/vigil-hips/vigil/internal/sensor/bpfsensor"
	"github.com/vigil-hips/vigil/internal/tamper"
)

// ownPrograms are Vigil's BPF programs (name -> type), from the sensor's
// and the tamper object's embedded objects: there is no second list to
// keep in step.
var ownPrograms = sync.OnceValues(func() (map[string]string, error) {
	own, err := bpfsensor.OwnPrograms()
	if err != nil {
		return nil, err
	}
	t, err := tamper.OwnPrograms()
	if err != nil {
		return nil, err
	}
	maps.Copy(own, t)
	return own, nil
})

// kernelNameLen is BPF_OBJ_NAME_LEN-1: the kernel keeps 15 bytes of a
// program's name.
const kernelNameLen = 15

// KernelName is name as the kernel reports it.
func KernelName(name string) string {
	if len(name) > kernelNameLen {
		return name[:kernelNameLen]
	}
	return name
}

// IsVigilProgram says whether a program (name as the kernel reports it,
// cut to 15 bytes, or in full; type as cilium/ebpf names it) is one of
// Vigil's own.
// If the embedded object cannot be read, nothing is Vigil's: its own
// programs then show as foreign, never the other way round.
func IsVigilProgram(typ, name string) bool {
	own, err := ownPrograms()
	if err != nil {
		return false
	}
	for n, t := range own {
		// The kernel keeps 15 bytes of the name; cilium/ebpf gives the
		// full name from the program's BTF when the kernel has it.
		if (n == name || KernelName(n) == name) && t == typ {
			return true
		}
	}
	return false
}
