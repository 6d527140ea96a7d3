package tamper

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vigil-hips/vigil/internal/testutil"
)

// The test binary doubles as a stand-in agent (TAMPER_HELPER=agent): it
// starts a guard with pinning, prints what it got, then on a line from
// stdin either dies without cleaning up ("crash") or stops properly
// ("stop").
func TestMain(m *testing.M) {
	if os.Getenv("TAMPER_HELPER") == "agent" {
		os.Exit(helperAgent())
	}
	os.Exit(m.Run())
}

type helperReport struct {
	Adopted  bool     `json:"adopted"`
	Links    []uint32 `json:"links"`
	Warnings []string `json:"warnings,omitempty"`
	Err      string   `json:"err,omitempty"`
}

func helperAgent() int {
	g, err := Start(context.Background(), Config{
		AgentPID: os.Getpid(),
		Files:    []string{os.Getenv("TAMPER_FILE")},
		PinDir:   os.Getenv("TAMPER_PIN_DIR"),
		NoCgroup: true,
	})
	enc := json.NewEncoder(os.Stdout)
	if err != nil {
		enc.Encode(helperReport{Err: err.Error()})
		return 1
	}
	links := slices.Clone(g.Own().Links)
	slices.Sort(links)
	enc.Encode(helperReport{Adopted: g.Adopted(), Links: links, Warnings: g.Warnings()})
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		switch sc.Text() {
		case "crash":
			return 3 // no Close, no Release: as if killed
		case "stop":
			g.Close()
			fmt.Println("closed")
			return 0
		}
	}
	return 2
}

type helper struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	out    *bufio.Reader
	report helperReport
}

func startHelper(t *testing.T, file, pinDir string) *helper {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), "TAMPER_HELPER=agent", "TAMPER_FILE="+file, "TAMPER_PIN_DIR="+pinDir)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &helper{cmd: cmd, stdin: stdin, out: bufio.NewReader(stdout)}
	line, err := h.out.ReadString('\n')
	if err != nil {
		t.Fatalf("helper agent: %v", err)
	}
	if err := json.Unmarshal([]byte(line), &h.report); err != nil {
		t.Fatalf("helper agent said %q: %v", line, err)
	}
	if h.report.Err != "" {
		t.Fatalf("helper agent: %s", h.report.Err)
	}
	return h
}

func (h *helper) send(t *testing.T, cmd string) {
	t.Helper()
	if _, err := io.WriteString(h.stdin, cmd+"\n"); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- h.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatalf("helper agent did not end on %q", cmd)
	}
}

// sh runs a shell command as a process that is not the agent and does
// not run its binary (busybox in the VM).
func sh(script string) error {
	out, err := exec.Command("/bin/sh", "-c", script).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// TestPinnedProtectionOutlivesTheAgent: an agent that dies without
// cleaning up leaves its protection in force (pinned links never
// detached); a restarted agent adopts the same links (no gap) and is the
// one protected; an authorized stop removes the pins and the protection.
func TestPinnedProtectionOutlivesTheAgent(t *testing.T) {
	testutil.RequireBPFLSM(t)
	testutil.RequireVM(t)
	pinDir := DefaultPinDir
	file := t.TempDir() + "/protected"
	if err := os.WriteFile(file, []byte("v1\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	h1 := startHelper(t, file, pinDir)
	if h1.report.Adopted || len(h1.report.Links) == 0 || len(h1.report.Warnings) > 0 {
		t.Fatalf("first agent: %+v, want a fresh load without warnings", h1.report)
	}
	if _, err := os.Stat(pinDir + "/map_" + tamperobjMapTamperConfig); err != nil {
		t.Fatalf("not pinned: %v", err)
	}
	if err := sh("echo x > " + file); err == nil {
		t.Fatal("protected file written while the agent runs")
	}
	if err := sh(fmt.Sprintf("kill -9 %d", h1.cmd.Process.Pid)); err == nil {
		t.Fatal("agent killed")
	}

	h1.send(t, "crash")
	// Dead, not stopped: the pins hold the protection.
	if err := sh("echo x > " + file); err == nil {
		t.Error("protected file written after the agent died: protection ended with it")
	}
	if err := sh("rm -f " + pinDir + "/map_" + tamperobjMapTamperConfig); err == nil {
		t.Error("pin removed after the agent died")
	}
	if _, err := os.Stat(pinDir + "/map_" + tamperobjMapTamperConfig); err != nil {
		t.Fatalf("pins gone: %v", err)
	}

	h2 := startHelper(t, file, pinDir)
	if !h2.report.Adopted {
		t.Fatalf("second agent did not adopt the pins: %+v", h2.report)
	}
	if !slices.Equal(h1.report.Links, h2.report.Links) {
		t.Errorf("links %v after adoption, want the same %v (no detach, no gap)", h2.report.Links, h1.report.Links)
	}
	if err := sh(fmt.Sprintf("kill -STOP %d", h2.cmd.Process.Pid)); err == nil {
		sh(fmt.Sprintf("kill -CONT %d", h2.cmd.Process.Pid))
		t.Error("adopting agent stopped by a signal: it is not the protected one")
	}
	if err := sh("echo x > " + file); err == nil {
		t.Error("protected file written after adoption")
	}

	h2.send(t, "stop")
	if _, err := os.Stat(pinDir); err == nil {
		t.Errorf("%s still there after an authorized stop", pinDir)
	}
	if err := sh("echo x > " + file); err != nil {
		t.Errorf("file still protected after an authorized stop: %v", err)
	}
}
