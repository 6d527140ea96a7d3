package bpfsensor

import (
	"regexp"
	"strconv"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/vigil-hips/vigil/internal/probe"
	"github.com/vigil-hips/vigil/internal/sensor"
	"github.com/vigil-hips/vigil/internal/testutil"
)

// verifierBudget bounds the instructions the verifier may walk for one
// program. The kernel's limit is 1,000,000; under emulation (the VM
// suite) every 100,000 cost seconds of load time, and a program near the
// limit breaks on the next kernel. Today's largest is ~45,000.
const verifierBudget = 150_000

// TestVerifierBudget loads each program of the backends this kernel runs,
// alone, and checks what the verifier walked.
func TestVerifierBudget(t *testing.T) {
	testutil.RequireRoot(t)
	spec, err := loadSensor()
	if err != nil {
		t.Fatal(err)
	}
	backends := []string{sensor.BackendTracepoint}
	if probe.BPFLSM() == nil {
		backends = append(backends, sensor.BackendLSM)
	}
	re := regexp.MustCompile(`processed (\d+) insns`)
	seen := map[string]bool{}
	for _, b := range backends {
		for _, p := range selectPrograms(b) {
			if seen[p.name] {
				continue
			}
			seen[p.name] = true
			coll, err := ebpf.NewCollectionWithOptions(&ebpf.CollectionSpec{
				Maps: spec.Maps, Programs: map[string]*ebpf.ProgramSpec{p.name: spec.Programs[p.name]},
				Variables: spec.Variables, Types: spec.Types,
			}, ebpf.CollectionOptions{Programs: ebpf.ProgramOptions{LogLevel: ebpf.LogLevelStats}})
			if err != nil {
				t.Errorf("%s: %v", p.name, err)
				continue
			}
			m := re.FindStringSubmatch(coll.Programs[p.name].VerifierLog)
			coll.Close()
			if m == nil {
				t.Errorf("%s: no verifier statistics", p.name)
				continue
			}
			n, _ := strconv.Atoi(m[1])
			if n > verifierBudget {
				t.Errorf("%s: the verifier walked %d instructions, over the budget of %d", p.name, n, verifierBudget)
			}
			t.Logf("%s: %d instructions verified", p.name, n)
		}
	}
}
