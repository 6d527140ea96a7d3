// Package pgtest runs a private PostgreSQL cluster for a test (or the
// benchmark): Debian's
// postgresql package (installed when missing and the test runs as root,
// as `make deps` does), initdb and pg_ctl in a temporary directory, as
// the unprivileged user nobody when the test runs as root (PostgreSQL
// refuses to run as root), listening on a unix socket in that directory
// only. The cluster is stopped and removed when the test ends.
//
// A test skips, saying why, only when PostgreSQL is not installed and
// cannot be (no network, not root); any other failure fails the test.
package pgtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Cluster is a running PostgreSQL cluster.
type Cluster struct {
	Dir    string // data directory and socket directory's parent
	Socket string // the directory of the unix socket
	User   string // the database superuser (the OS user it runs as)
	root   string
	bin    string
	cred   *syscall.Credential
}

var (
	installOnce sync.Once
	installErr  error
)

// binDir finds the directory of initdb and pg_ctl: PATH, then Debian's
// /usr/lib/postgresql/VERSION/bin (the newest).
func binDir() (string, error) {
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		if _, err := exec.LookPath("initdb"); err == nil {
			if r, err := filepath.EvalSymlinks(p); err == nil {
				return filepath.Dir(r), nil
			}
			return filepath.Dir(p), nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	return "", errors.New("initdb and pg_ctl not found (Debian package postgresql)")
}

func version(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

// installPackage installs Debian's postgresql package (root only), without
// starting its service.
func installPackage() error {
	if os.Geteuid() != 0 {
		return errors.New("not root: cannot apt-get install postgresql")
	}
	// policy-rc.d exit 101: maintainer scripts start no service.
	const prc = "/usr/sbin/policy-rc.d"
	if _, err := os.Stat(prc); errors.Is(err, os.ErrNotExist) {
		if err := os.WriteFile(prc, []byte("#!/bin/sh\nexit 101\n"), 0o755); err == nil {
			defer os.Remove(prc)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	for _, args := range [][]string{{"update", "-qq"}, {"install", "-y", "-qq", "postgresql"}} {
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("apt-get %s: %v: %s", args[0], err, lastLines(out, 5))
		}
	}
	return nil
}

func lastLines(b []byte, n int) []byte {
	lines := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return bytes.Join(lines, []byte("\n"))
}

// ErrUnavailable: PostgreSQL is not installed and could not be.
var ErrUnavailable = errors.New("PostgreSQL unavailable")

// Start runs a new cluster for t and returns it; it is stopped and
// removed when t ends. The test skips only when PostgreSQL is
// unavailable; any other failure fails it.
func Start(t testing.TB) *Cluster {
	t.Helper()
	c, err := StartCluster(true)
	if errors.Is(err, ErrUnavailable) {
		t.Skipf("%v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Errorf("%v", err)
		}
	})
	return c
}

// StartCluster runs a new cluster in a new temporary directory;
// install: apt-get install postgresql when it is missing (root only).
// Stop stops it and removes the directory.
func StartCluster(install bool) (*Cluster, error) {
	bin, err := binDir()
	if err != nil {
		if !install {
			return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		installOnce.Do(func() { installErr = installPackage() })
		if installErr != nil {
			return nil, fmt.Errorf("%w: not installed and could not be installed (%v); %v", ErrUnavailable, installErr, err)
		}
		if bin, err = binDir(); err != nil {
			return nil, fmt.Errorf("postgresql installed, but: %w", err)
		}
	}
	c := &Cluster{bin: bin}
	dir, err := os.MkdirTemp("", "vigil-pg-")
	if err != nil {
		return nil, err
	}
	c.root = dir
	fail := func(err error) (*Cluster, error) { os.RemoveAll(dir); return nil, err }
	c.Dir, c.Socket = filepath.Join(dir, "data"), dir
	if os.Geteuid() == 0 {
		u, err := user.Lookup("nobody")
		if err != nil {
			return fail(fmt.Errorf("user nobody: %w", err))
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		c.cred, c.User = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, "nobody"
		if err := os.Chown(dir, uid, gid); err != nil {
			return fail(err)
		}
	} else {
		u, err := user.Current()
		if err != nil {
			return fail(err)
		}
		c.User = u.Username
	}
	// nobody must reach the directory (MkdirTemp makes it 0700).
	if err := os.Chmod(dir, 0o755); err != nil {
		return fail(err)
	}
	if out, err := c.run("initdb", "-D", c.Dir, "-U", c.User, "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C.UTF-8"); err != nil {
		return fail(fmt.Errorf("initdb: %v\n%s", err, out))
	}
	logFile := filepath.Join(dir, "postgres.log")
	// No TCP: the unix socket in dir only. fsync off: test data.
	opts := fmt.Sprintf("-c listen_addresses='' -c unix_socket_directories='%s' -c fsync=off -c full_page_writes=off "+
		"-c synchronous_commit=off -c max_connections=200 -c shared_buffers=64MB", c.Socket)
	if out, err := c.run("pg_ctl", "-D", c.Dir, "-l", logFile, "-o", opts, "-w", "-t", "60", "start"); err != nil {
		log, _ := os.ReadFile(logFile)
		return fail(fmt.Errorf("pg_ctl start: %v\n%s\n%s", err, out, log))
	}
	return c, nil
}

// Stop stops the cluster and removes its directory.
func (c *Cluster) Stop() error {
	defer os.RemoveAll(c.root)
	if out, err := c.run("pg_ctl", "-D", c.Dir, "-m", "immediate", "-w", "stop"); err != nil {
		return fmt.Errorf("pg_ctl stop: %v\n%s", err, out)
	}
	return nil
}

func (c *Cluster) run(name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(c.bin, name), args...)
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LANG=C.UTF-8"}
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
	return cmd.CombinedOutput()
}

// CreateDB makes a new database and returns its URL.
func (c *Cluster) CreateDB(t testing.TB, name string) string {
	t.Helper()
	url, err := c.NewDB(name)
	if err != nil {
		t.Fatal(err)
	}
	return url
}

// NewDB makes a new database and returns its URL.
func (c *Cluster) NewDB(name string) (string, error) {
	if out, err := c.run("createdb", "-h", c.Socket, "-U", c.User, name); err != nil {
		// createdb may live in the client package's bin directory only.
		if out2, err2 := c.runPath("createdb", "-h", c.Socket, "-U", c.User, name); err2 != nil {
			return "", fmt.Errorf("createdb %s: %v\n%s\n%v\n%s", name, err, out, err2, out2)
		}
	}
	return c.URL(name), nil
}

func (c *Cluster) runPath(name string, args ...string) ([]byte, error) {
	p, err := exec.LookPath(name)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(p, args...)
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
	return cmd.CombinedOutput()
}

// URL is the connection URL of database name on the cluster's socket.
func (c *Cluster) URL(name string) string {
	return fmt.Sprintf("postgres://%s@/%s?host=%s&sslmode=disable", c.User, name, c.Socket)
}
