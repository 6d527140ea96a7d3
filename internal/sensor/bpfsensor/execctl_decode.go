package bpfsensor

import (
	"encoding/binary"
	"encoding/hex"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
)

// Execution control's reasons, as in sensor.h (enum xc_reason, XC_CACHED,
// XC_HASHED).
const (
	xcReasonUnknown  = 1
	xcReasonDenied   = 2
	xcReasonNoHash   = 3
	xcReasonUnlinked = 4
	xcReasonAnon     = 5
	xcReasonUncached = 6

	xcCached = 0x100
	xcHashed = 0x200
)

// XCRule is the rule name execution control's verdicts carry.
const XCRule = "execution-control"

// xcSources names why a file was not trusted (vigilv1.Trust.source).
var xcSources = map[uint16]string{
	xcReasonUnknown:  "",
	xcReasonDenied:   "denied",
	xcReasonNoHash:   "unhashable",
	xcReasonUnlinked: "unlinked",
	xcReasonAnon:     "anonymous",
	xcReasonUncached: "not-hashed-under-mmap-lock",
}

func isXC(h sensorEventHook) bool {
	return h == sensorEventHookHOOK_XC_BPRM_CHECK || h == sensorEventHookHOOK_XC_MMAP_FILE ||
		h == sensorEventHookHOOK_XC_FILE_MPROTECT
}

// xcDecode fills the trust and verdict of an execution control event and
// undoes the generic decoding of arg0..arg3, which hold the digest here.
func xcDecode(h *sensorEventHdr, ev *vigilv1.Event) {
	reason := h.Xc & 0xff
	t := &vigilv1.Trust{
		Verdict: "unknown",
		Source:  xcSources[reason],
		Cached:  h.Xc&xcCached != 0,
		Mode:    "monitor",
	}
	if reason == xcReasonDenied {
		t.Verdict = "denied"
	}
	if h.Xc&xcHashed != 0 {
		var sha [32]byte
		for i, a := range []uint64{h.Arg0, h.Arg1, h.Arg2, h.Arg3} {
			binary.LittleEndian.PutUint64(sha[i*8:], a)
		}
		t.Sha256 = hex.EncodeToString(sha[:])
	}
	v := &vigilv1.Verdict{Action: "alert", Rule: XCRule, Mode: "monitor", DecidedBy: "lsm"}
	if h.Enforce != 0 {
		t.Mode = "lockdown"
		v.Action, v.Mode, v.Refused = "deny", "enforce", h.Denied != 0
	}
	ev.Trust, ev.Verdict = t, v
	switch d := ev.Detail.(type) {
	case *vigilv1.Event_Exec:
		// Decided before the exec: the process still runs its caller's
		// image (filled in from the process cache).
		ev.Process.Exe = ""
	case *vigilv1.Event_ImageLoad:
		d.ImageLoad.Prot, d.ImageLoad.Flags = h.Aux, 0
	case *vigilv1.Event_MemExec:
		d.MemExec.Addr, d.MemExec.Len, d.MemExec.Prot, d.MemExec.PrevProt = 0, 0, h.Aux, 0
	}
}
