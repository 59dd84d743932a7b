// Package wire is the 6bed4 tunnel format shared by the 6bed4 piece (the
// peer) and funtun 6bed4router: the address layout of draft-vanrein-6bed4
// (draft-03, /114), and the few Neighbor Discovery messages the tunnel
// speaks (Router Solicitation and Advertisement, unicast Neighbor
// Solicitation and Advertisement). Headers are parsed and checksummed with
// gVisor's header package; nothing here keeps state.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

const (
	// Port is the UDP port of a 6bed4 router.
	Port = 25790
	// MTU is the largest IPv6 packet the tunnel carries: the IPv6
	// minimum, so that nothing is ever fragmented on the IPv4 path.
	MTU = 1280
	// PrefixLen is the length of the prefix a router gives each peer:
	// its /64, the peer's public IPv4 address and UDP port, and the two
	// bits of that address that the interface identifier's u/g bits hide.
	PrefixLen = 114
	// MaxLANIP is the largest local number (lanip) under one /114.
	MaxLANIP = 1<<14 - 1
	// NDHopLimit is the hop limit of every Neighbor Discovery message:
	// one that arrives with less has crossed a router and is forged.
	NDHopLimit = 255
)

var (
	// RouterLinkLocal is the router's address on the tunnel: fe80::.
	RouterLinkLocal = netip.MustParseAddr("fe80::")
	// AllNodes and AllRouters are the link-scope multicast groups.
	AllNodes   = netip.MustParseAddr("ff02::1")
	AllRouters = netip.MustParseAddr("ff02::2")
)

// Address is the 6bed4 address of the peer seen at public (its IPv4
// address and UDP port after any NAT) under the router's /64 prefix, with
// lanip as the last 14 bits (0 is the router's own). The two low bits of
// the IPv4 address's first byte fall on the interface identifier's
// universal/local and group bits; the draft moves them to the top of the
// 15th byte and clears them, so that the identifier reads as local and
// unicast.
func Address(prefix netip.Prefix, public netip.AddrPort, lanip uint16) netip.Addr {
	var a [16]byte
	p := prefix.Masked().Addr().As16()
	copy(a[:8], p[:8])
	v4 := public.Addr().Unmap().As4()
	copy(a[8:12], v4[:])
	binary.BigEndian.PutUint16(a[12:14], public.Port())
	a[14] = (v4[0]&0x03)<<6 | byte(lanip>>8)&0x3f
	a[15] = byte(lanip)
	a[8] &^= 0x03
	return netip.AddrFrom16(a)
}

// Endpoint is the public IPv4 address and UDP port that a 6bed4 address
// embeds: where packets for it go over the tunnel.
func Endpoint(a netip.Addr) netip.AddrPort {
	b := a.As16()
	v4 := [4]byte{b[8]&^0x03 | b[14]>>6, b[9], b[10], b[11]}
	return netip.AddrPortFrom(netip.AddrFrom4(v4), binary.BigEndian.Uint16(b[12:14]))
}

// LANIP is the local number in the last 14 bits of a 6bed4 address.
func LANIP(a netip.Addr) uint16 {
	b := a.As16()
	return uint16(b[14]&0x3f)<<8 | uint16(b[15])
}

// WithLANIP is a with its last 14 bits replaced by lanip (the router gives
// its /114 with lanip 0; the peer picks its own).
func WithLANIP(a netip.Addr, lanip uint16) netip.Addr {
	b := a.As16()
	b[14] = b[14]&0xc0 | byte(lanip>>8)&0x3f
	b[15] = byte(lanip)
	return netip.AddrFrom16(b)
}

// Same64 says whether a and b share their first 64 bits.
func Same64(a, b netip.Addr) bool {
	x, y := a.As16(), b.As16()
	return [8]byte(x[:8]) == [8]byte(y[:8])
}

// LinkLocal is fe80:: with a's interface identifier: the name the peer has
// on the tunnel link.
func LinkLocal(a netip.Addr) netip.Addr {
	b := a.As16()
	copy(b[:8], []byte{0xfe, 0x80, 0, 0, 0, 0, 0, 0})
	return netip.AddrFrom16(b)
}

// Why a packet was refused; the counters are keyed by these.
var (
	ErrShort     = errors.New("shorter than an IPv6 header")
	ErrTooLong   = errors.New("longer than the tunnel MTU of 1280")
	ErrVersion   = errors.New("not IPv6")
	ErrLength    = errors.New("payload length disagrees with the datagram")
	ErrChecksum  = errors.New("bad ICMPv6 checksum")
	ErrICMPShort = errors.New("ICMPv6 message too short")
	ErrHopLimit  = errors.New("neighbor discovery with a hop limit below 255")
)

// Packet is a parsed tunnel datagram: the IPv6 header's fields and, for
// an ICMPv6 packet (ICMPv6 straight after the header), its type and body.
type Packet struct {
	Raw      []byte // the whole IPv6 packet, trimmed to its payload length
	Src, Dst netip.Addr
	Next     uint8 // next header
	HopLimit uint8
	ICMP     header.ICMPv6 // nil unless Next is ICMPv6
}

// ICMPType is the ICMPv6 type, 0 when the packet is not ICMPv6.
func (p *Packet) ICMPType() header.ICMPv6Type {
	if p.ICMP == nil {
		return 0
	}
	return p.ICMP.Type()
}

// IsND says whether the packet is one of the Neighbor Discovery messages
// (types 133 to 137), which the tunnel itself answers.
func (p *Packet) IsND() bool {
	t := p.ICMPType()
	return t >= header.ICMPv6RouterSolicit && t <= header.ICMPv6RedirectMsg
}

// Parse checks one tunnel datagram: an IPv6 packet no longer than the MTU,
// whose payload length fits, and, for ICMPv6, a valid checksum; Neighbor
// Discovery must come with hop limit 255. It never panics on any input.
func Parse(b []byte) (Packet, error) {
	var p Packet
	if len(b) < header.IPv6MinimumSize {
		return p, ErrShort
	}
	if len(b) > MTU {
		return p, ErrTooLong
	}
	ip := header.IPv6(b)
	if header.IPVersion(b) != header.IPv6Version {
		return p, ErrVersion
	}
	if !ip.IsValid(len(b)) {
		return p, ErrLength
	}
	b = b[:header.IPv6MinimumSize+int(ip.PayloadLength())]
	ip = header.IPv6(b)
	p.Raw = b
	p.Src = netip.AddrFrom16(ip.SourceAddress().As16())
	p.Dst = netip.AddrFrom16(ip.DestinationAddress().As16())
	p.Next = ip.NextHeader()
	p.HopLimit = ip.HopLimit()
	if tcpip.TransportProtocolNumber(p.Next) != header.ICMPv6ProtocolNumber {
		return p, nil
	}
	icmp := header.ICMPv6(b[header.IPv6MinimumSize:])
	if len(icmp) < header.ICMPv6MinimumSize {
		return p, ErrICMPShort
	}
	sum := header.ICMPv6Checksum(header.ICMPv6ChecksumParams{
		Header: icmp,
		Src:    ip.SourceAddress(),
		Dst:    ip.DestinationAddress(),
	})
	if sum != icmp.Checksum() {
		return p, ErrChecksum
	}
	p.ICMP = icmp
	if p.IsND() && p.HopLimit != NDHopLimit {
		return p, ErrHopLimit
	}
	return p, nil
}

// RouterPrefix reads a Router Advertisement and returns the /114 it gives
// (the peer's 6bed4 address with lanip 0). It refuses an advertisement
// that is not one, or that offers no on-link autoconfiguration /114.
func RouterPrefix(p *Packet) (netip.Addr, error) {
	if p.ICMPType() != header.ICMPv6RouterAdvert {
		return netip.Addr{}, errors.New("not a Router Advertisement")
	}
	body := p.ICMP.MessageBody()
	if len(body) < header.NDPRAMinimumSize {
		return netip.Addr{}, ErrICMPShort
	}
	ra := header.NDPRouterAdvert(body)
	if ra.ManagedAddrConfFlag() {
		return netip.Addr{}, errors.New("the advertisement asks for DHCPv6, which 6bed4 does not use")
	}
	it, err := ra.Options().Iter(true)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("advertisement options: %w", err)
	}
	for {
		opt, done, err := it.Next()
		if err != nil {
			return netip.Addr{}, fmt.Errorf("advertisement options: %w", err)
		}
		if done {
			return netip.Addr{}, errors.New("the advertisement offers no /114 prefix")
		}
		pi, ok := opt.(header.NDPPrefixInformation)
		if !ok || !pi.OnLinkFlag() || !pi.AutonomousAddressConfigurationFlag() || pi.PrefixLength() != PrefixLen {
			continue
		}
		a := netip.AddrFrom16(pi.Prefix().As16())
		if !a.Is6() || a.IsLinkLocalUnicast() || a.IsMulticast() {
			continue
		}
		return WithLANIP(a, 0), nil
	}
}

// NeighborTarget is the target of a Neighbor Solicitation or Advertisement.
func NeighborTarget(p *Packet) (netip.Addr, bool) {
	body := p.ICMP.MessageBody()
	switch p.ICMPType() {
	case header.ICMPv6NeighborSolicit:
		if len(body) < header.NDPNSMinimumSize {
			return netip.Addr{}, false
		}
		return netip.AddrFrom16(header.NDPNeighborSolicit(body).TargetAddress().As16()), true
	case header.ICMPv6NeighborAdvert:
		if len(body) < header.NDPNAMinimumSize {
			return netip.Addr{}, false
		}
		return netip.AddrFrom16(header.NDPNeighborAdvert(body).TargetAddress().As16()), true
	}
	return netip.Addr{}, false
}

// icmpPacket builds an ND packet: an IPv6 header with hop limit 255, the
// ICMPv6 type and body, and its checksum.
func icmpPacket(src, dst netip.Addr, typ header.ICMPv6Type, body []byte) []byte {
	b := make([]byte, header.IPv6MinimumSize+header.ICMPv6HeaderSize+len(body))
	s, d := tcpip.AddrFrom16(src.As16()), tcpip.AddrFrom16(dst.As16())
	header.IPv6(b).Encode(&header.IPv6Fields{
		PayloadLength:     uint16(header.ICMPv6HeaderSize + len(body)),
		TransportProtocol: header.ICMPv6ProtocolNumber,
		HopLimit:          NDHopLimit,
		SrcAddr:           s,
		DstAddr:           d,
	})
	icmp := header.ICMPv6(b[header.IPv6MinimumSize:])
	icmp.SetType(typ)
	icmp.SetCode(0)
	copy(icmp[header.ICMPv6HeaderSize:], body)
	icmp.SetChecksum(header.ICMPv6Checksum(header.ICMPv6ChecksumParams{Header: icmp, Src: s, Dst: d}))
	return b
}

// RouterSolicitation is what a peer sends its router: from :: to
// all-routers.
func RouterSolicitation() []byte {
	return icmpPacket(netip.IPv6Unspecified(), AllRouters, header.ICMPv6RouterSolicit, make([]byte, header.NDPRSMinimumSize))
}

// RouterAdvertisement gives a peer its /114 (prefix114 is the peer's
// address with lanip 0) and the tunnel MTU, from fe80:: to dst.
func RouterAdvertisement(dst, prefix114 netip.Addr) []byte {
	body := make([]byte, header.NDPRAMinimumSize, header.NDPRAMinimumSize+32+8)
	// Current hop limit unspecified, no M/O flags, the longest router
	// lifetime: the router is stateless and does not go away.
	binary.BigEndian.PutUint16(body[2:4], 0xffff)
	pi := make([]byte, 32)
	pi[0], pi[1] = 3, 4 // Prefix Information, 4 units of 8
	pi[2] = PrefixLen
	pi[3] = 0xc0 // on-link, autonomous
	binary.BigEndian.PutUint32(pi[4:8], 0xffffffff)
	binary.BigEndian.PutUint32(pi[8:12], 0xffffffff)
	p := WithLANIP(prefix114, 0).As16()
	copy(pi[16:], p[:])
	mtu := make([]byte, 8)
	mtu[0], mtu[1] = 5, 1 // MTU, 1 unit of 8
	binary.BigEndian.PutUint32(mtu[4:8], MTU)
	body = append(append(body, pi...), mtu...)
	return icmpPacket(RouterLinkLocal, dst, header.ICMPv6RouterAdvert, body)
}

// NeighborSolicitation asks target, at its own IPv4 address and port,
// whether it answers there.
func NeighborSolicitation(src, target netip.Addr) []byte {
	body := make([]byte, header.NDPNSMinimumSize)
	header.NDPNeighborSolicit(body).SetTargetAddress(tcpip.AddrFrom16(target.As16()))
	return icmpPacket(src, target, header.ICMPv6NeighborSolicit, body)
}

// NeighborAdvertisement answers a solicitation for target (our own
// address), solicited and overriding.
func NeighborAdvertisement(target, dst netip.Addr, router bool) []byte {
	body := make([]byte, header.NDPNAMinimumSize)
	na := header.NDPNeighborAdvert(body)
	na.SetTargetAddress(tcpip.AddrFrom16(target.As16()))
	na.SetSolicitedFlag(true)
	na.SetOverrideFlag(true)
	na.SetRouterFlag(router)
	return icmpPacket(target, dst, header.ICMPv6NeighborAdvert, body)
}

// DecHopLimit lowers a forwarded packet's hop limit and says whether it
// may still go on; the hop limit is outside every checksum.
func DecHopLimit(raw []byte) bool {
	if raw[7] <= 1 {
		return false
	}
	raw[7]--
	return true
}
