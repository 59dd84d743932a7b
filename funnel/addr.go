package funnel

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
)

// Addr is a flow's destination: an IP address, or a name that is still to be
// resolved by whichever piece the profile says (hosts, direct, an upstream
// SOCKS5 server...). Keeping the name unresolved is what lets a SOCKS5
// upstream resolve it on the far side.
type Addr struct {
	Name string     // set when the destination is a host name
	IP   netip.Addr // set when the destination is an address
	Port uint16
}

// ParseAddr reads "host:port", "[v6]:port" or "name:port".
func ParseAddr(s string) (Addr, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return Addr{}, fmt.Errorf("address %q: %v (want HOST:PORT)", s, err)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return Addr{}, fmt.Errorf("address %q: port %q is not a number from 0 to 65535", s, port)
	}
	return MakeAddr(host, uint16(p)), nil
}

// MakeAddr builds an Addr from a host that may be a literal address or a name.
func MakeAddr(host string, port uint16) Addr {
	if ip, err := netip.ParseAddr(host); err == nil {
		return Addr{IP: ip.Unmap(), Port: port}
	}
	return Addr{Name: host, Port: port}
}

// AddrFromNet converts a *net.TCPAddr or *net.UDPAddr.
func AddrFromNet(a net.Addr) Addr {
	switch a := a.(type) {
	case *net.TCPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return Addr{IP: ip.Unmap(), Port: uint16(a.Port)}
	case *net.UDPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return Addr{IP: ip.Unmap(), Port: uint16(a.Port)}
	}
	if a == nil {
		return Addr{}
	}
	ad, _ := ParseAddr(a.String())
	return ad
}

// IsName reports whether the destination still needs resolving.
func (a Addr) IsName() bool { return a.Name != "" }

// Host is the name or the address in text.
func (a Addr) Host() string {
	if a.Name != "" {
		return a.Name
	}
	if !a.IP.IsValid() {
		return ""
	}
	return a.IP.String()
}

// AddrPort is the resolved form; only valid when !IsName().
func (a Addr) AddrPort() netip.AddrPort { return netip.AddrPortFrom(a.IP, a.Port) }

func (a Addr) String() string { return net.JoinHostPort(a.Host(), strconv.Itoa(int(a.Port))) }

// WithIP returns the address resolved to ip, forgetting the name.
func (a Addr) WithIP(ip netip.Addr) Addr { return Addr{IP: ip.Unmap(), Port: a.Port} }
