package testworkload

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// MemfdExec copies src (a copy of the workload binary) into a memfd and
// executes it with execveat(AT_EMPTY_PATH), as fexecve does, in a process
// of its own. It returns nil when the image ran (in "noop" mode) and the
// exec's errno when the exec failed.
func MemfdExec(src string) error {
	cmd := exec.Command(self())
	cmd.Env = append(os.Environ(), envMode+"=memfd-exec", "VIGIL_TW_SRC="+src)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if msg, ok := strings.CutPrefix(strings.TrimSpace(stderr.String()), "execveat: "); ok {
		if msg == syscall.EPERM.Error() {
			return syscall.EPERM
		}
		return fmt.Errorf("execveat: %s", msg)
	}
	if err != nil {
		return fmt.Errorf("memfd-exec workload: %w: %s", err, stderr.String())
	}
	return nil
}

// memfdExec is the "memfd-exec" mode: it does not return.
func memfdExec(src string) {
	fail := func(what string, err error) {
		fmt.Fprintf(os.Stderr, "%s: %v\n", what, err)
		os.Exit(3)
	}
	fd, err := unix.MemfdCreate("vigil-test", 0)
	if err != nil {
		fail("memfd_create", err)
	}
	in, err := os.Open(src)
	if err != nil {
		fail("open", err)
	}
	mf := os.NewFile(uintptr(fd), "memfd")
	if _, err := io.Copy(mf, in); err != nil {
		fail("copy", err)
	}
	argv := []string{"memfd"}
	// The mode is replaced, not added: the first of two equal names wins.
	env := []string{envMode + "=noop"}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, envMode+"=") {
			env = append(env, kv)
		}
	}
	argvp, _ := syscall.SlicePtrFromStrings(argv)
	envp, _ := syscall.SlicePtrFromStrings(env)
	empty, _ := unix.BytePtrFromString("")
	_, _, errno := unix.Syscall6(unix.SYS_EXECVEAT, uintptr(fd), uintptr(unsafePointer(empty)),
		uintptr(unsafePointer(&argvp[0])), uintptr(unsafePointer(&envp[0])), unix.AT_EMPTY_PATH, 0)
	fail("execveat", errno)
}
