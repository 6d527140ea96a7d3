package bpfsensor

import "github.com/vigil-hips/vigil/internal/sensor"

// use says which backend loads a program.
type use int

const (
	both use = iota
	lsmOnly
	tpOnly
)

// program is one BPF program of sensor.bpf.c and how the loader treats it.
type program struct {
	name string
	use  use
	// required programs must attach or the sensor fails to start; the
	// others are reported as missing hooks (e.g. a kernel without modules
	// has no init_module tracepoint).
	required bool
}

var programs = []program{
	{sensorProgSchedProcessExec, both, true},
	{sensorProgSchedProcessFork, both, true},
	{sensorProgSchedProcessExit, both, true},

	// lsm: every watched action is decided where the kernel asks.
	{sensorProgLsmBprmCheck, lsmOnly, true},
	{sensorProgLsmMmapFile, lsmOnly, true},
	{sensorProgLsmFileMprotect, lsmOnly, true},
	{sensorProgLsmFileOpen, lsmOnly, true},
	{sensorProgLsmPtraceAccessCheck, lsmOnly, true},
	{sensorProgLsmPtraceTraceme, lsmOnly, true},
	{sensorProgLsmBpf, lsmOnly, true},
	{sensorProgLsmKernelReadFile, lsmOnly, true},
	{sensorProgLsmKernelLoadData, lsmOnly, true},
	{sensorProgLsmPathUnlink, lsmOnly, true},
	{sensorProgLsmPathRmdir, lsmOnly, true},
	{sensorProgLsmPathMkdir, lsmOnly, true},
	{sensorProgLsmPathMknod, lsmOnly, true},
	{sensorProgLsmPathSymlink, lsmOnly, true},
	{sensorProgLsmPathLink, lsmOnly, true},
	{sensorProgLsmPathRename, lsmOnly, true},
	{sensorProgLsmPathChmod, lsmOnly, true},
	{sensorProgLsmPathChown, lsmOnly, true},
	{sensorProgLsmPathTruncate, lsmOnly, true},
	// execution control (execctl.bpf.h): off until SetExecControl.
	{sensorProgXcBprmCheck, lsmOnly, true},
	{sensorProgXcMmapFile, lsmOnly, true},
	{sensorProgXcFileMprotect, lsmOnly, true},

	// tracepoint: syscalls are observed; only exec rules are enforced
	// (by killing the new image in sched_process_exec).
	{sensorProgTpSysEnterMmap, tpOnly, false},
	{sensorProgTpSysEnterMprotect, tpOnly, false},
	{sensorProgTpSysExitOpenat, tpOnly, false},
	{sensorProgTpSysExitOpenat2, tpOnly, false},
	{sensorProgTpSysExitOpen, tpOnly, false},
	{sensorProgTpSysEnterPtrace, tpOnly, false},
	{sensorProgTpSysEnterProcessVmWritev, tpOnly, false},
	{sensorProgTpSysEnterBpf, tpOnly, false},
	{sensorProgTpSysEnterInitModule, tpOnly, false},
	{sensorProgTpSysEnterFinitModule, tpOnly, false},
	{sensorProgTpSysEnterKexecLoad, tpOnly, false},
	{sensorProgTpSysEnterKexecFileLoad, tpOnly, false},
}

// selectPrograms returns the programs the backend loads.
func selectPrograms(backend string) []program {
	var out []program
	for _, p := range programs {
		switch {
		case p.use == both,
			p.use == lsmOnly && backend == sensor.BackendLSM,
			p.use == tpOnly && backend == sensor.BackendTracepoint:
			out = append(out, p)
		}
	}
	return out
}

// OwnPrograms returns Vigil's BPF programs, read from the embedded object:
// name -> program type (as cilium/ebpf names it). The integrity check
// knows its own programs from here.
func OwnPrograms() (map[string]string, error) {
	spec, err := loadSensor()
	if err != nil {
		return nil, err
	}
	own := make(map[string]string, len(spec.Programs))
	for name, p := range spec.Programs {
		own[name] = p.Type.String()
	}
	return own, nil
}
