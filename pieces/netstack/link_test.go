package netstack_test

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/testutil"
	"github.com/funtun/funtun/pieces/netstack/ipstack"
)

// pipeLink is a packet link whose far end is a second user-space stack
// (the "network"), so that netstack can be tested without a tunnel.
type pipeLink struct {
	far  *ipstack.Stack
	addr netip.Addr
	up   chan *funnel.Frame
	done chan struct{}
}

var farAddr = netip.MustParseAddr("2001:db8::2")

func (l *pipeLink) LinkAddr() netip.Addr             { return l.addr }
func (l *pipeLink) LinkAddrChanged() <-chan struct{} { return nil }
func (l *pipeLink) WriteFrame(fr *funnel.Frame) error {
	l.far.Inject(fr.Bytes())
	fr.Release()
	return nil
}
func (l *pipeLink) ReadFrame() (*funnel.Frame, error) {
	select {
	case fr := <-l.up:
		return fr, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}
func (l *pipeLink) SetReadDeadline(time.Time) error { return nil }
func (l *pipeLink) Close() error {
	select {
	case <-l.done:
	default:
		close(l.done)
	}
	return nil
}

type pipePiece struct{ link *pipeLink }

func (p *pipePiece) Curves() []funnel.Curve {
	return []funnel.Curve{{App: funnel.PacketIP6, Net: funnel.Kernel}}
}
func (p *pipePiece) DialDgram(context.Context, *funnel.Flow, funnel.Next) (funnel.DgramConn, error) {
	return p.link, nil
}

var testLink *pipeLink

func init() {
	funnel.Register(funnel.PieceInfo{
		Name: "test-pipe-link",
		New: func(*funnel.Params, funnel.Builder) (funnel.Piece, error) {
			return &pipePiece{link: testLink}, nil
		},
	})
}

// The stack carries TCP (both ways, with a half-close) and UDP over a
// plain packet link, with the address the link gives it.
func TestStackOverAPacketLink(t *testing.T) {
	far, err := ipstack.New(1280)
	if err != nil {
		t.Fatal(err)
	}
	defer far.Close()
	if err := far.AddAddress(farAddr); err != nil {
		t.Fatal(err)
	}
	testLink = &pipeLink{far: far, addr: netip.MustParseAddr("2001:db8::1"), up: make(chan *funnel.Frame, 256), done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		for {
			fr := funnel.NewFrame()
			n, ok := far.ReadPacket(ctx, fr.Room())
			if !ok {
				fr.Release()
				return
			}
			fr.SetLen(n)
			testLink.up <- fr
		}
	}()
	// A TCP echo that answers after the client half-closes, and a UDP echo.
	ln, err := far.ListenTCP(netip.AddrPortFrom(farAddr, 7))
	if err != nil {
		t.Fatal(err)
	}
	testutil.Serve(t, ln, func(c net.Conn) {
		var got bytes.Buffer
		got.ReadFrom(c)
		c.Write(bytes.ToUpper(got.Bytes()))
	})
	uc, err := far.ListenUDP(netip.AddrPortFrom(farAddr, 7))
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	go func() {
		b := make([]byte, 2000)
		for {
			n, from, err := uc.ReadFrom(b)
			if err != nil {
				return
			}
			uc.WriteTo(bytes.ToUpper(b[:n]), from)
		}
	}()

	pl := testutil.Pipeline(t, "netstack | test-pipe-link")
	dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
	defer dcancel()
	c, err := pl.DialStream(dctx, funnel.NewFlow("test", funnel.TCP, funnel.MakeAddr("2001:db8::2", 7)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := c.LocalAddr().String(); got != "[2001:db8::1]:"+portOf(got) {
		t.Errorf("the stack's connection is from %s, want the link's address 2001:db8::1", got)
	}
	msg := bytes.Repeat([]byte("user space "), 5000)
	c.Write(msg)
	c.(interface{ CloseWrite() error }).CloseWrite()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var back bytes.Buffer
	if _, err := back.ReadFrom(c); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back.Bytes(), bytes.ToUpper(msg)) {
		t.Fatalf("TCP echo gave %d bytes, want %d in capitals", back.Len(), len(msg))
	}

	dc, err := pl.DialDgram(dctx, funnel.NewFlow("test", funnel.UDP, funnel.MakeAddr("2001:db8::2", 7)))
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	fr := funnel.NewFrame()
	fr.SetLen(copy(fr.Room(), "one datagram"))
	if err := dc.WriteFrame(fr); err != nil {
		t.Fatal(err)
	}
	dc.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := dc.ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	defer got.Release()
	if string(got.Bytes()) != "ONE DATAGRAM" || got.Src != netip.MustParseAddrPort("[2001:db8::2]:7") {
		t.Fatalf("UDP echo: %q from %s", got.Bytes(), got.Src)
	}

	// Refused: nothing listens on port 9 of the far stack.
	_, err = pl.DialStream(dctx, funnel.NewFlow("test", funnel.TCP, funnel.MakeAddr("2001:db8::2", 9)))
	testutil.WantKind(t, err, funnel.KindRefused, "refused")
}

func portOf(hostport string) string {
	_, p, _ := net.SplitHostPort(hostport)
	return p
}
