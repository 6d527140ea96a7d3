package probe

import (
	"strings"
	"testing"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
)

func report(lsm bool, have ...string) Report {
	r := Report{BPFLSM: lsm}
	for _, h := range have {
		r.Features = append(r.Features, &vigilv1.Feature{Name: h, Available: true})
	}
	r.Guarantees = guarantees(r, Running{LSM: true, Fanotify: true})
	return r
}

func level(t *testing.T, r Report, control string) *vigilv1.Guarantee {
	t.Helper()
	for _, g := range r.Guarantees {
		if strings.HasPrefix(g.Control, control) {
			return g
		}
	}
	t.Fatalf("no guarantee for %q in %v", control, r.Guarantees)
	return nil
}

func TestGuarantees(t *testing.T) {
	all := []string{FeatureFanotifyPerm, FeatureSendSignal, FeatureTPBTF, FeatureSyscallTP}
	for _, tc := range []struct {
		name    string
		r       Report
		control string
		want    string
		why     string
	}{
		{"lsm exec", report(true, all...), "exec control", SyncBlock, "lsm/bprm_check_security"},
		{"lsm tamper", report(true), "tamper protection", SyncBlock, "lsm/task_kill"},
		{"fanotify exec", report(false, all...), "exec control", SyncBlock, "FAN_OPEN_EXEC_PERM"},
		{"kill exec", report(false, FeatureSendSignal, FeatureTPBTF), "exec control", KillAfterExec, "bpf_send_signal"},
		{"nothing exec", report(false), "exec control", ObserveOnly, "no fallback"},
		{"no lsm mmap", report(false, all...), "executable mappings", ObserveOnly, "recorded, not stopped"},
		{"no lsm inject", report(false, all...), "code injection", ObserveOnly, "recorded, not stopped"},
		{"no lsm tamper", report(false, all...), "tamper protection", ObserveOnly, "degraded to detection"},
		{"no lsm files", report(false, all...), "protected files", NotProvided, "do not tell an open for write from a read"},
		{"lsm sha256", report(true), "policy rules on the executable's SHA-256", SyncBlock, "lsm.s/bprm_check_security hashes"},
		{"no lsm sha256", report(false, all...), "policy rules on the executable's SHA-256", NotProvided, "is refused"},
	} {
		g := level(t, tc.r, tc.control)
		if g.Level != tc.want || !strings.Contains(g.Why, tc.why) {
			t.Errorf("%s: got %q (%s), want %q mentioning %q", tc.name, g.Level, g.Why, tc.want, tc.why)
		}
		if !tc.r.BPFLSM && g.Level != NotProvided && !strings.Contains(g.Why, "BPF LSM is not available") {
			t.Errorf("%s: without BPF LSM the reason must say so: %s", tc.name, g.Why)
		}
	}
}

// TestGuaranteesFor: what the agent runs decides, not only what the
// kernel offers: the tracepoint backend on an LSM kernel, and fanotify
// without --fanotify-mark, guarantee what they really do.
func TestGuaranteesFor(t *testing.T) {
	all := []string{FeatureFanotifyPerm, FeatureSendSignal, FeatureTPBTF, FeatureSyscallTP}
	for _, tc := range []struct {
		name      string
		lsm, fan  bool // the kernel has LSM; the agent uses it, uses fanotify
		useLSM    bool
		tamperOff string
		control   string
		want      string
		why       string
	}{
		{"lsm kernel, lsm backend", true, true, true, "", "exec control", SyncBlock, "lsm/bprm_check_security"},
		{"lsm kernel, tracepoint backend, marks", true, true, false, "", "exec control", SyncBlock, "BPF LSM is not in use"},
		{"lsm kernel, tracepoint backend, no marks", true, false, false, "", "exec control", KillAfterExec, "BPF LSM is not in use"},
		{"lsm kernel, tracepoint backend: tamper", true, true, false, "", "tamper protection", ObserveOnly, "BPF LSM is not in use"},
		{"lsm kernel, tracepoint backend: sha256", true, true, false, "", "policy rules on the executable's SHA-256", NotProvided, "BPF LSM is not in use"},
		{"no lsm, no marks: lockdown", false, false, false, "", "execution control by content", NotProvided, "no --fanotify-mark"},
		{"lsm, no admin key: tamper", true, true, true, "off: no admin key", "tamper protection", ObserveOnly, "off: no admin key"},
		{"lsm, no admin key: exec", true, true, true, "off: no admin key", "exec control", SyncBlock, "lsm/bprm_check_security"},
		{"no lsm, no admin key: tamper", false, true, false, "off: no admin key", "tamper protection", ObserveOnly, "degraded to detection"},
		{"no lsm, marks: lockdown", false, true, false, "", "execution control by content", SyncBlock, "FAN_OPEN_EXEC_PERM"},
	} {
		r := Report{BPFLSM: tc.lsm}
		for _, h := range all {
			r.Features = append(r.Features, &vigilv1.Feature{Name: h, Available: true})
		}
		r.Guarantees = r.GuaranteesFor(Running{LSM: tc.useLSM, Fanotify: tc.fan, TamperOff: tc.tamperOff})
		g := level(t, r, tc.control)
		if g.Level != tc.want || !strings.Contains(g.Why, tc.why) {
			t.Errorf("%s: got %q (%s), want %q mentioning %q", tc.name, g.Level, g.Why, tc.want, tc.why)
		}
	}
}
