package netx

import (
	"net"
	"net/netip"
	"strings"
)

// AddrPortOf is the address and port of a TCP or UDP net.Addr, with an
// IPv4-mapped IPv6 address turned into the IPv4 address it stands for (a
// dual-stack socket reports ::ffff:192.0.2.1 for a client at 192.0.2.1).
// Any other kind of address (a Unix socket's, nil) gives the zero
// AddrPort, which is not IsValid.
func AddrPortOf(a net.Addr) netip.AddrPort {
	var ap netip.AddrPort
	switch a := a.(type) {
	case *net.TCPAddr:
		if a == nil {
			return ap
		}
		ap = a.AddrPort()
	case *net.UDPAddr:
		if a == nil {
			return ap
		}
		ap = a.AddrPort()
	default:
		return ap
	}
	return Unmap(ap)
}

// Unmap turns an IPv4-mapped IPv6 address into the IPv4 address it stands
// for and leaves any other alone.
func Unmap(ap netip.AddrPort) netip.AddrPort {
	if ap.Addr().Is4In6() {
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return ap
}

// NetAddr is AddrPortOf's reverse: a *net.TCPAddr for a network that
// starts with "tcp", a *net.UDPAddr for "udp", and nil for any other
// network or an invalid address (never a typed nil pointer).
func NetAddr(network string, ap netip.AddrPort) net.Addr {
	if !ap.IsValid() {
		return nil
	}
	switch {
	case strings.HasPrefix(network, "tcp"):
		return net.TCPAddrFromAddrPort(ap)
	case strings.HasPrefix(network, "udp"):
		return net.UDPAddrFromAddrPort(ap)
	}
	return nil
}
