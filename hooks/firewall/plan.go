package firewall

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// A plan is the whole of what `apply` installs: the chains of one nftables
// table and the routing entries tproxy needs. Apply and --dry-run both
// render the same plan (netlink expressions or nft text), so the script
// the administrator reads is the ruleset that gets installed.
type plan struct {
	table  string
	chains []chain
	routes routing
}

// routing is the fwmark rule and local route tproxy needs, per family.
type routing struct {
	mark   uint32
	table  uint32
	v4, v6 bool
}

func (r routing) needed() bool { return r.v4 || r.v6 }

type chainKind int

const (
	natPrerouting chainKind = iota
	natOutput
	manglePrerouting // tproxy
	routeOutput      // mark and reroute for own-host tproxy
)

type chain struct {
	name  string
	kind  chainKind
	rules []rule
}

// header is the chain's base-chain declaration in nft syntax.
func (c chain) header() string {
	switch c.kind {
	case natPrerouting:
		return "type nat hook prerouting priority dstnat; policy accept;"
	case natOutput:
		return "type nat hook output priority -100; policy accept;"
	case manglePrerouting:
		return "type filter hook prerouting priority mangle; policy accept;"
	default:
		return "type route hook output priority mangle; policy accept;"
	}
}

type rule struct {
	match   []term
	action  []term
	comment string
}

type termKind int

const (
	// matches
	matchMark termKind = iota
	matchSkuid
	matchCgroup
	matchIifname
	matchDaddrLocal
	matchDaddr
	matchL4proto
	matchDport
	// actions
	doRedirect
	doTProxy
	doSetMark
	doReturn
	doAccept
	doDrop
)

// term is one match or statement of a rule, with what both renderings
// need.
type term struct {
	kind   termKind
	num    uint32       // mark, uid, level, port, protocol number
	num2   uint32       // dport range end
	id     uint64       // cgroup id
	str    string       // interface name, cgroup path as nft spells it
	prefix netip.Prefix // daddr
}

const (
	protoTCP = 6
	protoUDP = 17
)

func protoName(p uint32) string {
	if p == protoUDP {
		return "udp"
	}
	return "tcp"
}

func (t term) nft() string {
	switch t.kind {
	case matchMark:
		return fmt.Sprintf("meta mark 0x%08x", t.num)
	case matchSkuid:
		return fmt.Sprintf("meta skuid %d", t.num)
	case matchCgroup:
		if t.str != "" {
			return fmt.Sprintf("socket cgroupv2 level %d %s", t.num, strconv.Quote(t.str))
		}
		return fmt.Sprintf("socket cgroupv2 level %d %d", t.num, t.id)
	case matchIifname:
		return "iifname " + strconv.Quote(t.str)
	case matchDaddrLocal:
		return "fib daddr type local"
	case matchDaddr:
		if t.prefix.Addr().Is4() {
			return "ip daddr " + prefixText(t.prefix)
		}
		return "ip6 daddr " + prefixText(t.prefix)
	case matchL4proto:
		return "meta l4proto " + protoName(t.num)
	case matchDport:
		if t.num == t.num2 {
			return fmt.Sprintf("th dport %d", t.num)
		}
		return fmt.Sprintf("th dport %d-%d", t.num, t.num2)
	case doRedirect:
		return fmt.Sprintf("redirect to :%d", t.num)
	case doTProxy:
		// nft wants the family named once the rule matches an address.
		switch t.num2 {
		case 4:
			return fmt.Sprintf("tproxy ip to :%d", t.num)
		case 6:
			return fmt.Sprintf("tproxy ip6 to :%d", t.num)
		}
		return fmt.Sprintf("tproxy to :%d", t.num)
	case doSetMark:
		return fmt.Sprintf("meta mark set 0x%08x", t.num)
	case doReturn:
		return "return"
	case doAccept:
		return "accept"
	case doDrop:
		return "drop"
	}
	panic("firewall: unknown term")
}

func prefixText(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}

func (r rule) nft() string {
	var parts []string
	for _, t := range r.match {
		parts = append(parts, t.nft())
	}
	for _, t := range r.action {
		parts = append(parts, t.nft())
	}
	if r.comment != "" {
		parts = append(parts, "comment "+strconv.Quote(r.comment))
	}
	return strings.Join(parts, " ")
}

// maxComment keeps a rule's comment within what nft itself accepts
// (NFTNL_UDATA_COMMENT_MAXLEN), so `nft list ruleset | nft -f -` works.
const maxComment = 127

func shortComment(s string) string {
	if len(s) <= maxComment {
		return s
	}
	return s[:maxComment-3] + "..."
}

// Script renders the plan as an `nft -f` file that replaces the table, and
// the routing as `ip` commands in comments (nft cannot make them).
func (p *plan) script(header string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "#!/usr/sbin/nft -f\n")
	for _, l := range strings.Split(strings.TrimRight(header, "\n"), "\n") {
		fmt.Fprintf(&b, "# %s\n", l)
	}
	// Creating the table first makes the delete succeed when it is absent,
	// so loading the script twice replaces the table instead of failing.
	fmt.Fprintf(&b, "table inet %s\ndelete table inet %s\n", p.table, p.table)
	fmt.Fprintf(&b, "table inet %s {\n", p.table)
	for i, c := range p.chains {
		if i > 0 {
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "\tchain %s {\n\t\t%s\n", c.name, c.header())
		for _, r := range c.rules {
			fmt.Fprintf(&b, "\t\t%s\n", r.nft())
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
	if p.routes.needed() {
		b.WriteString("\n# tproxy delivers marked packets locally through this routing (funtun firewall\n# apply adds it itself; by hand, run these after loading the script):\n")
		for _, cmd := range p.routes.commands("add") {
			fmt.Fprintf(&b, "#   %s\n", cmd)
		}
	}
	return b.String()
}

// commands spells the routing as ip(8) commands.
func (r routing) commands(verb string) []string {
	var out []string
	if r.v4 {
		out = append(out,
			fmt.Sprintf("ip -4 rule %s fwmark 0x%x lookup %d", verb, r.mark, r.table),
			fmt.Sprintf("ip -4 route %s local 0.0.0.0/0 dev lo table %d", verb, r.table))
	}
	if r.v6 {
		out = append(out,
			fmt.Sprintf("ip -6 rule %s fwmark 0x%x lookup %d", verb, r.mark, r.table),
			fmt.Sprintf("ip -6 route %s local ::/0 dev lo table %d", verb, r.table))
	}
	return out
}

// selection is what one rule matches on besides the protocol: one value of
// each selector kind (a cartesian product of the lists, so each rule stays
// a plain conjunction that reads the same in nft, netlink and comments).
type selection struct {
	terms []term
	words []string // for the comment
}

func product(groups ...[]selection) []selection {
	out := []selection{{}}
	for _, g := range groups {
		if len(g) == 0 {
			continue
		}
		var next []selection
		for _, a := range out {
			for _, b := range g {
				next = append(next, selection{
					terms: append(append([]term(nil), a.terms...), b.terms...),
					words: append(append([]string(nil), a.words...), b.words...),
				})
			}
		}
		out = next
	}
	return out
}

// maxRules bounds the product so a typo in a long list cannot install
// thousands of rules.
const maxRules = 2000

func (o *Options) plan() (*plan, error) {
	p := &plan{table: o.Table}
	ownHost := o.Local || len(o.Users) > 0 || len(o.Cgroups) > 0
	gateway := len(o.In) > 0
	if !ownHost && !gateway {
		return nil, fmt.Errorf("say whose traffic to send: --in IFACE (a gateway's clients) or --local, --user, --cgroup (this host's programs)")
	}
	v4, v6 := o.families()

	var dsts, dports, users, cgroups, ifaces []selection
	for _, d := range o.Dst {
		dsts = append(dsts, selection{terms: []term{{kind: matchDaddr, prefix: d}}, words: []string{"to " + prefixText(d)}})
	}
	for _, pr := range o.Dports {
		w := "port " + pr.String()
		dports = append(dports, selection{terms: []term{{kind: matchDport, num: uint32(pr.lo), num2: uint32(pr.hi)}}, words: []string{w}})
	}
	for _, u := range o.Users {
		users = append(users, selection{terms: []term{{kind: matchSkuid, num: u.uid}}, words: []string{"user " + u.name}})
	}
	for _, c := range o.Cgroups {
		cgroups = append(cgroups, selection{terms: []term{c.term()}, words: []string{"cgroup " + c.path}})
	}
	for _, i := range o.In {
		ifaces = append(ifaces, selection{terms: []term{{kind: matchIifname, str: i}}, words: []string{"in " + i}})
	}
	// User and cgroup selectors name local sockets; only the output hook
	// knows them. --local alone selects every local program.
	var local []selection
	if ownHost {
		local = product(users, cgroups, dsts, dports)
	}
	var forwarded []selection
	if gateway {
		forwarded = product(ifaces, dsts, dports)
	}
	if n := (len(local) + len(forwarded)) * 2; n > maxRules {
		return nil, fmt.Errorf("the selectors multiply to %d rules (more than %d): use fewer or wider ones", n, maxRules)
	}

	port := uint32(o.Port)
	var tproxied []uint32
	if o.TCP && o.TProxy {
		tproxied = append(tproxied, protoTCP)
	}
	if o.UDP {
		tproxied = append(tproxied, protoUDP)
	}
	redirected := o.TCP && !o.TProxy

	// Loop prevention comes first in every output chain: funtun's own
	// connections (SO_MARK or the exempt users) pass untouched.
	skip := []rule{{
		match:   []term{{kind: matchMark, num: o.SkipMark}},
		action:  []term{{kind: doReturn}},
		comment: fmt.Sprintf("funtun's own traffic (SO_MARK 0x%x) passes", o.SkipMark),
	}}
	for _, u := range o.ExemptUsers {
		skip = append(skip, rule{
			match:   []term{{kind: matchSkuid, num: u.uid}},
			action:  []term{{kind: doReturn}},
			comment: "exempt user " + u.name + " passes",
		})
	}
	// A gateway leaves traffic addressed to itself alone (its own ssh,
	// DNS…); tproxy must also skip it in output, where a transparent
	// socket's answers to a local client would otherwise be marked and
	// looped back into the proxy.
	local4me := rule{
		match:   []term{{kind: matchDaddrLocal}},
		action:  []term{{kind: doReturn}},
		comment: "traffic to this host's own addresses passes",
	}
	describe := func(proto uint32, s selection, what string) string {
		words := append([]string{protoName(proto)}, s.words...)
		return shortComment(strings.Join(words, " ") + " " + what)
	}
	withProto := func(proto uint32, s selection) []term {
		return append([]term{{kind: matchL4proto, num: proto}}, s.terms...)
	}

	if redirected && ownHost {
		c := chain{name: "output_redirect", kind: natOutput}
		c.rules = append(c.rules, skip...)
		for _, s := range local {
			c.rules = append(c.rules, rule{
				match:   withProto(protoTCP, s),
				action:  []term{{kind: doRedirect, num: port}},
				comment: describe(protoTCP, s, fmt.Sprintf("-> redirect :%d", port)),
			})
		}
		p.chains = append(p.chains, c)
	}
	if redirected && gateway {
		c := chain{name: "prerouting_redirect", kind: natPrerouting}
		c.rules = append(c.rules, local4me)
		for _, s := range forwarded {
			c.rules = append(c.rules, rule{
				match:   withProto(protoTCP, s),
				action:  []term{{kind: doRedirect, num: port}},
				comment: describe(protoTCP, s, fmt.Sprintf("-> redirect :%d", port)),
			})
		}
		p.chains = append(p.chains, c)
	}
	if len(tproxied) > 0 {
		tproxyTo := func(s selection) []term {
			fam := uint32(0)
			for _, t := range s.terms {
				if t.kind == matchDaddr {
					fam = 6
					if t.prefix.Addr().Is4() {
						fam = 4
					}
				}
			}
			return []term{{kind: doTProxy, num: port, num2: fam}, {kind: doSetMark, num: o.Mark}, {kind: doAccept}}
		}
		c := chain{name: "prerouting_tproxy", kind: manglePrerouting}
		if ownHost {
			// Own-host packets were marked in output_tproxy and came back
			// in through lo by the fwmark route.
			for _, proto := range tproxied {
				s := selection{terms: []term{{kind: matchIifname, str: "lo"}, {kind: matchMark, num: o.Mark}}}
				c.rules = append(c.rules,
					rule{match: withProto(proto, s), action: tproxyTo(s),
						comment: fmt.Sprintf("%s of this host's programs -> tproxy :%d", protoName(proto), port)},
					// tproxy lets a packet through when nothing listens;
					// dropping it then keeps the flow from leaking around
					// the funnel (fail closed).
					rule{match: withProto(proto, s), action: []term{{kind: doDrop}},
						comment: "nothing listens on the tproxy port: drop"})
			}
		}
		if gateway {
			c.rules = append(c.rules, local4me)
			for _, s := range forwarded {
				for _, proto := range tproxied {
					c.rules = append(c.rules,
						rule{match: withProto(proto, s), action: tproxyTo(s),
							comment: describe(proto, s, fmt.Sprintf("-> tproxy :%d", port))},
						rule{match: withProto(proto, s), action: []term{{kind: doDrop}},
							comment: "nothing listens on the tproxy port: drop"})
				}
			}
		}
		p.chains = append(p.chains, c)
		if ownHost {
			c := chain{name: "output_tproxy", kind: routeOutput}
			c.rules = append(c.rules, skip...)
			c.rules = append(c.rules, local4me)
			for _, s := range local {
				for _, proto := range tproxied {
					c.rules = append(c.rules, rule{
						match:   withProto(proto, s),
						action:  []term{{kind: doSetMark, num: o.Mark}},
						comment: describe(proto, s, fmt.Sprintf("-> mark 0x%x, rerouted to tproxy", o.Mark)),
					})
				}
			}
			p.chains = append(p.chains, c)
		}
		p.routes = routing{mark: o.Mark, table: o.RouteTable, v4: v4, v6: v6}
	}
	return p, nil
}
