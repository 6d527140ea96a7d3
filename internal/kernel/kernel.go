// Package kernel reads facts about the running kernel that several parts of
// Vigil need: which LSMs are active, and the pseudo-filesystems the agent
// uses (securityfs, bpffs, tracefs).
package kernel

import (
	"errors"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// Paths of the pseudo-filesystems Vigil reads.
const (
	SecurityFS = "/sys/kernel/security"
	BPFFS      = "/sys/fs/bpf"
	TraceFS    = "/sys/kernel/tracing"
)

// MountFilesystems mounts securityfs, bpffs and tracefs where they are
// absent. Failures are ignored here: each reader reports what it could
// not read.
func MountFilesystems() {
	for _, m := range []struct{ fstype, dir string }{
		{"securityfs", SecurityFS},
		{"bpf", BPFFS},
		{"tracefs", TraceFS},
	} {
		if mounted(m.dir, m.fstype) {
			continue
		}
		_ = unix.Mount(m.fstype, m.dir, m.fstype, 0, "")
	}
}

var magic = map[string]int64{
	"securityfs": unix.SECURITYFS_MAGIC,
	"bpf":        unix.BPF_FS_MAGIC,
	"tracefs":    unix.TRACEFS_MAGIC,
}

func mounted(dir, fstype string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return false
	}
	return int64(st.Type) == magic[fstype]
}

// LSMList returns the active LSMs as the kernel lists them, or a reason
// why they cannot be read.
func LSMList() string {
	MountFilesystems()
	b, err := os.ReadFile(SecurityFS + "/lsm")
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "securityfs lsm list not available"
		}
		return err.Error()
	}
	return strings.TrimSpace(string(b))
}

// BPFLSMActive reports whether "bpf" is among the active LSMs.
func BPFLSMActive() bool {
	for _, l := range strings.Split(LSMList(), ",") {
		if l == "bpf" {
			return true
		}
	}
	return false
}

// Release is the running kernel's release string.
func Release() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}
