package console

import (
	"bytes"
	"cmp"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	fleetv1 "github.com/vigil-hips/vigil/api/vigil/fleet/v1"
	vigilv1 "github.com/vigil-hips/vigil/api/vigil/v1"
	"github.com/vigil-hips/vigil/internal/fleet"
	"github.com/vigil-hips/vigil/internal/fleet/fleetdb"
	"github.com/vigil-hips/vigil/internal/sign"
)

var pageNames = []string{"login", "overview", "host", "events", "queue", "rules", "error"}

var funcs = template.FuncMap{
	"ts":         fmtTime,
	"ago":        func(t *timestamppb.Timestamp) string { return ago(t, time.Now()) },
	"short":      func(s string) string { return shorten(s, 16) },
	"join":       strings.Join,
	"pathEsc":    url.PathEscape,
	"levelClass": levelClass,
}

// levelClass is the badge class of a guarantee level.
func levelClass(level string) string {
	switch level {
	case "synchronous block":
		return "ok"
	case "kill after the fact", "observe only":
		return "warn"
	}
	return "bad"
}

func parsePages() (map[string]*template.Template, error) {
	base, err := template.New("base").Funcs(funcs).ParseFS(templateFS, "templates/base.html")
	if err != nil {
		return nil, err
	}
	pages := map[string]*template.Template{}
	for _, name := range pageNames {
		t, err := template.Must(base.Clone()).ParseFS(templateFS, "templates/"+name+".html")
		if err != nil {
			return nil, err
		}
		pages[name] = t
	}
	return pages, nil
}

// render writes page with data; the page is rendered to a buffer first so
// a template error is a clean 500, not half a page.
func (c *Console) render(w http.ResponseWriter, code int, page string, data map[string]any) {
	var buf bytes.Buffer
	if err := c.pages[page].ExecuteTemplate(&buf, "base", data); err != nil {
		c.log.Error("console: template", "page", page, "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	_, _ = buf.WriteTo(w)
}

// page renders an authenticated page: data gets the CSRF token, the nav
// state and the flash message.
func (c *Console) page(w http.ResponseWriter, rc reqCtx, page string, data map[string]any) {
	data["CSRF"] = rc.csrf
	data["Nav"] = page
	if msg, ok := c.takeFlash(rc.key); msg != "" {
		data["Flash"], data["FlashOK"] = msg, ok
	}
	c.render(w, http.StatusOK, page, data)
}

// fail shows an error page for a failed admin call.
func (c *Console) fail(w http.ResponseWriter, rc reqCtx, what string, err error) {
	code := http.StatusBadGateway
	switch status.Code(err) {
	case codes.NotFound:
		code = http.StatusNotFound
	case codes.InvalidArgument, codes.FailedPrecondition:
		code = http.StatusBadRequest
	}
	c.log.Warn("console: admin call failed", "what", what, "err", err)
	c.render(w, code, "error", map[string]any{"CSRF": rc.csrf, "Nav": "error", "What": what, "Error": errText(err)})
}

// errText is an error for people: a gRPC status's message without its
// code prefix.
func errText(err error) string {
	if st, ok := status.FromError(err); ok {
		return st.Message()
	}
	return err.Error()
}

func fmtTime(t *timestamppb.Timestamp) string {
	if t == nil || (t.GetSeconds() == 0 && t.GetNanos() == 0) {
		return "never"
	}
	return t.AsTime().UTC().Format("2006-01-02 15:04:05Z")
}

func ago(t *timestamppb.Timestamp, now time.Time) string {
	if t == nil || (t.GetSeconds() == 0 && t.GetNanos() == 0) {
		return "never"
	}
	d := now.Sub(t.AsTime())
	switch {
	case d < 0:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}

func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// pager is one page of a list of n items.
type pager struct {
	Page, Pages, Total int
	From, To           int // 1-based, for display
	Prev, Next         string
}

// paginate returns the bounds of the page asked for in r (?page=N) over n
// items, and links keeping r's other parameters.
func paginate(r *http.Request, n int) (lo, hi int, p pager) {
	p.Total = n
	p.Pages = max(1, (n+pageSize-1)/pageSize)
	p.Page, _ = strconv.Atoi(r.URL.Query().Get("page"))
	p.Page = min(max(p.Page, 1), p.Pages)
	lo, hi = (p.Page-1)*pageSize, min(p.Page*pageSize, n)
	p.From, p.To = lo+1, hi
	if n == 0 {
		p.From = 0
	}
	link := func(page int) string {
		q := r.URL.Query()
		q.Set("page", strconv.Itoa(page))
		return r.URL.Path + "?" + q.Encode()
	}
	if p.Page > 1 {
		p.Prev = link(p.Page - 1)
	}
	if p.Page < p.Pages {
		p.Next = link(p.Page + 1)
	}
	return lo, hi, p
}

// ---------------------------------------------------------------- hosts

// hostRow is a host and what the console computes about it.
type hostRow struct {
	*fleetv1.Host
	UpToDate bool // applied the newest bundle made for it
	// GuaranteeSum summarizes the guarantees it reported.
	GuaranteeSum fleet.GuaranteeSummary
}

func hostRows(hs []*fleetv1.Host) []hostRow {
	out := make([]hostRow, len(hs))
	for i, h := range hs {
		out[i] = hostRow{Host: h, UpToDate: h.GetBundleVersion() > 0 && h.GetAppliedVersion() >= h.GetBundleVersion(),
			GuaranteeSum: fleet.SummarizeGuarantees(h.GetGuarantees())}
	}
	return out
}

func (c *Console) overview(w http.ResponseWriter, r *http.Request, rc reqCtx) {
	ctx, cancel := c.ctx(r)
	defer cancel()
	resp, err := c.admin.ListHosts(ctx, &fleetv1.ListHostsRequest{})
	if err != nil {
		c.fail(w, rc, "list hosts", err)
		return
	}
	hs := resp.GetHosts()
	slices.SortFunc(hs, func(a, b *fleetv1.Host) int { return strings.Compare(a.GetId(), b.GetId()) })
	var revoked, stale, lost int
	for _, h := range hs {
		if h.GetRevoked() {
			revoked++
		}
		if h.GetAppliedVersion() < h.GetBundleVersion() {
			stale++
		}
		if h.GetEventsLost()+h.GetKernelLost() > 0 {
			lost++
		}
	}
	lo, hi, p := paginate(r, len(hs))
	c.page(w, rc, "overview", map[string]any{"Hosts": hostRows(hs[lo:hi]), "Pager": p, "Count": len(hs),
		"Revoked": revoked, "Stale": stale, "Lossy": lost})
}

// findHost returns host id, or a NotFound status.
func (c *Console) findHost(r *http.Request, id string) (*fleetv1.Host, []*fleetv1.Host, error) {
	ctx, cancel := c.ctx(r)
	defer cancel()
	resp, err := c.admin.ListHosts(ctx, &fleetv1.ListHostsRequest{})
	if err != nil {
		return nil, nil, err
	}
	for _, h := range resp.GetHosts() {
		if h.GetId() == id {
			return h, resp.GetHosts(), nil
		}
	}
	return nil, resp.GetHosts(), status.Errorf(codes.NotFound, "no host %q", id)
}

func (c *Console) hostPage(w http.ResponseWriter, r *http.Request, rc reqCtx) {
	id := r.PathValue("id")
	h, _, err := c.findHost(r, id)
	if err != nil {
		c.fail(w, rc, "host "+id, err)
		return
	}
	ctx, cancel := c.ctx(r)
	defer cancel()
	rules, err := c.admin.ListRules(ctx, &fleetv1.ListRulesRequest{})
	if err != nil {
		c.fail(w, rc, "list rules", err)
		return
	}
	var mine []*fleetv1.Rule
	for _, ru := range rules.GetRules() {
		if fleet.InScope(ru.GetScope(), h.GetId(), h.GetTags()) {
			mine = append(mine, ru)
		}
	}
	evs, err := c.admin.ListEvents(ctx, &fleetv1.ListEventsRequest{HostId: id, Limit: pageSize})
	if err != nil {
		c.fail(w, rc, "list events", err)
		return
	}
	rows := eventRows(evs.GetEvents())
	slices.Reverse(rows)
	c.page(w, rc, "host", map[string]any{"Host": hostRows([]*fleetv1.Host{h})[0], "Rules": ruleRows(mine, nil),
		"Events": rows})
}

func fields(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\n' || r == '\r' })
}

func (c *Console) tagHost(w http.ResponseWriter, r *http.Request, rc reqCtx) {
	id := r.PathValue("id")
	add, remove := fields(r.PostForm.Get("add")), fields(r.PostForm.Get("remove"))
	back := "/hosts/" + url.PathEscape(id)
	if len(add)+len(remove) == 0 {
		c.done(w, r, rc, back, "tags", status.Error(codes.InvalidArgument, "give a tag to add or remove"))
		return
	}
	ctx, cancel := c.ctx(r)
	defer cancel()
	_, err := c.admin.TagHost(ctx, &fleetv1.TagHostRequest{HostId: id, Add: add, Remove: remove})
	c.log.Info("console: tag host", "host", id, "add", add, "remove", remove, "err", err)
	c.done(w, r, rc, back, fmt.Sprintf("host %s: tags +%v −%v", id, add, remove), err)
}

func (c *Console) revokeHost(w http.ResponseWriter, r *http.Request, rc reqCtx) {
	id := r.PathValue("id")
	back := "/hosts/" + url.PathEscape(id)
	if r.PostForm.Get("confirm") != id {
		c.done(w, r, rc, back, "revoke", status.Error(codes.InvalidArgument, "type the host id to confirm"))
		return
	}
	ctx, cancel := c.ctx(r)
	defer cancel()
	_, err := c.admin.RevokeHost(ctx, &fleetv1.RevokeHostRequest{HostId: id})
	c.log.Warn("console: revoke host", "host", id, "err", err)
	c.done(w, r, rc, back, "host "+id+" revoked", err)
}

// ---------------------------------------------------------------- events

type eventRow struct {
	Host     string
	ID       uint64
	Time     *timestamppb.Timestamp
	Kind     string
	PID      uint32
	Exe      string
	Path     string
	SHA256   string
	Trust    string // trusted | denied | unknown
	Action   string // allow | deny | kill | alert
	Mode     string
	Refused  bool
	Decision string // how it was decided
}

func eventPath(ev *vigilv1.Event) string {
	switch d := ev.GetDetail().(type) {
	case *vigilv1.Event_Exec:
		return d.Exec.GetFile().GetPath()
	case *vigilv1.Event_ImageLoad:
		return d.ImageLoad.GetFile().GetPath()
	case *vigilv1.Event_MemExec:
		return d.MemExec.GetFile().GetPath()
	case *vigilv1.Event_FileModify:
		return d.FileModify.GetFile().GetPath()
	}
	return ""
}

func eventRows(evs []*fleetv1.ServerEvent) []eventRow {
	out := make([]eventRow, 0, len(evs))
	for _, se := range evs {
		ev := se.GetEvent()
		out = append(out, eventRow{Host: se.GetHostId(), ID: ev.GetId(), Time: ev.GetTime(), Kind: ev.GetKind(),
			PID: ev.GetProcess().GetPid(), Exe: ev.GetProcess().GetExe(), Path: eventPath(ev),
			SHA256: ev.GetTrust().GetSha256(), Trust: ev.GetTrust().GetVerdict(), Action: ev.GetVerdict().GetAction(),
			Mode: ev.GetVerdict().GetMode(), Refused: ev.GetVerdict().GetRefused(), Decision: ev.GetVerdict().GetDecidedBy()})
	}
	return out
}

// Event kinds and verdicts the filters offer.
var (
	eventKinds    = []string{"exec", "fork", "exit", "image_load", "mem_exec", "inject", "kernel", "file_modify", "gap", "integrity", "tamper", "filter_session"}
	eventVerdicts = fleetdb.Verdicts
)

// eventFilter is the events page's filters.
type eventFilter struct {
	Host, Kind, Verdict string
	Since, Until        string // datetime-local values (UTC)
	since, until        time.Time
}

const dtLocal = "2006-01-02T15:04"

func parseFilter(r *http.Request) (eventFilter, error) {
	q := r.URL.Query()
	f := eventFilter{Host: strings.TrimSpace(q.Get("host")), Kind: q.Get("kind"), Verdict: q.Get("verdict"),
		Since: q.Get("since"), Until: q.Get("until")}
	if f.Kind != "" && !slices.Contains(eventKinds, f.Kind) {
		return f, fmt.Errorf("unknown event kind %q", f.Kind)
	}
	if f.Verdict != "" && !slices.Contains(eventVerdicts, f.Verdict) {
		return f, fmt.Errorf("unknown verdict %q", f.Verdict)
	}
	for _, x := range []struct {
		s string
		t *time.Time
	}{{f.Since, &f.since}, {f.Until, &f.until}} {
		if x.s == "" {
			continue
		}
		t, err := time.Parse(dtLocal, x.s)
		if err != nil {
			if t, err = time.Parse(time.RFC3339, x.s); err != nil {
				return f, fmt.Errorf("time %q: want YYYY-MM-DDTHH:MM (UTC) or RFC 3339", x.s)
			}
		}
		*x.t = t
	}
	return f, nil
}

func (c *Console) eventsPage(w http.ResponseWriter, r *http.Request, rc reqCtx) {
	f, err := parseFilter(r)
	data := map[string]any{"Filter": f, "Kinds": eventKinds, "Verdicts": eventVerdicts}
	if err != nil {
		data["FilterError"] = err.Error()
		c.page(w, rc, "events", data)
		return
	}
	ctx, cancel := c.ctx(r)
	defer cancel()
	// The server filters and pages: first the total, then the page.
	req := &fleetv1.ListEventsRequest{HostId: f.Host, Kind: f.Kind, Verdict: f.Verdict, Limit: pageSize}
	if !f.since.IsZero() {
		req.Since = timestamppb.New(f.since)
	}
	if !f.until.IsZero() {
		req.Until = timestamppb.New(f.until)
	}
	page, _ := strconv.Atoi(r.URL.Query().Get("page"))
	req.Offset = uint32(max(page-1, 0) * pageSize)
	resp, err := c.admin.ListEvents(ctx, req)
	if err != nil {
		c.fail(w, rc, "list events", err)
		return
	}
	total := int(resp.GetTotal())
	lo, _, p := paginate(r, total)
	if uint32(lo) != req.Offset { // the page asked for is past the end: the last one
		req.Offset = uint32(lo)
		if resp, err = c.admin.ListEvents(ctx, req); err != nil {
			c.fail(w, rc, "list events", err)
			return
		}
	}
	got := eventRows(resp.GetEvents())
	rows := make([]eventRow, 0, len(got))
	for i := len(got) - 1; i >= 0; i-- { // newest first
		rows = append(rows, got[i])
	}
	data["Events"], data["Pager"], data["Searched"] = rows, p, total
	c.page(w, rc, "events", data)
}

// ---------------------------------------------------------------- queue

// queueRow is a queue entry and the scopes it can be approved for.
type queueRow struct {
	*fleetv1.QueueEntry
	Scopes []string
}

func (c *Console) queuePage(w http.ResponseWriter, r *http.Request, rc reqCtx) {
	ctx, cancel := c.ctx(r)
	defer cancel()
	q, err := c.admin.ListQueue(ctx, &fleetv1.ListQueueRequest{})
	if err != nil {
		c.fail(w, rc, "list queue", err)
		return
	}
	hs, err := c.admin.ListHosts(ctx, &fleetv1.ListHostsRequest{})
	if err != nil {
		c.fail(w, rc, "list hosts", err)
		return
	}
	tags := map[string][]string{} // host -> tags
	for _, h := range hs.GetHosts() {
		tags[h.GetId()] = h.GetTags()
	}
	entries := q.GetEntries()
	lo, hi, p := paginate(r, len(entries))
	rows := make([]queueRow, 0, hi-lo)
	for _, e := range entries[lo:hi] {
		scopes := []string{"global"}
		var ts []string
		for _, h := range e.GetHosts() {
			scopes = append(scopes, "host:"+h)
			ts = append(ts, tags[h]...)
		}
		slices.Sort(ts)
		for _, t := range slices.Compact(ts) {
			scopes = append(scopes, "tag:"+t)
		}
		rows = append(rows, queueRow{QueueEntry: e, Scopes: scopes})
	}
	c.page(w, rc, "queue", map[string]any{"Entries": rows, "Pager": p})
}

func (c *Console) decide(w http.ResponseWriter, r *http.Request, rc reqCtx) {
	sha, scope, decision := r.PostForm.Get("sha256"), r.PostForm.Get("scope"), r.PostForm.Get("decision")
	if decision != "approve" && decision != "deny" {
		c.done(w, r, rc, "/queue", "decision", status.Errorf(codes.InvalidArgument, "decision %q: want approve or deny", decision))
		return
	}
	ctx, cancel := c.ctx(r)
	defer cancel()
	rule, err := c.admin.Approve(ctx, &fleetv1.ApproveRequest{Sha256: sha, Scope: scope, Deny: decision == "deny",
		Comment: strings.TrimSpace(r.PostForm.Get("comment"))})
	c.log.Info("console: queue decision", "sha256", sha, "scope", scope, "decision", decision, "rule", rule.GetId(), "err", err)
	msg := fmt.Sprintf("%s %s for %s", decision, sha, scope)
	if err == nil {
		msg += fmt.Sprintf(" (rule %d)", rule.GetId())
	}
	c.done(w, r, rc, "/queue", msg, err)
}

// approveSigner approves the catalog signer a queue row lists: the key
// pasted must be the one whose id the hosts reported. The hosts' report is
// an unverified claim; the rule carries the pasted key, with which each
// host verifies the catalogs.
func (c *Console) approveSigner(w http.ResponseWriter, r *http.Request, rc reqCtx) {
	id, scope, key := r.PostForm.Get("signer"), r.PostForm.Get("scope"), r.PostForm.Get("signer_key")
	pub, err := sign.ParsePublicKey([]byte(key))
	var got string
	if err == nil {
		got, err = sign.KeyID(pub)
	}
	if err != nil {
		c.done(w, r, rc, "/queue", "signer", status.Errorf(codes.InvalidArgument, "signer key: %v", err))
		return
	}
	if got != id {
		c.done(w, r, rc, "/queue", "signer", status.Errorf(codes.InvalidArgument, "the key pasted is %s, not the signer %s", got, id))
		return
	}
	ctx, cancel := c.ctx(r)
	defer cancel()
	rule, err := c.admin.Approve(ctx, &fleetv1.ApproveRequest{SignerKey: key, Scope: scope})
	c.log.Info("console: signer approval", "signer", id, "scope", scope, "rule", rule.GetId(), "err", err)
	msg := fmt.Sprintf("approve signer %s for %s", id, scope)
	if err == nil {
		msg += fmt.Sprintf(" (rule %d)", rule.GetId())
	}
	c.done(w, r, rc, "/queue", msg, err)
}

// ---------------------------------------------------------------- rules

// ruleRow is a rule and its rollout: of the hosts in its scope (not
// revoked), how many applied the newest bundle made for them (which holds
// every current rule in their scopes).
type ruleRow struct {
	*fleetv1.Rule
	InScope   int
	Delivered int
	Stage     string // the rollout: full, "preview 10% tag:canary"
}

func ruleRows(rs []*fleetv1.Rule, hosts []*fleetv1.Host) []ruleRow {
	out := make([]ruleRow, len(rs))
	for i, ru := range rs {
		out[i].Rule = ru
		out[i].Stage = fleet.Rollout{Stage: ru.GetRollout().GetStage(), Percent: ru.GetRollout().GetPercent(), Tag: ru.GetRollout().GetTag()}.String()
		for _, h := range hosts {
			if h.GetRevoked() || !fleet.InScope(ru.GetScope(), h.GetId(), h.GetTags()) {
				continue
			}
			out[i].InScope++
			if h.GetBundleVersion() > 0 && h.GetAppliedVersion() >= h.GetBundleVersion() {
				out[i].Delivered++
			}
		}
	}
	return out
}

func (c *Console) rulesPage(w http.ResponseWriter, r *http.Request, rc reqCtx) {
	ctx, cancel := c.ctx(r)
	defer cancel()
	rs, err := c.admin.ListRules(ctx, &fleetv1.ListRulesRequest{})
	if err != nil {
		c.fail(w, rc, "list rules", err)
		return
	}
	hs, err := c.admin.ListHosts(ctx, &fleetv1.ListHostsRequest{})
	if err != nil {
		c.fail(w, rc, "list hosts", err)
		return
	}
	rules := rs.GetRules()
	slices.SortFunc(rules, func(a, b *fleetv1.Rule) int { return cmp.Compare(b.GetId(), a.GetId()) }) // newest first
	lo, hi, p := paginate(r, len(rules))
	c.page(w, rc, "rules", map[string]any{"Rules": ruleRows(rules[lo:hi], hs.GetHosts()), "Pager": p})
}

func (c *Console) addRule(w http.ResponseWriter, r *http.Request, rc reqCtx) {
	f := r.PostForm
	ru := &fleetv1.Rule{Kind: f.Get("kind"), Value: strings.TrimSpace(f.Get("value")), Verdict: f.Get("verdict"),
		Scope: strings.TrimSpace(f.Get("scope")), Comment: strings.TrimSpace(f.Get("comment"))}
	if stage := f.Get("stage"); stage != "" {
		pct, err := strconv.ParseUint(strings.TrimSpace(f.Get("percent")), 10, 32)
		if err != nil {
			c.done(w, r, rc, "/rules", "add rule", status.Errorf(codes.InvalidArgument, "rollout percent %q", f.Get("percent")))
			return
		}
		ru.Rollout = &fleetv1.Rollout{Stage: stage, Percent: uint32(pct), Tag: strings.TrimSpace(f.Get("rollout_tag"))}
	}
	ctx, cancel := c.ctx(r)
	defer cancel()
	got, err := c.admin.AddRule(ctx, ru)
	c.log.Info("console: add rule", "kind", ru.GetKind(), "verdict", ru.GetVerdict(), "scope", ru.GetScope(), "rule", got.GetId(), "err", err)
	msg := "add " + ru.GetKind() + " rule"
	if err == nil {
		msg = fmt.Sprintf("rule %d added (%s %s, %s)", got.GetId(), got.GetKind(), got.GetVerdict(), got.GetScope())
	}
	c.done(w, r, rc, "/rules", msg, err)
}

func (c *Console) promoteRule(w http.ResponseWriter, r *http.Request, rc reqCtx) {
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
	if err != nil {
		c.done(w, r, rc, "/rules", "promote rule", status.Errorf(codes.InvalidArgument, "rule id %q", r.PathValue("id")))
		return
	}
	ctx, cancel := c.ctx(r)
	defer cancel()
	got, err := c.admin.UpdateRollout(ctx, &fleetv1.UpdateRolloutRequest{Id: id, Promote: true})
	c.log.Info("console: promote rule", "rule", id, "err", err)
	msg := fmt.Sprintf("promote rule %d", id)
	if err == nil {
		msg = fmt.Sprintf("rule %d promoted: %s", id, fleet.Rollout{Stage: got.GetRollout().GetStage(), Percent: got.GetRollout().GetPercent(), Tag: got.GetRollout().GetTag()})
	}
	c.done(w, r, rc, "/rules", msg, err)
}

func (c *Console) deleteRule(w http.ResponseWriter, r *http.Request, rc reqCtx) {
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
	if err != nil {
		c.done(w, r, rc, "/rules", "delete rule", status.Errorf(codes.InvalidArgument, "rule id %q", r.PathValue("id")))
		return
	}
	ctx, cancel := c.ctx(r)
	defer cancel()
	_, err = c.admin.DeleteRule(ctx, &fleetv1.DeleteRuleRequest{Id: id})
	c.log.Info("console: delete rule", "rule", id, "err", err)
	c.done(w, r, rc, "/rules", fmt.Sprintf("rule %d deleted", id), err)
}
