package bpfsensor

import (
	"bufio"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/protobuf/types/known/timestamppb"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/fanotify"
	"github.com/vigil-hips/vigil/internal/policy"
	"github.com/vigil-hips/vigil/internal/sensor"
)

// startFanotify puts the configured filesystems under exec permission
// control, decided by the policy in force (tracepoint backend: no LSM),
// and under open permission control while a filter client asks to
// authorize opens (SetOpenAuth).
func (s *Sensor) startFanotify() error {
	g, err := fanotify.New(s.decidePerm)
	if err != nil {
		return err
	}
	for _, m := range s.cfg.FanotifyMarks {
		if err := g.Mark(m); err != nil {
			g.Close()
			return err
		}
	}
	g.Start()
	s.fan = g
	return nil
}

// decidePerm answers a permission event of the fanotify marks.
func (s *Sensor) decidePerm(pid int32, op fanotify.Op, f fanotify.File) bool {
	if op == fanotify.Open {
		return s.decideOpen(pid, f)
	}
	return s.decideExec(pid, f)
}

// procOf describes the process behind a permission event.
func (s *Sensor) procOf(pid int32) *vigilv1.Process {
	proc := &vigilv1.Process{Pid: uint32(pid)}
	cached, known := s.cache.Lookup(uint32(pid))
	if known {
		proc.Ppid, proc.Exe, proc.StartTimeNs = cached.PPID, cached.Exe, cached.StartTime
	}
	if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil {
		proc.Exe = exe
	}
	var ppid uint32
	proc.Uid, ppid = procStatus(pid)
	if !known {
		// A process younger than the reader's last poll (its fork event
		// still in the ring): its parent from /proc, so that the
		// ancestry is the parent's, which the cache knows.
		proc.Ppid = ppid
	}
	s.cache.Enrich(proc)
	return proc
}

// fileKey names a file's content state: its identity and change times.
func fileKey(f fanotify.File) string {
	return fmt.Sprintf("%d:%d:%d:%d:%d", f.Dev, f.Inode, f.Size, f.Mtime, f.Ctime)
}

// decideExec answers an exec permission event: Vigil's policy and
// execution control first (tracepoint backend; with BPF LSM the kernel has
// decided both already), then the filter API clients.
func (s *Sensor) decideExec(pid int32, f fanotify.File) bool {
	p := s.userPolicy.Load()
	auth := s.authorizer.Load()
	own := s.backend != sensor.BackendLSM && (p != nil || s.userXC.Load() != nil)
	if !own && auth == nil {
		return true
	}
	proc := s.procOf(pid)
	execEvent := func(v *vigilv1.Verdict) *vigilv1.Event {
		return &vigilv1.Event{
			Time:    timestamppb.Now(),
			Kind:    "exec",
			Backend: s.backend,
			Hook:    "fanotify/FAN_OPEN_EXEC_PERM",
			Process: proc,
			Detail: &vigilv1.Event_Exec{Exec: &vigilv1.Exec{
				File: &vigilv1.File{Path: f.Path, Dev: f.Dev, Inode: f.Inode}, Filename: f.Path, CallerExe: proc.Exe,
			}},
			Verdict: v,
		}
	}
	if own && p != nil {
		in := policy.Input{
			Kind:    policy.KindExec,
			Op:      "exec",
			File:    policy.File{Path: f.Path, Dev: f.Dev, Inode: f.Inode},
			Process: policy.Process{Pid: proc.Pid, StartTimeNs: proc.StartTimeNs, UID: proc.Uid, Exe: policy.File{Path: proc.Exe}},
		}
		for _, a := range proc.Ancestry {
			in.Process.Ancestry = append(in.Process.Ancestry, policy.Ancestor{Pid: a.Pid, StartTimeNs: a.StartTimeNs, Exe: a.Exe})
		}
		v := p.Evaluate(in, procEnv(pid))
		if v.Rule != "" {
			s.emitUser(execEvent(&vigilv1.Verdict{
				Action: string(v.Action), Rule: v.Rule, Mode: string(v.Mode),
				DecidedBy: "fanotify", Refused: v.Enforced, Policy: p.Digest(),
			}))
		}
		if v.Enforced {
			return false
		}
	}
	trusted := false
	if own {
		var allow bool
		if allow, trusted = s.decideExecTrust(proc, f); !allow {
			return false
		}
	}
	// Trusted content and nothing that depends on the process (or nothing
	// of Vigil's decides here: with BPF LSM the kernel does): the kernel
	// may skip the round trip for this file until it changes, if the
	// clients' answers allow that too.
	cacheable := !own || (trusted && (p == nil || !hasExecRules(p)))
	if auth == nil {
		if cacheable {
			s.ignoreUntilModified(f, fanotify.Exec)
		}
		return true
	}
	d := (*auth)(execEvent(nil), fileKey(f))
	if d.Allow && cacheable && d.Cacheable {
		s.ignoreUntilModified(f, fanotify.Exec)
	}
	if len(d.Clients) > 0 {
		v := &vigilv1.Verdict{Action: "allow", Rule: FilterRule, Mode: "enforce", DecidedBy: "fanotify", Clients: d.Clients}
		if !d.Allow {
			v.Action, v.Refused = "deny", true
		}
		s.emitUser(execEvent(v))
	}
	return d.Allow
}

// decideOpen answers an open permission event: only filter API clients
// decide opens on this path (Vigil's own open rules are enforced on the
// LSM path). The decision is recorded when a client was asked (not when
// every answer came from the clients' caches: opens are many).
func (s *Sensor) decideOpen(pid int32, f fanotify.File) bool {
	auth := s.authorizer.Load()
	if auth == nil {
		return true
	}
	proc := s.procOf(pid)
	openEvent := func(v *vigilv1.Verdict) *vigilv1.Event {
		return &vigilv1.Event{
			Time:    timestamppb.Now(),
			Kind:    "open",
			Backend: s.backend,
			Hook:    "fanotify/FAN_OPEN_PERM",
			Process: proc,
			Detail: &vigilv1.Event_FileOpen{FileOpen: &vigilv1.FileOpen{
				File: &vigilv1.File{Path: f.Path, Dev: f.Dev, Inode: f.Inode},
			}},
			Verdict: v,
		}
	}
	d := (*auth)(openEvent(nil), fileKey(f))
	if d.Allow && d.Cacheable {
		s.ignoreUntilModified(f, fanotify.Open)
	}
	asked := slices.ContainsFunc(d.Clients, func(c *vigilv1.ClientVerdict) bool { return c.Answer != "cached" })
	if asked || !d.Allow {
		v := &vigilv1.Verdict{Action: "allow", Rule: FilterRule, Mode: "enforce", DecidedBy: "fanotify", Clients: d.Clients}
		if !d.Allow {
			v.Action, v.Refused = "deny", true
		}
		s.emitUser(openEvent(v))
	}
	return d.Allow
}

// hasExecRules: some rule of p decides execs (and may depend on the
// process, so no verdict can be kept per file).
func hasExecRules(p *policy.Policy) bool {
	for _, r := range p.Rules {
		if slices.Contains(r.On, policy.KindExec) {
			return true
		}
	}
	return false
}

// ignoreUntilModified keeps an allow verdict about op in the kernel until
// the file changes (fanotify ignore mark): it holds for any process.
func (s *Sensor) ignoreUntilModified(f fanotify.File, op fanotify.Op) {
	if s.fan == nil {
		return
	}
	if _, err := s.fan.IgnoreUntilModified(f, op); err != nil {
		s.log.Warn("fanotify: verdict not kept", "path", f.Path, "err", err)
	}
}

// ForgetExecVerdicts drops the allow verdicts kept by the fanotify path:
// what decides changed (trust set, policy, filter clients).
func (s *Sensor) ForgetExecVerdicts() {
	if s.fan == nil {
		return
	}
	if err := s.fan.ForgetIgnored(); err != nil {
		s.log.Warn("fanotify: kept verdicts not dropped", "err", err)
	}
}

// FilterRule is the rule name of verdicts the filter API clients gave.
const FilterRule = "filter-api"

// execAuthorizer is the filter API's hook (sensor.Authorizer), on exec
// and open permission events.
type execAuthorizer = sensor.AuthorizeFunc

// SetAuthorizer implements sensor.Authorizer.
func (s *Sensor) SetAuthorizer(fn sensor.AuthorizeFunc) {
	s.authorizer.Store(&fn)
}

// SetOpenAuth implements sensor.Authorizer: open permission events on the
// marked filesystems, only while a client authorizes opens.
func (s *Sensor) SetOpenAuth(on bool) error {
	if s.fan == nil {
		if on {
			return fmt.Errorf("open authorization needs fanotify marks (--fanotify-mark): %w", sensor.ErrNotSupported)
		}
		return nil
	}
	return s.fan.SetOpen(on)
}

// procStatus reads the real uid and the parent of pid from
// /proc/PID/status; the uid is nobody's and the parent 0 when unreadable.
func procStatus(pid int32) (uid, ppid uint32) {
	uid = 65534
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return uid, 0
	}
	defer f.Close()
	field := func(line, name string) (uint32, bool) {
		rest, ok := strings.CutPrefix(line, name)
		if !ok {
			return 0, false
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			return 0, false
		}
		n, err := strconv.ParseUint(fields[0], 10, 32)
		return uint32(n), err == nil
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if n, ok := field(sc.Text(), "PPid:"); ok {
			ppid = n
		} else if n, ok := field(sc.Text(), "Uid:"); ok {
			uid = n
			break // Uid follows PPid
		}
	}
	return uid, ppid
}

// procEnv answers the evaluator's questions about one process from /proc.
type procEnv int32

func (procEnv) SHA256(policy.File) (string, bool) { return "", false }

// Signers: the fanotify path (tracepoint backend) knows no signer; a
// policy with process.signer is refused there (Enforce).
func (procEnv) Signers(policy.File) ([]string, bool) { return nil, false }

func (e procEnv) CgroupPath(uint64) (string, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", e))
	if err != nil {
		return "", false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return p, true
		}
	}
	return "", false
}

func (procEnv) Ancestry(uint32, uint64) ([]policy.Ancestor, bool) { return nil, false }
