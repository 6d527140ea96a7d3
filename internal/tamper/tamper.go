// Package tamper is Vigil's self-protection: a BPF object of LSM programs,
// separate from the sensor's, that refuses to every process but the agent
// what would stop, blind or change it (tamper.bpf.c says what each hook
// refuses), and reports each refusal as an event of kind "tamper".
//
// The agent says what to protect: its thread group (Config.AgentPID), its
// files and directories (by device and inode, never by name), its cgroup
// and its ancestors, and the ids of its BPF objects (Protect). The
// object's own programs, maps and links are protected from the start.
package tamper

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/kernel"
)

// ErrNotSupported is wrapped when the kernel cannot run the programs
// (no BPF LSM).
var ErrNotSupported = errors.New("tamper protection not supported here")

// CgroupRoot is where the unified cgroup hierarchy is mounted.
const CgroupRoot = "/sys/fs/cgroup"

// Config says what to protect.
type Config struct {
	// AgentPID is the protected thread group: the agent.
	AgentPID int
	// Files are protected files: no write, truncate, unlink, rename,
	// chmod, chown or mount over. Missing files are skipped (and logged).
	Files []string
	// Dirs are protected directories: themselves and every entry
	// directly in them (existing or to be created).
	Dirs []string
	// ReportOnly reports attempts without refusing them.
	ReportOnly bool
	// NoCgroup leaves the agent's cgroup unprotected.
	NoCgroup bool
	// Binary is the agent's executable. Empty: /proc/AgentPID/exe. Once
	// the agent has died, a process running it may adopt the pins.
	Binary string
	// PinDir, when set, is where the programs' links and the maps are
	// pinned, so protection outlives the agent's process; a guard started
	// while pins are there adopts them instead of loading anew.
	PinDir string
	Logger *slog.Logger
}

// ObjectIDs are BPF object ids.
type ObjectIDs struct {
	Progs, Maps, Links []uint32
}

// Guard is the loaded and attached protection.
type Guard struct {
	cfg     Config
	log     *slog.Logger
	maps    map[string]*ebpf.Map
	progs   map[string]*ebpf.Program // loaded here (empty when adopted)
	links   map[string]link.Link     // by program name
	hooks   []string
	adopted bool
	reader  *ringbuf.Reader
	out     chan *vigilv1.Event
	done    chan struct{}
	once    sync.Once
	mu      sync.Mutex
	own     ObjectIDs
	warns   []string
}

// Start loads the programs, fills the maps and attaches every hook. Any
// hook that does not attach fails the start: protection with holes the
// agent does not know about is not offered.
func Start(ctx context.Context, cfg Config) (*Guard, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.AgentPID <= 0 {
		return nil, errors.New("tamper: no agent pid")
	}
	if !kernel.BPFLSMActive() {
		return nil, fmt.Errorf("tamper: %w: bpf is not among the active LSMs", ErrNotSupported)
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("tamper: remove memlock limit: %w", err)
	}
	kernel.MountFilesystems()
	if cfg.Binary == "" {
		exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", cfg.AgentPID))
		if err != nil {
			return nil, fmt.Errorf("tamper: agent executable: %w", err)
		}
		cfg.Binary = exe
	}
	g := &Guard{cfg: cfg, log: cfg.Logger.With("component", "tamper"),
		maps: map[string]*ebpf.Map{}, progs: map[string]*ebpf.Program{}, links: map[string]link.Link{},
		out: make(chan *vigilv1.Event, 1024), done: make(chan struct{})}
	fail := func(err error) (*Guard, error) {
		g.closeKernel()
		return nil, fmt.Errorf("tamper: %w", err)
	}
	spec, err := loadTamperobj()
	if err != nil {
		return nil, fmt.Errorf("tamper: load spec: %w", err)
	}
	if cfg.PinDir != "" && pinned(cfg.PinDir) {
		if err := g.adopt(spec); err != nil {
			return fail(fmt.Errorf("adopt the pinned protection in %s (it keeps protecting; stop it with a token or reboot): %w", cfg.PinDir, err))
		}
	} else if err := g.load(spec); err != nil {
		return fail(err)
	}
	own, err := g.objectIDs()
	if err != nil {
		return fail(err)
	}
	g.own = own
	if err := g.Protect(own); err != nil {
		return fail(err)
	}
	if g.adopted {
		if err := g.dropStaleObjects(own); err != nil {
			return fail(err)
		}
	} else if cfg.PinDir != "" {
		if err := g.pin(); err != nil {
			g.warn(fmt.Sprintf("not pinned (protection ends with the agent's process): %v", err))
		}
	}
	rd, err := ringbuf.NewReader(g.maps[tamperobjMapTamperEvents])
	if err != nil {
		return fail(fmt.Errorf("ring buffer reader: %w", err))
	}
	g.reader = rd
	go g.read()
	go func() {
		select {
		case <-ctx.Done():
			g.Release()
		case <-g.done:
		}
	}()
	g.log.Info("tamper protection on", "pid", cfg.AgentPID, "hooks", len(g.hooks), "adopted", g.adopted, "pin_dir", cfg.PinDir,
		"files", len(cfg.Files), "dirs", len(cfg.Dirs), "report_only", cfg.ReportOnly)
	return g, nil
}

// fill writes who the agent is and what it owns into the maps.
func (g *Guard) fill() error {
	enforce := uint32(1)
	if g.cfg.ReportOnly {
		enforce = 0
	}
	bin, err := FileKey(g.cfg.Binary)
	if err != nil {
		return fmt.Errorf("agent binary: %w", err)
	}
	cfgv := tamperobjTamperCfg{AgentTgid: uint32(g.cfg.AgentPID), Enforce: enforce, BinDev: bin.Dev, BinIno: bin.Ino}
	if err := g.maps[tamperobjMapTamperConfig].Put(uint32(0), cfgv); err != nil {
		return fmt.Errorf("config map: %w", err)
	}
	// Touch a file so the kernel records the agent's start time (see
	// is_agent_task) before anything else can.
	if f, err := os.Open(fmt.Sprintf("/proc/%d/stat", g.cfg.AgentPID)); err == nil {
		f.Close()
	}
	files := g.maps[tamperobjMapTamperFiles]
	want := map[tamperobjFileKey]bool{}
	put := func(path string, kind tamperobjProtKind) error {
		k, err := FileKey(path)
		if errors.Is(err, os.ErrNotExist) {
			g.warn(fmt.Sprintf("%s: does not exist, not protected", path))
			return nil
		}
		if err != nil {
			return err
		}
		want[k] = true
		return files.Put(k, uint32(kind))
	}
	for _, f := range g.cfg.Files {
		if err := put(f, tamperobjProtKindPROT_FILE); err != nil {
			return fmt.Errorf("protect %s: %w", f, err)
		}
	}
	dirs := g.cfg.Dirs
	if g.cfg.PinDir != "" {
		dirs = append(dirs, g.cfg.PinDir, filepath.Dir(g.cfg.PinDir))
	}
	for _, d := range dirs {
		if err := put(d, tamperobjProtKindPROT_DIR); err != nil {
			return fmt.Errorf("protect %s: %w", d, err)
		}
	}
	// Adopted maps hold the dead agent's entries: new ones are in, now
	// the stale ones go.
	if err := deleteExcept(files, want); err != nil {
		return fmt.Errorf("files map: %w", err)
	}
	cgm := g.maps[tamperobjMapTamperCgroups]
	if g.cfg.NoCgroup {
		return deleteExcept(cgm, map[uint64]bool{})
	}
	cgs, err := AgentCgroups(g.cfg.AgentPID)
	if err != nil {
		g.warn(fmt.Sprintf("cgroup not protected: %v", err))
		return deleteExcept(cgm, map[uint64]bool{})
	}
	m := cgm
	wantCg := map[uint64]bool{}
	for i, id := range cgs {
		wantCg[id] = true
		kind := tamperobjCgKindCG_ANCESTOR
		if i == 0 {
			kind = tamperobjCgKindCG_OWN
		}
		if err := m.Put(id, uint32(kind)); err != nil {
			return fmt.Errorf("cgroup map: %w", err)
		}
	}
	return deleteExcept(m, wantCg)
}

func (g *Guard) warn(s string) {
	g.log.Warn("tamper protection", "warning", s)
	g.mu.Lock()
	g.warns = append(g.warns, s)
	g.mu.Unlock()
}

// FileKey is path's identity as the kernel's programs see it: the
// device in the kernel's encoding (MAJOR << 20 | MINOR, as sb->s_dev) and
// the inode number. Symlinks are followed.
func FileKey(path string) (tamperobjFileKey, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return tamperobjFileKey{}, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	return tamperobjFileKey{Dev: KernelDev(st.Dev), Ino: st.Ino}, nil
}

// KernelDev converts a dev_t as stat(2) reports it to the kernel's
// internal encoding.
func KernelDev(dev uint64) uint64 {
	return uint64(unix.Major(dev))<<20 | uint64(unix.Minor(dev))
}

// AgentCgroups returns the cgroup ids (inode numbers of the cgroup
// directories in the unified hierarchy) of pid's cgroup first, then of
// each ancestor up to the root.
func AgentCgroups(pid int) ([]uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return nil, err
	}
	rel, ok := unifiedPath(string(b))
	if !ok {
		return nil, errors.New("no cgroup v2 entry in /proc/PID/cgroup")
	}
	var st unix.Statfs_t
	if err := unix.Statfs(CgroupRoot, &st); err != nil || int64(st.Type) != unix.CGROUP2_SUPER_MAGIC {
		return nil, fmt.Errorf("%s is not a cgroup2 mount", CgroupRoot)
	}
	var ids []uint64
	for dir := filepath.Join(CgroupRoot, rel); ; dir = filepath.Dir(dir) {
		var s unix.Stat_t
		if err := unix.Stat(dir, &s); err != nil {
			return nil, &os.PathError{Op: "stat", Path: dir, Err: err}
		}
		ids = append(ids, s.Ino)
		if dir == CgroupRoot || !strings.HasPrefix(dir, CgroupRoot) {
			break
		}
	}
	return ids, nil
}

// unifiedPath returns the path of the "0::" line of /proc/PID/cgroup.
func unifiedPath(s string) (string, bool) {
	for _, line := range strings.Split(s, "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			return rest, true
		}
	}
	return "", false
}

// ProtectIDs adds BPF object ids to the protected set.
func (g *Guard) ProtectIDs(progs, maps, links []uint32) error {
	return g.Protect(ObjectIDs{Progs: progs, Maps: maps, Links: links})
}

// Protect adds BPF object ids to the protected set.
func (g *Guard) Protect(ids ObjectIDs) error {
	m := g.maps[tamperobjMapTamperObjs]
	put := func(t tamperobjObjType, id uint32) error {
		if id == 0 {
			return nil
		}
		return m.Put(tamperobjObjKey{Type: uint32(t), Id: id}, uint32(1))
	}
	for _, id := range ids.Progs {
		if err := put(tamperobjObjTypeOBJ_PROG, id); err != nil {
			return fmt.Errorf("protect prog %d: %w", id, err)
		}
	}
	for _, id := range ids.Maps {
		if err := put(tamperobjObjTypeOBJ_MAP, id); err != nil {
			return fmt.Errorf("protect map %d: %w", id, err)
		}
	}
	for _, id := range ids.Links {
		if err := put(tamperobjObjTypeOBJ_LINK, id); err != nil {
			return fmt.Errorf("protect link %d: %w", id, err)
		}
	}
	return nil
}

// objectIDs lists the ids of the guard's own programs, maps and links
// (the programs through their links, which also holds for adopted ones).
func (g *Guard) objectIDs() (ObjectIDs, error) {
	var ids ObjectIDs
	for name, m := range g.maps {
		info, err := m.Info()
		if err != nil {
			return ids, fmt.Errorf("map %s info: %w", name, err)
		}
		if id, ok := info.ID(); ok {
			ids.Maps = append(ids.Maps, uint32(id))
		}
	}
	for name, l := range g.links {
		info, err := l.Info()
		if err != nil {
			return ids, fmt.Errorf("link %s info: %w", name, err)
		}
		ids.Links = append(ids.Links, uint32(info.ID))
		ids.Progs = append(ids.Progs, uint32(info.Program))
	}
	return ids, nil
}

// Own returns the ids of the guard's own BPF objects.
func (g *Guard) Own() ObjectIDs { return g.own }

// Hooks returns the attached hooks.
func (g *Guard) Hooks() []string { return g.hooks }

// Warnings says what could not be protected.
func (g *Guard) Warnings() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]string(nil), g.warns...)
}

// Events delivers one event per refused (or, report-only, seen) attempt.
// It closes after Close.
func (g *Guard) Events() <-chan *vigilv1.Event { return g.out }

// Lost returns how many records the kernel could not queue.
func (g *Guard) Lost() uint64 {
	var n uint64
	_ = g.maps[tamperobjMapTamperLost].Lookup(uint32(0), &n)
	return n
}

func (g *Guard) read() {
	defer close(g.out)
	b2w := bootToWall()
	var rec ringbuf.Record
	for {
		if err := g.reader.ReadInto(&rec); err != nil {
			if !errors.Is(err, ringbuf.ErrClosed) {
				g.log.Error("tamper ring buffer read", "err", err)
			}
			return
		}
		ev, err := decode(rec.RawSample, b2w)
		if err != nil {
			g.log.Warn("undecodable tamper record", "err", err)
			continue
		}
		select {
		case g.out <- ev:
		case <-g.done:
			return
		}
	}
}

// Close unpins and detaches the programs: protection ends. Only an
// authorized stop calls it.
func (g *Guard) Close() error {
	g.close(true)
	return nil
}

// Release closes the agent's handles but leaves the pins: protection
// goes on without the agent, for the next one to adopt. Without pins it
// is Close.
func (g *Guard) Release() error {
	g.close(false)
	return nil
}

func (g *Guard) close(unpin bool) {
	g.once.Do(func() {
		close(g.done)
		if g.reader != nil {
			g.reader.Close()
		}
		if unpin {
			g.unpin()
		}
		g.closeKernel()
	})
}

func (g *Guard) closeKernel() {
	for _, l := range g.links {
		l.Close()
	}
	for _, m := range g.maps {
		m.Close()
	}
	for _, p := range g.progs {
		p.Close()
	}
	g.links, g.maps, g.progs = nil, nil, nil
}

func bootToWall() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return time.Duration(time.Now().UnixNano() - ts.Nano())
}

// OwnPrograms returns the tamper object's BPF programs, read from the
// embedded object: name -> program type (as cilium/ebpf names it), like
// bpfsensor.OwnPrograms.
func OwnPrograms() (map[string]string, error) {
	spec, err := loadTamperobj()
	if err != nil {
		return nil, err
	}
	own := make(map[string]string, len(spec.Programs))
	for name, p := range spec.Programs {
		own[name] = p.Type.String()
	}
	return own, nil
}
