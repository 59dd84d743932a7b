package deny

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/funtun/funtun/funnel"
)

// build makes a deny piece from key/value pairs with a fake resolver that
// knows a few names and counts its lookups.
func build(t *testing.T, kv ...string) (*Deny, *int) {
	t.Helper()
	p, err := New(funnel.NewParams("deny", kv...), nil)
	if err != nil {
		t.Fatal(err)
	}
	d := p.(*Deny)
	lookups := new(int)
	d.lookup = func(_ context.Context, network, host string) ([]netip.Addr, error) {
		*lookups++
		if network != "ip" {
			t.Errorf("lookup on network %q, want ip (both families)", network)
		}
		switch strings.TrimSuffix(strings.ToLower(host), ".") {
		case "public.test":
			return []netip.Addr{netip.MustParseAddr("192.0.2.1")}, nil
		case "rebind.test": // one good address is not enough: ANY bad one refuses
			return []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("::ffff:127.0.0.1")}, nil
		case "zero.test":
			return []netip.Addr{netip.MustParseAddr("0.0.0.0")}, nil
		case "zero6.test":
			return []netip.Addr{netip.MustParseAddr("::")}, nil
		case "lan.test":
			return []netip.Addr{netip.MustParseAddr("10.1.2.3")}, nil
		}
		return nil, errors.New("no such host")
	}
	return d, lookups
}

// judge asks the piece about a destination made the way the hooks make
// it (funnel.MakeAddr: a literal address is parsed and unmapped).
func judge(d *Deny, host string, port uint16) (string, bool) {
	return d.judge(context.Background(), funnel.NewFlow("test", funnel.TCP, funnel.MakeAddr(host, port)))
}

// TestEverySpellingOfThisHost: the profile refuses every way of
// writing an address that reaches this host's loopback, as an address or
// as a name.
func TestEverySpellingOfThisHost(t *testing.T) {
	d, lookups := build(t, "to", "127.0.0.0/8,::1/128,localhost")
	for _, host := range []string{
		// addresses (funnel.MakeAddr parses and unmaps them, as the hooks do)
		"0.0.0.0", "::", "::ffff:127.0.0.1", "::ffff:0.0.0.0", "127.0.0.1", "127.8.9.10", "::1", "0:0::0",
		// names that getaddrinfo reads as addresses
		"0", "127.1", "0x7f.1", "0X7F.0.0.1", "2130706433", "017700000001", "0x7f000001", "0.0",
		// names that reach loopback
		"localhost", "LOCALHOST.", "www.localhost", "rebind.test", "zero.test", "zero6.test",
	} {
		why, refused := judge(d, host, 8000)
		if !refused {
			t.Errorf("%s passes, want it refused", host)
			continue
		}
		t.Logf("%-18s refused: %s", host, why)
	}
	// Hand-built addresses (a hook that does not unmap) are canonicalised too.
	for _, ip := range []string{"::ffff:127.0.0.1", "::ffff:0.0.0.0", "::1%lo", "::%lo"} {
		f := funnel.NewFlow("test", funnel.UDP, funnel.Addr{IP: netip.MustParseAddr(ip), Port: 53})
		if _, refused := d.judge(context.Background(), f); !refused {
			t.Errorf("address %s passes, want it refused", ip)
		}
	}
	// Names given as names (a hook that does not parse them) too.
	for _, name := range []string{"127.0.0.1", "0.0.0.0", "::", "::ffff:127.0.0.1"} {
		f := funnel.NewFlow("test", funnel.TCP, funnel.Addr{Name: name, Port: 80})
		if _, refused := d.judge(context.Background(), f); !refused {
			t.Errorf("name %q passes, want it refused", name)
		}
	}
	before := *lookups
	for _, host := range []string{"192.0.2.7", "10.1", "public.test", "unknown.test", "::ffff:192.0.2.1", "2001:db8::1"} {
		if why, refused := judge(d, host, 8000); refused {
			t.Errorf("%s refused (%s), want it to pass", host, why)
		}
	}
	if got := *lookups - before; got != 2 {
		t.Errorf("%d lookups for two names that are not numeric, want 2", got)
	}
}

func TestReasons(t *testing.T) {
	d, _ := build(t, "to", "127.0.0.0/8,::1/128,localhost")
	for host, want := range map[string]string{
		"0.0.0.0":     "destination matches 127.0.0.0/8 (0.0.0.0 reaches 127.0.0.1)",
		"::":          "destination matches ::1/128 (:: reaches ::1)",
		"127.1":       "destination matches 127.0.0.0/8 (127.1 is 127.0.0.1)",
		"0":           "destination matches 127.0.0.0/8 (0 is 0.0.0.0, which reaches 127.0.0.1)",
		"localhost":   "destination matches localhost",
		"a.localhost": "destination matches 127.0.0.0/8 (a.localhost is 127.0.0.1)",
		"rebind.test": "destination matches 127.0.0.0/8 (rebind.test resolves to 127.0.0.1)",
		"zero6.test":  "destination matches ::1/128 (zero6.test resolves to ::)",
	} {
		if why, _ := judge(d, host, 1); why != want {
			t.Errorf("%s: reason %q, want %q", host, why, want)
		}
	}
}

// TestExceptAndAll pins how except= and all= combine with names.
func TestExceptAndAll(t *testing.T) {
	for _, tc := range []struct {
		kv     []string
		pass   []string
		refuse []string
	}{
		// An exception by address covers the spellings that reach it.
		{[]string{"to", "127.0.0.0/8", "except", "127.0.0.1"}, []string{"0.0.0.0", "127.1", "0", "::ffff:127.0.0.1"}, []string{"127.0.0.2", "127.2"}},
		// A numeric name is excepted by its address only, never by the
		// name rules, and the name rules of to= refuse it as well.
		{[]string{"to", "127.0.0.0/8", "except", "name,.1"}, []string{"public.test", "rebind.test"}, []string{"127.1", "0", "0x7f.1"}},
		{[]string{"to", "name"}, []string{"127.0.0.1"}, []string{"127.1", "0"}},
		// An exception by name covers what the name resolves to.
		{[]string{"to", "127.0.0.0/8", "except", ".rebind.test"}, []string{"rebind.test"}, []string{"zero.test"}},
		// An exception by address does not cover a name that also reaches a refused one.
		{[]string{"to", "127.0.0.0/8,::1", "except", "127.0.0.1"}, []string{"127.0.0.1"}, []string{"localhost", "::"}},
		// An allow-list: names pass only by an exception by name; a
		// numeric name is its address.
		{[]string{"all", "true", "except", "10.0.0.0/8,.public.test"}, []string{"10.1.2.3", "10.1", "public.test"}, []string{"lan.test", "unknown.test", "0", "0.0.0.0", "localhost"}},
		// ipv4/ipv6/addr describe what the application asked for; a
		// looked-up address is not "asked", so it does not trigger them.
		{[]string{"to", "ipv6"}, []string{"zero6.test", "localhost", "127.1"}, []string{"::", "::1"}},
		{[]string{"to", "addr"}, []string{"public.test", "localhost"}, []string{"127.1", "0", "192.0.2.1"}},
	} {
		d, _ := build(t, tc.kv...)
		for _, h := range tc.pass {
			if why, refused := judge(d, h, 1); refused {
				t.Errorf("%v: %s refused (%s), want it to pass", tc.kv, h, why)
			}
		}
		for _, h := range tc.refuse {
			if _, refused := judge(d, h, 1); !refused {
				t.Errorf("%v: %s passes, want it refused", tc.kv, h)
			}
		}
	}
}

// TestLookupOnlyWhenItMatters: no lookup without a CIDR rule, for numeric
// names, for names refused or excepted by name, or with resolve=false.
func TestLookupOnlyWhenItMatters(t *testing.T) {
	for _, tc := range []struct {
		kv    []string
		hosts []string
	}{
		{[]string{"to", "port:25,.blocked.test,ipv6"}, []string{"rebind.test", "x.test"}},
		{[]string{"to", "127.0.0.0/8", "resolve", "false"}, []string{"rebind.test", "x.test"}},
		{[]string{"to", "127.0.0.0/8,name"}, []string{"rebind.test"}},
		{[]string{"to", "127.0.0.0/8", "except", "port:443"}, []string{"rebind.test"}},
		{[]string{"to", "127.0.0.0/8"}, []string{"127.1", "0x7f.1", "0", "::"}},
	} {
		d, lookups := build(t, tc.kv...)
		for _, h := range tc.hosts {
			judge(d, h, 443)
		}
		if *lookups != 0 {
			t.Errorf("%v: %d lookups, want none", tc.kv, *lookups)
		}
	}
	if _, err := New(funnel.NewParams("deny", "to", "port:1", "resolve", "maybe"), nil); err == nil || !strings.Contains(err.Error(), `resolve: "maybe" is not true or false`) {
		t.Errorf("resolve=maybe: %v", err)
	}
}
