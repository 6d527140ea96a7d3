package cli

import (
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/fleet"
	"github.com/vigil-hips/vigil/internal/fleet/console"
	"github.com/vigil-hips/vigil/internal/fleet/fleetdb"
	"github.com/vigil-hips/vigil/internal/fleet/fleetsrv"
	"github.com/vigil-hips/vigil/internal/ocsf"
	"github.com/vigil-hips/vigil/internal/server"
	"github.com/vigil-hips/vigil/internal/sign"
)

// Defaults of `vigil server`.
const (
	defaultServerListen = "0.0.0.0:8443"
	defaultServerState  = "/var/lib/vigil-server"
	defaultAdminSocket  = "/run/vigil-server/admin.sock"
)

func newServerCmd(opts Options) *cobra.Command {
	var (
		listen, stateDir, adminSocket string
		tlsCert, tlsKey               string
		tlsNames                      []string
		signingKey, adminKey          string
		secretFile                    string
		logLevel, logFormat           string
		consoleListen, consolePwFile  string
		database, stream, streamDir   string
		recheck                       time.Duration
		ocsfFile, ocsfWebhook         string
	)
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the fleet server: enrollment, signed rule bundles, events, the approval queue",
		Long: `Run the fleet server in the foreground (docs/fleet.md). Agents connect to
--listen over TLS (mutual TLS once enrolled); administrators use
` + "`vigil fleet`" + ` on --admin-socket. State (an SQLite database, the CA) is in
--state-dir. On first start the server makes its CA: give its ca.pem to
the agents (--fleet-ca).

With --signing-key (the administrator's ed25519 private key) bundles are
signed here as soon as rules change. Without it they wait for
` + "`vigil fleet sign-bundle`" + ` with the key held offline.

Scale-out: replicas share a PostgreSQL database (--database postgres://...)
and a NATS JetStream server (--stream nats://...) that carries the agents'
uploads to the database and the replicas' change notices; every replica
needs the same ca.pem and ca.key in its --state-dir. --stream embedded runs
JetStream in this process for a single server.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			logger, err := newLogger(cmd.ErrOrStderr(), logLevel, logFormat)
			if err != nil {
				return err
			}
			if !filepath.IsAbs(stateDir) {
				return fmt.Errorf("state dir %q: must be an absolute path", stateDir)
			}
			if (tlsCert == "") != (tlsKey == "") {
				return errors.New("--tls-cert and --tls-key go together")
			}
			if err := os.MkdirAll(stateDir, 0o700); err != nil {
				return fmt.Errorf("state dir: %w", err)
			}
			ca, created, err := fleet.LoadOrCreateCA(stateDir, "vigil fleet CA")
			if err != nil {
				return err
			}
			caPath := filepath.Join(stateDir, "ca.pem")
			fp := sha256.Sum256(ca.Cert.Raw)
			if created {
				fmt.Fprintf(cmd.ErrOrStderr(), "vigil server: made a new CA %s (sha256 %s); give it to the agents (--fleet-ca)\n", caPath, hex.EncodeToString(fp[:]))
			}
			var cert tls.Certificate
			if tlsCert != "" {
				if cert, err = tls.LoadX509KeyPair(tlsCert, tlsKey); err != nil {
					return fmt.Errorf("server certificate: %w", err)
				}
			} else {
				names := tlsNames
				if len(names) == 0 {
					host, _, _ := net.SplitHostPort(listen)
					names = []string{"localhost", "127.0.0.1", "::1"}
					if h, err := os.Hostname(); err == nil {
						names = append(names, h)
					}
					if host != "" && host != "0.0.0.0" && host != "::" {
						names = append(names, host)
					}
				}
				if cert, err = ca.ServerCert(names); err != nil {
					return err
				}
			}
			cfg := fleetsrv.Config{CA: ca, Cert: cert, Logger: logger}
			if signingKey != "" {
				if cfg.SigningKey, err = sign.LoadPrivateKey(signingKey); err != nil {
					return fmt.Errorf("signing key: %w", err)
				}
			}
			if adminKey != "" {
				pub, err := sign.LoadPublicKey(adminKey)
				if err != nil {
					return fmt.Errorf("admin key: %w", err)
				}
				cfg.AdminKey = ed25519.PublicKey(pub)
			}
			if ocsfFile != "" || ocsfWebhook != "" {
				exp, err := ocsf.New(ocsf.Config{File: ocsfFile, Webhook: ocsfWebhook, Product: ocsf.Product{Name: "Vigil server", Version: opts.Version}}, logger)
				if err != nil {
					return err
				}
				defer exp.Close(10 * time.Second)
				cfg.Export = func(h fleetdb.Host, evs []*vigilv1.Event) {
					if _, err := exp.Export(ocsf.Host{ID: h.ID, Hostname: h.Hostname}, evs); err != nil {
						logger.Error("ocsf export", "host", h.ID, "err", err)
					}
				}
				logger.Info("ocsf export on", "file", ocsfFile, "webhook", ocsfWebhook)
			}
			be, err := openBackends(cmd.Context(), backendFlags{database: database, stream: stream,
				streamDir: streamDir, stateDir: stateDir, recheck: recheck, recheckSet: cmd.Flags().Changed("watch-recheck")}, logger)
			if err != nil {
				return err
			}
			defer be.close()
			cfg.Store, cfg.Sink, cfg.Recheck = be.store, be.sink, be.recheck
			if be.conn != nil {
				cfg.Notices = be.conn
			}
			srv, err := fleetsrv.New(cfg)
			if err != nil {
				return err
			}
			if err := be.start(cmd.Context(), srv, logger); err != nil {
				return err
			}
			if secretFile != "" {
				b, err := os.ReadFile(secretFile)
				if err != nil {
					return fmt.Errorf("enrollment secret: %w", err)
				}
				if err := srv.AddSecret(cmd.Context(), "file:"+secretFile, strings.TrimSpace(string(b))); err != nil {
					return err
				}
			}
			if consoleListen != "" {
				_, stopConsole, err := console.Start(cmd.Context(), console.Options{Listen: consoleListen, Cert: cert, StateDir: stateDir,
					PasswordPath: consolePwFile, Admin: srv.AdminGRPCServer(), Notice: cmd.ErrOrStderr(), Logger: logger})
				switch {
				case err == nil:
					defer stopConsole()
				case errors.Is(err, console.ErrListen) && !cmd.Flags().Changed("console-listen"):
					// The default address is taken: serve the agents all the same.
					logger.Error("console not started: set --console-listen", "err", err)
				default:
					return err
				}
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return err
			}
			aln, err := server.Listen(adminSocket)
			if err != nil {
				ln.Close()
				return fmt.Errorf("admin socket: %w", err)
			}
			defer os.Remove(adminSocket)
			mode := "offline signing (vigil fleet sign-bundle)"
			if cfg.SigningKey != nil {
				mode = "online signing (--signing-key)"
			}
			logger.Info("fleet server serving", "listen", ln.Addr().String(), "admin_socket", adminSocket, "state_dir", stateDir,
				"ca", caPath, "ca_sha256", hex.EncodeToString(fp[:]), "bundles", mode, "database", be.dbName, "stream", be.streamName,
				"watch_recheck", be.recheck)
			return srv.Serve(cmd.Context(), ln, aln)
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "listen", defaultServerListen, "address agents connect to (TLS)")
	f.StringVar(&stateDir, "state-dir", defaultServerState, "directory of the database and the CA")
	f.StringVar(&adminSocket, "admin-socket", defaultAdminSocket, "unix socket of the admin API (vigil fleet)")
	f.StringVar(&tlsCert, "tls-cert", "", "server certificate (PEM) instead of one made by the server's CA")
	f.StringVar(&tlsKey, "tls-key", "", "key of --tls-cert")
	f.StringSliceVar(&tlsNames, "tls-name", nil, "DNS name or IP for the server certificate the CA makes (repeatable; default: localhost, loopback, the hostname, the --listen host)")
	f.StringVar(&signingKey, "signing-key", "", "administrator ed25519 private key: sign bundles on the server (default: bundles wait for vigil fleet sign-bundle)")
	f.StringVar(&adminKey, "admin-key", "", "administrator ed25519 public key: bundles signed offline must verify with it")
	f.StringVar(&secretFile, "enroll-secret-file", "", "accept the enrollment secret in this file (besides those made by vigil fleet secret create)")
	f.StringVar(&consoleListen, "console-listen", "127.0.0.1:8444", "address of the web console (HTTPS, the server's certificate; empty: no console)")
	f.StringVar(&consolePwFile, "console-password-file", "", "the console administrator's password (default: "+console.PasswordFile+" in --state-dir, made at first start)")
	f.StringVar(&database, "database", "", "where state lives: empty for the embedded SQLite file in --state-dir, or postgres://USER@HOST/DB?... (PostgreSQL, shared by replicas)")
	f.StringVar(&stream, "stream", "", "event stream: empty for none (uploads go straight to the database), embedded (NATS JetStream in this process), or nats://HOST:PORT (shared by replicas)")
	f.StringVar(&streamDir, "stream-dir", "", "JetStream storage of --stream embedded (default: STATE_DIR/stream)")
	f.DurationVar(&recheck, "watch-recheck", 0, "re-read each watching host's bundle this often without a change notice (default: off with SQLite, 2s with PostgreSQL and no stream, 30s with a NATS stream)")
	f.StringVar(&ocsfFile, "ocsf-file", "", "export uploaded events as OCSF, one JSON object a line, appended to this file")
	f.StringVar(&ocsfWebhook, "ocsf-webhook", "", "export uploaded events as OCSF: POST JSON arrays (batched, retried) to this http(s) URL")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn or error")
	f.StringVar(&logFormat, "log-format", "text", "log format: text or json")
	return cmd
}
