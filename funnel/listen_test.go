package funnel_test

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/funtun/funtun/funnel"
)

// listenPiece listens on a loopback port of its own for an application
// that listens on every address, and records where.
type listenPiece struct {
	mu     sync.Mutex
	addrs  []string
	closed *atomic.Int32
}

func (p *listenPiece) Curves() []funnel.Curve {
	return []funnel.Curve{{App: funnel.Stream, Net: funnel.Kernel}}
}
func (p *listenPiece) DialStream(context.Context, *funnel.Flow, funnel.Next) (net.Conn, error) {
	return nil, funnel.Errorf(funnel.KindRefused, "t-listen dials nothing")
}
func (p *listenPiece) ListenStream(_ context.Context, f *funnel.Flow, _ funnel.Next) (net.Listener, error) {
	if !f.Dest.IP.IsUnspecified() {
		return nil, funnel.ErrNoListener
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	p.addrs = append(p.addrs, l.Addr().String())
	p.mu.Unlock()
	return l, nil
}
func (p *listenPiece) Close() error { p.closed.Add(1); return nil }

// forkPiece names two profiles, as a route does.
type forkPiece struct{}

func (forkPiece) Curves() []funnel.Curve {
	return []funnel.Curve{{App: funnel.Stream, Net: funnel.Kernel}}
}
func (forkPiece) DialStream(context.Context, *funnel.Flow, funnel.Next) (net.Conn, error) {
	return nil, funnel.Errorf(funnel.KindRefused, "t-fork dials nothing")
}

var (
	listenPieces   []*listenPiece
	listenPiecesMu sync.Mutex
	listenCloses   atomic.Int32
)

func init() {
	funnel.Register(funnel.PieceInfo{Name: "t-listen", New: func(*funnel.Params, funnel.Builder) (funnel.Piece, error) {
		p := &listenPiece{closed: &listenCloses}
		listenPiecesMu.Lock()
		listenPieces = append(listenPieces, p)
		listenPiecesMu.Unlock()
		return p, nil
	}})
	funnel.Register(funnel.PieceInfo{Name: "t-fork", New: func(p *funnel.Params, b funnel.Builder) (funnel.Piece, error) {
		for _, key := range []string{"a", "b"} {
			if _, err := b.Ref(p.String(key, "")); err != nil {
				return nil, p.Errorf(key, "%v", err)
			}
		}
		return forkPiece{}, nil
	}})
}

// A profile that branches listens in every branch that listens, as one
// listener; it keeps the set open until that listener closes.
func TestListenStreamThroughBranches(t *testing.T) {
	listenPiecesMu.Lock()
	listenPieces = nil
	listenPiecesMu.Unlock()
	set, err := funnel.CompileSet([]funnel.Source{
		{Name: "fork", Origin: "fork.profile", Text: "t-fork a=one b=two"},
		{Name: "one", Origin: "one.profile", Text: "t-listen"},
		{Name: "two", Origin: "two.profile", Text: "t-listen"},
		{Name: "plain", Origin: "plain.profile", Text: "direct"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := set.Open(); err != nil {
		t.Fatal(err)
	}
	fork, _ := set.Profile("fork")
	plain, _ := set.Profile("plain")
	if !fork.Listens() || plain.Listens() {
		t.Fatalf("Listens: fork %v, plain %v; want true, false", fork.Listens(), plain.Listens())
	}
	ctx := context.Background()
	flow := func(host string) *funnel.Flow {
		return funnel.NewFlow("test", funnel.TCP, funnel.MakeAddr(host, 8080))
	}
	if _, err := plain.ListenStream(ctx, flow("0.0.0.0")); !errors.Is(err, funnel.ErrNoListener) {
		t.Errorf("a profile without listeners: %v, want ErrNoListener", err)
	}
	if _, err := fork.ListenStream(ctx, flow("127.0.0.1")); !errors.Is(err, funnel.ErrNoListener) {
		t.Errorf("an address no piece listens for: %v, want ErrNoListener", err)
	}
	f := flow("::")
	ln, err := fork.ListenStream(ctx, f)
	if err != nil {
		t.Fatal(err)
	}
	if !f.Inbound || f.Profile != "fork" {
		t.Errorf("the listen's flow: inbound %v, profile %q", f.Inbound, f.Profile)
	}
	var addrs []string
	listenPiecesMu.Lock()
	for _, p := range listenPieces {
		addrs = append(addrs, p.addrs...)
	}
	listenPiecesMu.Unlock()
	if len(addrs) != 2 {
		t.Fatalf("the branches made %d listeners, want 2", len(addrs))
	}
	for _, a := range addrs {
		c, err := net.Dial("tcp", a)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		if got.LocalAddr().String() != a {
			t.Errorf("accepted a connection to %s, want %s", got.LocalAddr(), a)
		}
		got.Close()
		c.Close()
	}

	// The listener holds the set: a retired set closes its pieces only
	// once the listener is closed.
	set.Retire()
	if n := listenCloses.Load(); n != 0 {
		t.Fatalf("%d pieces closed while the listener was open", n)
	}
	ln.Close()
	if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v, want net.ErrClosed", err)
	}
	if n := listenCloses.Load(); n != 2 {
		t.Errorf("%d listening pieces closed after the listener, want 2", n)
	}
	for _, a := range addrs {
		if c, err := net.Dial("tcp", a); err == nil {
			c.Close()
			t.Errorf("%s still takes connections after Close", a)
		}
	}
}
