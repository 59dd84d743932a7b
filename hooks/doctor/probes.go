package doctor

import (
	"net/netip"
	"strconv"
)

// The lab's addresses: documentation ranges (RFC 5737, RFC 3849), which
// no real host has, on the one link between the two namespaces.
var (
	outside4 = netip.MustParseAddr("192.0.2.1")   // responders and resolver
	inside4  = netip.MustParseAddr("192.0.2.2")   // the program's sockets
	funnel4  = netip.MustParseAddr("192.0.2.3")   // the funnel's marked sockets
	outside6 = netip.MustParseAddr("2001:db8::1") // responders (IPv6)
	inside6  = netip.MustParseAddr("2001:db8::2") // the program's sockets (IPv6)
	funnel6  = netip.MustParseAddr("2001:db8::3") // the funnel's marked sockets (IPv6)
	labBits4 = 24
	labBits6 = 64
)

// labDomain is the name the lab's resolver answers, with everything under
// it.
const labDomain = "doctor.test"

// doctorMark is the firewall mark of the funnel's own sockets in the lab
// (FUNTUN_MARK): "doc" in ASCII.
const doctorMark = 0x646f63

// httpPort is where the responders also speak HTTP, for programs.
const httpPort = 80

// firstProbePort: probe i connects to port firstProbePort+i, so that the
// capture can tell the probes' packets apart by port alone.
const firstProbePort = 9001

// probeKind says what a probe's traffic should look like from outside.
type probeKind int

const (
	// connects: the probe reaches a responder; it must arrive from the
	// funnel.
	connects probeKind = iota
	// resolves: the probe asks for a name; no query may arrive from the
	// program (the funnel answers it, or asks itself).
	resolves
)

// probe is one built-in check: a subcommand of funtun-probe.
type probe struct {
	name  string // funtun-probe's subcommand, and the probe's name in the report
	title string
	kind  probeKind
	// args are the subcommand's arguments in the lab.
	args func(p labProbe) []string
}

// labProbe is what a probe's arguments are made of.
type labProbe struct {
	port   int    // its own responder port
	name   string // its own name under labDomain
	static string // funtun-probe-static
}

func (p labProbe) portText() string { return strconv.Itoa(p.port) }

var probes = []probe{
	{"tcp-addr", "TCP connect by address", connects, func(p labProbe) []string {
		return []string{outside4.String(), p.portText()}
	}},
	{"tcp-name", "TCP connect by name (getaddrinfo)", connects, func(p labProbe) []string {
		return []string{p.name, p.portText()}
	}},
	{"gai", "getaddrinfo", resolves, func(p labProbe) []string { return []string{p.name} }},
	{"gai-a", "getaddrinfo_a", resolves, func(p labProbe) []string { return []string{p.name} }},
	{"res-query", "res_query", resolves, func(p labProbe) []string { return []string{p.name} }},
	{"dns-udp", "DNS query over UDP to the resolv.conf nameserver", resolves, func(p labProbe) []string {
		return []string{p.name}
	}},
	{"dns-tcp", "DNS query over TCP to the resolv.conf nameserver", resolves, func(p labProbe) []string {
		return []string{p.name}
	}},
	{"udp-sendto", "UDP sendto to an address", connects, func(p labProbe) []string {
		return []string{outside4.String(), p.portText()}
	}},
	{"tcp6", "IPv6 TCP connect", connects, func(p labProbe) []string {
		return []string{outside6.String(), p.portText()}
	}},
	{"io-uring", "io_uring connect", connects, func(p labProbe) []string {
		return []string{outside4.String(), p.portText()}
	}},
	{"scrubbed-child", "child with an empty environment", connects, func(p labProbe) []string {
		return []string{outside4.String(), p.portText()}
	}},
	{"static-child", "static child", connects, func(p labProbe) []string {
		return []string{p.static, outside4.String(), p.portText()}
	}},
	{"raw-syscall", "raw syscall(SYS_connect)", connects, func(p labProbe) []string {
		return []string{outside4.String(), p.portText()}
	}},
}

// subcommand is the probe's funtun-probe subcommand (tcp6 is tcp-addr to
// an IPv6 address).
func (p probe) subcommand() string {
	if p.name == "tcp6" {
		return "tcp-addr"
	}
	return p.name
}

// labProbeOf gives probe i its port and name.
func labProbeOf(i int, p probe, static string) labProbe {
	return labProbe{port: firstProbePort + i, name: p.name + "." + labDomain, static: static}
}

// probePorts are the ports the responders listen on.
func probePorts() []int {
	ports := []int{httpPort}
	for i := range probes {
		ports = append(ports, firstProbePort+i)
	}
	return ports
}
