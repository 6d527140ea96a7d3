package console

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	fleetv1 "github.com/vigil-hips/vigil/api/vigil/fleet/v1"
)

// ErrListen is Start's error when it cannot listen on its address.
var ErrListen = errors.New("console cannot listen")

// PasswordFile is the administrator password the server makes at first
// start, in its state directory (mode 0600).
const PasswordFile = "console-password"

// LoadOrCreatePassword returns the password in path; when path does not
// exist and create is set, it writes a new random password there (mode
// 0600) and reports created.
func LoadOrCreatePassword(path string, create bool) (password string, created bool, err error) {
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		pw := strings.TrimRight(string(b), "\r\n")
		if len(pw) < minPasswordSize {
			return "", false, fmt.Errorf("console password in %s: shorter than %d characters", path, minPasswordSize)
		}
		return pw, false, nil
	case !errors.Is(err, os.ErrNotExist) || !create:
		return "", false, fmt.Errorf("console password: %w", err)
	}
	raw := make([]byte, 18)
	if _, err := rand.Read(raw); err != nil {
		return "", false, err
	}
	pw := base64.RawURLEncoding.EncodeToString(raw) // 24 characters, 144 bits
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", false, fmt.Errorf("console password: %w", err)
	}
	if _, err := f.WriteString(pw + "\n"); err != nil {
		f.Close()
		os.Remove(path)
		return "", false, fmt.Errorf("console password: %w", err)
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return "", false, fmt.Errorf("console password: %w", err)
	}
	return pw, true, nil
}

// InProcess serves admin (a FleetAdmin gRPC server, such as
// fleetsrv.Server.AdminGRPCServer) on an in-memory connection and returns
// a client of it: the console goes through the same API, interceptors and
// all, as `vigil fleet` on the unix socket, without a socket. stop ends
// both.
func InProcess(admin *grpc.Server) (client fleetv1.FleetAdminClient, stop func(), err error) {
	ln := bufconn.Listen(1 << 20)
	go func() { _ = admin.Serve(ln) }()
	conn, err := grpc.NewClient("passthrough:///fleet-admin",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return ln.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		admin.Stop()
		return nil, nil, err
	}
	return fleetv1.NewFleetAdminClient(conn), func() { conn.Close(); admin.Stop() }, nil
}

// Options are what `vigil server` starts the console with.
type Options struct {
	// Listen is the console's address (HTTPS).
	Listen string
	// Cert is the TLS certificate (the server's).
	Cert tls.Certificate
	// StateDir holds PasswordFile when PasswordPath is empty.
	StateDir string
	// PasswordPath is a file holding the administrator password. Empty:
	// StateDir/console-password, made at first start.
	PasswordPath string
	// Admin is the FleetAdmin gRPC server the console acts through.
	Admin *grpc.Server
	// Notice gets the first-start message (where the password is).
	Notice io.Writer
	Logger *slog.Logger
}

// Start starts the console on o.Listen; it serves until ctx is done or
// stop is called. addr is where it listens.
func Start(ctx context.Context, o Options) (addr net.Addr, stop func(), err error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	path, create := o.PasswordPath, false
	if path == "" {
		path, create = filepath.Join(o.StateDir, PasswordFile), true
	}
	pw, created, err := LoadOrCreatePassword(path, create)
	if err != nil {
		return nil, nil, err
	}
	if created && o.Notice != nil {
		fmt.Fprintf(o.Notice, "vigil server: made the console's administrator password in %s (mode 0600): log in with it at https://%s/\n", path, o.Listen)
	}
	client, stopAdmin, err := InProcess(o.Admin)
	if err != nil {
		return nil, nil, err
	}
	c, err := New(Config{Admin: client, Password: pw, Logger: log})
	if err != nil {
		stopAdmin()
		return nil, nil, err
	}
	ln, err := net.Listen("tcp", o.Listen)
	if err != nil {
		stopAdmin()
		return nil, nil, fmt.Errorf("%w: %w", ErrListen, err)
	}
	hs := &http.Server{Handler: c, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
		WriteTimeout: 60 * time.Second, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 64 << 10,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{o.Cert}, MinVersion: tls.VersionTLS12},
		ErrorLog:  slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	go func() {
		if err := hs.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("console stopped", "err", err)
		}
	}()
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		<-ctx.Done()
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		_ = hs.Shutdown(sctx)
		stopAdmin()
		close(done)
	}()
	log.Info("console serving", "listen", ln.Addr().String(), "password_file", path)
	return ln.Addr(), func() { cancel(); <-done }, nil
}
