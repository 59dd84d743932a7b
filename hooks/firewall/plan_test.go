package firewall

import (
	"net/netip"
	"strings"
	"testing"
)

func mustPlan(t *testing.T, o *Options) *plan {
	t.Helper()
	if o.Table == "" {
		o.Table = DefaultTable
	}
	if o.Port == 0 {
		o.Port = DefaultPort
	}
	if o.SkipMark == 0 {
		o.SkipMark, o.Mark, o.RouteTable = DefaultSkipMark, DefaultMark, DefaultRouteTable
	}
	p, err := o.plan()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func chainNamed(t *testing.T, p *plan, name string) chain {
	t.Helper()
	for _, c := range p.chains {
		if c.name == name {
			return c
		}
	}
	t.Fatalf("no chain %s in %v", name, p.chains)
	return chain{}
}

func TestPlanPutsLoopGuardsFirst(t *testing.T) {
	p := mustPlan(t, &Options{TCP: true, UDP: true, Local: true,
		ExemptUsers: []account{{uid: 7, name: "funtun"}},
		Dst:         []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}})
	for _, name := range []string{"output_redirect", "output_tproxy"} {
		c := chainNamed(t, p, name)
		if got := c.rules[0].nft(); !strings.HasPrefix(got, "meta mark 0x0066756e return") {
			t.Errorf("%s starts with %q, not the skip mark", name, got)
		}
		if got := c.rules[1].nft(); !strings.HasPrefix(got, "meta skuid 7 return") {
			t.Errorf("%s's second rule is %q, not the exempt user", name, got)
		}
	}
	if !p.routes.v4 || p.routes.v6 {
		t.Errorf("an IPv4-only selection routes v4=%v v6=%v", p.routes.v4, p.routes.v6)
	}
}

func TestPlanMultipliesSelectors(t *testing.T) {
	p := mustPlan(t, &Options{TCP: true,
		Users:  []account{{1000, "alice"}, {1001, "bob"}},
		Dst:    []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8::/32")},
		Dports: []portRange{{80, 80}, {8000, 8100}, {443, 443}}})
	c := chainNamed(t, p, "output_redirect")
	if got, want := len(c.rules), 1+2*2*3; got != want {
		t.Fatalf("%d rules, want %d", got, want)
	}
	want := `meta l4proto tcp meta skuid 1001 ip6 daddr 2001:db8::/32 th dport 8000-8100 redirect to :7474 comment "tcp user bob to 2001:db8::/32 port 8000-8100 -> redirect :7474"`
	found := false
	for _, r := range c.rules {
		found = found || r.nft() == want
	}
	if !found {
		t.Errorf("no rule reads %s", want)
	}
	if p.routes.needed() {
		t.Error("redirect alone asks for tproxy routing")
	}
}

func TestPlanGatewayTProxyFailsClosed(t *testing.T) {
	p := mustPlan(t, &Options{TCP: true, TProxy: true, In: []string{"eth1"}})
	if len(p.chains) != 1 {
		t.Fatalf("a gateway needs only prerouting, got %d chains", len(p.chains))
	}
	c := chainNamed(t, p, "prerouting_tproxy")
	got := []string{}
	for _, r := range c.rules {
		got = append(got, strings.Split(r.nft(), " comment ")[0])
	}
	want := []string{
		"fib daddr type local return",
		`meta l4proto tcp iifname "eth1" tproxy to :7474 meta mark set 0x00006675 accept`,
		`meta l4proto tcp iifname "eth1" drop`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("rules:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if !p.routes.v4 || !p.routes.v6 {
		t.Error("no address selector should route both families")
	}
}

func TestPlanNeedsToKnowWhose(t *testing.T) {
	o := &Options{Table: "funtun", Port: 1, TCP: true, SkipMark: 1, Mark: 2, RouteTable: 3,
		Dports: []portRange{{80, 80}}}
	if _, err := o.plan(); err == nil || !strings.Contains(err.Error(), "--in IFACE") {
		t.Fatalf("a plan without whose traffic: %v", err)
	}
}

func TestParsersRefuseBadInput(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"dst", func() error { _, err := parseDsts([]string{"10.0.0.0/33"}); return err }()},
		{"dst", func() error { _, err := parseDsts([]string{"example.org"}); return err }()},
		{"dport", func() error { _, err := parseDports([]string{"0"}); return err }()},
		{"dport", func() error { _, err := parseDports([]string{"90-80"}); return err }()},
		{"dport", func() error { _, err := parseDports([]string{"65536"}); return err }()},
		{"user", func() error { _, err := lookupUsers([]string{"no-such-user-here"}); return err }()},
		{"mark", func() error { _, err := parseMark("0"); return err }()},
		{"table", checkTableName("a b")},
		{"iface", checkIfname("waytoolonginterfacename")},
		{"cgroup", func() error { _, _, err := cgroupLevel("/"); return err }()},
	} {
		if tc.err == nil {
			t.Errorf("%s: bad input accepted", tc.name)
		}
	}
	d, err := parseDsts([]string{"10.1.2.3/8, 2001:db8::1", "::ffff:192.0.2.0/120"})
	if err != nil {
		t.Fatal(err)
	}
	if got := []string{d[0].String(), d[1].String(), d[2].String()}; strings.Join(got, " ") != "10.0.0.0/8 2001:db8::1/128 192.0.2.0/24" {
		t.Errorf("parsed %v", got)
	}
	p, err := parseDports([]string{"80,443", "8000-8100"})
	if err != nil || len(p) != 3 || p[2] != (portRange{8000, 8100}) {
		t.Errorf("parsed %v, %v", p, err)
	}
	if _, level, _ := cgroupLevel("system.slice/app.service/"); level != 2 {
		t.Errorf("system.slice/app.service is level %d, want 2", level)
	}
}

func TestRecordSurvivesItsComment(t *testing.T) {
	r := &record{mark: 0x6675, table: 26228,
		entries: []routeEntry{{family: 4, pref: 32765}, {family: 4, route: true}},
		foreign: []routeEntry{{family: 6, pref: 1000}}}
	s := r.String()
	if len(s) > maxComment {
		t.Fatalf("record %q is longer than a comment may be", s)
	}
	back, err := parseRecord(s)
	if err != nil {
		t.Fatal(err)
	}
	if back.String() != s {
		t.Fatalf("round trip: %q became %q", s, back.String())
	}
	if !back.has(routeEntry{family: 4, mark: 0x6675, table: 26228}) || back.has(routeEntry{family: 6, mark: 0x6675, table: 26228}) {
		t.Fatalf("record entries: %+v", back.entries)
	}
	if _, err := parseRecord(recordPrefix + " mark=0x1 table=2 ours=rule9"); err == nil {
		t.Fatal("a damaged record was accepted")
	}
}
