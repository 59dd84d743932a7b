package match

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/funtun/funtun/funnel"
)

func TestMatch(t *testing.T) {
	v4 := funnel.MakeAddr("10.1.2.3", 443)
	v4other := funnel.MakeAddr("192.168.1.1", 25)
	v6 := funnel.MakeAddr("fd00::1", 8080)
	v6global := funnel.MakeAddr("2001:db8::1", 53)
	// MakeAddr unmaps; a hand-built Addr may not, and must match the same.
	mapped := funnel.Addr{IP: netip.MustParseAddr("::ffff:10.9.9.9"), Port: 1}
	name := funnel.MakeAddr("www.Example.org", 80)
	apex := funnel.MakeAddr("example.org.", 80)
	lookalike := funnel.MakeAddr("badexample.org", 80)
	tests := []struct {
		matcher string
		yes     []funnel.Addr
		no      []funnel.Addr
	}{
		{"10.0.0.0/8", []funnel.Addr{v4, mapped}, []funnel.Addr{v4other, v6, name}},
		{"10.1.2.3/8", []funnel.Addr{v4, mapped}, []funnel.Addr{v4other}}, // host bits are masked off
		{"::ffff:10.0.0.0/104", []funnel.Addr{v4}, []funnel.Addr{v4other, v6}},
		{"fd00::/8", []funnel.Addr{v6}, []funnel.Addr{v6global, v4, name}},
		{"192.168.1.1", []funnel.Addr{v4other}, []funnel.Addr{v4}},
		{"2001:db8::1", []funnel.Addr{v6global}, []funnel.Addr{v6}},
		{".example.org", []funnel.Addr{name, apex}, []funnel.Addr{lookalike, v4}},
		{".ORG", []funnel.Addr{name, apex, lookalike}, []funnel.Addr{v4}},
		{"example.org", []funnel.Addr{apex}, []funnel.Addr{name, lookalike}},
		{"www.example.org.", []funnel.Addr{name}, []funnel.Addr{apex}},
		{"port:25", []funnel.Addr{v4other}, []funnel.Addr{v4, name}},
		{"port:80-443", []funnel.Addr{v4, name, apex}, []funnel.Addr{v4other, v6}},
		{"ipv4", []funnel.Addr{v4, v4other, mapped}, []funnel.Addr{v6, name}},
		{"IPv6", []funnel.Addr{v6, v6global}, []funnel.Addr{v4, mapped, name}},
		{"name", []funnel.Addr{name, apex}, []funnel.Addr{v4, v6}},
		{"addr", []funnel.Addr{v4, v6}, []funnel.Addr{name, {}}},
	}
	for _, tc := range tests {
		m, err := Parse(tc.matcher)
		if err != nil {
			t.Errorf("Parse(%q): %v", tc.matcher, err)
			continue
		}
		for _, a := range tc.yes {
			if !m.Match(a) {
				t.Errorf("%q does not match %v, but should", tc.matcher, a)
			}
		}
		for _, a := range tc.no {
			if m.Match(a) {
				t.Errorf("%q matches %v, but should not", tc.matcher, a)
			}
		}
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", "empty matcher"},
		{"10.0.0.0/33", "not a CIDR"},
		{"10.0.0.300/8", "not a CIDR"},
		{"port:99999", "not a number from 0 to 65535"},
		{"port:9000-8000", "runs backwards"},
		{"port:", "not a number"},
		{"port:1-", "not a number"},
		{"host:80", "only port:N takes a colon"},
		{"exa mple.org", "cannot be in a domain name"},
		{"a..b", "empty label"},
		{".", "no domain name"},
	}
	for _, tc := range tests {
		_, err := Parse(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) = %v, want an error containing %q", tc.in, err, tc.want)
		}
	}
}

func TestList(t *testing.T) {
	l, err := ParseList("port:25,.example.org,10.0.0.0/8")
	if err != nil {
		t.Fatal(err)
	}
	if got := l.String(); got != "port:25,.example.org,10.0.0.0/8" {
		t.Errorf("String() = %q", got)
	}
	if i := l.Index(funnel.MakeAddr("10.0.0.1", 25)); i != 0 {
		t.Errorf("first match is %d, want 0 (the earliest matcher wins)", i)
	}
	if i := l.Index(funnel.MakeAddr("mail.example.org", 587)); i != 1 {
		t.Errorf("Index = %d, want 1", i)
	}
	if l.Match(funnel.MakeAddr("192.0.2.1", 80)) {
		t.Error("list matches an address none of its matchers match")
	}

	_, err = ParseList("port:25,10.0.0.0/40")
	var le *ListError
	if !errors.As(err, &le) || le.Offset != len("port:25,") {
		t.Fatalf("ParseList error = %#v, want a ListError at offset %d", err, len("port:25,"))
	}
	pe := At(funnel.Pos{File: "p.profile", Line: 2, Col: 5}, "deny", err)
	if got := pe.Error(); !strings.HasPrefix(got, "p.profile:2:13: piece \"deny\": ") {
		t.Errorf("At() = %q, want it to point at column 13", got)
	}
}

func TestMatchAllocatesNothing(t *testing.T) {
	l, err := ParseList(".example.org,10.0.0.0/8,port:1-1024,ipv6")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []funnel.Addr{
		funnel.MakeAddr("WWW.EXAMPLE.ORG", 8080),
		funnel.MakeAddr("www.example.net", 8080), // matches nothing: every test is tried
		{Name: "127.1", Port: 8080},
		{Name: "a.localhost", Port: 8080},
		funnel.MakeAddr("::", 8080),
	} {
		if n := testing.AllocsPerRun(100, func() { l.Match(a) }); n != 0 {
			t.Errorf("Match(%v) allocates %v times per call", a, n)
		}
	}
}

// TestInetAton: names that getaddrinfo reads as IPv4 addresses without a
// lookup, checked against glibc's inet_aton (python3's socket.inet_aton).
func TestInetAton(t *testing.T) {
	good := map[string]string{
		"0":              "0.0.0.0",
		"127.1":          "127.0.0.1",
		"0x7f.1":         "127.0.0.1",
		"0X7F.1":         "127.0.0.1",
		"2130706433":     "127.0.0.1",
		"017700000001":   "127.0.0.1",
		"0x7f000001":     "127.0.0.1",
		"4294967295":     "255.255.255.255",
		"0xffffffff":     "255.255.255.255",
		"1.16777215":     "1.255.255.255",
		"1.2.65535":      "1.2.255.255",
		"0377.0xff.0.1":  "255.255.0.1",
		"127.1 foo":      "127.0.0.1",
		"127.1\tx":       "127.0.0.1",
		"127.1\x00.evil": "127.0.0.1",
		"127.0.0.1":      "127.0.0.1",
		"0.0.0.0":        "0.0.0.0",
	}
	for in, want := range good {
		ip, ok := parseInetAton(in)
		if !ok || ip.String() != want {
			t.Errorf("parseInetAton(%q) = %v, %v; want %s", in, ip, ok, want)
		}
	}
	for _, in := range []string{"", "127.0.0.1.", "1..2", "08", "09.1", "0.09", "0x", "0x.1", "00x1", "0xg",
		"256.1", "1.2.3.256", "1.2.3.4.5", "4294967296", "0x100000000", "1.16777216", "1.2.65536",
		"-1", "+1", " 1", "1e1", "localhost", "example.org", "99999999999999999999999"} {
		if ip, ok := parseInetAton(in); ok {
			t.Errorf("parseInetAton(%q) = %v, want no address", in, ip)
		}
	}
}

// TestThisHost: every spelling of the unspecified and loopback addresses
// is matched as this host's loopback, by CIDR and address rules alike.
func TestThisHost(t *testing.T) {
	addr := func(s string) funnel.Addr { return funnel.Addr{IP: netip.MustParseAddr(s), Port: 80} }
	name := func(s string) funnel.Addr { return funnel.Addr{Name: s, Port: 80} }
	v4 := []funnel.Addr{
		addr("0.0.0.0"), addr("::ffff:0.0.0.0"), addr("::ffff:127.0.0.1"), addr("127.0.0.1"),
		name("0"), name("127.1"), name("0x7f.1"), name("2130706433"), name("017700000001"), name("0x7f000001"),
		name("127.0.0.1"), name("0.0.0.0"), name("0.0"), name("::ffff:127.0.0.1"), name("::ffff:0.0.0.0"), name("127.1 x"),
		name("localhost"), name("LocalHost."), name("a.b.localhost"),
		funnel.MakeAddr("0.0.0.0", 80), funnel.MakeAddr("::ffff:127.0.0.1", 80),
	}
	v6 := []funnel.Addr{
		addr("::"), addr("::1"), addr("::1%lo"), addr("::%lo"),
		name("::"), name("::1"), name("0::0"), name("0:0:0:0:0:0:0:1"), name("::1%lo"),
		name("localhost"), name("x.localhost."), funnel.MakeAddr("::", 80),
	}
	other := []funnel.Addr{
		addr("10.0.0.1"), addr("2001:db8::1"), addr("::ffff:10.0.0.1"),
		name("10.1"), name("notlocalhost"), name("localhost.example.org"), name("127.0.0.1."), name("example.org"),
	}
	for _, tc := range []struct {
		rules string
		yes   []funnel.Addr
		no    []funnel.Addr
	}{
		{"127.0.0.0/8", append(v4, addr("127.9.9.9")), append(other, addr("::"), addr("::1"), name("::"))},
		{"127.0.0.1", v4, append(other, addr("127.9.9.9"))},
		{"127.1", v4, append(other, addr("127.9.9.9"))}, // a rule may be spelled the same ways
		{"::1/128", v6, append(other, addr("0.0.0.0"), name("0"), name("127.1"))},
		{"::1", v6, other},
		{"::ffff:127.0.0.0/104", v4, other},
	} {
		l, err := ParseList(tc.rules)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range tc.yes {
			if !l.Match(a) {
				t.Errorf("%s does not match %q/%v, but should (it reaches this host)", tc.rules, a.Name, a.IP)
			}
		}
		for _, a := range tc.no {
			if l.Match(a) {
				t.Errorf("%s matches %q/%v, but should not", tc.rules, a.Name, a.IP)
			}
		}
	}
}

// TestAskedOrReached: ipv4, ipv6 and addr describe the destination as the
// application gave it, so they see a numeric name (it is an address) but
// not the addresses localhost reaches; CIDR rules see both.
func TestAskedOrReached(t *testing.T) {
	numeric := funnel.Addr{Name: "127.1", Port: 1}
	local := funnel.Addr{Name: "localhost", Port: 1}
	for _, tc := range []struct {
		rule           string
		numeric, local bool
	}{
		{"ipv4", true, false},
		{"ipv6", false, false},
		{"addr", true, false},
		{"name", true, true},
		{"127.0.0.0/8", true, true},
		{"::1", false, true},
		{"localhost", false, true},
		{".localhost", false, true},
	} {
		m, err := Parse(tc.rule)
		if err != nil {
			t.Fatal(err)
		}
		if got := m.Match(numeric); got != tc.numeric {
			t.Errorf("%s matches 127.1: %v, want %v", tc.rule, got, tc.numeric)
		}
		if got := m.Match(local); got != tc.local {
			t.Errorf("%s matches localhost: %v, want %v", tc.rule, got, tc.local)
		}
	}
	// MatchName sees only the name; MatchAddr with asked=false only CIDRs.
	m, _ := Parse("127.0.0.0/8")
	if m.MatchName("127.1", 1) {
		t.Error("MatchName lets a CIDR rule match a name")
	}
	if !m.MatchAddr(netip.MustParseAddr("0.0.0.0"), 1, false) {
		t.Error("a looked-up 0.0.0.0 does not match 127.0.0.0/8")
	}
	if m, _ := Parse("ipv4"); m.MatchAddr(netip.MustParseAddr("127.0.0.1"), 1, false) {
		t.Error("ipv4 matches an address a name only reaches")
	}
}
