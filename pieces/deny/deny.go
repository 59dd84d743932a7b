// Package deny is the piece that refuses flows by destination. The refusal
// is a KindDenied error, which every hook says in its own language: SOCKS5
// reply 2 (not allowed by ruleset), EACCES for a hooked program's connect().
package deny

import (
	"context"
	"fmt"
	"net"
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
}

var (
	_ funnel.StreamDialer = (*Deny)(nil)
	_ funnel.DgramDialer  = (*Deny)(nil)
	_ funnel.Transparent  = (*Deny)(nil)
)

// New builds a deny piece. to= and except= may repeat, which the typed
// getters do not allow (they keep the last), so it walks every parameter.
func New(p *funnel.Params, _ funnel.Builder) (funnel.Piece, error) {
	d := &Deny{at: p.Pos}
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

func (d *Deny) check(f *funnel.Flow) error {
	if !d.all && !d.to.Match(f.Dest) {
		return nil
	}
	if d.except.Match(f.Dest) {
		return nil
	}
	reason := d.reason
	if reason == "" {
		if d.all {
			reason = "all flows are refused"
		} else {
			reason = "destination matches " + d.to[d.to.Index(f.Dest)].String()
		}
	}
	// f.Profile is the profile the flow entered; when a route handed it to
	// the profile holding this deny, the position names the right one.
	return funnel.Errorf(funnel.KindDenied, "denied by profile %s: %s %s: %s (deny at %s)", f.Profile, f.Network, f.Dest, reason, d.at)
}

// Transparent: deny refuses or passes a flow; it never touches its bytes.
func (d *Deny) Transparent() bool { return true }

// DialStream refuses the flow or returns next's connection itself, so the
// relay's splice fast path survives deny.
func (d *Deny) DialStream(ctx context.Context, f *funnel.Flow, next funnel.Next) (net.Conn, error) {
	if err := d.check(f); err != nil {
		return nil, err
	}
	return next.DialStream(ctx, f)
}

// DialDgram refuses the flow or returns next's datagram connection itself.
func (d *Deny) DialDgram(ctx context.Context, f *funnel.Flow, next funnel.Next) (funnel.DgramConn, error) {
	if err := d.check(f); err != nil {
		return nil, err
	}
	return next.DialDgram(ctx, f)
}
