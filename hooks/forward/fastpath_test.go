//go:build linux

package forward

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/testutil"
	_ "github.com/funtun/funtun/pieces/direct"
	_ "github.com/funtun/funtun/pieces/rewrite"
	_ "github.com/funtun/funtun/pieces/socks5"
)

// The forwarder on the engine's event loops, in process: each flow's log
// line is recorded with the engine function that ended it.

type pathRec struct {
	mu  sync.Mutex
	got map[string]string // src -> "listened", "adopted", "goroutines"
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
		if a.Key == "src" {
			p.mu.Lock()
			p.got[a.Value.String()] = by
			p.mu.Unlock()
		}
		return true
	})
	return nil
}

func (p *pathRec) wait(t *testing.T, src string) string {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		p.mu.Lock()
		by, ok := p.got[src]
		p.mu.Unlock()
		if ok {
			return by
		}
	}
	t.Fatalf("no flow line from %s", src)
	return ""
}

func startForwarder(t *testing.T, chain string, to funnel.Addr, inbound bool) (string, *pathRec) {
	t.Helper()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "p"+funnel.ProfileExt), []byte(chain+"\n"), 0o644)
	rec := &pathRec{got: map[string]string{}}
	log := slog.New(rec)
	eng, err := funnel.NewEngine(&funnel.Catalog{Dirs: []string{dir}}, log)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fw := &Forwarder{Engine: eng, Selector: funnel.Selector{Profile: "p"}, To: to, Inbound: inbound, Log: log}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fw.ServeTCP(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("ServeTCP did not return within 5s of its context's end")
		}
	})
	return l.Addr().String(), rec
}

func echoAddr(t *testing.T) funnel.Addr {
	ap := testutil.EchoServer(t).(*net.TCPAddr).AddrPort()
	return funnel.MakeAddr(ap.Addr().String(), ap.Port())
}

func TestForwardPaths(t *testing.T) {
	micro := testutil.StartMicrosocks(t)
	for _, tc := range []struct {
		chain   string
		inbound bool
		want    string
	}{
		{"direct", false, "listened"},
		{"direct timeout=2s keepalive=0", false, "listened"},
		// The socks5 piece leaves a kernel socket once its handshake is
		// done: the relay moves to the engine's relay loops.
		{"socks5 server=" + micro, false, "adopted"},
		{"rewrite from=ping to=PING", false, "goroutines"},
		{"direct", true, "adopted"},
	} {
		t.Run(tc.chain, func(t *testing.T) {
			addr, rec := startForwarder(t, tc.chain, echoAddr(t), tc.inbound)
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			c.Write([]byte("ping"))
			back := make([]byte, 4)
			// (No half-close: microsocks ends both ways at the first EOF.)
			io.ReadFull(c, back)
			want := "ping"
			if tc.chain[0] == 'r' {
				want = "PING"
			}
			if string(back) != want {
				t.Fatalf("got %q, want %q", back, want)
			}
			c.Close()
			if by := rec.wait(t, c.LocalAddr().String()); by != tc.want {
				t.Fatalf("the flow ended on %q, want %q", by, tc.want)
			}
		})
	}
}

// The loop does not wait for the client to speak first: a server that
// greets (SMTP, SSH) is heard at once.
func TestForwardServerSpeaksFirst(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("220 hello\r\n"))
			c.Close()
		}
	}()
	ap := l.Addr().(*net.TCPAddr).AddrPort()
	addr, rec := startForwarder(t, "direct", funnel.MakeAddr(ap.Addr().String(), ap.Port()), false)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(c)
	if string(got) != "220 hello\r\n" {
		t.Fatalf("banner %q (%v)", got, err)
	}
	c.Close()
	if by := rec.wait(t, c.LocalAddr().String()); by != "listened" {
		t.Fatalf("the flow ended on %q, want the listener loop", by)
	}
}

// 500 idle flows through a plain-direct forwarder hold no goroutine each.
func TestForwardIdleFlowsHoldNoGoroutines(t *testing.T) {
	addr, _ := startForwarder(t, "direct", echoAddr(t), false)
	const n = 500
	g0 := runtime.NumGoroutine()
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		testutil.EchoOnce(t, c, "x")
	}
	// The echo server holds a goroutine per connection; the forwarder
	// should hold none.
	if g := runtime.NumGoroutine() - g0; g > n+16 {
		t.Fatalf("%d more goroutines for %d idle flows (the echo server's %d included): the forwarder holds some per flow", g, n, n)
	}
}
