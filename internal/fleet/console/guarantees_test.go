package console_test

import (
	"context"
	"html"
	"strings"
	"testing"
	"time"

	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/fleet/fleetdb"
)

// TestGuaranteesShown: the overview summarizes each host's guarantees
// (counts per level, the weakest named), the host page lists each with its
// reason, both escaped; a host that reported none says so.
func TestGuaranteesShown(t *testing.T) {
	e := newEnv(t)
	e.enroll("h1", "one")
	e.enroll("h2", "two")
	marker := "m" + randHex(t, 6)
	evil := `<script>alert("` + marker + `")</script>`
	gs := []*vigilv1.Guarantee{
		{Control: "exec", Level: "synchronous block", Why: "BPF LSM bprm_check_security"},
		{Control: "file_open", Level: "synchronous block", Why: "BPF LSM file_open"},
		{Control: "file_write", Level: "observe only", Why: "tracepoint only " + evil},
		{Control: "kernel_modules", Level: "not provided", Why: "no module support"},
	}
	if err := e.db.Seen(context.Background(), "h1", fleetdb.Report{Backend: "lsm", Guarantees: gs}, time.Now()); err != nil {
		t.Fatal(err)
	}
	b := e.browser()
	b.login(e.pw)

	_, _, page := b.do("GET", "/", nil)
	row1, row2 := rowOf(t, page, "/hosts/h1"), rowOf(t, page, "/hosts/h2")
	for _, want := range []string{"2 synchronous block", "1 observe only", "1 not provided", "weakest: kernel_modules (not provided)"} {
		if !strings.Contains(row1, want) {
			t.Errorf("overview, h1: no %q in %s", want, row1)
		}
	}
	if !strings.Contains(row2, "not reported") || strings.Contains(row2, "weakest") {
		t.Errorf("overview, h2 reported nothing: %s", row2)
	}

	_, _, page = b.do("GET", "/hosts/h1", nil)
	i := strings.Index(page, `id="host-guarantees"`)
	if i < 0 {
		t.Fatalf("host page has no guarantees table:\n%s", page)
	}
	table := page[i:]
	table = table[:strings.Index(table, "</table>")]
	for _, g := range gs {
		if !strings.Contains(table, "<td>"+g.Control+"</td>") || !strings.Contains(table, ">"+g.Level+"<") {
			t.Errorf("host page: %s (%s) missing", g.Control, g.Level)
		}
	}
	if strings.Contains(page, `<script>alert("`+marker) {
		t.Error("host page: a guarantee's reason is not escaped")
	}
	if !strings.Contains(table, html.EscapeString("tracepoint only <script>")) && !strings.Contains(table, "tracepoint only &lt;script&gt;") {
		t.Errorf("host page: the escaped reason is not shown: %s", table)
	}
	_, _, page = b.do("GET", "/hosts/h2", nil)
	if !strings.Contains(page, "Not reported") {
		t.Error("host page of a host that reported no guarantees does not say so")
	}
}

// rowOf is the table row of page that links to href.
func rowOf(t *testing.T, page, href string) string {
	t.Helper()
	i := strings.Index(page, `href="`+href+`"`)
	if i < 0 {
		t.Fatalf("no link to %s in:\n%s", href, page)
	}
	start := strings.LastIndex(page[:i], "<tr")
	end := strings.Index(page[i:], "</tr>")
	return page[start : i+end]
}
