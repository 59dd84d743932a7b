package rewrite_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/testutil"
	_ "github.com/funtun/funtun/pieces/direct"
	_ "github.com/funtun/funtun/pieces/rewrite"
)

func dest(t *testing.T, a net.Addr) funnel.Addr {
	t.Helper()
	return funnel.AddrFromNet(a)
}

// TestEchoBothDirections sends text to a real echo server through two
// chained rewrites: the upper one rewrites what the application writes,
// the lower one what comes back, and a match cut across writes and a tail
// held at the half-close both arrive.
func TestEchoBothDirections(t *testing.T) {
	echo := testutil.EchoServer(t)
	pl := testutil.Pipeline(t, `rewrite from=cat to=dog dir=up | rewrite from=dog to=bird dir=down`)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pl.DialStream(ctx, funnel.NewFlow("test", funnel.TCP, dest(t, echo)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	for _, part := range []string{"the c", "at sat", " with a dog, ", "the c"} {
		if _, err := io.WriteString(c, part); err != nil {
			t.Fatal(err)
		}
	}
	// The final "c" may begin "cat": only the half-close lets it go.
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if want := "the bird sat with a bird, the c"; string(got) != want {
		t.Fatalf("echo came back as %q, want %q", got, want)
	}
}

// TestEchoInteractive: a line that cannot begin a match is not held back,
// so a request/response exchange does not stall.
func TestEchoInteractive(t *testing.T) {
	echo := testutil.EchoServer(t)
	pl := testutil.Pipeline(t, `rewrite from='password: [^\n]*' to='password: ***' regex=true`)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pl.DialStream(ctx, funnel.NewFlow("test", funnel.TCP, dest(t, echo)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 100)
	for _, tc := range []struct{ send, want string }{
		{"user: alice\n", "user: alice\n"},
		{"password: hunter2\n", "password: ***\n"},
		{"bye\n", "bye\n"},
	} {
		io.WriteString(c, tc.send)
		n, err := io.ReadAtLeast(c, buf, len(tc.want))
		if err != nil {
			t.Fatalf("after sending %q: %v", tc.send, err)
		}
		if string(buf[:n]) != tc.want {
			t.Fatalf("sent %q, got back %q, want %q", tc.send, buf[:n], tc.want)
		}
	}
}

func TestCompileErrors(t *testing.T) {
	for _, tc := range []struct{ chain, want string }{
		{`rewrite to=x`, `test:1:1: piece "rewrite": needs from=TEXT`},
		{`rewrite from=a dir=sideways`, `test:1:20: piece "rewrite": dir: "sideways" is not up, down or both`},
		{`rewrite from='a(' regex=true`, `test:1:14: piece "rewrite": from: error parsing regexp`},
		{`rewrite from='x*' regex=true`, `can match the empty string`},
		{`rewrite from=abcdef max=4`, `piece "rewrite": from: 6 bytes long, longer than max=4`},
		{`rewrite from=a max=lots`, `piece "rewrite": max: "lots" is not a size`},
		{`rewrite from=a regex=maybe`, `regex: "maybe" is not true or false`},
	} {
		_, err := funnel.CompileSet([]funnel.Source{{Name: "p", Origin: "test", Text: tc.chain}})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error containing %q", tc.chain, err, tc.want)
		}
	}
}

// httpOrigin serves a fixed page on loopback.
func httpOrigin(t *testing.T) net.Addr {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "Hello from the origin server, path %s\n", r.URL.Path)
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr()
}

// forward accepts connections and carries each through pl to target, the
// way `funtun forward` does: outgoing flows with pl.DialStream and
// funnel.Relay, or with --inbound the engine's ServeInbound.
func forward(t *testing.T, pl *funnel.Pipeline, target net.Addr, inbound bool) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	engine := &funnel.Engine{Log: slog.New(slog.DiscardHandler)}
	go func() {
		for {
			client, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				f := funnel.NewFlow("test", funnel.TCP, funnel.AddrFromNet(target))
				f.Log = engine.Log
				if inbound {
					engine.ServeInbound(ctx, f, pl, client, func(ctx context.Context) (net.Conn, error) {
						var d net.Dialer
						return d.DialContext(ctx, "tcp", target.String())
					})
					return
				}
				engine.ServeStream(ctx, f, pl, client)
			}()
		}
	}()
	return l.Addr().String()
}

func curl(t *testing.T, args ...string) string {
	t.Helper()
	bin := testutil.NeedTool(t, "curl")
	args = append([]string{"-sS", "--max-time", "10"}, args...)
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("curl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestCurlResponseRewritten: a real curl talks to a real HTTP server
// through the piece; the request path is rewritten on the way up and the
// response body (same length, so Content-Length still holds) on the way
// down.
func TestCurlResponseRewritten(t *testing.T) {
	origin := httpOrigin(t)
	pl := testutil.Pipeline(t, `rewrite dir=up from='GET /old' to='GET /brand-new' | rewrite dir=down regex=true from='(o)rigin' to='${1}RIGIN'`)
	addr := forward(t, pl, origin, false)
	got := curl(t, "http://"+addr+"/old")
	if want := "Hello from the oRIGIN server, path /brand-new\n"; got != want {
		t.Fatalf("curl got %q, want %q", got, want)
	}
}

// TestCurlInbound: on an incoming flow the application is the local server,
// so its response travels up: dir=up rewrites what the client receives.
func TestCurlInbound(t *testing.T) {
	origin := httpOrigin(t)
	pl := testutil.Pipeline(t, `rewrite dir=up from=origin to=ORIGIN`)
	addr := forward(t, pl, origin, true)
	got := curl(t, "http://"+addr+"/in")
	if want := "Hello from the ORIGIN server, path /in\n"; got != want {
		t.Fatalf("curl got %q, want %q", got, want)
	}
}
