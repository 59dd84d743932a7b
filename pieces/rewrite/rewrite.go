// Package rewrite is the piece that replaces text in a stream, literally or
// by regular expression, in one direction or both. It keeps matches that
// are split across reads and writes: the bytes that may begin a match wait
// for the next bytes (or the end of the stream) before they are sent, but
// no longer than hold= (default 20ms), after which they go out as they are
// (see conn).
package rewrite

import (
	"context"
	"net"
	"strings"
	"time"

	"github.com/funtun/funtun/funnel"
)

func init() {
	funnel.Register(funnel.PieceInfo{
		Name:    "rewrite",
		Example: `from=hello to=HOWDY dir=down`,
		Summary: "replace text in a stream, literally or by regular expression, per direction",
		Params: `from=TEXT     what to replace (required); a Go regular expression with regex=true
to=TEXT       the replacement, default empty (delete); with regex=true, $1 and ${name} insert groups, $$ a dollar
dir=up|down|both  up: from the application toward the network; down: back; default both
regex=BOOL    treat from as a regular expression, default false
max=SIZE      longest match guaranteed to be found across reads, and the most held back per direction, default 64k
hold=DURATION how long bytes that may begin a match wait for the rest, default 20ms; after that they
              are sent unchanged (a match cut by a longer pause is not replaced); 0: never wait`,
		Curves: curves,
		New:    New,
	})
}

// Rewrite is a configured rewrite piece.
type Rewrite struct {
	up, down bool
	hold     time.Duration
	// newReplacer makes one direction's state; each flow gets its own.
	newReplacer func() replacer
}

var (
	_ funnel.StreamDialer   = (*Rewrite)(nil)
	_ funnel.StreamAcceptor = (*Rewrite)(nil)
)

// New builds a rewrite piece from its parameters.
func New(p *funnel.Params, _ funnel.Builder) (funnel.Piece, error) {
	from, err := p.Required("from", "TEXT")
	if err != nil {
		return nil, err
	}
	to := p.String("to", "")
	r := &Rewrite{}
	switch dir := strings.ToLower(p.String("dir", "both")); dir {
	case "up":
		r.up = true
	case "down":
		r.down = true
	case "both":
		r.up, r.down = true, true
	default:
		return nil, p.Errorf("dir", "%q is not up, down or both", dir)
	}
	isRegex, err := p.Bool("regex", false)
	if err != nil {
		return nil, err
	}
	if r.hold, err = p.Duration("hold", defaultHold); err != nil {
		return nil, err
	}
	if r.hold > maxHold {
		return nil, p.Errorf("hold", "%q is longer than %v: a held byte would stall the protocol that sent it", p.String("hold", ""), maxHold)
	}
	limit, err := p.Size("max", 64<<10)
	if err != nil {
		return nil, err
	}
	if limit < 1 || limit > 64<<20 {
		return nil, p.Errorf("max", "%d is not a size from 1 to 64M", limit)
	}
	if !isRegex {
		if int64(len(from)) > limit {
			return nil, p.Errorf("from", "%d bytes long, longer than max=%d", len(from), limit)
		}
		fromB, toB := []byte(from), []byte(to)
		r.newReplacer = func() replacer { return newLiteral(fromB, toB) }
		return r, nil
	}
	re, prog, err := compileRegex(from)
	if err != nil {
		return nil, p.Errorf("from", "%v", err)
	}
	r.newReplacer = func() replacer { return newRegex(re, prog, to, int(limit)) }
	return r, nil
}

// defaultHold is how long bytes that may begin a match wait for the rest:
// long enough for a match cut by the network or by a writer that writes in
// pieces, short enough that no request/response protocol notices it.
const defaultHold = 20 * time.Millisecond

// maxHold bounds hold=: beyond it a protocol would see a stall.
const maxHold = 10 * time.Second

// Curves: bytes in, bytes out.
func (r *Rewrite) Curves() []funnel.Curve { return curves }

// curves are what Curves returns and what the registration declares
// (funnel.PieceInfo.Curves), so that `funtun pieces` shows them unbuilt.
var curves = []funnel.Curve{{App: funnel.Stream, Net: funnel.Stream}}

// DialStream wraps the connection below so that writes (up) and reads
// (down) are rewritten.
func (r *Rewrite) DialStream(ctx context.Context, f *funnel.Flow, next funnel.Next) (net.Conn, error) {
	c, err := next.DialStream(ctx, f)
	if err != nil {
		return nil, err
	}
	return r.wrap(c), nil
}

// AcceptStream rewrites incoming flows the same way: up is still the
// application's bytes toward the network, i.e. what is written to the
// returned connection.
func (r *Rewrite) AcceptStream(_ context.Context, _ *funnel.Flow, c net.Conn) (net.Conn, error) {
	return r.wrap(c), nil
}

func (r *Rewrite) wrap(c net.Conn) net.Conn {
	w := &conn{Conn: c, hold: r.hold}
	if r.up {
		w.up = r.newReplacer()
	}
	if r.down {
		w.down = r.newReplacer()
	}
	return w
}
