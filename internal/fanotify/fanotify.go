// Package fanotify decides exec and open permission events: the kernel
// holds an execve (or an open) of a file on a marked filesystem until
// userspace answers allow or deny. It is Vigil's synchronous exec control
// where BPF LSM is not available, and the filter API's authorization
// path. golang.org/x/sys/unix has the syscalls and constants; the event
// loop here is small enough not to warrant a library.
package fanotify

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Op is what a permission event asks about.
type Op uint8

const (
	// Exec: an execve of the file (FAN_OPEN_EXEC_PERM).
	Exec Op = iota
	// Open: an open of the file (FAN_OPEN_PERM). An execve opens its file
	// too, so it asks both.
	Open
)

func (o Op) String() string {
	if o == Open {
		return "open"
	}
	return "exec"
}

func (o Op) mask() uint64 {
	if o == Open {
		return unix.FAN_OPEN_PERM
	}
	return unix.FAN_OPEN_EXEC_PERM
}

// File is the file an exec or open asked for.
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
// execve or open (for an exec, before it: its executable is still the
// caller's). Deciders run concurrently, one goroutine per event: a
// decision that waits (for a filter client) holds no other event up.
type Decider func(pid int32, op Op, f File) (allow bool)

// Guard is a fanotify group with exec (and, on request, open)
// permission marks on whole filesystems.
type Guard struct {
	fd     int
	events *os.File // fd, read through Go's poller
	decide Decider
	self   int32 // this process: its opens are allowed at once
	wg     sync.WaitGroup
	once   sync.Once

	mu    sync.Mutex
	paths []string // marked
	open  bool     // FAN_OPEN_PERM is in the marks
}

// New opens a group; Mark adds filesystems; Start answers until Close.
func New(decide Decider) (*Guard, error) {
	fd, err := unix.FanotifyInit(unix.FAN_CLASS_CONTENT|unix.FAN_CLOEXEC|unix.FAN_NONBLOCK, unix.O_RDONLY|unix.O_LARGEFILE|unix.O_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("fanotify_init: %w", err)
	}
	// Non-blocking: os.File waits for events in Go's poller, with no
	// thread held in a blocking syscall (which would keep the runtime's
	// monitor polling and its threads handing off at every event). Only
	// reads go through the File: its Fd method would make fd blocking.
	return &Guard{fd: fd, events: os.NewFile(uintptr(fd), "fanotify"), decide: decide, self: int32(os.Getpid())}, nil
}

// Mark puts the filesystem holding path under exec permission control
// (and open permission control while SetOpen(true) is in force). Every
// exec of a file on it waits for this guard's answer.
func (g *Guard) Mark(path string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	mask := uint64(unix.FAN_OPEN_EXEC_PERM)
	if g.open {
		mask |= unix.FAN_OPEN_PERM
	}
	if err := unix.FanotifyMark(g.fd, unix.FAN_MARK_ADD|unix.FAN_MARK_FILESYSTEM, mask, unix.AT_FDCWD, path); err != nil {
		return fmt.Errorf("fanotify_mark %s: %w", path, err)
	}
	g.paths = append(g.paths, path)
	return nil
}

// SetOpen adds open permission events (FAN_OPEN_PERM) to the marks of
// every marked filesystem, or removes them: every open of a file there
// then waits for this guard's answer. An event per open is costly: ask
// for them only while something decides opens.
func (g *Guard) SetOpen(on bool) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if on == g.open {
		return nil
	}
	flag := uint(unix.FAN_MARK_ADD)
	if !on {
		flag = unix.FAN_MARK_REMOVE
	}
	var errs []error
	for _, p := range g.paths {
		if err := unix.FanotifyMark(g.fd, flag|unix.FAN_MARK_FILESYSTEM, unix.FAN_OPEN_PERM, unix.AT_FDCWD, p); err != nil {
			errs = append(errs, fmt.Errorf("fanotify_mark %s (open): %w", p, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	g.open = on
	return nil
}

// Open says whether open permission events are asked for.
func (g *Guard) Open() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.open
}

// IgnoreUntilModified tells the kernel not to ask about op on f (an
// event's file, during its decision) until the file is modified: an
// inode mark with op's event in its ignored mask, which the kernel drops
// on the file's next write or truncate. Writes through a shared writable
// mapping do not drop it (fanotify sees no modification there).
//
// The verdict is about the content as it was when the event came (f's
// size and change times): a change since then, while the decision was
// taken, came before the mark and would not drop it. Such a change moves
// the change times, so they are checked once the mark is in place, and
// the mark is removed if they moved (kept is false then).
func (g *Guard) IgnoreUntilModified(f File, op Op) (kept bool, err error) {
	if err := unix.FanotifyMark(g.fd, unix.FAN_MARK_ADD|unix.FAN_MARK_IGNORED_MASK, op.mask(), f.Fd, ""); err != nil {
		return false, fmt.Errorf("fanotify ignore mark: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(f.Fd, &st); err == nil && st.Size == f.Size && st.Mtim.Nano() == f.Mtime && st.Ctim.Nano() == f.Ctime {
		return true, nil
	}
	if err := unix.FanotifyMark(g.fd, unix.FAN_MARK_REMOVE|unix.FAN_MARK_IGNORED_MASK, op.mask(), f.Fd, ""); err != nil {
		return false, fmt.Errorf("fanotify: the file changed during the decision, its ignore mark stays: %w", err)
	}
	return false, nil
}

// ForgetIgnored removes every ignore mark: the next exec or open of each
// file is asked again (after a change of what decides).
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
// execs and opens it was holding (a dead agent must not stall the
// machine). Decisions under way are answered first.
func (g *Guard) Close() error {
	g.once.Do(func() {
		g.events.SetReadDeadline(time.Unix(1, 0)) // wakes the loop
		g.wg.Wait()
		g.events.Close()
	})
	return nil
}

const metaSize = int(unsafe.Sizeof(unix.FanotifyEventMetadata{}))

func (g *Guard) loop() {
	buf := make([]byte, 64*metaSize)
	for {
		n, err := g.events.Read(buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || n < metaSize {
			return // closing (deadline), or the group is gone
		}
		for off := 0; off+metaSize <= n; {
			m := *(*unix.FanotifyEventMetadata)(unsafe.Pointer(&buf[off]))
			if m.Event_len < uint32(metaSize) {
				break
			}
			g.dispatch(m)
			off += int(m.Event_len)
		}
	}
}

// dispatch answers this process's own opens at once and hands every other
// event to a goroutine: the loop keeps reading while decisions wait, so
// that an open a decision depends on (a filter client reading the file it
// is asked about, the agent writing its database) is answered meanwhile.
// Every pending event is a task held in the kernel: their number is
// bounded by the tasks on the machine.
func (g *Guard) dispatch(m unix.FanotifyEventMetadata) {
	if m.Fd < 0 {
		return // queue overflow: no fd, nothing waits on it
	}
	if m.Pid == g.self && m.Mask&unix.FAN_OPEN_EXEC_PERM == 0 {
		g.respond(m.Fd, true)
		unix.Close(int(m.Fd))
		return
	}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		g.handle(m)
	}()
}

func (g *Guard) handle(m unix.FanotifyEventMetadata) {
	defer unix.Close(int(m.Fd))
	var op Op
	switch {
	case m.Mask&unix.FAN_OPEN_EXEC_PERM != 0:
		op = Exec
	case m.Mask&unix.FAN_OPEN_PERM != 0:
		op = Open
	default:
		return
	}
	f := File{Fd: int(m.Fd)}
	f.Path, _ = os.Readlink("/proc/self/fd/" + strconv.Itoa(int(m.Fd)))
	var st unix.Stat_t
	if unix.Fstat(int(m.Fd), &st) == nil {
		f.Dev, f.Inode, f.Size = st.Dev, st.Ino, st.Size
		f.Mtime, f.Ctime = st.Mtim.Nano(), st.Ctim.Nano()
	}
	g.respond(m.Fd, g.decide(m.Pid, op, f))
}

func (g *Guard) respond(fd int32, allow bool) {
	resp := unix.FanotifyResponse{Fd: fd, Response: unix.FAN_ALLOW}
	if !allow {
		resp.Response = unix.FAN_DENY
	}
	b := (*[unsafe.Sizeof(unix.FanotifyResponse{})]byte)(unsafe.Pointer(&resp))[:]
	unix.Write(g.fd, b)
}
