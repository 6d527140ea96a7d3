// Package fanotify decides exec permission events: the kernel holds an
// execve of a file on a marked filesystem until userspace answers allow
// or deny. It is Vigil's synchronous exec control where BPF LSM is not
// available. golang.org/x/sys/unix has the syscalls and constants; the
// event loop here is small enough not to warrant a library.
package fanotify

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// File is the file an exec asked for.
type File struct {
	Path       string
	Dev, Inode uint64
	// Fd is the event's open file, valid only while the Decider runs
	// (read it with pread: the offset is shared with nobody else).
	Fd int
	// Size, Mtime and Ctime (ns) are from fstat: with Dev and Inode they
	// change whenever the content can have changed.
	Size         int64
	Mtime, Ctime int64
}

// Decider answers a permission request: pid is the process calling
// execve (before the exec: its executable is still the caller's).
type Decider func(pid int32, f File) (allow bool)

// Guard is a fanotify group with exec permission marks.
type Guard struct {
	fd      int
	decide  Decider
	wg      sync.WaitGroup
	closeFd int // eventfd that wakes the loop to stop
	once    sync.Once
}

// New opens a group; Mark adds filesystems; Run answers until Close.
func New(decide Decider) (*Guard, error) {
	fd, err := unix.FanotifyInit(unix.FAN_CLASS_CONTENT|unix.FAN_CLOEXEC|unix.FAN_NONBLOCK, unix.O_RDONLY|unix.O_LARGEFILE|unix.O_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("fanotify_init: %w", err)
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	return &Guard{fd: fd, decide: decide, closeFd: efd}, nil
}

// Mark puts the filesystem holding path under exec permission control.
// Every exec of a file on it waits for this guard's answer.
func (g *Guard) Mark(path string) error {
	err := unix.FanotifyMark(g.fd, unix.FAN_MARK_ADD|unix.FAN_MARK_FILESYSTEM, unix.FAN_OPEN_EXEC_PERM, unix.AT_FDCWD, path)
	if err != nil {
		return fmt.Errorf("fanotify_mark %s: %w", path, err)
	}
	return nil
}

// IgnoreUntilModified tells the kernel not to ask about execs of the file
// behind fd (an event's fd, during its decision) until the file is
// modified: an inode mark with FAN_OPEN_EXEC_PERM in its ignored mask,
// which the kernel drops on the file's next write or truncate. Writes
// through a shared writable mapping do not drop it (fanotify sees no
// modification there).
func (g *Guard) IgnoreUntilModified(fd int) error {
	return unix.FanotifyMark(g.fd, unix.FAN_MARK_ADD|unix.FAN_MARK_IGNORED_MASK, unix.FAN_OPEN_EXEC_PERM, fd, "")
}

// ForgetIgnored removes every ignore mark: the next exec of each file is
// asked again (after a change of what decides).
func (g *Guard) ForgetIgnored() error {
	return unix.FanotifyMark(g.fd, unix.FAN_MARK_FLUSH, 0, unix.AT_FDCWD, "")
}

// Start answers permission events in the background until Close.
func (g *Guard) Start() {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		g.loop()
	}()
}

// Close stops answering and closes the group; the kernel then allows the
// execs it was holding (a dead agent must not stall the machine).
func (g *Guard) Close() error {
	g.once.Do(func() {
		var one [8]byte
		binary.NativeEndian.PutUint64(one[:], 1)
		unix.Write(g.closeFd, one[:])
		g.wg.Wait()
		unix.Close(g.fd)
		unix.Close(g.closeFd)
	})
	return nil
}

const metaSize = int(unsafe.Sizeof(unix.FanotifyEventMetadata{}))

func (g *Guard) loop() {
	buf := make([]byte, 64*metaSize)
	fds := []unix.PollFd{{Fd: int32(g.fd), Events: unix.POLLIN}, {Fd: int32(g.closeFd), Events: unix.POLLIN}}
	for {
		if _, err := unix.Poll(fds, -1); err != nil && !errors.Is(err, unix.EINTR) {
			return
		}
		if fds[1].Revents != 0 {
			return
		}
		n, err := unix.Read(g.fd, buf)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || n < metaSize {
			return
		}
		for off := 0; off+metaSize <= n; {
			m := (*unix.FanotifyEventMetadata)(unsafe.Pointer(&buf[off]))
			if m.Event_len < uint32(metaSize) {
				break
			}
			g.handle(m)
			off += int(m.Event_len)
		}
	}
}

func (g *Guard) handle(m *unix.FanotifyEventMetadata) {
	if m.Fd < 0 {
		return // queue overflow: no fd, nothing waits on it
	}
	defer unix.Close(int(m.Fd))
	if m.Mask&unix.FAN_OPEN_EXEC_PERM == 0 {
		return
	}
	f := File{Fd: int(m.Fd)}
	f.Path, _ = os.Readlink("/proc/self/fd/" + strconv.Itoa(int(m.Fd)))
	var st unix.Stat_t
	if unix.Fstat(int(m.Fd), &st) == nil {
		f.Dev, f.Inode, f.Size = st.Dev, st.Ino, st.Size
		f.Mtime, f.Ctime = st.Mtim.Nano(), st.Ctim.Nano()
	}
	resp := unix.FanotifyResponse{Fd: m.Fd, Response: unix.FAN_ALLOW}
	if !g.decide(m.Pid, f) {
		resp.Response = unix.FAN_DENY
	}
	b := (*[unsafe.Sizeof(unix.FanotifyResponse{})]byte)(unsafe.Pointer(&resp))[:]
	unix.Write(g.fd, b)
}
