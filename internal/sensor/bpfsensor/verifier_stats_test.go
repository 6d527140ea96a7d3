package bpfsensor

import (
	"regexp"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/vigil-hips/vigil/internal/testutil"
)

func TestVerifierStats(t *testing.T) {
	testutil.RequireRoot(t)
	spec, err := loadSensor()
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`processed (\d+) insns`)
	for _, p := range selectPrograms("tracepoint") {
		ps := spec.Programs[p.name]
		coll, err := ebpf.NewCollectionWithOptions(&ebpf.CollectionSpec{
			Maps: spec.Maps, Programs: map[string]*ebpf.ProgramSpec{p.name: ps}, Variables: spec.Variables, Types: spec.Types,
		}, ebpf.CollectionOptions{Programs: ebpf.ProgramOptions{LogLevel: ebpf.LogLevelStats}})
		if err != nil {
			t.Fatalf("%s: %v", p.name, err)
		}
		t.Logf("%s: %v", p.name, re.FindString(coll.Programs[p.name].VerifierLog))
		coll.Close()
	}
}
