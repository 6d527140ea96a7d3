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
	{sensorProgTpSysEnterPtrace, both, false},
	{sensorProgTpSysEnterProcessVmWritev, both, false},
	{sensorProgTpSysEnterBpf, both, false},
	{sensorProgTpSysEnterInitModule, both, false},
	{sensorProgTpSysEnterFinitModule, both, false},
	{sensorProgTpSysEnterKexecLoad, both, false},
	{sensorProgTpSysEnterKexecFileLoad, both, false},

	{sensorProgLsmMmapFile, lsmOnly, true},
	{sensorProgLsmFileMprotect, lsmOnly, true},
	{sensorProgLsmFileOpen, lsmOnly, true},

	{sensorProgTpSysEnterMmap, tpOnly, false},
	{sensorProgTpSysEnterMprotect, tpOnly, false},
	{sensorProgTpSysExitOpenat, tpOnly, false},
	{sensorProgTpSysExitOpenat2, tpOnly, false},
	{sensorProgTpSysExitOpen, tpOnly, false},
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
