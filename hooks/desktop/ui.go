package desktop

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/funtun/funtun/internal/cli"
)

// pageHead is the page up to <body>: its style sheet.
//
//go:embed ui.html
var pageHead string

// UI is the web page of `funtun desktop ui`. Anyone on the machine can
// connect to a loopback port, so every request must carry the token
// (other users cannot read it: it is printed to this terminal and handed
// to the browser through a file only this user can read), must be
// addressed to the loopback address itself (a web page whose name
// resolves to 127.0.0.1 — DNS rebinding — sends its own name as Host),
// and changes are POSTs with the token in the form as well (a form on
// another site cannot know it).
type UI struct {
	m     *Manager
	token string
	hosts map[string]bool // Host headers that name this listener

	// changing serialises apply and remove: two requests for one entry
	// must not interleave their backup and override writes.
	changing sync.Mutex
	mu       sync.Mutex
	flash    string // the last action's result, shown once
	bad      bool   // the flash is an error
}

// NewUI makes the handler for a listener on addr, with a fresh token.
func NewUI(m *Manager, addr *net.TCPAddr) (*UI, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	port := fmt.Sprint(addr.Port)
	u := &UI{m: m, token: hex.EncodeToString(b[:]), hosts: map[string]bool{
		net.JoinHostPort(addr.IP.String(), port): true,
		"localhost:" + port:                      true,
	}}
	return u, nil
}

// URL is the page's address, token included.
func (u *UI) URL(addr *net.TCPAddr) string {
	return "http://" + net.JoinHostPort(addr.IP.String(), fmt.Sprint(addr.Port)) + "/" + u.token + "/"
}

// Token is the secret part of the URL.
func (u *UI) Token() string { return u.token }

func (u *UI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	// The URL holds the token: no other site may see it in a Referer.
	// (no-referrer would also make the browser send "Origin: null" with
	// the page's own forms, which sameOrigin must refuse.)
	h.Set("Referrer-Policy", "same-origin")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	if !u.hosts[r.Host] {
		http.Error(w, "forbidden: this page answers only to its loopback address", http.StatusForbidden)
		return
	}
	rest, ok := strings.CutPrefix(r.URL.Path, "/")
	seg, action, _ := strings.Cut(rest, "/")
	if !ok || !u.tokenOK(seg) {
		http.Error(w, "forbidden: the URL's token is missing or wrong (use the URL funtun desktop ui printed)", http.StatusForbidden)
		return
	}
	switch action {
	case "":
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		u.servePage(w)
	case "apply", "remove":
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", "POST")
			http.Error(w, "method not allowed: changes are POSTed by the page's forms", http.StatusMethodNotAllowed)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		if err := r.ParseForm(); err != nil {
			http.Error(w, "bad form: "+err.Error(), http.StatusBadRequest)
			return
		}
		if !u.tokenOK(r.PostForm.Get("token")) || !sameOrigin(r) {
			http.Error(w, "forbidden: a change needs the page's own form", http.StatusForbidden)
			return
		}
		u.act(action, r.PostForm.Get("id"), r.PostForm.Get("profile"))
		http.Redirect(w, r, "/"+u.token+"/", http.StatusSeeOther)
	default:
		http.NotFound(w, r)
	}
}

func (u *UI) tokenOK(s string) bool {
	return subtle.ConstantTimeCompare([]byte(s), []byte(u.token)) == 1
}

// sameOrigin refuses a POST that a browser says came from another site;
// requests without these headers (older browsers, curl) rely on the form
// token alone.
func sameOrigin(r *http.Request) bool {
	if o := r.Header.Get("Origin"); o != "" && o != "http://"+r.Host {
		return false
	}
	switch r.Header.Get("Sec-Fetch-Site") {
	case "", "same-origin", "none":
		return true
	}
	return false
}

func (u *UI) act(action, id, profile string) {
	u.changing.Lock()
	defer u.changing.Unlock()
	var c Change
	var err error
	switch action {
	case "apply":
		if profile == "" {
			err = errors.New("choose a profile first")
			break
		}
		c, err = u.m.Apply(id, profile, false)
	case "remove":
		c, err = u.m.Remove(id, false, false)
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if err != nil {
		u.flash, u.bad = err.Error(), true
		return
	}
	u.flash, u.bad = c.Msg, false
}

type pageRow struct {
	Entry
	Choices []choice
	Note    string
}

type choice struct {
	Name     string
	Selected bool
	Broken   bool
}

func (u *UI) servePage(w http.ResponseWriter) {
	entries, listErr := u.m.List()
	profiles, profErr := u.m.Profiles()
	u.mu.Lock()
	flash, bad := u.flash, u.bad
	u.flash = ""
	u.mu.Unlock()
	var rows []pageRow
	for _, e := range entries {
		r := pageRow{Entry: e, Note: strings.Join(e.Notes, "; ")}
		for _, p := range profiles {
			r.Choices = append(r.Choices, choice{Name: p.Name, Selected: p.Name == e.Profile, Broken: p.Broken != nil})
		}
		rows = append(rows, r)
	}
	var warn []string
	for _, err := range []error{listErr, profErr} {
		if err != nil {
			warn = append(warn, err.Error())
		}
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	io.WriteString(w, renderPage(rows, u.token, flash, bad, strings.Join(warn, "\n"), u.m.Dirs.UserApps()))
}

// renderPage writes the page's body by hand rather than with
// html/template: the template package keeps every exported method of the
// whole binary alive (it calls methods by name through reflect), which
// made funtun 4.6 MB larger and every launch of a program 6 % slower. All
// that is interpolated here is element text or a double-quoted attribute
// value, for which html.EscapeString is the whole escaping.
func renderPage(rows []pageRow, token, flash string, bad bool, warn, userApps string) string {
	esc := html.EscapeString
	var b strings.Builder
	b.WriteString(pageHead)
	b.WriteString("<body>\n<header>\n  <h1>funtun — applications and their profiles</h1>\n")
	fmt.Fprintf(&b, "  <p>Apply writes a copy of the menu entry to %s whose every Exec runs <code>funtun profile=NAME …</code>; remove puts back what was there.</p>\n</header>\n<main>\n", esc(userApps))
	if flash != "" {
		class := "flash"
		if bad {
			class += " bad"
		}
		fmt.Fprintf(&b, "<div class=\"%s\" id=\"flash\" role=\"status\">%s</div>\n", class, esc(flash))
	}
	if warn != "" {
		fmt.Fprintf(&b, "<p class=\"warn\">%s</p>\n", esc(warn))
	}
	b.WriteString("<table>\n  <thead><tr><th>Application</th><th>Profile</th><th>Change</th></tr></thead>\n  <tbody>\n")
	tok := esc(token)
	for _, r := range rows {
		id, name := esc(r.ID), esc(r.Name)
		fmt.Fprintf(&b, "  <tr data-id=\"%s\">\n    <td class=\"app\"><b>%s</b><small>%s", id, name, id)
		if r.Note != "" {
			fmt.Fprintf(&b, " · %s", esc(r.Note))
		}
		b.WriteString("</small></td>\n    <td>")
		if r.Profile != "" {
			fmt.Fprintf(&b, "<span class=\"profile\" data-profile=\"%s\">%s</span>", esc(r.Profile), esc(r.Profile))
			if !r.Override {
				b.WriteString(" <span class=\"note\">(in the entry itself)</span>")
			}
		} else {
			b.WriteString("<span class=\"none\">none</span>")
		}
		b.WriteString("</td>\n    <td>\n")
		switch {
		case r.Error != "":
			fmt.Fprintf(&b, "    <span class=\"refused\">cannot read: %s</span>\n", esc(r.Error))
		case r.Refusal != "":
			fmt.Fprintf(&b, "    <span class=\"refused\">cannot: %s</span>\n", esc(r.Refusal))
		default:
			fmt.Fprintf(&b, "      <form method=\"post\" action=\"apply\">\n        <input type=\"hidden\" name=\"token\" value=\"%s\">\n        <input type=\"hidden\" name=\"id\" value=\"%s\">\n", tok, id)
			fmt.Fprintf(&b, "        <select name=\"profile\" data-id=\"%s\" aria-label=\"profile for %s\">\n          <option value=\"\">choose a profile…</option>\n", id, name)
			for _, c := range r.Choices {
				n := esc(c.Name)
				fmt.Fprintf(&b, "          <option value=\"%s\"", n)
				if c.Selected {
					b.WriteString(" selected")
				}
				if c.Broken {
					fmt.Fprintf(&b, " disabled>%s (broken)</option>\n", n)
				} else {
					fmt.Fprintf(&b, ">%s</option>\n", n)
				}
			}
			fmt.Fprintf(&b, "        </select>\n        <button class=\"apply\" type=\"submit\" data-id=\"%s\">Apply</button>\n      </form>\n", id)
			if r.Override {
				fmt.Fprintf(&b, "      <form method=\"post\" action=\"remove\">\n        <input type=\"hidden\" name=\"token\" value=\"%s\">\n        <input type=\"hidden\" name=\"id\" value=\"%s\">\n        <button class=\"remove\" type=\"submit\" data-id=\"%s\">Remove</button>\n      </form>\n", tok, id, id)
			}
		}
		b.WriteString("    </td>\n  </tr>\n")
	}
	if len(rows) == 0 {
		b.WriteString("  <tr><td colspan=\"3\">No applications found in the XDG data directories.</td></tr>\n")
	}
	b.WriteString("  </tbody>\n</table>\n</main>\n</body>\n</html>\n")
	return b.String()
}

// listenLoopback refuses anything but a loopback address: the page
// changes the user's files, and the token is its only lock.
func listenLoopback(addr string) (net.Listener, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("--listen %s: %v", addr, err)
	}
	ips, err := net.LookupIP(host)
	if host == "localhost" {
		// Resolvers may give a LAN address for localhost; take the
		// loopback address itself.
		addr, ips, err = strings.Replace(addr, "localhost", "127.0.0.1", 1), []net.IP{net.IPv4(127, 0, 0, 1)}, nil
	}
	if err != nil || len(ips) == 0 {
		return nil, fmt.Errorf("--listen %s: %v", addr, err)
	}
	for _, ip := range ips {
		if !ip.IsLoopback() {
			return nil, fmt.Errorf("--listen %s: not a loopback address; the page must not be reachable from other machines", addr)
		}
	}
	return net.Listen("tcp", addr)
}

func runUI(ctx context.Context, env *cli.Env, m *Manager, listen string, open bool) int {
	l, err := listenLoopback(listen)
	if err != nil {
		return env.Errorf("desktop ui", "%v", err)
	}
	addr := l.Addr().(*net.TCPAddr)
	u, err := NewUI(m, addr)
	if err != nil {
		l.Close()
		return env.Errorf("desktop ui", "%v", err)
	}
	srv := &http.Server{Handler: u, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	link := u.URL(addr)
	fmt.Fprintf(env.Stdout, "funtun desktop ui: %s\n(Ctrl-C stops it)\n", link)
	if open {
		cleanup, err := openBrowser(link)
		if err != nil {
			env.Log.Info("open the URL above in your browser", "why", err)
		}
		defer cleanup()
	}
	select {
	case <-ctx.Done():
	case err := <-done:
		return env.Errorf("desktop ui", "%v", err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	return 0
}

// openBrowser starts xdg-open in a desktop session. It opens a file that
// redirects to the URL instead of the URL itself: a command line can be
// read by every user (ps), the file only by this one.
func openBrowser(link string) (cleanup func(), err error) {
	cleanup = func() {}
	if os.Getenv("DISPLAY") == "" && os.Getenv("WAYLAND_DISPLAY") == "" {
		return cleanup, errors.New("no desktop session (DISPLAY, WAYLAND_DISPLAY)")
	}
	xdgOpen, err := exec.LookPath("xdg-open")
	if err != nil {
		return cleanup, errors.New("xdg-open is not installed")
	}
	dir, err := os.MkdirTemp(os.Getenv("XDG_RUNTIME_DIR"), "funtun-desktop-ui-")
	if err != nil {
		return cleanup, err
	}
	cleanup = func() { os.RemoveAll(dir) }
	file := filepath.Join(dir, "open.html")
	body := fmt.Sprintf("<!doctype html><meta charset=utf-8><meta http-equiv=refresh content=\"0;url=%s\"><a href=\"%s\">funtun desktop</a>\n",
		html.EscapeString(link), html.EscapeString(link))
	if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
		return cleanup, err
	}
	cmd := exec.Command(xdgOpen, (&url.URL{Scheme: "file", Path: file}).String())
	if err := cmd.Start(); err != nil {
		return cleanup, err
	}
	go cmd.Wait() // some browsers keep xdg-open waiting until they close
	return cleanup, nil
}
