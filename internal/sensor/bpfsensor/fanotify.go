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
// control, decided by the policy in force (tracepoint backend: no LSM).
func (s *Sensor) startFanotify() error {
	g, err := fanotify.New(s.decideExec)
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
	proc := &vigilv1.Process{Pid: uint32(pid)}
	if cached, ok := s.cache.Lookup(uint32(pid)); ok {
		proc.Ppid, proc.Exe, proc.StartTimeNs = cached.PPID, cached.Exe, cached.StartTime
	}
	if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil {
		proc.Exe = exe
	}
	proc.Uid = procUID(pid)
	s.cache.Enrich(proc)
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
	// Trusted content and nothing that depends on the process: let the
	// kernel skip the round trip for this file until it changes.
	cacheable := trusted && (p == nil || !hasExecRules(p))
	if auth == nil {
		if cacheable {
			s.ignoreUntilModified(f)
		}
		return true
	}
	key := fmt.Sprintf("%d:%d:%d:%d:%d", f.Dev, f.Inode, f.Size, f.Mtime, f.Ctime)
	ok, clients := (*auth)(execEvent(nil), key)
	if ok && len(clients) == 0 && cacheable {
		s.ignoreUntilModified(f)
	}
	if len(clients) > 0 {
		v := &vigilv1.Verdict{Action: "allow", Rule: FilterRule, Mode: "enforce", DecidedBy: "fanotify", Clients: clients}
		if !ok {
			v.Action, v.Refused = "deny", true
		}
		s.emitUser(execEvent(v))
	}
	return ok
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

// ignoreUntilModified keeps an allow verdict in the kernel until the file
// changes (fanotify ignore mark); only the execution control decided it.
func (s *Sensor) ignoreUntilModified(f fanotify.File) {
	if s.fan == nil {
		return
	}
	if err := s.fan.IgnoreUntilModified(f.Fd); err != nil {
		s.log.Debug("fanotify ignore mark", "path", f.Path, "err", err)
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

// execAuthorizer is the filter API's hook (sensor.ExecAuthorizer).
type execAuthorizer = func(ev *vigilv1.Event, key string) (bool, []*vigilv1.ClientVerdict)

// SetExecAuthorizer implements sensor.ExecAuthorizer.
func (s *Sensor) SetExecAuthorizer(fn func(ev *vigilv1.Event, key string) (bool, []*vigilv1.ClientVerdict)) {
	s.authorizer.Store(&fn)
}

// procUID is the real uid of pid (from /proc), or the nobody uid.
func procUID(pid int32) uint32 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 65534
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "Uid:"); ok {
			if fields := strings.Fields(rest); len(fields) > 0 {
				if n, err := strconv.ParseUint(fields[0], 10, 32); err == nil {
					return uint32(n)
				}
			}
		}
	}
	return 65534
}

// procEnv answers the evaluator's questions about one process from /proc.
type procEnv int32

func (procEnv) SHA256(policy.File) (string, bool) { return "", false }

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
