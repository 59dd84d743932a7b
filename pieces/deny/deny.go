// Package deny is the piece that refuses flows by destination. The refusal
// is a KindDenied error, which every hook says in its own language: SOCKS5
// reply 2 (not allowed by ruleset), EACCES for a hooked program's connect().
//
// A destination is judged by what it reaches (package match: 0.0.0.0 and
// :: are this host's loopback, mapped addresses are IPv4, "127.1" is
// 127.0.0.1, localhost is loopback). A name is judged as a name and as
// each address it reaches:
//
//  0. a numeric name ("127.1", "0") is the address it spells: it is judged
//     as that address, and the name rules of to= (name, domains) refuse it
//     too; only an except= that matches the address lets it pass;
//  1. an except= rule that matches the name itself (a domain, name, a
//     port) lets the flow pass: an exception by name covers whatever the
//     name resolves to;
//  2. all=true, or a to= rule that matches the name itself, refuses it;
//  3. each address it stands for without a lookup (localhost) and, when
//     to= has a CIDR or address rule and resolve= is on, each address
//     net.DefaultResolver gives for it, is refused when a to= rule matches
//     it and no except= rule does: the flow is refused if ANY is;
//  4. a name the resolver cannot resolve passes: the piece below fails the
//     same way if it resolves locally, and a piece that resolves remotely
//     (a socks5 upstream) may know names the local resolver does not.
//     With all=true a name never gets this far without an except= by name.
package deny

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/pieces/internal/match"
)

func init() {
	funnel.Register(funnel.PieceInfo{
		Name:    "deny",
		Example: `to=10.0.0.0/8,.internal.example reason='not from here'`,
		Summary: "refuse flows by destination (SOCKS reply 2, EACCES); the others pass untouched",
		Params: `to=MATCH        refuse flows whose destination matches; repeat it or give a comma list
                MATCH is a CIDR (10.0.0.0/8, fd00::/8), an address, a domain (.example.org for
                it and its subdomains, host.example.org for that name only), port:N or port:N-M,
                ipv4, ipv6, name (not yet resolved) or addr
except=MATCH    let flows matching this pass even when to= or all= would refuse them
all=true        refuse every flow (but those matching except=)
resolve=BOOL    look a name up to check it against to='s CIDR and address rules, default true;
                false where the chain resolves names remotely and no DNS query may leave here
reason=TEXT     said in the error, e.g. reason='mail goes through the relay'`,
		Curves: curves,
		New:    New,
	})
}

// Deny is a configured deny piece.
type Deny struct {
	at     funnel.Pos // where the piece is written, so a refusal can be traced to its rule
	all    bool
	to     match.List
	except match.List
	reason string
	// resolve: look names up when to= has CIDR or address rules.
	resolve bool
	lookup  func(ctx context.Context, network, host string) ([]netip.Addr, error)
}

var (
	_ funnel.StreamDialer = (*Deny)(nil)
	_ funnel.DgramDialer  = (*Deny)(nil)
	_ funnel.Transparent  = (*Deny)(nil)
)

// New builds a deny piece. to= and except= may repeat, which the typed
// getters do not allow (they keep the last), so it walks every parameter.
func New(p *funnel.Params, _ funnel.Builder) (funnel.Piece, error) {
	d := &Deny{at: p.Pos, resolve: true, lookup: net.DefaultResolver.LookupNetIP}
	for _, x := range p.All() {
		switch x.Key {
		case "to", "except":
			l, err := match.ParseList(x.Value)
			if err != nil {
				return nil, match.At(x.ValuePos, p.Piece, fmt.Errorf("%s: %w", x.Key, err))
			}
			if x.Key == "to" {
				d.to = append(d.to, l...)
			} else {
				d.except = append(d.except, l...)
			}
		case "all":
			switch strings.ToLower(x.Value) {
			case "true", "yes", "on", "1":
				d.all = true
			case "false", "no", "off", "0":
				d.all = false
			default:
				return nil, &funnel.PosError{Pos: x.ValuePos, Msg: fmt.Sprintf("piece %q: all: %q is not true or false", p.Piece, x.Value)}
			}
		case "resolve":
			switch strings.ToLower(x.Value) {
			case "true", "yes", "on", "1":
				d.resolve = true
			case "false", "no", "off", "0":
				d.resolve = false
			default:
				return nil, &funnel.PosError{Pos: x.ValuePos, Msg: fmt.Sprintf("piece %q: resolve: %q is not true or false", p.Piece, x.Value)}
			}
		case "reason":
			d.reason = x.Value
		default:
			return nil, &funnel.PosError{Pos: x.Pos, Msg: fmt.Sprintf("piece %q has no parameter %q (see `funtun pieces %s`)", p.Piece, x.Key, p.Piece)}
		}
	}
	if !d.all && len(d.to) == 0 {
		return nil, p.Fail("refuses nothing: give to=MATCH (e.g. to=port:25) or all=true")
	}
	return d, nil
}

// Curves: deny only decides; the bytes of a flow it lets pass are untouched.
func (d *Deny) Curves() []funnel.Curve { return curves }

// curves are what Curves returns and what the registration declares
// (funnel.PieceInfo.Curves), so that `funtun pieces` shows them unbuilt.
var curves = []funnel.Curve{{App: funnel.Stream, Net: funnel.Stream}, {App: funnel.Dgram, Net: funnel.Dgram}}

func (d *Deny) check(ctx context.Context, f *funnel.Flow) error {
	why, refused := d.judge(ctx, f)
	if !refused {
		return nil
	}
	reason := d.reason
	if reason == "" {
		reason = why
	}
	// f.Profile is the profile the flow entered; when a route handed it to
	// the profile holding this deny, the position names the right one.
	return funnel.Errorf(funnel.KindDenied, "denied by profile %s: %s %s: %s (deny at %s)", f.Profile, f.Network, f.Dest, reason, d.at)
}

// judge applies the rules of the package comment; why says which rule
// refused the flow, and through which address.
func (d *Deny) judge(ctx context.Context, f *funnel.Flow) (why string, refused bool) {
	dest := f.Dest
	if !dest.IsName() {
		return d.judgeAddr(dest.IP, dest.Port, "")
	}
	name, port := dest.Name, dest.Port
	sp := match.Spell(name)
	if sp.Numeric {
		// "127.1" is 127.0.0.1 to getaddrinfo: judged as that address,
		// and refused by the name rules too (never excepted by them).
		if !d.all && d.except.IndexAddr(sp.Addrs()[0], port, true) < 0 {
			if i := d.to.IndexName(name, port); i >= 0 {
				return "destination matches " + d.to[i].String(), true
			}
		}
		return d.judgeAddr(sp.Addrs()[0], port, name)
	}
	// 1. An exception by name covers what the name resolves to.
	if d.except.IndexName(name, port) >= 0 {
		return "", false
	}
	// 2. The name itself.
	if d.all {
		return "all flows are refused", true
	}
	if i := d.to.IndexName(name, port); i >= 0 {
		return "destination matches " + d.to[i].String(), true
	}
	// 3. What it stands for (localhost), then what it resolves to.
	for _, ip := range sp.Addrs() {
		if i := d.refusedAddr(ip, port); i >= 0 {
			return fmt.Sprintf("destination matches %s (%s is %s)", d.to[i], name, ip), true
		}
	}
	if !d.resolve || !d.to.HasCIDR() {
		return "", false
	}
	ips, err := d.lookup(ctx, "ip", name)
	if err != nil {
		// 4. Let the piece below fail (or resolve it remotely).
		if f.Log != nil && f.Log.Enabled(ctx, slog.LevelDebug) {
			f.Log.Debug("deny: lookup failed, the flow passes", "dst", dest.String(), "err", err)
		}
		return "", false
	}
	for _, ip := range ips {
		if i := d.refusedAddr(ip, port); i >= 0 {
			return fmt.Sprintf("destination matches %s (%s resolves to %s)", d.to[i], name, ip.Unmap()), true
		}
	}
	return "", false
}

// judgeAddr judges an address the flow asked for; spelled is the name it
// was written as, if it was one ("127.1"), for the reason.
func (d *Deny) judgeAddr(ip netip.Addr, port uint16, spelled string) (why string, refused bool) {
	if d.except.IndexAddr(ip, port, true) >= 0 {
		return "", false
	}
	if d.all {
		return "all flows are refused", true
	}
	i := d.to.IndexAddr(ip, port, true)
	if i < 0 {
		return "", false
	}
	why = "destination matches " + d.to[i].String()
	c := match.Canon(ip)
	switch {
	case spelled != "" && c != ip:
		why += fmt.Sprintf(" (%s is %s, which reaches %s)", spelled, ip, c)
	case spelled != "":
		why += fmt.Sprintf(" (%s is %s)", spelled, ip)
	case c != ip:
		why += fmt.Sprintf(" (%s reaches %s)", ip, c)
	}
	return why, true
}

// refusedAddr is the to= rule that refuses an address a name reaches
// (not one it spells: those are asked for, see judgeAddr), or -1 when none
// does or an except= rule lets it pass.
func (d *Deny) refusedAddr(ip netip.Addr, port uint16) int {
	i := d.to.IndexAddr(ip, port, false)
	if i < 0 || d.except.IndexAddr(ip, port, false) >= 0 {
		return -1
	}
	return i
}

// Transparent: deny refuses or passes a flow; it never touches its bytes.
func (d *Deny) Transparent() bool { return true }

// DialStream refuses the flow or returns next's connection itself, so the
// relay's splice fast path survives deny.
func (d *Deny) DialStream(ctx context.Context, f *funnel.Flow, next funnel.Next) (net.Conn, error) {
	if err := d.check(ctx, f); err != nil {
		return nil, err
	}
	return next.DialStream(ctx, f)
}

// DialDgram refuses the flow or returns next's datagram connection itself.
func (d *Deny) DialDgram(ctx context.Context, f *funnel.Flow, next funnel.Next) (funnel.DgramConn, error) {
	if err := d.check(ctx, f); err != nil {
		return nil, err
	}
	return next.DialDgram(ctx, f)
}
