// Package ocsf maps Vigil events to the Open Cybersecurity Schema
// Framework (OCSF, schema.ocsf.io) and exports them: to a file of JSON
// lines or to a webhook (HTTP POST of a JSON array, batched, retried).
//
// The mapping, by event kind (docs/fleet.md has the table):
//
//	exec          Process Activity (1007), Launch (1)
//	exit          Process Activity (1007), Terminate (2)
//	inject        Process Activity (1007), Inject (4)
//	image_load    Module Activity (1005), Load (1)
//	mem_exec      Memory Activity (1004), Allocate Page (1) for mmap, Modify Page (2) for mprotect
//	kernel        Kernel Extension Activity (1002), Load (1): module_load, bpf_prog_load, kexec_load;
//	              File System Activity (1001), Open (14): dev_mem_open, kcore_open; Update (3): tracefs_write
//	file_modify   File System Activity (1001): Create (1), Update (3), Delete (4), Rename (5), Set Security (7)
//
// Every event carries the security control profile's outcome: action_id
// and disposition_id, from the verdict — blocked (Denied 2 / Blocked 2),
// would-block (a deny in monitor mode: Allowed 1 / Detected 15, is_alert)
// or allowed (Allowed 1 / Allowed 1) — and the Vigil disposition word in
// unmapped.vigil_disposition. Other kinds (fork, gap, tamper, integrity,
// ...) have no class among these and are not exported.
package ocsf

import (
	"fmt"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
)

// SchemaVersion is the OCSF version the events claim.
const SchemaVersion = "1.1.0"

// Class uids.
const (
	ClassFileSystem      = 1001
	ClassKernelExtension = 1002
	ClassMemory          = 1004
	ClassModule          = 1005
	ClassProcess         = 1007
)

// CategorySystem is the System Activity category of these classes.
const CategorySystem = 1

// Dispositions, as Vigil says them.
const (
	Allowed    = "allowed"
	Blocked    = "blocked"
	WouldBlock = "would-block"
)

// security control profile values.
const (
	actionAllowed = 1
	actionDenied  = 2

	dispAllowed  = 1
	dispBlocked  = 2
	dispDetected = 15
)

// Host is the device an event happened on.
type Host struct {
	ID       string // host id (/etc/machine-id)
	Hostname string
}

// Product names the producer in metadata.product.
type Product struct {
	Name    string // "Vigil agent", "Vigil server"
	Version string
}

// Disposition is what the event's verdicts did: blocked (the operation
// was refused), would-block (a deny or kill that was not carried out: in
// monitor mode, or where this kernel cannot enforce it; or code execution
// control does not trust that ran) or allowed.
func Disposition(ev *vigilv1.Event) string {
	v, t := ev.GetVerdict(), ev.GetTrust()
	if v.GetRefused() {
		return Blocked
	}
	if a := v.GetAction(); a == "deny" || a == "kill" {
		return WouldBlock
	}
	if t != nil && t.GetVerdict() != "" && t.GetVerdict() != "trusted" {
		return WouldBlock
	}
	return Allowed
}

// class is an event kind's class and activity.
func class(ev *vigilv1.Event) (classUID, activityID int, activity string, ok bool) {
	switch d := ev.GetDetail().(type) {
	case *vigilv1.Event_Exec:
		return ClassProcess, 1, "Launch", true
	case *vigilv1.Event_Exit:
		return ClassProcess, 2, "Terminate", true
	case *vigilv1.Event_Inject:
		return ClassProcess, 4, "Inject", true
	case *vigilv1.Event_ImageLoad:
		return ClassModule, 1, "Load", true
	case *vigilv1.Event_MemExec:
		if d.MemExec.GetSyscall() == "mmap" {
			return ClassMemory, 1, "Allocate Page", true
		}
		return ClassMemory, 2, "Modify Page", true
	case *vigilv1.Event_Kernel:
		switch d.Kernel.GetOp() {
		case "module_load", "bpf_prog_load", "kexec_load":
			return ClassKernelExtension, 1, "Load", true
		case "dev_mem_open", "kcore_open":
			return ClassFileSystem, 14, "Open", true
		case "tracefs_write":
			return ClassFileSystem, 3, "Update", true
		}
	case *vigilv1.Event_FileModify:
		switch d.FileModify.GetOp() {
		case "create", "link":
			return ClassFileSystem, 1, "Create", true
		case "open_write", "truncate":
			return ClassFileSystem, 3, "Update", true
		case "unlink":
			return ClassFileSystem, 4, "Delete", true
		case "rename":
			return ClassFileSystem, 5, "Rename", true
		case "chmod", "chown":
			return ClassFileSystem, 7, "Set Security", true
		}
	}
	return 0, 0, "", false
}

var classNames = map[int]string{
	ClassFileSystem:      "File System Activity",
	ClassKernelExtension: "Kernel Extension Activity",
	ClassMemory:          "Memory Activity",
	ClassModule:          "Module Activity",
	ClassProcess:         "Process Activity",
}

// Exportable reports whether ev has an OCSF class here.
func Exportable(ev *vigilv1.Event) bool {
	_, _, _, ok := class(ev)
	return ok
}

type obj = map[string]any

func file(f *vigilv1.File) obj {
	o := obj{"path": f.GetPath(), "name": baseName(f.GetPath()), "type_id": 1} // 1: Regular File
	if f.GetInode() != 0 {
		o["uid"] = fmt.Sprintf("%d:%d", f.GetDev(), f.GetInode())
	}
	return o
}

func fileHashed(f *vigilv1.File, sha string) obj {
	o := file(f)
	if sha != "" {
		o["hashes"] = []obj{{"algorithm_id": 3, "algorithm": "SHA-256", "value": sha}}
	}
	return o
}

func baseName(p string) string {
	for i := len(p) - 1; i >= 0; i-- {
		if p[i] == '/' {
			return p[i+1:]
		}
	}
	return p
}

func process(p *vigilv1.Process) obj {
	o := obj{"pid": p.GetPid(), "name": p.GetComm(), "file": obj{"path": p.GetExe(), "name": baseName(p.GetExe()), "type_id": 1},
		"user": obj{"uid": fmt.Sprint(p.GetUid())}}
	if p.GetStartTimeNs() != 0 {
		o["uid"] = fmt.Sprintf("%d:%d", p.GetPid(), p.GetStartTimeNs())
	}
	if p.GetPpid() != 0 {
		o["parent_process"] = obj{"pid": p.GetPpid()}
	}
	return o
}

// Map converts ev into an OCSF event of its class; ok is false for kinds
// with no class here.
func Map(ev *vigilv1.Event, host Host, prod Product) (map[string]any, bool) {
	classUID, activityID, activity, ok := class(ev)
	if !ok {
		return nil, false
	}
	disp := Disposition(ev)
	out := obj{
		"class_uid":     classUID,
		"class_name":    classNames[classUID],
		"category_uid":  CategorySystem,
		"category_name": "System Activity",
		"activity_id":   activityID,
		"activity_name": activity,
		"type_uid":      classUID*100 + activityID,
		"type_name":     classNames[classUID] + ": " + activity,
		"time":          ev.GetTime().AsTime().UnixMilli(),
		"severity_id":   1, // Informational
		"severity":      "Informational",
		"metadata": obj{
			"version":  SchemaVersion,
			"product":  obj{"name": prod.Name, "vendor_name": "Vigil", "version": prod.Version},
			"uid":      fmt.Sprintf("%s:%d", host.ID, ev.GetId()),
			"sequence": ev.GetSeq(),
		},
		"device": obj{"uid": host.ID, "hostname": host.Hostname, "type_id": 0, "type": "Unknown",
			"os": obj{"name": "Linux", "type_id": 200, "type": "Linux"}},
		"actor":    obj{"process": process(ev.GetProcess())},
		"unmapped": obj{"vigil_kind": ev.GetKind(), "vigil_disposition": disp, "vigil_hook": ev.GetHook(), "vigil_backend": ev.GetBackend()},
	}
	switch disp {
	case Blocked:
		out["action_id"], out["action"], out["disposition_id"], out["disposition"] = actionDenied, "Denied", dispBlocked, "Blocked"
		out["severity_id"], out["severity"], out["is_alert"] = 3, "Medium", true
	case WouldBlock:
		out["action_id"], out["action"], out["disposition_id"], out["disposition"] = actionAllowed, "Allowed", dispDetected, "Detected"
		out["severity_id"], out["severity"], out["is_alert"] = 2, "Low", true
	default:
		out["action_id"], out["action"], out["disposition_id"], out["disposition"] = actionAllowed, "Allowed", dispAllowed, "Allowed"
	}
	if v := ev.GetVerdict(); v.GetRule() != "" || v.GetPolicy() != "" {
		out["policy"] = obj{"name": v.GetRule(), "uid": v.GetPolicy(), "desc": fmt.Sprintf("%s (%s, %s)", v.GetAction(), v.GetMode(), v.GetDecidedBy())}
	} else if t := ev.GetTrust(); t != nil {
		out["policy"] = obj{"name": "execution control", "desc": fmt.Sprintf("%s (%s, %s)", t.GetVerdict(), t.GetMode(), t.GetSource())}
	}
	sha := ev.GetTrust().GetSha256()
	switch d := ev.GetDetail().(type) {
	case *vigilv1.Event_Exec:
		p := process(ev.GetProcess())
		p["file"] = fileHashed(d.Exec.GetFile(), sha)
		p["cmd_line"] = joinArgs(d.Exec.GetArgv())
		out["process"] = p
		// The caller: the same process before execve.
		out["actor"] = obj{"process": obj{"pid": ev.GetProcess().GetPid(), "file": obj{"path": d.Exec.GetCallerExe(), "name": baseName(d.Exec.GetCallerExe()), "type_id": 1}}}
	case *vigilv1.Event_Exit:
		out["process"] = process(ev.GetProcess())
		out["exit_code"] = d.Exit.GetCode()
	case *vigilv1.Event_Inject:
		out["process"] = obj{"pid": d.Inject.GetTargetPid(), "file": obj{"path": d.Inject.GetTargetExe(), "name": baseName(d.Inject.GetTargetExe()), "type_id": 1}}
		out["unmapped"].(obj)["inject_method"] = d.Inject.GetMethod()
	case *vigilv1.Event_ImageLoad:
		out["module"] = obj{"file": fileHashed(d.ImageLoad.GetFile(), sha), "load_type_id": 1, "load_type": "Standard"}
	case *vigilv1.Event_MemExec:
		m := d.MemExec
		out["process"] = process(ev.GetProcess())
		out["base_address"] = fmt.Sprintf("0x%x", m.GetAddr())
		out["size"] = m.GetLen()
		out["requested_permissions"] = m.GetProt()
		if m.GetFile().GetPath() != "" {
			out["unmapped"].(obj)["file"] = file(m.GetFile())
		}
		out["unmapped"].(obj)["anonymous"] = m.GetAnonymous()
	case *vigilv1.Event_Kernel:
		k := d.Kernel
		if classUID == ClassKernelExtension {
			drv := obj{"file": fileHashed(k.GetFile(), sha)}
			if k.GetOp() == "bpf_prog_load" {
				drv["file"] = obj{"name": k.GetBpfProgName(), "type_id": 99, "type": "BPF program"}
			}
			out["driver"] = drv
		} else {
			out["file"] = file(k.GetFile())
		}
		out["unmapped"].(obj)["kernel_op"] = k.GetOp()
	case *vigilv1.Event_FileModify:
		f := d.FileModify
		out["file"] = file(f.GetFile())
		if f.GetNewPath() != "" {
			out["file_result"] = obj{"path": f.GetNewPath(), "name": baseName(f.GetNewPath()), "type_id": 1}
		}
		out["unmapped"].(obj)["file_op"] = f.GetOp()
	}
	return out, true
}

func joinArgs(argv []string) string {
	s := ""
	for i, a := range argv {
		if i > 0 {
			s += " "
		}
		s += a
	}
	return s
}
