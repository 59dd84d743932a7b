// Package match reads and applies the destination matchers that route and
// deny share: CIDR prefixes, domain suffixes, port ranges, IP versions and
// the name/address distinction. A matcher is a small value with no
// pointers, so matching a flow allocates nothing.
//
// Destinations are matched as what they reach, not as they are spelled:
//
//   - An IPv4-mapped IPv6 address (::ffff:127.0.0.1) is the IPv4 address.
//   - The unspecified address of a family (0.0.0.0, ::, ::ffff:0.0.0.0)
//     reaches this host: connect(2) sends it to the loopback address of
//     its family (127.0.0.1, ::1). An address rule matches it when the
//     rule covers the unspecified address itself or that loopback address,
//     so a rule covering 127.0.0.0/8 (or just 127.0.0.1) also covers
//     0.0.0.0, and a rule covering ::1 also covers ::.
//   - A name that inet_aton(3) reads as an IPv4 address ("0", "127.1",
//     "0x7f.1", "017700000001", "2130706433", also with trailing blanks and
//     text, which old resolvers ignore) or that is an address literal is
//     that address: getaddrinfo(3) turns it into the address without a
//     lookup. It is matched by every address rule (CIDR, ipv4, ipv6, addr)
//     as that address, and by the name rules (domains, name) as the name it
//     still is.
//   - "localhost" and the names under ".localhost" (RFC 6761) reach
//     127.0.0.1 and ::1: CIDR rules see them as those addresses, name
//     rules as names. Other names are not looked up here (route never
//     resolves; deny does, see its package).
package match

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/funtun/funtun/funnel"
)

type kind uint8

const (
	kindPrefix kind = iota + 1
	kindSuffix      // ".example.org": the domain and everything under it
	kindExact       // "host.example.org": that name only
	kindPort
	kindIPv4
	kindIPv6
	kindName
	kindAddr
)

// Matcher is one parsed destination test.
type Matcher struct {
	kind   kind
	prefix netip.Prefix
	domain string // lower case, no leading or trailing dot
	lo, hi uint16
	text   string // as written, for logs and errors
}

// Syntax is the one-line summary of what Parse accepts, for help texts and
// error messages.
const Syntax = "a CIDR (10.0.0.0/8, fd00::/8), an address, a domain (.example.org for it and its subdomains, host.example.org for that name only), port:N or port:N-M, ipv4, ipv6, name or addr"

// Parse reads one matcher.
func Parse(s string) (Matcher, error) {
	m := Matcher{text: s}
	switch strings.ToLower(s) {
	case "":
		return m, fmt.Errorf("empty matcher: expected %s", Syntax)
	case "ipv4":
		m.kind = kindIPv4
		return m, nil
	case "ipv6":
		m.kind = kindIPv6
		return m, nil
	case "name":
		m.kind = kindName
		return m, nil
	case "addr":
		m.kind = kindAddr
		return m, nil
	}
	if rest, ok := strings.CutPrefix(s, "port:"); ok {
		lo, hi, err := parsePorts(rest)
		if err != nil {
			return m, fmt.Errorf("%q: %v", s, err)
		}
		m.kind, m.lo, m.hi = kindPort, lo, hi
		return m, nil
	}
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return m, fmt.Errorf("%q is not a CIDR like 10.0.0.0/8 or fd00::/8", s)
		}
		// Flows carry unmapped addresses, so a ::ffff:a.b.c.d/N prefix is
		// turned into the IPv4 prefix it means.
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		m.kind, m.prefix = kindPrefix, p.Masked()
		return m, nil
	}
	if ip, err := netip.ParseAddr(s); err == nil {
		ip = ip.Unmap().WithZone("")
		m.kind, m.prefix = kindPrefix, netip.PrefixFrom(ip, ip.BitLen())
		return m, nil
	}
	// A rule in another inet_aton spelling (127.1, 0x7f000001) is the
	// address it spells, as it is for a destination.
	if ip, ok := parseInetAton(s); ok {
		m.kind, m.prefix = kindPrefix, netip.PrefixFrom(ip, ip.BitLen())
		return m, nil
	}
	if strings.Contains(s, ":") {
		return m, fmt.Errorf("%q is not an address, and only port:N takes a colon; expected %s", s, Syntax)
	}
	domain := strings.ToLower(strings.TrimSuffix(s, "."))
	m.kind = kindExact
	if d, ok := strings.CutPrefix(domain, "."); ok {
		m.kind, domain = kindSuffix, d
	}
	if err := CheckDomain(domain); err != nil {
		return m, fmt.Errorf("%q: %v; expected %s", s, err, Syntax)
	}
	m.domain = domain
	return m, nil
}

func parsePorts(s string) (lo, hi uint16, err error) {
	a, b, isRange := strings.Cut(s, "-")
	lo, err = parsePort(a)
	if err != nil {
		return 0, 0, err
	}
	if !isRange {
		return lo, lo, nil
	}
	hi, err = parsePort(b)
	if err != nil {
		return 0, 0, err
	}
	if hi < lo {
		return 0, 0, fmt.Errorf("port range %d-%d runs backwards", lo, hi)
	}
	return lo, hi, nil
}

func parsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil {
		return 0, fmt.Errorf("port %q is not a number from 0 to 65535", s)
	}
	return uint16(n), nil
}

// CheckDomain tells why d (lower case, no leading or trailing dot) is not a
// usable domain name; hosts uses it for its names too.
func CheckDomain(d string) error {
	if d == "" {
		return fmt.Errorf("no domain name")
	}
	for _, label := range strings.Split(d, ".") {
		if label == "" {
			return fmt.Errorf("empty label in domain name")
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return fmt.Errorf("%q cannot be in a domain name", r)
			}
		}
	}
	return nil
}

// Match reports whether a destination matches as any of what it is: an
// address as its canonical form (see the package comment), a name as the
// name it is and as the addresses it stands for without a lookup (a
// numeric spelling, localhost). Domain tests never match an address, and
// CIDR tests never look a name up: the matcher sees the destination as the
// pieces above it left it.
func (m Matcher) Match(d funnel.Addr) bool {
	if !d.IsName() {
		return m.MatchAddr(d.IP, d.Port, true)
	}
	if m.MatchName(d.Name, d.Port) {
		return true
	}
	sp := Spell(d.Name)
	for _, ip := range sp.Addrs() {
		if m.MatchAddr(ip, d.Port, sp.Numeric) {
			return true
		}
	}
	return false
}

// MatchName reports whether a name destination matches as the name it is:
// domain, name and port tests. Address tests do not match here, even for
// a name that spells an address (see Spell and MatchAddr for that).
func (m Matcher) MatchName(name string, port uint16) bool {
	switch m.kind {
	case kindSuffix:
		name = trimDot(name)
		if len(name) < len(m.domain) {
			return false
		}
		tail := name[len(name)-len(m.domain):]
		if !strings.EqualFold(tail, m.domain) {
			return false
		}
		return len(name) == len(m.domain) || name[len(name)-len(m.domain)-1] == '.'
	case kindExact:
		return strings.EqualFold(trimDot(name), m.domain)
	case kindPort:
		return port >= m.lo && port <= m.hi
	case kindName:
		return name != ""
	}
	return false
}

// MatchAddr reports whether an address a destination is or reaches
// matches. asked says the flow asked for this address, as an address or
// a numeric spelling of one: then ipv4, ipv6 and addr test it too. An
// address a name only reaches (localhost's, or what deny looked up) is
// seen by CIDR and port tests alone: ipv4, ipv6 and addr describe the
// destination as the application gave it. The address is canonicalised:
// unmapped, and the unspecified address counts as the loopback address
// of its family too.
func (m Matcher) MatchAddr(ip netip.Addr, port uint16, asked bool) bool {
	if !ip.IsValid() {
		return false
	}
	ip = ip.Unmap()
	switch m.kind {
	case kindPrefix:
		if ip.Zone() != "" {
			ip = ip.WithZone("")
		}
		if m.prefix.Contains(ip) {
			return true
		}
		return ip.IsUnspecified() && m.prefix.Contains(loopbackOf(ip))
	case kindPort:
		return port >= m.lo && port <= m.hi
	case kindIPv4:
		return asked && ip.Is4()
	case kindIPv6:
		return asked && !ip.Is4()
	case kindAddr:
		return asked
	}
	return false
}

var (
	loopback4 = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	loopback6 = netip.IPv6Loopback()
)

// loopbackOf is where connect(2) sends the unspecified address of ip's
// family when the socket is not bound: 127.0.0.1 or ::1.
func loopbackOf(ip netip.Addr) netip.Addr {
	if ip.Is4() {
		return loopback4
	}
	return loopback6
}

// Canon is the address a destination address reaches, for logs and for
// pieces that compare addresses themselves: unmapped, without a zone, and
// the loopback address of its family for the unspecified address.
func Canon(ip netip.Addr) netip.Addr {
	ip = ip.Unmap().WithZone("")
	if ip.IsUnspecified() {
		return loopbackOf(ip)
	}
	return ip
}

// Spelling is what a name stands for without a lookup.
type Spelling struct {
	addrs [2]netip.Addr
	n     int
	// Numeric: the name is an address (a literal, or an inet_aton form
	// such as 127.1), which getaddrinfo returns without asking DNS.
	Numeric bool
}

// Addrs are the addresses the name stands for: one for a numeric name,
// 127.0.0.1 and ::1 for localhost, none for other names.
func (s *Spelling) Addrs() []netip.Addr { return s.addrs[:s.n] }

// Spell says what a name stands for without a lookup: the address it
// spells (a literal, or any form inet_aton reads), or the loopback
// addresses for "localhost" and the names under ".localhost" (RFC 6761).
func Spell(name string) Spelling {
	var s Spelling
	// Dotted quads are inet_aton's too; only IPv6 needs ParseAddr, whose
	// error would cost an allocation on every name.
	if strings.IndexByte(name, ':') >= 0 {
		if ip, err := netip.ParseAddr(name); err == nil {
			s.addrs[0], s.n, s.Numeric = ip.Unmap(), 1, true
		}
		return s
	}
	if ip, ok := parseInetAton(name); ok {
		s.addrs[0], s.n, s.Numeric = ip, 1, true
		return s
	}
	if n := trimDot(name); len(n) >= len("localhost") {
		tail := n[len(n)-len("localhost"):]
		if strings.EqualFold(tail, "localhost") && (len(n) == len(tail) || n[len(n)-len(tail)-1] == '.') {
			s.addrs[0], s.addrs[1], s.n = loopback4, loopback6, 2
		}
	}
	return s
}

// parseInetAton reads an IPv4 address the way glibc's inet_aton(3) does,
// which is what getaddrinfo(3) tries before DNS: one to four parts
// separated by dots, each decimal, octal (leading 0) or hexadecimal (0x);
// the last part fills the remaining bytes ("127.1" is 127.0.0.1, "0" is
// 0.0.0.0, "2130706433" is 127.0.0.1). Like inet_aton (but not the exact
// variant newer getaddrinfo uses) it accepts a blank or a NUL and anything
// after it, so that every resolver's reading is covered.
func parseInetAton(s string) (netip.Addr, bool) {
	var parts [4]uint64
	n := 0
	i := 0
	for {
		if i >= len(s) || s[i] < '0' || s[i] > '9' {
			return netip.Addr{}, false
		}
		var v uint64
		base := uint64(10)
		if s[i] == '0' {
			base = 8
			i++
			if i < len(s) && (s[i] == 'x' || s[i] == 'X') && i+1 < len(s) && isHex(s[i+1]) {
				base = 16
				i++
			}
		}
		for ; i < len(s); i++ {
			d, ok := digit(s[i], base)
			if !ok {
				break
			}
			v = v*base + d
			if v > 0xffffffff {
				return netip.Addr{}, false
			}
		}
		parts[n] = v
		n++
		if i < len(s) && s[i] == '.' {
			if n == 4 || v > 0xff {
				return netip.Addr{}, false
			}
			i++
			continue
		}
		break
	}
	// A NUL ends the name for a resolver written in C.
	if i < len(s) && !isSpace(s[i]) && s[i] != 0 {
		return netip.Addr{}, false
	}
	last := parts[n-1]
	if last > 0xffffffff>>(8*(n-1)) {
		return netip.Addr{}, false
	}
	v := last
	for j := 0; j < n-1; j++ {
		v |= parts[j] << (24 - 8*j)
	}
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), true
}

func isHex(c byte) bool {
	_, ok := digit(c, 16)
	return ok
}

func digit(c byte, base uint64) (uint64, bool) {
	var d uint64
	switch {
	case c >= '0' && c <= '9':
		d = uint64(c - '0')
	case c >= 'a' && c <= 'f':
		d = uint64(c-'a') + 10
	case c >= 'A' && c <= 'F':
		d = uint64(c-'A') + 10
	default:
		return 0, false
	}
	return d, d < base
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'
}

func trimDot(name string) string {
	if n := len(name); n > 0 && name[n-1] == '.' {
		return name[:n-1]
	}
	return name
}

func (m Matcher) String() string { return m.text }

// List is matchers of which any one is enough.
type List []Matcher

// Match reports whether any matcher in the list matches.
func (l List) Match(d funnel.Addr) bool {
	for _, m := range l {
		if m.Match(d) {
			return true
		}
	}
	return false
}

// Index is the position of the first matcher that matches, or -1.
func (l List) Index(d funnel.Addr) int {
	for i, m := range l {
		if m.Match(d) {
			return i
		}
	}
	return -1
}

// IndexName is the position of the first matcher that matches a name as
// the name it is (MatchName), or -1.
func (l List) IndexName(name string, port uint16) int {
	for i, m := range l {
		if m.MatchName(name, port) {
			return i
		}
	}
	return -1
}

// IndexAddr is the position of the first matcher that matches an address
// the destination is or reaches (MatchAddr), or -1.
func (l List) IndexAddr(ip netip.Addr, port uint16, asked bool) int {
	for i, m := range l {
		if m.MatchAddr(ip, port, asked) {
			return i
		}
	}
	return -1
}

// HasCIDR reports whether the list holds an address or CIDR test: only
// those look at the addresses a name reaches, so only then is a lookup
// worth making.
func (l List) HasCIDR() bool {
	for _, m := range l {
		if m.kind == kindPrefix {
			return true
		}
	}
	return false
}

func (l List) String() string {
	parts := make([]string, len(l))
	for i, m := range l {
		parts[i] = m.text
	}
	return strings.Join(parts, ",")
}

// ListError is a matcher that failed to parse inside a comma list; Offset
// is its byte offset in the list, so that the error can point at it.
type ListError struct {
	Offset int
	Err    error
}

func (e *ListError) Error() string { return e.Err.Error() }
func (e *ListError) Unwrap() error { return e.Err }

// ParseList reads a comma-separated list of matchers.
func ParseList(s string) (List, error) {
	var l List
	off := 0
	for _, part := range strings.Split(s, ",") {
		m, err := Parse(part)
		if err != nil {
			return nil, &ListError{Offset: off, Err: err}
		}
		l = append(l, m)
		off += len(part) + 1
	}
	return l, nil
}

// At turns a parse error into a compile error at a place in a profile,
// moved to the failing element of a list when the error says which.
func At(pos funnel.Pos, piece string, err error) error {
	var le *ListError
	if errors.As(err, &le) {
		pos.Col += le.Offset
	}
	return &funnel.PosError{Pos: pos, Msg: fmt.Sprintf("piece %q: %v", piece, err)}
}
