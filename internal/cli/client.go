package cli

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
)

// client is a connection to the agent API.
type client struct {
	vigilv1.AgentClient
	socket string
	conn   *grpc.ClientConn
}

// dial prepares a connection to the agent at socket; the connection is
// made by the first call.
func dial(socket string) (*client, error) {
	abs, err := filepath.Abs(socket)
	if err != nil {
		return nil, fmt.Errorf("socket %s: %w", socket, err)
	}
	conn, err := grpc.NewClient("unix://"+abs, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("agent socket %s: %w", socket, err)
	}
	return &client{AgentClient: vigilv1.NewAgentClient(conn), socket: socket, conn: conn}, nil
}

func (c *client) Close() error { return c.conn.Close() }

// explain turns an API error into one that says what to do.
func (c *client) explain(err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	switch st.Code() {
	case codes.Unavailable:
		_, serr := os.Stat(c.socket)
		switch {
		case errors.Is(serr, fs.ErrNotExist):
			return fmt.Errorf("no agent is running: %s does not exist (start one with `vigil agent` or `systemctl start vigil`)", c.socket)
		case errors.Is(serr, fs.ErrPermission) || strings.Contains(st.Message(), "permission denied"):
			return fmt.Errorf("cannot connect to the agent at %s: permission denied (the API is for root)", c.socket)
		case strings.Contains(st.Message(), "connection refused"):
			return fmt.Errorf("no agent is listening on %s (a stale socket: start the agent)", c.socket)
		}
		return fmt.Errorf("cannot reach the agent at %s: %s", c.socket, st.Message())
	case codes.Canceled:
		return context.Canceled
	case codes.DeadlineExceeded:
		return fmt.Errorf("the agent at %s did not answer in time", c.socket)
	}
	return fmt.Errorf("agent: %s", st.Message())
}
