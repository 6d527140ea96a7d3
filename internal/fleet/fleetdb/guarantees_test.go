package fleetdb_test

import (
	"context"
	"database/sql"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/fleet/fleetdb"
	"github.com/vigil-hips/vigil/internal/testutil/pgtest"
)

func sameGuarantees(a, b []*vigilv1.Guarantee) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !proto.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

// checkGuarantees: the guarantees an agent reports are stored with the
// host, returned by Host and Hosts, and replaced by its next report.
func checkGuarantees(t *testing.T, db fleetdb.Store) {
	t.Helper()
	ctx := context.Background()
	now := time.Now()
	if _, err := db.Enroll(ctx, fleetdb.Host{ID: "g", Hostname: "guar", CertSerial: "1", Enrolled: now}); err != nil {
		t.Fatal(err)
	}
	if h, err := db.Host(ctx, "g"); err != nil || len(h.Guarantees) != 0 {
		t.Fatalf("before any report: %+v %v", h.Guarantees, err)
	}
	first := []*vigilv1.Guarantee{
		{Control: "exec", Level: "synchronous block", Why: "BPF LSM <bprm_check_security>"},
		{Control: "file_write", Level: "observe only", Why: `no BPF LSM & "quotes"`},
	}
	if err := db.Seen(ctx, "g", fleetdb.Report{Backend: "lsm", Guarantees: first}, now); err != nil {
		t.Fatal(err)
	}
	hs, err := db.Hosts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(hs, func(h fleetdb.Host) bool { return h.ID == "g" })
	if i < 0 || !sameGuarantees(hs[i].Guarantees, first) || hs[i].Backend != "lsm" {
		t.Fatalf("hosts after a report: %+v", hs)
	}
	second := []*vigilv1.Guarantee{{Control: "exec", Level: "not provided", Why: "no fanotify mark"}}
	if err := db.Seen(ctx, "g", fleetdb.Report{Guarantees: second}, now); err != nil {
		t.Fatal(err)
	}
	if h, err := db.Host(ctx, "g"); err != nil || !sameGuarantees(h.Guarantees, second) {
		t.Fatalf("after a second report: %+v %v", h.Guarantees, err)
	}
}

func TestGuaranteesSQLite(t *testing.T) {
	ctx := context.Background()
	db, path := open(t)
	checkGuarantees(t, db)
	db.Close()
	db2, err := fleetdb.OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	if h, err := db2.Host(ctx, "g"); err != nil || len(h.Guarantees) != 1 || h.Guarantees[0].GetLevel() != "not provided" {
		t.Fatalf("after reopen: %+v %v", h.Guarantees, err)
	}

	// An old database: the hosts table without the guarantees column.
	old := filepath.Join(t.TempDir(), "old.db")
	raw, err := sql.Open("sqlite", old)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Exec(`CREATE TABLE hosts (id TEXT PRIMARY KEY, hostname TEXT NOT NULL, tags TEXT NOT NULL,
		enrolled_ns INTEGER NOT NULL, last_seen_ns INTEGER NOT NULL, revoked INTEGER NOT NULL DEFAULT 0, cert_serial TEXT NOT NULL,
		applied_version INTEGER NOT NULL DEFAULT 0, agent_version TEXT NOT NULL DEFAULT '', backend TEXT NOT NULL DEFAULT '',
		exec_mode TEXT NOT NULL DEFAULT '', kernel_lost INTEGER NOT NULL DEFAULT 0, last_event_id INTEGER NOT NULL DEFAULT 0,
		events_lost INTEGER NOT NULL DEFAULT 0);
		INSERT INTO hosts (id, hostname, tags, enrolled_ns, last_seen_ns, cert_serial, backend) VALUES ('old', 'kept', '[]', 1, 1, '9', 'tracepoint')`); err != nil {
		t.Fatal(err)
	}
	raw.Close()
	db3, err := fleetdb.OpenSQLite(ctx, old)
	if err != nil {
		t.Fatalf("open an old database: %v", err)
	}
	defer db3.Close()
	if h, err := db3.Host(ctx, "old"); err != nil || h.Hostname != "kept" || h.Backend != "tracepoint" || len(h.Guarantees) != 0 {
		t.Fatalf("old database's host: %+v %v", h, err)
	}
	checkGuarantees(t, db3)
}

func TestGuaranteesPostgres(t *testing.T) {
	ctx := context.Background()
	c := pgtest.Start(t)
	url := c.CreateDB(t, "vigil")
	db, err := fleetdb.OpenPostgres(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	checkGuarantees(t, db)
	db.Close()

	// Take the database back to schema version 2 (before the guarantees
	// column), then open it again: the migration adds the column and
	// keeps the host.
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `ALTER TABLE hosts DROP COLUMN guarantees; UPDATE vigil_schema SET version = 2`); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	db2, err := fleetdb.OpenPostgres(ctx, url)
	if err != nil {
		t.Fatalf("open a version 2 database: %v", err)
	}
	defer db2.Close()
	if h, err := db2.Host(ctx, "g"); err != nil || h.Hostname != "guar" || len(h.Guarantees) != 0 {
		t.Fatalf("host after the migration: %+v %v", h, err)
	}
	first := []*vigilv1.Guarantee{{Control: "exec", Level: "synchronous block", Why: "BPF LSM"}}
	if err := db2.Seen(ctx, "g", fleetdb.Report{Guarantees: first}, time.Now()); err != nil {
		t.Fatal(err)
	}
	if h, err := db2.Host(ctx, "g"); err != nil || !sameGuarantees(h.Guarantees, first) {
		t.Fatalf("after the migration and a report: %+v %v", h.Guarantees, err)
	}
}
