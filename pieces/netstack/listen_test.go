package netstack_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/pieces/netstack/ipstack"
	_ "github.com/funtun/funtun/pieces/route"
)

// newFarNetwork is a second user-space stack at farAddr that plays the
// network beyond a pipeLink; the link gives the stack under test linkAddr.
func newFarNetwork(t *testing.T, linkAddr netip.Addr) (*ipstack.Stack, *pipeLink) {
	t.Helper()
	far, err := ipstack.New(1280)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(far.Close)
	if err := far.AddAddress(farAddr); err != nil {
		t.Fatal(err)
	}
	link := &pipeLink{far: far, addr: linkAddr, up: make(chan *funnel.Frame, 256), done: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() {
		for {
			fr := funnel.NewFrame()
			n, ok := far.ReadPacket(ctx, fr.Room())
			if !ok {
				fr.Release()
				return
			}
			fr.SetLen(n)
			select {
			case link.up <- fr:
			case <-ctx.Done():
				fr.Release()
				return
			}
		}
	}()
	return far, link
}

// linkAddr is the address the far network gives the stack under test.
var linkAddr = netip.MustParseAddr("2001:db8::1")

// newRoutedSet opens a profile set whose "routed" profile sends IPv6 to
// a netstack over a pipe link to the far network (returned), beside a
// plain "direct".
func newRoutedSet(t *testing.T) (far *ipstack.Stack, routed, direct *funnel.Pipeline) {
	t.Helper()
	far, link := newFarNetwork(t, linkAddr)
	testLink = link
	set, err := funnel.CompileSet([]funnel.Source{
		{Name: "direct", Origin: "direct.profile", Text: "direct"},
		{Name: "tunnel", Origin: "tunnel.profile", Text: "netstack ipv4=direct | test-pipe-link"},
		{Name: "routed", Origin: "routed.profile", Text: "route ipv6=tunnel default=direct"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := set.Open(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(set.Retire)
	routed, _ = set.Profile("routed")
	direct, _ = set.Profile("direct")
	return far, routed, direct
}

// A program listening on all addresses is listened for on the stack's
// address too, through a profile that routes to the stack: the stack
// brings its link up without any outgoing flow, and each connection
// from the network comes out of the listener with the client's address.
// A program listening on one address gets nothing, a second listener of
// the port neither; closing the listener gives the port up.
func TestListenOnTheStacksAddress(t *testing.T) {
	far, routed, direct := newRoutedSet(t)
	if !routed.Listens() || direct.Listens() {
		t.Fatalf("Listens: routed %v, direct %v; want true, false", routed.Listens(), direct.Listens())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	listen := func(addr string) (net.Listener, error) {
		return routed.ListenStream(ctx, funnel.NewFlow("test", funnel.TCP, funnel.AddrFromNet(net.TCPAddrFromAddrPort(netip.MustParseAddrPort(addr)))))
	}
	if _, err := listen("127.0.0.1:8080"); !errors.Is(err, funnel.ErrNoListener) {
		t.Fatalf("a program listening on 127.0.0.1 was listened for on the stack (err %v)", err)
	}
	ln, err := listen("0.0.0.0:8080")
	if err != nil {
		t.Fatal(err)
	}
	// The same program's [::]:8080 (a dual-stack server listens twice):
	// the port is taken, and that socket listens alone.
	if _, err := listen("[::]:8080"); !errors.Is(err, funnel.ErrNoListener) {
		t.Fatalf("a second listener on the stack's port 8080: err %v, want ErrNoListener", err)
	}

	served := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			served <- err.Error()
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c)
		c.Write(bytes.ToUpper(b))
		served <- c.RemoteAddr().String() + " -> " + c.LocalAddr().String()
	}()
	c, err := dialUntilUp(ctx, far, netip.AddrPortFrom(linkAddr, 8080))
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("in through the stack"))
	c.(interface{ CloseWrite() error }).CloseWrite()
	back, err := io.ReadAll(c)
	c.Close()
	if err != nil || string(back) != "IN THROUGH THE STACK" {
		t.Fatalf("answer %q, %v", back, err)
	}
	got := <-served
	if want := "[" + farAddr.String() + "]:"; !bytes.HasPrefix([]byte(got), []byte(want)) || !bytes.HasSuffix([]byte(got), []byte("-> [2001:db8::1]:8080")) {
		t.Errorf("the accepted connection is %s, want from %s… to [2001:db8::1]:8080", got, want)
	}

	ln.Close()
	if _, err := ln.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v, want net.ErrClosed", err)
	}
	dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
	defer dcancel()
	if c, err := far.DialTCP(dctx, netip.AddrPortFrom(linkAddr, 8080)); err == nil {
		c.Close()
		t.Fatal("the stack still takes connections on port 8080 after its listener closed")
	} else if ipstack.ErrorKind(err) != "refused" {
		t.Fatalf("a connection after the listener closed: %v, want refused", err)
	}
	again, err := listen("[::]:8080")
	if err != nil {
		t.Fatalf("listening on the port again after Close: %v", err)
	}
	again.Close()
}

// dialUntilUp connects from the far network once the listener's link is
// up (it comes up in the background).
func dialUntilUp(ctx context.Context, far *ipstack.Stack, to netip.AddrPort) (net.Conn, error) {
	for {
		dctx, cancel := context.WithTimeout(ctx, time.Second)
		c, err := far.DialTCP(dctx, to)
		cancel()
		if err == nil {
			return c, nil
		}
		if ctx.Err() != nil {
			return nil, err
		}
		select {
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// A program may listen while the router does not answer: its listen
// succeeds (the link is brought up, and retried, in the background), and
// closing the listener ends the retries.
func TestListenWhileTheRouterIsSilent(t *testing.T) {
	set, err := funnel.CompileSet([]funnel.Source{
		{Name: "direct", Origin: "direct.profile", Text: "direct"},
		{Name: "p", Origin: "p.profile", Text: "netstack ipv4=direct | 6bed4 router=127.0.0.1:9 timeout=1s"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := set.Open(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(set.Retire)
	p, _ := set.Profile("p")
	ln, err := p.ListenStream(context.Background(), funnel.NewFlow("test", funnel.TCP, funnel.MakeAddr("::", 8080)))
	if err != nil {
		t.Fatalf("listening with a silent router: %v", err)
	}
	accepted := make(chan error, 1)
	go func() {
		_, err := ln.Accept()
		accepted <- err
	}()
	ln.Close()
	if err := <-accepted; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept on a closed listener: %v, want net.ErrClosed", err)
	}
}
