//go:build linux

package funnel_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/netx"
	"github.com/funtun/funtun/internal/testutil"
)

// The engine's fast path, tested on real loopback traffic. Each flow's log
// line is recorded with the engine function that ended it, so a test can
// tell the listener loops (finishListened), the relay loops
// (finishAdopted) and the goroutine relay (asyncRelay) apart.

type flowRec struct {
	msg   string
	attrs map[string]string
	by    string // "listened", "adopted", "goroutines" or ""
}

type recorder struct {
	mu   sync.Mutex
	recs []flowRec
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) WithGroup(string) slog.Handler            { return r }
func (r *recorder) WithAttrs(as []slog.Attr) slog.Handler {
	return &attrRecorder{r: r, attrs: as}
}
func (r *recorder) Handle(ctx context.Context, rec slog.Record) error {
	return (&attrRecorder{r: r}).Handle(ctx, rec)
}

type attrRecorder struct {
	r     *recorder
	attrs []slog.Attr
}

func (a *attrRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (a *attrRecorder) WithGroup(string) slog.Handler            { return a }
func (a *attrRecorder) WithAttrs(as []slog.Attr) slog.Handler {
	return &attrRecorder{r: a.r, attrs: append(append([]slog.Attr(nil), a.attrs...), as...)}
}
func (a *attrRecorder) Handle(_ context.Context, rec slog.Record) error {
	fr := flowRec{msg: rec.Message, attrs: map[string]string{}, by: testutil.FlowPath()}
	for _, x := range a.attrs {
		fr.attrs[x.Key] = x.Value.String()
	}
	rec.Attrs(func(x slog.Attr) bool {
		fr.attrs[x.Key] = x.Value.String()
		return true
	})
	a.r.mu.Lock()
	a.r.recs = append(a.r.recs, fr)
	a.r.mu.Unlock()
	return nil
}

// flowFrom waits for the log line of the flow whose client is src.
func (r *recorder) flowFrom(t *testing.T, src string) flowRec {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		r.mu.Lock()
		for _, fr := range r.recs {
			if (fr.msg == "flow" || fr.msg == "flow failed") && fr.attrs["src"] == src {
				r.mu.Unlock()
				return fr
			}
		}
		r.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no flow log line from %s within 5s", src)
	return flowRec{}
}

func fastEngine(t *testing.T) (*funnel.Engine, *recorder) {
	t.Helper()
	rec := &recorder{}
	c := &funnel.Catalog{Dirs: []string{t.TempDir()}, Builtins: fstest.MapFS{
		"d.profile":      {Data: []byte("direct")},
		"slow.profile":   {Data: []byte("direct timeout=300ms")},
		"src.profile":    {Data: []byte("direct source=127.0.0.2")},
		"opaque.profile": {Data: []byte("t-stream")},
	}}
	eng, err := funnel.NewEngine(c, slog.New(rec))
	if err != nil {
		t.Fatal(err)
	}
	return eng, rec
}

func resolver(eng *funnel.Engine, profile string) func() (*funnel.Pipeline, error) {
	return func() (*funnel.Pipeline, error) { return eng.Resolve(funnel.Selector{Profile: profile}) }
}

// echoServer echoes every connection and reports each peer's address.
func echoServer(t *testing.T) (netip.AddrPort, chan netip.AddrPort) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	peers := make(chan netip.AddrPort, 100)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			select {
			case peers <- netx.AddrPortOf(c.RemoteAddr()):
			default:
			}
			go func() {
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
				c.Close()
			}()
		}
	}()
	return netx.AddrPortOf(l.Addr()), peers
}

// serve runs ServeListener on a fresh loopback port until the test ends.
func serve(t *testing.T, eng *funnel.Engine, fl funnel.FastListener) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- eng.ServeListener(ctx, l, fl) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("ServeListener: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("ServeListener did not return within 5s of its context's end")
		}
	})
	return l.Addr().String()
}

func dial(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c.(*net.TCPConn)
}

// roundTrip sends size random bytes, half-closes, and checks that the
// same bytes come back and then EOF.
func roundTrip(t *testing.T, c *net.TCPConn, size int) {
	t.Helper()
	payload := make([]byte, size)
	rand.Read(payload)
	go func() {
		c.Write(payload)
		c.CloseWrite()
	}()
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err != nil || n != int64(size) || !bytes.Equal(h.Sum(nil), sha256Of(payload)) {
		t.Fatalf("echo through the fast path: %d of %d bytes, err %v, intact %v", n, size, err, bytes.Equal(h.Sum(nil), sha256Of(payload)))
	}
}

func sha256Of(b []byte) []byte { s := sha256.Sum256(b); return s[:] }

// A forwarder's listener: no handshake, a fixed destination.
func TestFastListenerForwards(t *testing.T) {
	eng, rec := fastEngine(t)
	echo, _ := echoServer(t)
	var finished atomic.Int32
	addr := serve(t, eng, funnel.FastListener{Hook: "t", Resolve: resolver(eng, "d"), Dest: echo,
		Finished: func() { finished.Add(1) },
		General:  func(context.Context, funnel.Handover) { t.Error("the general path got a plain-direct client") }})
	c := dial(t, addr)
	roundTrip(t, c, 4<<20)
	fr := rec.flowFrom(t, c.LocalAddr().String())
	if fr.by != "listened" || fr.msg != "flow" || fr.attrs["up"] != "4194304" || fr.attrs["down"] != "4194304" || fr.attrs["hook"] != "t" || fr.attrs["profile"] != "d" {
		t.Fatalf("flow line %v by %q, want a flow of the listener loop with up=down=4194304", fr.attrs, fr.by)
	}
	if n := finished.Load(); n != 1 {
		t.Fatalf("Finished ran %d times, want 1", n)
	}
}

// A profile the engine does not dial itself goes to the general path
// before a byte is read.
func TestFastListenerHandsOverOtherProfiles(t *testing.T) {
	eng, _ := fastEngine(t)
	echo, _ := echoServer(t)
	got := make(chan funnel.Handover, 1)
	addr := serve(t, eng, funnel.FastListener{Hook: "t", Resolve: resolver(eng, "opaque"), Dest: echo,
		General: func(_ context.Context, h funnel.Handover) { got <- h }})
	c := dial(t, addr)
	select {
	case h := <-got:
		defer h.Conn.Close()
		if h.Remote.String() != c.LocalAddr().String() || len(h.Read) != 0 {
			t.Fatalf("handover from %v with %q, want from %v with nothing read", h.Remote, h.Read, c.LocalAddr())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no handover within 5s")
	}
}

// lineHandshake is a toy protocol: "HI\n" answered "OK\n", then
// "GO ADDR:PORT\n" dialed and answered "UP BOUND\n" or "ERR KIND\n";
// anything else goes to the general path.
type lineHandshake struct{}

func (lineHandshake) Input(phase *uint8, in []byte, write func([]byte) error) funnel.Step {
	i := bytes.IndexByte(in, '\n')
	if i < 0 {
		return funnel.Step{Kind: funnel.StepMore}
	}
	line := string(in[:i])
	switch {
	case *phase == 0 && line == "HI":
		write([]byte("OK\n"))
		*phase = 1
		return funnel.Step{Kind: funnel.StepMore, Consumed: i + 1}
	case *phase == 1 && strings.HasPrefix(line, "GO "):
		ap, err := netip.ParseAddrPort(line[3:])
		if err != nil {
			return funnel.Step{Kind: funnel.StepGeneral}
		}
		return funnel.Step{Kind: funnel.StepDial, Dest: ap, Consumed: i + 1}
	}
	return funnel.Step{Kind: funnel.StepGeneral}
}

func (lineHandshake) Answer(buf []byte, bound netip.AddrPort, err error) []byte {
	if err != nil {
		return fmt.Appendf(buf, "ERR %s\n", funnel.Classify(err))
	}
	return fmt.Appendf(buf, "UP %s\n", bound)
}

func TestFastListenerHandshake(t *testing.T) {
	eng, rec := fastEngine(t)
	echo, peers := echoServer(t)
	handed := make(chan funnel.Handover, 4)
	for _, speaksFirst := range []bool{false, true} {
		addr := serve(t, eng, funnel.FastListener{Hook: "t", Resolve: resolver(eng, "d"), Handshake: lineHandshake{},
			ClientSpeaksFirst: speaksFirst, General: func(_ context.Context, h funnel.Handover) { handed <- h }})
		t.Run(fmt.Sprintf("dialed/speaks-first=%v", speaksFirst), func(t *testing.T) {
			c := dial(t, addr)
			// One byte at a time: the loop must keep what it has.
			for _, b := range []byte("HI\nGO " + echo.String() + "\n") {
				c.Write([]byte{b})
				time.Sleep(time.Millisecond)
			}
			br := bufio.NewReader(c)
			ok, _ := br.ReadString('\n')
			up, _ := br.ReadString('\n')
			peer := <-peers
			if ok != "OK\n" || up != "UP "+peer.String()+"\n" {
				t.Fatalf("answers %q %q, want OK and UP %s", ok, up, peer)
			}
			c.Write([]byte("ping"))
			c.CloseWrite()
			rest, _ := io.ReadAll(br)
			if string(rest) != "ping" {
				t.Fatalf("echo gave %q", rest)
			}
			if fr := rec.flowFrom(t, c.LocalAddr().String()); fr.by != "listened" {
				t.Fatalf("flow ended by %q, want the listener loop", fr.by)
			}
		})
	}
	addr := serve(t, eng, funnel.FastListener{Hook: "t", Resolve: resolver(eng, "d"), Handshake: lineHandshake{},
		General: func(_ context.Context, h funnel.Handover) { handed <- h }})
	for _, tc := range []struct {
		name, send, read string
		phase            uint8
	}{
		{"unknown greeting", "HELLO\n", "HELLO\n", 0},
		{"unknown request after the greeting", "HI\nFETCH x\n", "FETCH x\n", 1},
		{"early data after the request", "HI\nGO " + echo.String() + "\nearly", "GO " + echo.String() + "\nearly", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, addr)
			c.Write([]byte(tc.send))
			select {
			case h := <-handed:
				h.Conn.Close()
				if string(h.Read) != tc.read || h.Phase != tc.phase || h.Remote.String() != c.LocalAddr().String() {
					t.Fatalf("handed over %q in phase %d from %v, want %q in phase %d from %v", h.Read, h.Phase, h.Remote, tc.read, tc.phase, c.LocalAddr())
				}
			case <-time.After(5 * time.Second):
				t.Fatal("no handover within 5s")
			}
		})
	}
}

// The dial follows the piece's policy: its timeout, its source address,
// and its errors worded as its own.
func TestFastListenerDialPolicy(t *testing.T) {
	eng, rec := fastEngine(t)
	echo, peers := echoServer(t)
	t.Run("source", func(t *testing.T) {
		addr := serve(t, eng, funnel.FastListener{Hook: "t", Resolve: resolver(eng, "src"), Handshake: lineHandshake{}})
		c := dial(t, addr)
		c.Write([]byte("HI\nGO " + echo.String() + "\n"))
		br := bufio.NewReader(c)
		br.ReadString('\n')
		up, _ := br.ReadString('\n')
		if peer := <-peers; peer.Addr().String() != "127.0.0.2" || up != "UP "+peer.String()+"\n" {
			t.Fatalf("upstream came from %v (answer %q), want 127.0.0.2 as direct source= says", peer, up)
		}
	})
	t.Run("refused", func(t *testing.T) {
		closed := freePort(t)
		addr := serve(t, eng, funnel.FastListener{Hook: "t", Resolve: resolver(eng, "d"), Handshake: lineHandshake{}})
		c := dial(t, addr)
		c.Write([]byte("HI\nGO " + closed + "\n"))
		br := bufio.NewReader(c)
		br.ReadString('\n')
		ans, _ := br.ReadString('\n')
		if ans != "ERR connection refused\n" {
			t.Fatalf("answer %q, want ERR connection refused", ans)
		}
		fr := rec.flowFrom(t, c.LocalAddr().String())
		if fr.msg != "flow failed" || !strings.HasPrefix(fr.attrs["err"], "direct: dial tcp "+closed) || fr.by != "listened" {
			t.Fatalf("flow line %q %v by %q, want a failed flow with direct's own error", fr.msg, fr.attrs, fr.by)
		}
	})
}

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// Run.Relay moves two kernel sockets to the relay loops: the Go
// connections are closed at once, the bytes still flow both ways with
// half-close, and the flow ends on the loop.
func TestRelayAdoptsKernelSockets(t *testing.T) {
	eng, rec := fastEngine(t)
	echo, _ := echoServer(t)
	pl, _ := eng.Resolve(funnel.Selector{Profile: "d"})
	client, app := pair(t)
	f := eng.NewFlow("t", funnel.TCP, funnel.Addr{IP: echo.Addr(), Port: echo.Port()})
	f.Source = app.RemoteAddr()
	r := eng.Begin(f, pl)
	up, err := r.DialStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	r.Relay(context.Background(), app, up.Conn, funnel.RelayOptions{Done: func(err error) { done <- err }})
	if _, err := app.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("the Go connection still works after the handover (%v): the relay did not move to a loop", err)
	}
	roundTrip(t, client, 1<<20)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if fr := rec.flowFrom(t, app.RemoteAddr().String()); fr.by != "adopted" || fr.attrs["up"] != "1048576" {
		t.Fatalf("flow %v ended by %q, want the relay loop with up=1048576", fr.attrs, fr.by)
	}
}

// An adopted relay ends with its context, and after its idle limit.
func TestRelayAdoptedEnds(t *testing.T) {
	eng, _ := fastEngine(t)
	pl, _ := eng.Resolve(funnel.Selector{Profile: "d"})
	for _, tc := range []string{"context", "idle"} {
		t.Run(tc, func(t *testing.T) {
			client, app := pair(t)
			network, server := pair(t)
			f := eng.NewFlow("t", funnel.TCP, funnel.MakeAddr("127.0.0.1", 9))
			r := eng.Begin(f, pl)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			opt := funnel.RelayOptions{}
			if tc == "idle" {
				opt.Idle = 200 * time.Millisecond
			}
			done := make(chan error, 1)
			opt.Done = func(err error) { done <- err }
			start := time.Now()
			r.Relay(ctx, app, network, opt)
			client.Write([]byte("hello"))
			buf := make([]byte, 5)
			if _, err := io.ReadFull(server, buf); err != nil || string(buf) != "hello" {
				t.Fatalf("relay: %q %v", buf, err)
			}
			if tc == "context" {
				cancel()
			}
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatalf("the flow did not end within 5s of its %s", tc)
			}
			if tc == "idle" && time.Since(start) < 200*time.Millisecond {
				t.Fatalf("ended after %v, before its idle limit", time.Since(start))
			}
			client.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := client.Read(buf); err == nil {
				t.Fatal("the client's connection is still open after the flow ended")
			}
		})
	}
}

// 1,000 idle adopted relays hold no goroutine each and no descriptor
// beyond their two sockets.
func TestRelayAdoptedIdleCost(t *testing.T) {
	eng, _ := fastEngine(t)
	pl, _ := eng.Resolve(funnel.Selector{Profile: "d"})
	const n = 300
	fds0 := openFDs(t)
	g0 := runtime.NumGoroutine()
	ctx, cancel := context.WithCancel(context.Background())
	var ended sync.WaitGroup
	var keep []*net.TCPConn
	for range n {
		client, app := pair(t)
		network, server := pair(t)
		keep = append(keep, client, server)
		r := eng.Begin(eng.NewFlow("t", funnel.TCP, funnel.MakeAddr("127.0.0.1", 9)), pl)
		ended.Add(1)
		r.Relay(ctx, app, network, funnel.RelayOptions{Done: func(error) { ended.Done() }})
	}
	time.Sleep(100 * time.Millisecond)
	// Ours: the test's own ends (2 per flow); the relay's: 2 per flow.
	if got, want := openFDs(t)-fds0, 4*n; got > want+8 {
		t.Errorf("%d descriptors for %d idle relays, want at most %d (+8 for the loops)", got, n, want)
	}
	if g := runtime.NumGoroutine() - g0; g > 16 {
		t.Errorf("%d more goroutines for %d idle relays, want none per relay", g, n)
	}
	cancel()
	waited := make(chan struct{})
	go func() { ended.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(10 * time.Second):
		t.Fatal("relays did not end within 10s of their context")
	}
	_ = keep
}

func openFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func pair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		ch <- c
	}()
	a, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-ch
	t.Cleanup(func() { a.Close(); b.Close() })
	return a.(*net.TCPConn), b.(*net.TCPConn)
}
