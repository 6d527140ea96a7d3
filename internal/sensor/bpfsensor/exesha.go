package bpfsensor

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// process.sha256 conditions are decided in the LSM hooks on the acting
// process's executable digest, kept per process in the exe_shas task
// storage (policy.bpf.h). The kernel learns it at exec: while a policy
// with such conditions is in force (or being applied), lsm.s/bprm_check
// hashes every new image, and a new process inherits its parent's.
// Processes that were running before are hashed here, by the agent,
// before the policy becomes active.

// exeScanPasses bounds the passes over /proc: a process forked from a
// parent the previous pass had not filled yet inherited nothing and is
// filled by the next pass.
const exeScanPasses = 4

// fillExeDigests gives each running process without a digest in the
// kernel the digest of its executable (/proc/PID/exe, hashed here). It
// writes only where the kernel has no entry (BPF_NOEXIST): an exec that
// happens meanwhile is hashed by the kernel, and that entry wins.
// Failures are logged: a process left without a digest matches no
// process.sha256 condition.
func (s *Sensor) fillExeDigests() {
	start := time.Now()
	sc := exeScanner{
		m:      s.objs.Maps[sensorMapExeShas],
		proc:   s.cfg.ProcRoot,
		self:   os.Getpid(),
		hashes: map[exeID][32]byte{},
	}
	if sc.proc == "" {
		sc.proc = "/proc"
	}
	total := 0
	for pass := 0; pass < exeScanPasses; pass++ {
		n, err := sc.pass()
		total += n
		if err != nil {
			s.log.Warn("executable digests of running processes", "err", err)
			return
		}
		if n == 0 {
			break
		}
	}
	s.log.Info("executable digests of running processes", "filled", total, "files_hashed", len(sc.hashes),
		"failed", sc.failed, "took", time.Since(start))
}

// exeID is a file's identity and version, as stat(2) gives it.
type exeID struct {
	dev, ino           uint64
	size, mtime, ctime int64
}

type exeScanner struct {
	m      *ebpf.Map
	proc   string
	self   int
	hashes map[exeID][32]byte
	failed int
}

// pass fills every process of /proc that has no entry; it returns how
// many it filled.
func (sc *exeScanner) pass() (int, error) {
	ents, err := os.ReadDir(sc.proc)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == sc.self {
			continue
		}
		ok, err := sc.fill(pid)
		switch {
		case err != nil:
			sc.failed++
		case ok:
			n++
		}
	}
	return n, nil
}

// fill gives process pid its executable's digest if the kernel has none.
// It reports whether it wrote one; a process that is gone or has no
// executable (a kernel thread) is no error.
func (sc *exeScanner) fill(pid int) (bool, error) {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return false, nil // gone
	}
	defer unix.Close(pidfd)
	var cur sensorExeSha
	if err := sc.m.Lookup(uint32(pidfd), &cur); err == nil {
		return false, nil
	} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
		return false, fmt.Errorf("pid %d: look up: %w", pid, err)
	}
	f, err := os.Open(filepath.Join(sc.proc, strconv.Itoa(pid), "exe"))
	if err != nil {
		return false, nil // a kernel thread, or gone
	}
	defer f.Close()
	// The pidfd holds the process; alive now, it was alive when its exe
	// was opened: the pid was not reused in between.
	if err := unix.PidfdSendSignal(pidfd, 0, nil, 0); err != nil {
		return false, nil
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return false, fmt.Errorf("pid %d: %w", pid, err)
	}
	id := exeID{st.Dev, st.Ino, st.Size, st.Mtim.Nano(), st.Ctim.Nano()}
	d, ok := sc.hashes[id]
	if !ok {
		h := sha256.New()
		if _, err := io.Copy(h, f); err != nil {
			return false, fmt.Errorf("pid %d: hash its executable: %w", pid, err)
		}
		copy(d[:], h.Sum(nil))
		sc.hashes[id] = d
	}
	v := sensorExeSha{Cur: sensorXcDigest{B: d}, Flags: sensorExeShaFlagEXE_SHA_KNOWN}
	if err := sc.m.Update(uint32(pidfd), &v, ebpf.UpdateNoExist); err != nil {
		if errors.Is(err, ebpf.ErrKeyExist) {
			return false, nil // the kernel hashed an exec meanwhile
		}
		return false, fmt.Errorf("pid %d: write: %w", pid, err)
	}
	return true, nil
}

// ExeDigest returns the executable digest the kernel holds for process
// pid (LSM backend), and whether it holds one.
func (s *Sensor) ExeDigest(pid int) ([32]byte, bool, error) {
	if s.objs == nil {
		return [32]byte{}, false, errors.New("sensor not started")
	}
	m := s.objs.Maps[sensorMapExeShas]
	if m == nil {
		return [32]byte{}, false, nil
	}
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return [32]byte{}, false, err
	}
	defer unix.Close(pidfd)
	var v sensorExeSha
	if err := m.Lookup(uint32(pidfd), &v); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return [32]byte{}, false, nil
		}
		return [32]byte{}, false, err
	}
	return v.Cur.B, v.Flags&sensorExeShaFlagEXE_SHA_KNOWN != 0, nil
}
