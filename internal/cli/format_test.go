package cli

import (
	"strings"
	"testing"
	"time"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
)

func TestParseDuration(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"90s", 90 * time.Second, true},
		{"7d", 7 * 24 * time.Hour, true},
		{"1d12h", 36 * time.Hour, true},
		{"0", 0, true},
		{"-1d", 0, false},
		{"1d-1h", 0, false},
		{"d", 0, false},
		{"seven days", 0, false},
	}
	for _, tt := range tests {
		got, err := parseDuration(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("parseDuration(%q) = %v, %v; want %v, ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
	if s := formatDuration(7 * 24 * time.Hour); s != "7d" {
		t.Errorf("formatDuration(7d) = %q", s)
	}
	if s := formatDuration(time.Minute); s != "1m0s" {
		t.Errorf("formatDuration(1m) = %q", s)
	}
}

func TestParseSince(t *testing.T) {
	now := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Time
	}{
		{"10m", now.Add(-10 * time.Minute)},
		{"2d", now.Add(-48 * time.Hour)},
		{"2026-03-01T00:00:00Z", time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)},
		{"2026-03-01", time.Date(2026, 3, 1, 0, 0, 0, 0, time.Local)},
		{"2026-03-01 10:30", time.Date(2026, 3, 1, 10, 30, 0, 0, time.Local)},
	}
	for _, tt := range tests {
		got, err := parseSince(tt.in, now)
		if err != nil || !got.Equal(tt.want) {
			t.Errorf("parseSince(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
	if _, err := parseSince("yesterday", now); err == nil || !strings.Contains(err.Error(), "--since") {
		t.Errorf("parseSince(yesterday) = %v", err)
	}
}

func TestFormatEvent(t *testing.T) {
	proc := &vigilv1.Process{Pid: 42, Exe: "/usr/bin/bash"}
	tests := []struct {
		ev   *vigilv1.Event
		want string
	}{
		{&vigilv1.Event{Id: 1, Kind: "exec", Process: proc, Detail: &vigilv1.Event_Exec{Exec: &vigilv1.Exec{
			Argv: []string{"sh", "-c", "echo $HOME", ""}, ArgvTruncated: true,
			File: &vigilv1.File{Path: "/usr/bin/dash"}, Filename: "/bin/sh"}}},
			`/usr/bin/bash  sh -c "echo $HOME" "" … (as /bin/sh)`},
		{&vigilv1.Event{Kind: "file_modify", Process: proc, Detail: &vigilv1.Event_FileModify{FileModify: &vigilv1.FileModify{
			Op: "rename", File: &vigilv1.File{Path: "/tmp/x"}, NewPath: "/etc/sudoers.d/x"}}}, "rename /tmp/x → /etc/sudoers.d/x"},
		{&vigilv1.Event{Kind: "exit", Process: proc, Detail: &vigilv1.Event_Exit{Exit: &vigilv1.Exit{Signal: 9}}}, "killed by signal 9"},
		{&vigilv1.Event{Kind: "exit", Process: proc, Detail: &vigilv1.Event_Exit{Exit: &vigilv1.Exit{Code: 3}}}, "exit code 3"},
		{&vigilv1.Event{Kind: "image_load", Process: proc, Detail: &vigilv1.Event_ImageLoad{ImageLoad: &vigilv1.ImageLoad{File: &vigilv1.File{Path: "/lib/libc.so.6"}}}}, "maps /lib/libc.so.6"},
		{&vigilv1.Event{Kind: "mem_exec", Process: proc, Detail: &vigilv1.Event_MemExec{MemExec: &vigilv1.MemExec{Syscall: "mprotect", Addr: 0x1000, Len: 4096, Prot: 5, Anonymous: true}}}, "mprotect addr 0x1000 len 4096 prot 0x5 anonymous"},
		{&vigilv1.Event{Kind: "inject", Process: proc, Detail: &vigilv1.Event_Inject{Inject: &vigilv1.Inject{Method: "ptrace_attach", TargetPid: 7, TargetExe: "/usr/sbin/sshd"}}}, "ptrace_attach → pid 7 /usr/sbin/sshd"},
		{&vigilv1.Event{Kind: "kernel", Process: proc, Detail: &vigilv1.Event_Kernel{Kernel: &vigilv1.KernelOp{Op: "bpf_prog_load", BpfProgName: "evil"}}}, "bpf_prog_load prog evil"},
		{&vigilv1.Event{Kind: "gap", Detail: &vigilv1.Event_Gap{Gap: &vigilv1.Gap{Lost: 3, AfterSeq: 9, LostTotal: 4}}}, "LOST 3 events after seq 9 (4 lost since the agent started)"},
		{&vigilv1.Event{Kind: "exec", Process: proc, Verdict: &vigilv1.Verdict{Action: "deny", Rule: "r1", Mode: "enforce", DecidedBy: "lsm"}}, "[deny by rule r1, enforce, lsm]"},
	}
	for _, tt := range tests {
		got := formatEvent(tt.ev)
		if !strings.Contains(got, tt.want) || !strings.HasSuffix(got, "\n") || strings.Count(got, "\n") != 1 {
			t.Errorf("formatEvent(%v) = %q, want it to contain %q", tt.ev, got, tt.want)
		}
	}
}
