package netstack_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/funtun/funtun/funnel"
)

// A program whose UDP socket is bound to all addresses receives on the
// stack's address too: each peer that sends to the port is a conversation
// of its own, carrying the peer's address, and the answers leave from the
// same port. A datagram flow the program starts from that port to a new
// peer leaves from it as well, and the peer's answer comes back to that
// flow, not to a new conversation. A program bound to one address gets
// nothing; closing the listener frees the port for the next bind.
func TestListenDgramOnTheStacksAddress(t *testing.T) {
	far, routed, direct := newRoutedSet(t)
	if !routed.ListensDgram() || direct.ListensDgram() {
		t.Fatalf("ListensDgram: routed %v, direct %v; want true, false", routed.ListensDgram(), direct.ListensDgram())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	listen := func(addr string) (funnel.Conversations, error) {
		return routed.ListenDgram(ctx, funnel.NewFlow("test", funnel.UDP, funnel.AddrFromNet(net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))))
	}
	if _, err := listen("127.0.0.1:5060"); !errors.Is(err, funnel.ErrNoListener) {
		t.Fatalf("a socket bound to 127.0.0.1 was listened for on the stack (err %v)", err)
	}
	convs, err := listen("[::]:5060")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := listen("0.0.0.0:5060"); !errors.Is(err, funnel.ErrNoListener) {
		t.Fatalf("a second listener on the stack's UDP port 5060: err %v, want ErrNoListener", err)
	}

	peer, err := far.ListenUDP(netip.AddrPortFrom(farAddr, 7000))
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	stackPort := net.UDPAddrFromAddrPort(netip.AddrPortFrom(linkAddr, 5060))
	// The listener's link comes up in the background: the peer sends
	// until a conversation starts.
	accepted := make(chan funnel.Conversation, 1)
	go func() {
		c, err := convs.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	var conv funnel.Conversation
	for conv == nil {
		peer.WriteTo([]byte("INVITE"), stackPort)
		select {
		case conv = <-accepted:
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			t.Fatal("no conversation from the peer's datagrams")
		}
	}
	defer conv.Close()
	fr, err := conv.ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	if string(fr.Bytes()) != "INVITE" || fr.Src != netip.AddrPortFrom(farAddr, 7000) || fr.Dst != netip.AddrPortFrom(linkAddr, 5060) {
		t.Fatalf("the conversation read %q from %s to %s", fr.Bytes(), fr.Src, fr.Dst)
	}
	fr.Release()
	reply := funnel.NewFrame()
	reply.SetLen(copy(reply.Room(), "200 OK"))
	if err := conv.WriteFrame(reply); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	peer.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		n, from, err := peer.ReadFrom(buf)
		if err != nil {
			t.Fatalf("the peer got no answer: %v", err)
		}
		if string(buf[:n]) == "INVITE" {
			continue
		}
		if string(buf[:n]) != "200 OK" || from.String() != stackPort.String() {
			t.Fatalf("the peer got %q from %s, want 200 OK from %s", buf[:n], from, stackPort)
		}
		break
	}
	// The peer's further datagrams (the INVITEs sent while the link came
	// up among them) stay in its conversation: no second one starts.
	peer.WriteTo([]byte("ACK"), stackPort)
	for {
		conv.SetReadDeadline(time.Now().Add(10 * time.Second))
		fr, err := conv.ReadFrame()
		if err != nil {
			t.Fatalf("the conversation lost the peer's ACK: %v", err)
		}
		got := string(fr.Bytes())
		fr.Release()
		if got == "ACK" {
			break
		}
	}
	select {
	case c := <-accepted:
		t.Fatalf("a second conversation with the same peer: %v", c)
	default:
	}

	// The program sends from its bound port to a new peer: the datagram
	// leaves the stack from port 5060, and the answer comes back to the
	// flow.
	other, err := far.ListenUDP(netip.AddrPortFrom(farAddr, 7001))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	f := funnel.NewFlow("test", funnel.UDP, funnel.MakeAddr(farAddr.String(), 7001))
	f.Source = net.UDPAddrFromAddrPort(netip.MustParseAddrPort("[::]:5060"))
	out, err := routed.DialDgram(ctx, f)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	msg := funnel.NewFrame()
	msg.SetLen(copy(msg.Room(), "REGISTER"))
	if err := out.WriteFrame(msg); err != nil {
		t.Fatal(err)
	}
	other.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, from, err := other.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "REGISTER" || from.String() != stackPort.String() {
		t.Fatalf("the new peer got %q from %v (%v), want REGISTER from %s", buf[:n], from, err, stackPort)
	}
	other.WriteTo([]byte("401"), from)
	out.SetReadDeadline(time.Now().Add(10 * time.Second))
	fr, err = out.ReadFrame()
	if err != nil || string(fr.Bytes()) != "401" {
		t.Fatalf("the program's flow got no answer from the new peer: %v", err)
	}
	fr.Release()
	select {
	case c := <-accepted:
		t.Fatalf("the new peer's answer started a conversation of its own: %v", c)
	default:
	}

	// A flow from another port keeps a port of its own.
	f2 := funnel.NewFlow("test", funnel.UDP, funnel.MakeAddr(farAddr.String(), 7001))
	f2.Source = net.UDPAddrFromAddrPort(netip.MustParseAddrPort("[::]:40000"))
	out2, err := routed.DialDgram(ctx, f2)
	if err != nil {
		t.Fatal(err)
	}
	msg = funnel.NewFrame()
	msg.SetLen(copy(msg.Room(), "other"))
	out2.WriteFrame(msg)
	n, from, err = other.ReadFrom(buf)
	out2.Close()
	if err != nil || string(buf[:n]) != "other" || from.(*net.UDPAddr).Port == 5060 {
		t.Fatalf("a flow from another port: %q from %v (%v)", buf[:n], from, err)
	}

	convs.Close()
	if _, err := convs.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v, want net.ErrClosed", err)
	}
	if _, err := conv.ReadFrame(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("a conversation after its listener closed: %v, want net.ErrClosed", err)
	}
	again, err := listen("0.0.0.0:5060")
	if err != nil {
		t.Fatalf("binding the port again after Close: %v", err)
	}
	again.Close()
}
