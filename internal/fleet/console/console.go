// Package console is the fleet server's web console: HTML pages over HTTPS
// for the administrators, served by `vigil server` (docs/fleet-console.md).
//
// It holds no fleet logic of its own: every page and action is a call to
// the FleetAdmin API (a fleetv1.FleetAdminClient, in process by default,
// see InProcess), the same API `vigil fleet` uses. What the console adds is
// the web's own security: one administrator password, sessions in an
// HttpOnly, Secure, SameSite=Strict cookie, a CSRF token on every POST on
// top of the standard library's cross-origin protection, a strict content
// security policy (no inline script, no external asset: templates, CSS and
// JS are embedded), html/template escaping, and bounded pages.
package console

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	fleetv1 "github.com/vigil-hips/vigil/api/vigil/fleet/v1"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Names of the cookies.
const (
	SessionCookie = "vigil_console"
	loginCookie   = "vigil_console_login" // the login form's CSRF token (before a session exists)
	csrfField     = "csrf"
)

// Limits.
const (
	pageSize        = 50
	sessionIdle     = 30 * time.Minute
	sessionMax      = 12 * time.Hour
	maxSessions     = 256
	maxFormBytes    = 1 << 20
	loginFailures   = 5           // failed logins per client address ...
	loginWindow     = time.Minute // ... per window, then 429 until it ends
	minPasswordSize = 12
)

// Config configures a console.
type Config struct {
	// Admin is the FleetAdmin API the console acts through. Required.
	Admin fleetv1.FleetAdminClient
	// Password is the administrator's password. Required, at least 12
	// characters.
	Password string
	Logger   *slog.Logger
	// Now is the clock (tests); nil: time.Now.
	Now func() time.Time
}

// Validate reports every problem with c.
func (c Config) Validate() error {
	var errs []error
	if c.Admin == nil {
		errs = append(errs, errors.New("no FleetAdmin client"))
	}
	if len(c.Password) < minPasswordSize {
		errs = append(errs, fmt.Errorf("administrator password shorter than %d characters", minPasswordSize))
	}
	return errors.Join(errs...)
}

// Console is the web console, an http.Handler.
type Console struct {
	admin   fleetv1.FleetAdminClient
	pwHash  [32]byte
	log     *slog.Logger
	now     func() time.Time
	pages   map[string]*template.Template
	handler http.Handler

	mu       sync.Mutex
	sessions map[string]*session // by hex SHA-256 of the cookie value
	failures map[string][]time.Time
}

type session struct {
	csrf    string
	created time.Time
	used    time.Time
	flash   string // a message for the next page, shown once
	flashOK bool
}

// New returns a console.
func New(cfg Config) (*Console, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("console: %w", err)
	}
	c := &Console{admin: cfg.Admin, pwHash: sha256.Sum256([]byte(cfg.Password)), log: cfg.Logger, now: cfg.Now,
		sessions: map[string]*session{}, failures: map[string][]time.Time{}}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.now == nil {
		c.now = time.Now
	}
	var err error
	if c.pages, err = parsePages(); err != nil {
		return nil, fmt.Errorf("console: %w", err)
	}
	static, err := fs.Sub(staticFS, "static")
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	files := http.StripPrefix("/static/", http.FileServerFS(static))
	mux.HandleFunc("GET /static/{file}", func(w http.ResponseWriter, r *http.Request) { files.ServeHTTP(w, r) }) // files, no listing
	mux.HandleFunc("GET /login", c.loginPage)
	mux.HandleFunc("POST /login", c.login)
	mux.HandleFunc("POST /logout", c.authed(c.logout))
	mux.HandleFunc("GET /{$}", c.authed(c.overview))
	mux.HandleFunc("GET /hosts/{id}", c.authed(c.hostPage))
	mux.HandleFunc("POST /hosts/{id}/tags", c.authed(c.tagHost))
	mux.HandleFunc("POST /hosts/{id}/revoke", c.authed(c.revokeHost))
	mux.HandleFunc("GET /events", c.authed(c.eventsPage))
	mux.HandleFunc("GET /queue", c.authed(c.queuePage))
	mux.HandleFunc("POST /queue/decide", c.authed(c.decide))
	mux.HandleFunc("POST /queue/signer", c.authed(c.approveSigner))
	mux.HandleFunc("GET /rules", c.authed(c.rulesPage))
	mux.HandleFunc("POST /rules", c.authed(c.addRule))
	mux.HandleFunc("POST /rules/{id}/delete", c.authed(c.deleteRule))
	mux.HandleFunc("POST /rules/{id}/promote", c.authed(c.promoteRule))
	// Cross-origin POSTs are refused by the browser's own signals
	// (Sec-Fetch-Site, Origin) before they reach the CSRF token check.
	c.handler = securityHeaders(http.NewCrossOriginProtection().Handler(mux))
	return c, nil
}

func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) { c.handler.ServeHTTP(w, r) }

func securityHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("Referrer-Policy", "no-referrer")
		hd.Set("Cache-Control", "no-store")
		hd.Set("Strict-Transport-Security", "max-age=31536000")
		h.ServeHTTP(w, r)
	})
}

// ---------------------------------------------------------------- sessions

func randomToken() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

func tokenKey(tok string) string {
	s := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(s[:])
}

// newSession makes a session and returns its cookie value.
func (c *Console) newSession() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	c.expireLocked(now)
	for len(c.sessions) >= maxSessions { // the oldest goes
		var oldest string
		for k, s := range c.sessions {
			if oldest == "" || s.used.Before(c.sessions[oldest].used) {
				oldest = k
			}
		}
		delete(c.sessions, oldest)
	}
	tok := randomToken()
	c.sessions[tokenKey(tok)] = &session{csrf: randomToken(), created: now, used: now}
	return tok
}

func (c *Console) expireLocked(now time.Time) {
	for k, s := range c.sessions {
		if now.Sub(s.used) > sessionIdle || now.Sub(s.created) > sessionMax {
			delete(c.sessions, k)
		}
	}
}

// sessionOf returns the request's live session (a copy) and its key.
func (c *Console) sessionOf(r *http.Request) (session, string, bool) {
	ck, err := r.Cookie(SessionCookie)
	if err != nil || ck.Value == "" {
		return session{}, "", false
	}
	key := tokenKey(ck.Value)
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	c.expireLocked(now)
	s, ok := c.sessions[key]
	if !ok {
		return session{}, "", false
	}
	s.used = now
	return *s, key, true
}

func (c *Console) setFlash(key, msg string, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, found := c.sessions[key]; found {
		s.flash, s.flashOK = msg, ok
	}
}

func (c *Console) takeFlash(key string) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, found := c.sessions[key]
	if !found {
		return "", false
	}
	msg, ok := s.flash, s.flashOK
	s.flash = ""
	return msg, ok
}

func (c *Console) endSession(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.sessions, key)
}

func setCookie(w http.ResponseWriter, name, value, path string, maxAge int) {
	http.SetCookie(w, &http.Cookie{Name: name, Value: value, Path: path, MaxAge: maxAge,
		HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode})
}

// reqCtx is what an authenticated handler gets.
type reqCtx struct {
	key  string // session key
	csrf string
}

// authed wraps h: no session, no page (a GET goes to the login page, any
// other method is refused); a POST must carry the session's CSRF token.
func (c *Console) authed(h func(http.ResponseWriter, *http.Request, reqCtx)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s, key, ok := c.sessionOf(r)
		if !ok {
			if r.Method == http.MethodGet {
				http.Redirect(w, r, "/login", http.StatusSeeOther)
				return
			}
			http.Error(w, "not logged in", http.StatusUnauthorized)
			return
		}
		if r.Method == http.MethodPost {
			r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
			if err := r.ParseForm(); err != nil {
				http.Error(w, "bad form: "+err.Error(), http.StatusBadRequest)
				return
			}
			if !equalTokens(r.PostForm.Get(csrfField), s.csrf) {
				c.log.Warn("console: POST without a valid CSRF token refused", "path", r.URL.Path, "remote", r.RemoteAddr)
				http.Error(w, "missing or wrong CSRF token: reload the page and try again", http.StatusForbidden)
				return
			}
		}
		h(w, r, reqCtx{key: key, csrf: s.csrf})
	}
}

func equalTokens(a, b string) bool {
	return a != "" && b != "" && subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

// ---------------------------------------------------------------- login

func (c *Console) loginPage(w http.ResponseWriter, r *http.Request) {
	if _, _, ok := c.sessionOf(r); ok {
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	}
	c.renderLogin(w, http.StatusOK, "")
}

func (c *Console) renderLogin(w http.ResponseWriter, code int, msg string) {
	tok := randomToken()
	setCookie(w, loginCookie, tok, "/login", 600)
	c.render(w, code, "login", map[string]any{"CSRF": tok, "Error": msg})
}

func clientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// throttled reports whether addr failed too often lately.
func (c *Console) throttled(addr string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	var recent []time.Time
	for _, t := range c.failures[addr] {
		if now.Sub(t) < loginWindow {
			recent = append(recent, t)
		}
	}
	if len(recent) == 0 {
		delete(c.failures, addr)
	} else {
		c.failures[addr] = recent
	}
	return len(recent) >= loginFailures
}

func (c *Console) failed(addr string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.failures) > 4096 { // bounded: forget everyone rather than grow
		clear(c.failures)
	}
	c.failures[addr] = append(c.failures[addr], c.now())
}

func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form: "+err.Error(), http.StatusBadRequest)
		return
	}
	ck, err := r.Cookie(loginCookie)
	if err != nil || !equalTokens(r.PostForm.Get(csrfField), ck.Value) {
		http.Error(w, "missing or wrong CSRF token: reload the login page and try again", http.StatusForbidden)
		return
	}
	addr := clientAddr(r)
	if c.throttled(addr) {
		c.log.Warn("console: login throttled", "remote", addr)
		c.renderLogin(w, http.StatusTooManyRequests, "Too many failed logins: wait a minute.")
		return
	}
	given := sha256.Sum256([]byte(r.PostForm.Get("password")))
	if subtle.ConstantTimeCompare(given[:], c.pwHash[:]) != 1 {
		c.failed(addr)
		c.log.Warn("console: wrong password", "remote", addr)
		c.renderLogin(w, http.StatusUnauthorized, "Wrong password.")
		return
	}
	setCookie(w, loginCookie, "", "/login", -1)
	setCookie(w, SessionCookie, c.newSession(), "/", int(sessionMax/time.Second))
	c.log.Info("console: administrator logged in", "remote", addr)
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (c *Console) logout(w http.ResponseWriter, r *http.Request, rc reqCtx) {
	c.endSession(rc.key)
	setCookie(w, SessionCookie, "", "/", -1)
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

// ---------------------------------------------------------------- helpers

// ctx is the context of an admin call: the request's, with a deadline.
func (c *Console) ctx(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), 15*time.Second)
}

// done redirects to back after an action, with its outcome shown once.
func (c *Console) done(w http.ResponseWriter, r *http.Request, rc reqCtx, back, msg string, err error) {
	if err != nil {
		c.setFlash(rc.key, msg+": "+errText(err), false)
	} else {
		c.setFlash(rc.key, msg, true)
	}
	if !strings.HasPrefix(back, "/") || strings.HasPrefix(back, "//") {
		back = "/"
	}
	http.Redirect(w, r, back, http.StatusSeeOther)
}
