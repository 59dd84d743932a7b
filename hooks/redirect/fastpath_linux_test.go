//go:build linux

package redirect

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/testutil"
	_ "github.com/funtun/funtun/pieces/direct"
)

// With a plain-direct profile, redirected connections are served by the
// engine's event loops (splice, no goroutine per flow), each dialed to its
// own original destination, with funtun's mark on the dialed socket. The
// hook runs in process, so that the log handler can tell which engine
// path ended each flow; the process must then live in the gateway's
// namespace, so the test runs itself again there (TestFastPathChild).
func TestRedirectFastPath(t *testing.T) {
	needNetns(t, "ncat")
	g := newGateway(t)
	srv80 := tcpServer(t, g.server, 8080)
	srv81 := tcpServer(t, g.server, 8081)
	g.gw.nft(t, `table ip rdtest {
	chain pre { type nat hook prerouting priority dstnat; ip daddr `+serverV4+` tcp dport { 8080, 8081 } redirect to :7474; }
	chain out { type filter hook output priority filter; meta mark 0x66756e ip daddr `+serverV4+` tcp flags syn counter; }
}`)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", g.gw.name, os.Args[0], "-test.run=^TestFastPathChild$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), "FUNTUN_REDIRECT_CHILD="+g.client.name)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestFastPathChild") {
		t.Fatalf("the test in the gateway's namespace: %v\n%s", err, out)
	}
	waitFor(t, srv80, "got hello fast 8080 from "+gwOutV4)
	waitFor(t, srv81, "got hello fast 8081 from "+gwOutV4)
	rules := g.gw.must(t, "", "nft", "list", "chain", "ip", "rdtest", "out")
	if !strings.Contains(rules, "counter packets 2 ") {
		t.Errorf("want the two dials the loop made marked 0x66756e:\n%s", rules)
	}
}

// pathRec records, by destination, which engine path ended each flow.
type pathRec struct {
	mu  sync.Mutex
	got map[string]string
}

func (p *pathRec) Enabled(context.Context, slog.Level) bool { return true }
func (p *pathRec) WithAttrs([]slog.Attr) slog.Handler       { return p }
func (p *pathRec) WithGroup(string) slog.Handler            { return p }
func (p *pathRec) Handle(_ context.Context, r slog.Record) error {
	if r.Message != "flow" && r.Message != "flow failed" {
		return nil
	}
	by := testutil.FlowPath()
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "dst" {
			p.mu.Lock()
			p.got[a.Value.String()] = by
			p.mu.Unlock()
		}
		return true
	})
	return nil
}

func (p *pathRec) wait(t *testing.T, dst string) string {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		p.mu.Lock()
		by, ok := p.got[dst]
		p.mu.Unlock()
		if ok {
			return by
		}
	}
	t.Fatalf("no flow line for %s", dst)
	return ""
}

// TestFastPathChild is TestRedirectFastPath's part inside the gateway.
func TestFastPathChild(t *testing.T) {
	clientNS := os.Getenv("FUNTUN_REDIRECT_CHILD")
	if clientNS == "" {
		t.Skip("runs inside the gateway namespace that TestRedirectFastPath makes")
	}
	t.Setenv(markEnv, fmt.Sprint(DefaultMark))
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "p"+funnel.ProfileExt), []byte("direct\n"), 0o644)
	rec := &pathRec{got: map[string]string{}}
	log := slog.New(rec)
	eng, err := funnel.NewEngine(&funnel.Catalog{Dirs: []string{dir}}, log)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp4", "0.0.0.0:7474")
	if err != nil {
		t.Fatal(err)
	}
	rd := &Redirector{Engine: eng, Selector: funnel.Selector{Profile: "p"}, MaxConns: 100, UDPIdle: time.Minute, Mark: DefaultMark, Log: log,
		own: []netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:7474")}}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- rd.ServeTCP(ctx, l) }()
	defer func() {
		cancel()
		<-served
	}()
	for _, port := range []int{8080, 8081} {
		cmd := exec.Command("ip", "netns", "exec", clientNS, "ncat", serverV4, fmt.Sprint(port))
		cmd.Stdin = strings.NewReader(fmt.Sprintf("hello fast %d\n", port))
		out, err := cmd.CombinedOutput()
		if want := fmt.Sprintf("reply:hello fast %d", port); err != nil || !strings.Contains(string(out), want) {
			t.Fatalf("to port %d: client got %q (%v), want %q", port, out, err, want)
		}
		if by := rec.wait(t, fmt.Sprintf("%s:%d", serverV4, port)); by != "listened" {
			t.Errorf("the flow to port %d ended on path %q; want the event loop's (listened)", port, by)
		}
	}
	if n := rd.Active(); n != 0 {
		// The flows have ended (logged): nothing may stay counted.
		t.Errorf("%d connections still counted", n)
	}
}
