// Package match reads and applies the destination matchers that route and
// deny share: CIDR prefixes, domain suffixes, port ranges, IP versions and
// the name/address distinction. A matcher is a small value with no
// pointers, so matching a flow allocates nothing.
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
		ip = ip.Unmap()
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

// Match reports whether a destination matches. Address tests never match a
// name still to be resolved, and domain tests never match an address: the
// matcher sees the destination as the pieces above it left it.
func (m Matcher) Match(d funnel.Addr) bool {
	switch m.kind {
	case kindPrefix:
		return !d.IsName() && d.IP.IsValid() && m.prefix.Contains(d.IP.Unmap())
	case kindSuffix:
		name := trimDot(d.Name)
		if len(name) < len(m.domain) {
			return false
		}
		tail := name[len(name)-len(m.domain):]
		if !strings.EqualFold(tail, m.domain) {
			return false
		}
		return len(name) == len(m.domain) || name[len(name)-len(m.domain)-1] == '.'
	case kindExact:
		return d.IsName() && strings.EqualFold(trimDot(d.Name), m.domain)
	case kindPort:
		return d.Port >= m.lo && d.Port <= m.hi
	case kindIPv4:
		return !d.IsName() && d.IP.Unmap().Is4()
	case kindIPv6:
		return !d.IsName() && d.IP.IsValid() && !d.IP.Unmap().Is4()
	case kindName:
		return d.IsName()
	case kindAddr:
		return !d.IsName() && d.IP.IsValid()
	}
	return false
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
