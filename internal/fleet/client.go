package fleet

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	fleetv1 "github.com/vigil-hips/vigil/api/vigil/fleet/v1"
)

// Files of an agent's fleet state directory (StateDir/fleet).
const (
	CertFile    = "host.pem"    // the host's client certificate
	KeyFile     = "host.key"    // its key; never leaves the host
	BundleFile  = "bundle.json" // the last bundle applied (its envelope)
	VersionFile = "version"     // the highest bundle version applied
	HostFile    = "host-id"     // the host id the credential names
)

// Enrollment is what an agent enrolls with.
type Enrollment struct {
	Server     string // host:port
	CAFile     string // the server's CA (pinned)
	SecretFile string
	HostID     string
	Hostname   string
	Tags       []string
}

// Credential is an enrolled host's certificate and key.
type Credential struct {
	HostID string
	Cert   tls.Certificate
}

// LoadOrEnroll loads the credential kept in dir, or enrolls and keeps it
// there. A kept credential for another host id is an error (the machine
// id changed: remove dir to enroll again).
func LoadOrEnroll(ctx context.Context, dir string, e Enrollment) (cred *Credential, enrolled bool, err error) {
	certPath, keyPath := filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile)
	if _, err := os.Stat(certPath); err == nil {
		cert, err := tls.LoadX509KeyPair(certPath, keyPath)
		if err != nil {
			return nil, false, fmt.Errorf("fleet credential: %w", err)
		}
		leaf, err := x509.ParseCertificate(cert.Certificate[0])
		if err != nil {
			return nil, false, fmt.Errorf("fleet credential: %w", err)
		}
		if leaf.Subject.CommonName != e.HostID {
			return nil, false, fmt.Errorf("fleet credential in %s is for host %q, this host is %q: remove %s to enroll again",
				dir, leaf.Subject.CommonName, e.HostID, dir)
		}
		return &Credential{HostID: e.HostID, Cert: cert}, false, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, false, fmt.Errorf("fleet credential: %w", err)
	}
	cred, err = Enroll(ctx, e)
	if err != nil {
		return nil, false, err
	}
	key, err := x509.MarshalPKCS8PrivateKey(cred.Cert.PrivateKey)
	if err != nil {
		return nil, false, err
	}
	certPEM, keyPEM := pemEncode("CERTIFICATE", cred.Cert.Certificate[0]), pemEncode("PRIVATE KEY", key)
	if err := WriteFileAtomic(keyPath, keyPEM, 0o600); err != nil {
		return nil, false, fmt.Errorf("fleet credential: %w", err)
	}
	if err := WriteFileAtomic(certPath, certPEM, 0o644); err != nil {
		return nil, false, fmt.Errorf("fleet credential: %w", err)
	}
	return cred, true, nil
}

// Enroll enrolls with the server and returns the new credential (not
// stored).
func Enroll(ctx context.Context, e Enrollment) (*Credential, error) {
	secret, err := os.ReadFile(e.SecretFile)
	if err != nil {
		return nil, fmt.Errorf("enrollment secret: %w", err)
	}
	key, pub, err := NewHostKey()
	if err != nil {
		return nil, err
	}
	conn, err := Dial(e.Server, e.CAFile, nil)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	resp, err := fleetv1.NewFleetClient(conn).Enroll(ctx, &fleetv1.EnrollRequest{Secret: strings.TrimSpace(string(secret)),
		HostId: e.HostID, Hostname: e.Hostname, Tags: e.Tags, PublicKey: pub})
	if err != nil {
		return nil, fmt.Errorf("enroll with %s: %w", e.Server, err)
	}
	return &Credential{HostID: e.HostID, Cert: tls.Certificate{Certificate: [][]byte{resp.GetCertificate()}, PrivateKey: key}}, nil
}

// Dial connects to the fleet server at addr, trusting only the CA in
// caFile, presenting cred's certificate when given.
func Dial(addr, caFile string, cred *Credential) (*grpc.ClientConn, error) {
	pool, err := CertPool(caFile)
	if err != nil {
		return nil, fmt.Errorf("fleet CA: %w", err)
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("fleet server %q: want host:port: %w", addr, err)
	}
	tc := &tls.Config{RootCAs: pool, ServerName: host, MinVersion: tls.VersionTLS13}
	if cred != nil {
		tc.Certificates = []tls.Certificate{cred.Cert}
	}
	return grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tc)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}))
}
