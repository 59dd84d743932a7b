// Package route is the piece that branches a profile: it hands each flow to
// another profile chosen by the flow's destination (the specification's
// Joints and Curves). The chosen profile carries the flow from there on, so
// route is always the last piece of its chain.
package route

import (
	"context"
	"fmt"
	"log/slog"
	"net"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/pieces/internal/match"
)

func init() {
	funnel.Register(funnel.PieceInfo{
		Name:    "route",
		Example: `10.0.0.0/8=office .onion=tor default=direct`,
		Summary: "send each flow to another profile chosen by its destination (first matching rule wins)",
		Params: `MATCH=PROFILE    a rule: flows whose destination matches go to PROFILE; rules are tried in order
                 MATCH is a CIDR (10.0.0.0/8, fd00::/8), an address, a domain (.example.org for
                 it and its subdomains, host.example.org for that name only), port:N or port:N-M,
                 ipv4, ipv6, name (not yet resolved) or addr; a comma list matches any of them
default=PROFILE  where flows matching no rule go, default direct`,
		Curves: curves,
		New:    New,
	})
}

type rule struct {
	match match.List
	to    *funnel.ProfileRef
}

// Route is a configured route piece.
type Route struct {
	rules []rule
	other *funnel.ProfileRef
}

var (
	_ funnel.StreamDialer = (*Route)(nil)
	_ funnel.DgramDialer  = (*Route)(nil)
	_ funnel.Transparent  = (*Route)(nil)
)

// New builds a route piece. Its keys are the rules themselves, so it reads
// every parameter and reports positions itself.
func New(p *funnel.Params, b funnel.Builder) (funnel.Piece, error) {
	r := &Route{}
	ref := func(x *funnel.Param) (*funnel.ProfileRef, error) {
		if x.Value == "" {
			return nil, &funnel.PosError{Pos: x.ValuePos, Msg: fmt.Sprintf("piece %q: %s= needs a profile name", p.Piece, x.Key)}
		}
		if b == nil {
			// `funtun pieces route` builds the piece only to show its
			// shapes; such a route refuses flows (see choose).
			return nil, nil
		}
		to, err := b.Ref(x.Value)
		if err != nil {
			return nil, &funnel.PosError{Pos: x.ValuePos, Msg: fmt.Sprintf("piece %q: %s=%s: %v", p.Piece, x.Key, x.Value, err)}
		}
		return to, nil
	}
	var defaultParam *funnel.Param
	for _, x := range p.All() {
		if x.Key == "default" {
			if defaultParam != nil {
				return nil, &funnel.PosError{Pos: x.Pos, Msg: fmt.Sprintf("piece %q: default= given twice (first at %s)", p.Piece, defaultParam.Pos)}
			}
			defaultParam = x
			to, err := ref(x)
			if err != nil {
				return nil, err
			}
			r.other = to
			continue
		}
		l, err := match.ParseList(x.Key)
		if err != nil {
			return nil, match.At(x.Pos, p.Piece, err)
		}
		to, err := ref(x)
		if err != nil {
			return nil, err
		}
		r.rules = append(r.rules, rule{match: l, to: to})
	}
	if r.other == nil && b != nil {
		to, err := b.Ref("direct")
		if err != nil {
			return nil, p.Fail("flows that match no rule go to profile direct when default= is not given: %v", err)
		}
		r.other = to
	}
	return r, nil
}

// Curves: the net edge of route is another profile, so nothing may follow it.
func (r *Route) Curves() []funnel.Curve { return curves }

// curves are what Curves returns and what the registration declares
// (funnel.PieceInfo.Curves), so that `funtun pieces` shows them unbuilt.
var curves = []funnel.Curve{{App: funnel.Stream, Net: funnel.Kernel}, {App: funnel.Dgram, Net: funnel.Kernel}}

func (r *Route) choose(ctx context.Context, f *funnel.Flow) (*funnel.Pipeline, error) {
	to, why := r.other, "default"
	for _, ru := range r.rules {
		if ru.match.Match(f.Dest) {
			to, why = ru.to, ru.match.String()
			break
		}
	}
	if to == nil {
		return nil, funnel.Errorf(funnel.KindGeneral, "route: built without the profile compiler, it knows no profiles")
	}
	if f.Log != nil && f.Log.Enabled(ctx, slog.LevelDebug) {
		f.Log.Debug("route", "dst", f.Dest.String(), "rule", why, "to", to.Name)
	}
	pl := to.Pipeline()
	if pl == nil {
		// The compiler checks every reference, so this is an engine bug,
		// but a refused flow is better than a nil dereference.
		return nil, funnel.Errorf(funnel.KindGeneral, "route: profile %s is not in the compiled set", to.Name)
	}
	return pl, nil
}

// Transparent: the chosen profile decides for itself whether it touches
// the bytes.
func (r *Route) Transparent() bool { return true }

// DialStream hands the flow to the chosen profile, which returns the
// connection; route adds nothing, so a splice-able socket stays one.
func (r *Route) DialStream(ctx context.Context, f *funnel.Flow, _ funnel.Next) (net.Conn, error) {
	pl, err := r.choose(ctx, f)
	if err != nil {
		return nil, err
	}
	return pl.DialStream(ctx, f)
}

// DialDgram hands a datagram flow to the chosen profile.
func (r *Route) DialDgram(ctx context.Context, f *funnel.Flow, _ funnel.Next) (funnel.DgramConn, error) {
	pl, err := r.choose(ctx, f)
	if err != nil {
		return nil, err
	}
	return pl.DialDgram(ctx, f)
}
