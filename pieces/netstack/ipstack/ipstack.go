// Package ipstack is a user-space IPv6 stack: gVisor's tcpip stack on a
// channel link, whose packets the caller carries (the netstack piece hands
// them to the piece below it; funtun 6bed4router to its tunnel). TCP and
// UDP sockets on it are gonet connections, so the rest of funtun sees
// net.Conn values as from the kernel.
package ipstack

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"
)

const nicID tcpip.NICID = 1

// queueLen is how many outgoing packets the link holds before the stack
// sees it as full and drops (TCP then backs off, as on a real link).
const queueLen = 512

// Stack is one user-space IPv6 stack with one interface.
type Stack struct {
	s  *stack.Stack
	ep *channel.Endpoint

	mu    sync.Mutex
	addrs map[netip.Addr]bool
}

// New makes a stack whose interface has the given MTU. It holds no
// address until AddAddress; every destination is routed to the link.
func New(mtu int) (*Stack, error) {
	s := stack.New(stack.Options{
		NetworkProtocols: []stack.NetworkProtocolFactory{ipv6.NewProtocolWithOptions(ipv6.Options{
			// The tunnel below answers Router and Neighbor Discovery
			// itself; the stack must not solicit routers, probe for
			// duplicate addresses or join multicast groups on it.
			NDPConfigs: ipv6.NDPConfigurations{HandleRAs: ipv6.HandlingRAsDisabled},
			MLD:        ipv6.MLDOptions{Enabled: false},
		})},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol6},
		HandleLocal:        true,
	})
	ep := channel.New(queueLen, uint32(mtu), "")
	if err := s.CreateNIC(nicID, ep); err != nil {
		s.Close()
		return nil, fmt.Errorf("user-space stack: creating its interface: %s", err)
	}
	// Bulk transfers over a tunnel with some delay need more than the
	// small default buffers to fill the path.
	sack := tcpip.TCPSACKEnabled(true)
	s.SetTransportProtocolOption(tcp.ProtocolNumber, &sack)
	rcv := tcpip.TCPReceiveBufferSizeRangeOption{Min: 4 << 10, Default: 1 << 20, Max: 4 << 20}
	s.SetTransportProtocolOption(tcp.ProtocolNumber, &rcv)
	snd := tcpip.TCPSendBufferSizeRangeOption{Min: 4 << 10, Default: 1 << 20, Max: 4 << 20}
	s.SetTransportProtocolOption(tcp.ProtocolNumber, &snd)
	s.SetRouteTable([]tcpip.Route{{Destination: header.IPv6EmptySubnet, NIC: nicID}})
	return &Stack{s: s, ep: ep, addrs: map[netip.Addr]bool{}}, nil
}

// AddAddress gives the interface an address (a /128: every other
// destination goes through the link anyway).
func (s *Stack) AddAddress(a netip.Addr) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.addrs[a] {
		return nil
	}
	pa := tcpip.ProtocolAddress{
		Protocol:          ipv6.ProtocolNumber,
		AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpip.AddrFrom16(a.As16()), PrefixLen: 128},
	}
	if err := s.s.AddProtocolAddress(nicID, pa, stack.AddressProperties{}); err != nil {
		return fmt.Errorf("user-space stack: adding address %s: %s", a, err)
	}
	s.addrs[a] = true
	return nil
}

// RemoveAddress takes an address away (the tunnel gave a new one).
func (s *Stack) RemoveAddress(a netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.addrs[a] {
		s.s.RemoveAddress(nicID, tcpip.AddrFrom16(a.As16()))
		delete(s.addrs, a)
	}
}

// Inject hands the stack one IPv6 packet from the link. b is copied.
func (s *Stack) Inject(b []byte) {
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(b)})
	s.ep.InjectInbound(ipv6.ProtocolNumber, pkt)
	pkt.DecRef()
}

// ReadPacket waits for the next packet the stack sends on its link and
// copies it into dst, returning its length; it returns false when ctx
// ends or the stack closes. A packet larger than dst is dropped.
func (s *Stack) ReadPacket(ctx context.Context, dst []byte) (int, bool) {
	for {
		pkt := s.ep.ReadContext(ctx)
		if pkt == nil {
			return 0, false
		}
		n := 0
		fits := pkt.Size() <= len(dst)
		if fits {
			for _, v := range pkt.AsSlices() {
				n += copy(dst[n:], v)
			}
		}
		pkt.DecRef()
		if fits {
			return n, true
		}
	}
}

// Close ends the stack: its connections fail and ReadPacket returns.
func (s *Stack) Close() {
	s.ep.Close()
	s.s.Close()
	s.s.Wait()
}

func full(a netip.AddrPort) tcpip.FullAddress {
	return tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFrom16(a.Addr().As16()), Port: a.Port()}
}

// DialTCP connects to a through the stack. The error is one of the
// tcpip errors, spelled as that error's String (see Unreachable and
// Refused).
func (s *Stack) DialTCP(ctx context.Context, a netip.AddrPort) (*gonet.TCPConn, error) {
	return gonet.DialContextTCP(ctx, s.s, full(a), ipv6.ProtocolNumber)
}

// DialUDP makes a UDP socket connected to a.
func (s *Stack) DialUDP(a netip.AddrPort) (*gonet.UDPConn, error) {
	r := full(a)
	return gonet.DialUDP(s.s, nil, &r, ipv6.ProtocolNumber)
}

// ListenTCP listens on a, which must be one of the stack's addresses.
func (s *Stack) ListenTCP(a netip.AddrPort) (net.Listener, error) {
	return gonet.ListenTCP(s.s, full(a), ipv6.ProtocolNumber)
}

// ListenUDP binds a UDP socket to a.
func (s *Stack) ListenUDP(a netip.AddrPort) (*gonet.UDPConn, error) {
	l := full(a)
	return gonet.DialUDP(s.s, &l, nil, ipv6.ProtocolNumber)
}

// The tcpip errors a dial may end in, as gonet spells them.
var (
	refused     = (&tcpip.ErrConnectionRefused{}).String()
	hostUnreach = []string{(&tcpip.ErrHostUnreachable{}).String()}
	netUnreach  = (&tcpip.ErrNetworkUnreachable{}).String()
	timedOut    = (&tcpip.ErrTimeout{}).String()
)

// ErrorKind names what a dial error from the stack means: "refused",
// "host", "net", "timeout", or "" when it is none of these.
func ErrorKind(err error) string {
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Err == nil {
		return ""
	}
	switch msg := oe.Err.Error(); msg {
	case refused:
		return "refused"
	case netUnreach:
		return "net"
	case timedOut:
		return "timeout"
	default:
		for _, h := range hostUnreach {
			if msg == h {
				return "host"
			}
		}
	}
	return ""
}

// ListenTCPAny listens on port of every address the stack has, now and
// later (a tunnel address that changes keeps its listeners). The port
// is bound with SO_REUSEADDR, as servers bind theirs: connections that a
// closed listener accepted still hold the port, and a program that
// listens again must get it back.
func (s *Stack) ListenTCPAny(port uint16) (net.Listener, error) {
	var wq waiter.Queue
	ep, terr := s.s.NewEndpoint(tcp.ProtocolNumber, ipv6.ProtocolNumber, &wq)
	if terr != nil {
		return nil, errors.New(terr.String())
	}
	ep.SocketOptions().SetReuseAddress(true)
	addr := &net.TCPAddr{IP: net.IPv6unspecified, Port: int(port)}
	if terr := ep.Bind(tcpip.FullAddress{NIC: nicID, Port: port}); terr != nil {
		ep.Close()
		return nil, &net.OpError{Op: "bind", Net: "tcp", Addr: addr, Err: errors.New(terr.String())}
	}
	if terr := ep.Listen(listenBacklog); terr != nil {
		ep.Close()
		return nil, &net.OpError{Op: "listen", Net: "tcp", Addr: addr, Err: errors.New(terr.String())}
	}
	return gonet.NewTCPListener(s.s, &wq, ep), nil
}

// listenBacklog is gonet.ListenTCP's.
const listenBacklog = 4096

// ListenUDPAny binds a UDP socket to port on every address the stack
// has, now and later, unconnected: it takes datagrams from any peer and
// sends to any, always from port.
func (s *Stack) ListenUDPAny(port uint16) (*gonet.UDPConn, error) {
	return gonet.DialUDP(s.s, &tcpip.FullAddress{NIC: nicID, Port: port}, nil, ipv6.ProtocolNumber)
}
