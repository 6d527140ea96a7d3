package filter

import (
	"context"
	"errors"
	"fmt"
	"net"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// peerCreds is gRPC transport "security" for a unix socket: no encryption
// (the socket is local and mode 0600), but the handshake records who
// connected (SO_PEERCRED), which is how clients are identified.
type peerCreds struct{}

// PeerInfo is the connecting process, as the kernel saw it at connect.
type PeerInfo struct {
	credentials.CommonAuthInfo
	PID      int32
	UID, GID uint32
}

func (PeerInfo) AuthType() string { return "peercred" }

func (peerCreds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil, nil, errors.New("filter: not a unix socket connection")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, nil, err
	}
	var cred *unix.Ucred
	var serr error
	if err := raw.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, nil, err
	}
	if serr != nil {
		return nil, nil, fmt.Errorf("filter: SO_PEERCRED: %w", serr)
	}
	return c, PeerInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity},
		PID: cred.Pid, UID: cred.Uid, GID: cred.Gid}, nil
}

func (peerCreds) ClientHandshake(_ context.Context, _ string, c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return c, PeerInfo{}, nil
}

func (peerCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}

func (peerCreds) Clone() credentials.TransportCredentials { return peerCreds{} }

func (peerCreds) OverrideServerName(string) error { return nil }

// peerOf returns the connecting process of a call.
func peerOf(ctx context.Context) (PeerInfo, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return PeerInfo{}, errors.New("no peer")
	}
	pi, ok := p.AuthInfo.(PeerInfo)
	if !ok || pi.PID <= 0 {
		return PeerInfo{}, errors.New("peer credentials unavailable")
	}
	return pi, nil
}
