package desktop

import (
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// startUI serves the page on a real loopback listener, as
// `funtun desktop ui` does.
func startUI(t *testing.T, m *Manager) (*UI, string) {
	t.Helper()
	l, err := listenLoopback("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().(*net.TCPAddr)
	u, err := NewUI(m, addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: u}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return u, u.URL(addr)
}

// noRedirect keeps the 303 after a change visible.
var noRedirect = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

func do(t *testing.T, method, target, host string, form url.Values, header map[string]string) (int, string) {
	t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, target, body)
	if err != nil {
		t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if host != "" {
		req.Host = host
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := noRedirect.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestUIRefusesRequestsWithoutTheToken(t *testing.T) {
	tr := newTree(t)
	u, page := startUI(t, tr.m)
	if len(u.Token()) != 32 {
		t.Fatalf("token %q: want 128 bits in hex", u.Token())
	}
	if _, other := startUI(t, tr.m); other == page {
		t.Fatal("two pages got the same URL")
	}
	base, _ := url.Parse(page)
	origin := "http://" + base.Host
	good := url.Values{"token": {u.Token()}, "id": {"org.funtun.Terminal.desktop"}, "profile": {"work"}}
	wrongToken := strings.Repeat("0", 32)
	cases := []struct {
		name, method, target, host string
		form                       url.Values
		header                     map[string]string
		status                     int
	}{
		{"no token", "GET", origin + "/", "", nil, nil, 403},
		{"wrong token", "GET", origin + "/" + wrongToken + "/", "", nil, nil, 403},
		{"token prefix", "GET", origin + "/" + u.Token()[:31] + "/", "", nil, nil, 403},
		{"token in a query only", "GET", origin + "/?token=" + u.Token(), "", nil, nil, 403},
		{"rebinding: another Host", "GET", page, "evil.example:" + base.Port(), nil, nil, 403},
		{"another port in Host", "GET", page, "127.0.0.1:1", nil, nil, 403},
		{"change without the form token", "POST", page + "apply", "", url.Values{"id": good["id"], "profile": good["profile"]}, nil, 403},
		{"change with a wrong form token", "POST", page + "apply", "", url.Values{"token": {wrongToken}, "id": good["id"], "profile": good["profile"]}, nil, 403},
		{"change from another site", "POST", page + "apply", "", good, map[string]string{"Origin": "http://evil.example"}, 403},
		{"change from another site (fetch metadata)", "POST", page + "apply", "", good, map[string]string{"Sec-Fetch-Site": "cross-site"}, 403},
		{"change from an opaque origin", "POST", page + "apply", "", good, map[string]string{"Origin": "null"}, 403},
		{"change by GET", "GET", page + "apply?" + good.Encode(), "", nil, nil, 405},
		{"no such action", "GET", page + "nothing", "", nil, nil, 404},
	}
	for _, c := range cases {
		if status, body := do(t, c.method, c.target, c.host, c.form, c.header); status != c.status {
			t.Errorf("%s: status %d, want %d (%s)", c.name, status, c.status, strings.TrimSpace(body))
		}
	}
	if left := tr.userApps(t); len(left) != 0 {
		t.Fatalf("a refused request changed files: %q", left)
	}

	status, body := do(t, "GET", page, "", nil, nil)
	if status != 200 || !strings.Contains(body, "Quoted Demo") || !strings.Contains(body, `<option value="work"`) {
		t.Fatalf("page: %d\n%s", status, body)
	}
	if status, body := do(t, "GET", page, "localhost:"+base.Port(), nil, nil); status != 200 {
		t.Errorf("Host localhost:PORT: %d %s", status, body)
	}
	// The page's own form, as a browser sends it.
	status, _ = do(t, "POST", page+"apply", "", good, map[string]string{"Origin": origin, "Sec-Fetch-Site": "same-origin"})
	if status != http.StatusSeeOther {
		t.Fatalf("apply: status %d", status)
	}
	override := filepath.Join(tr.home, "applications", "org.funtun.Terminal.desktop")
	checkApplied(t, override, "work", []byte(handMade["org.funtun.Terminal.desktop"]))
	_, body = do(t, "GET", page, "", nil, nil)
	if !strings.Contains(body, "profile work") || !strings.Contains(body, `data-profile="work"`) {
		t.Errorf("the page after apply shows no result:\n%s", body)
	}
	status, _ = do(t, "POST", page+"remove", "", url.Values{"token": {u.Token()}, "id": good["id"]}, nil)
	if _, err := os.Stat(override); status != http.StatusSeeOther || !os.IsNotExist(err) {
		t.Fatalf("remove: status %d, override %v", status, err)
	}
}

func TestListenIsLoopbackOnly(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", ":0", "[::]:0", "192.0.2.1:0"} {
		if l, err := listenLoopback(addr); err == nil {
			l.Close()
			t.Errorf("--listen %s was accepted", addr)
		}
	}
	l, err := listenLoopback("localhost:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if ip := l.Addr().(*net.TCPAddr).IP; !ip.IsLoopback() {
		t.Errorf("localhost listened on %v", ip)
	}
}
