package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/vigil-hips/vigil/internal/fleet/fleetdb"
	"github.com/vigil-hips/vigil/internal/fleet/fleetsrv"
	"github.com/vigil-hips/vigil/internal/fleet/fleetstream"
)

type backendFlags struct {
	database, stream, streamDir, stateDir string
	recheck                               time.Duration
	recheckSet                            bool
}

// backends are what `vigil server` stores in and streams through.
type backends struct {
	store              fleetdb.Store
	sink               fleetdb.EventSink
	recheck            time.Duration
	dbName, streamName string

	db     interface{ Close() error }
	ns     *server.Server
	conn   *fleetstream.Conn
	wg     sync.WaitGroup
	cancel context.CancelFunc
}

// openBackends opens the database (SQLite in the state directory, or
// PostgreSQL) and the stream (none, embedded NATS, or external NATS).
func openBackends(ctx context.Context, f backendFlags, log *slog.Logger) (*backends, error) {
	be := &backends{}
	var analytics fleetdb.EventSink
	switch {
	case f.database == "" || f.database == "sqlite":
		path := filepath.Join(f.stateDir, fleetdb.FileName)
		db, err := fleetdb.OpenSQLite(ctx, path)
		if err != nil {
			return nil, err
		}
		be.db, be.store, analytics, be.dbName = db, db, db, "sqlite:"+path
	case strings.HasPrefix(f.database, "postgres://") || strings.HasPrefix(f.database, "postgresql://"):
		db, err := fleetdb.OpenPostgres(ctx, f.database)
		if err != nil {
			return nil, err
		}
		be.db, be.store, analytics, be.dbName = db, db, db, "postgres"
		be.recheck = 2 * time.Second
	default:
		return nil, fmt.Errorf("--database %q: want empty (SQLite in --state-dir) or postgres://...", f.database)
	}
	be.sink = analytics
	switch {
	case f.stream == "":
		be.streamName = "none"
	case f.stream == "embedded" || strings.HasPrefix(f.stream, "nats://"):
		var url string
		if f.stream == "embedded" {
			dir := f.streamDir
			if dir == "" {
				dir = filepath.Join(f.stateDir, "stream")
			}
			ns, err := fleetstream.Embedded(dir)
			if err != nil {
				be.close()
				return nil, err
			}
			be.ns, be.streamName = ns, "embedded:"+dir
		} else {
			url, be.streamName = f.stream, f.stream
		}
		conn, err := fleetstream.Connect(ctx, url, be.ns, "vigil server")
		if err != nil {
			be.close()
			return nil, err
		}
		be.conn = conn
		be.sink = &fleetstream.Sink{C: conn, Store: analytics}
		be.recheck = 30 * time.Second
	default:
		be.close()
		return nil, fmt.Errorf("--stream %q: want empty, embedded or nats://HOST:PORT", f.stream)
	}
	if f.recheckSet {
		if f.recheck < 0 {
			be.close()
			return nil, errors.New("--watch-recheck: must not be negative")
		}
		be.recheck = f.recheck
	}
	return be, nil
}

// start subscribes srv to the other replicas' change notices and starts
// applying the stream to the analytics store.
func (be *backends) start(ctx context.Context, srv *fleetsrv.Server, log *slog.Logger) error {
	if be.conn == nil {
		return nil
	}
	if _, err := be.conn.OnChanged(srv.Wake); err != nil {
		return err
	}
	cons, err := be.conn.Consumer(ctx)
	if err != nil {
		return err
	}
	analytics := be.sink.(*fleetstream.Sink).Store
	ctx, be.cancel = context.WithCancel(ctx)
	be.wg.Go(func() { be.conn.Apply(ctx, cons, analytics, &fleetstream.Stats{}, log) })
	return nil
}

func (be *backends) close() {
	if be.cancel != nil {
		be.cancel()
	}
	be.wg.Wait()
	if be.conn != nil {
		be.conn.Close()
	}
	if be.ns != nil {
		be.ns.Shutdown()
		be.ns.WaitForShutdown()
	}
	if be.db != nil {
		be.db.Close()
	}
}
