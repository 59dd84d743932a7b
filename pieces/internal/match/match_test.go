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
	a := funnel.MakeAddr("WWW.EXAMPLE.ORG", 8080)
	if n := testing.AllocsPerRun(100, func() { l.Match(a) }); n != 0 {
		t.Errorf("Match allocates %v times per call", n)
	}
}
