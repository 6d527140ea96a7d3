package bpfsensor

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"maps"
	"sync"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/timestamppb"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/fanotify"
	"github.com/vigil-hips/vigil/internal/sensor"
)

// Without BPF LSM, execution control decides execs on the filesystems
// under fanotify marks (FAN_OPEN_EXEC_PERM): the agent hashes the file in
// userspace, synchronously, and the exec waits. Digests are cached by file
// identity and change time, so any write (which moves mtime and ctime)
// forgets them. Libraries and other mappings are not seen on this path.

// userXC is the execution control the fanotify path decides with.
type userXC struct {
	cfg sensor.ExecControl

	mu      sync.Mutex
	digests map[userFileKey][32]byte
}

type userFileKey struct {
	dev, ino     uint64
	size         int64
	mtime, ctime int64
}

const userDigestCacheMax = 1 << 16

func (s *Sensor) setUserExecControl(xc *sensor.ExecControl) error {
	if xc.Mode != sensor.ExecOff && len(s.cfg.FanotifyMarks) == 0 {
		return fmt.Errorf("execution control on the %s backend needs fanotify marks (--fanotify-mark): %w",
			s.backend, sensor.ErrNotSupported)
	}
	next := &userXC{cfg: *xc, digests: map[userFileKey][32]byte{}}
	next.cfg.Trust = maps.Clone(xc.Trust)
	if old := s.userXC.Load(); old != nil {
		// The trust set changed, the files did not: keep their digests.
		old.mu.Lock()
		maps.Copy(next.digests, old.digests)
		old.mu.Unlock()
	}
	s.userXC.Store(next)
	s.ForgetExecVerdicts()
	s.log.Info("execution control set (fanotify)", "mode", xc.Mode, "digests", len(xc.Trust))
	return nil
}

// digest returns the SHA-256 of f's content, from the cache when its
// identity and change times are the same.
func (x *userXC) digest(f fanotify.File) ([32]byte, bool, error) {
	k := userFileKey{f.Dev, f.Inode, f.Size, f.Mtime, f.Ctime}
	x.mu.Lock()
	d, ok := x.digests[k]
	x.mu.Unlock()
	if ok {
		return d, true, nil
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(fdReaderAt(f.Fd), 0, 1<<62)); err != nil {
		return d, false, err
	}
	copy(d[:], h.Sum(nil))
	x.mu.Lock()
	if len(x.digests) >= userDigestCacheMax {
		clear(x.digests)
	}
	x.digests[k] = d
	x.mu.Unlock()
	return d, false, nil
}

// fdReaderAt reads a file descriptor with pread, leaving its offset alone.
type fdReaderAt int

func (fd fdReaderAt) ReadAt(p []byte, off int64) (int, error) {
	n, err := unix.Pread(int(fd), p, off)
	if err != nil {
		return 0, err
	}
	if n == 0 && len(p) > 0 {
		return 0, io.EOF
	}
	return n, nil
}

// decideExecTrust decides an exec by content on the fanotify path and
// records what is not trusted. It returns whether the exec may go on, and
// whether that is because the content is trusted (a verdict that holds
// until the file changes).
func (s *Sensor) decideExecTrust(proc *vigilv1.Process, f fanotify.File) (allow, trusted bool) {
	x := s.userXC.Load()
	if x == nil || x.cfg.Mode == sensor.ExecOff {
		return true, true
	}
	t := &vigilv1.Trust{Verdict: "unknown", Mode: "monitor"}
	d, cached, err := x.digest(f)
	if err != nil {
		t.Source = "unhashable"
		s.log.Warn("execution control: cannot hash", "path", f.Path, "err", err)
	} else {
		t.Sha256, t.Cached = hex.EncodeToString(d[:]), cached
		if trusted, known := x.cfg.Trust[d]; known {
			t.Verdict = "trusted"
			if !trusted {
				t.Verdict, t.Source = "denied", "denied"
			}
		}
		var st unix.Stat_t
		if t.Verdict == "trusted" && x.cfg.UnlinkedDeny && unix.Fstat(f.Fd, &st) == nil && st.Nlink == 0 {
			t.Verdict, t.Source = "unknown", "unlinked"
		}
	}
	if t.Verdict == "trusted" {
		return true, true
	}
	lockdown := x.cfg.Mode == sensor.ExecLockdown
	v := &vigilv1.Verdict{Action: "alert", Rule: XCRule, Mode: "monitor", DecidedBy: "fanotify"}
	if lockdown {
		t.Mode = "lockdown"
		v.Action, v.Mode, v.Refused = "deny", "enforce", true
	}
	s.emitUser(&vigilv1.Event{
		Time:    timestamppb.Now(),
		Kind:    "exec",
		Backend: s.backend,
		Hook:    "fanotify/FAN_OPEN_EXEC_PERM",
		Process: proc,
		Detail: &vigilv1.Event_Exec{Exec: &vigilv1.Exec{
			File: &vigilv1.File{Path: f.Path, Dev: f.Dev, Inode: f.Inode}, Filename: f.Path, CallerExe: proc.GetExe(),
		}},
		Verdict: v,
		Trust:   t,
	})
	return !lockdown, false
}
