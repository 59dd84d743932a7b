package funnel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
)

// Pipeline is a compiled profile: configured pieces from the app side to
// the network side, shapes checked. It is immutable; a reload builds new ones
// and flows in progress keep the pipeline they started with.
type Pipeline struct {
	Name   string
	Origin string // file path, "built-in" or "chain"
	Specs  []PieceSpec
	// Options are the profile's `option KEY=VALUE` lines, for the hook
	// (see Option); checked against the registered options.
	Options []Option
	pieces  []Piece
	links   []link
	top     ShapeSet
	refs    []*ProfileRef
	set     *Set
	live    bool   // its pieces are open (Opener); guarded by set.mu
	closed  bool   // guarded by set.mu
	text    string // the chain's text, for an inline chain
}

// selector names the pipeline again, in another set.
func (pl *Pipeline) selector() Selector {
	if pl.Origin == "chain" && pl.Name == "chain" {
		return Selector{Chain: pl.text}
	}
	return Selector{Profile: pl.Name}
}

type link struct {
	pl *Pipeline
	i  int
}

func (l *link) DialStream(ctx context.Context, f *Flow) (net.Conn, error) {
	p := l.pl.pieces[l.i]
	d, ok := p.(StreamDialer)
	if !ok {
		return nil, Errorf(KindNotSupported, "profile %s: piece %q does not carry streams", l.pl.Name, l.pl.Specs[l.i].Name)
	}
	if f.Handoff && !isTransparent(p) {
		f = f.Clone()
		f.Handoff = false
	}
	return d.DialStream(ctx, f, l.next())
}

func (l *link) DialDgram(ctx context.Context, f *Flow) (DgramConn, error) {
	p := l.pl.pieces[l.i]
	d, ok := p.(DgramDialer)
	if !ok {
		return nil, Errorf(KindNotSupported, "profile %s: piece %q does not carry datagrams", l.pl.Name, l.pl.Specs[l.i].Name)
	}
	if f.Handoff && !isTransparent(p) {
		f = f.Clone()
		f.Handoff = false
	}
	return d.DialDgram(ctx, f, l.next())
}

func (l *link) next() Next {
	if l.i+1 < len(l.pl.links) {
		return &l.pl.links[l.i+1]
	}
	return endOfChain{}
}

// endOfChain is below a Kernel edge; the compiler makes sure nobody dials it.
type endOfChain struct{}

func (endOfChain) DialStream(context.Context, *Flow) (net.Conn, error) {
	return nil, Errorf(KindGeneral, "chain ends here: nothing below a kernel edge")
}
func (endOfChain) DialDgram(context.Context, *Flow) (DgramConn, error) {
	return nil, Errorf(KindGeneral, "chain ends here: nothing below a kernel edge")
}

// Accepts reports whether flows entering with shape s can be carried.
func (pl *Pipeline) Accepts(s Shape) bool { return pl.top.Has(s) }

// Shapes lists what the profile carries at its app edge.
func (pl *Pipeline) Shapes() ShapeSet { return pl.top }

// Pieces gives the configured pieces, app side first.
func (pl *Pipeline) Pieces() []Piece { return pl.pieces }

func (pl *Pipeline) shapeErr(s Shape) error {
	return Errorf(KindNotSupported, "profile %s carries %s flows, not %s", pl.Name, pl.top, s)
}

// DialStream opens an outgoing stream flow through the whole chain.
func (pl *Pipeline) DialStream(ctx context.Context, f *Flow) (net.Conn, error) {
	if !pl.Accepts(Stream) {
		return nil, pl.shapeErr(Stream)
	}
	if f.Profile == "" {
		f.Profile = pl.Name
	}
	return pl.links[0].DialStream(ctx, f)
}

// DialDgram opens an outgoing datagram flow through the whole chain.
func (pl *Pipeline) DialDgram(ctx context.Context, f *Flow) (DgramConn, error) {
	if !pl.Accepts(Dgram) {
		return nil, pl.shapeErr(Dgram)
	}
	if f.Profile == "" {
		f.Profile = pl.Name
	}
	return pl.links[0].DialDgram(ctx, f)
}

// AcceptStream carries an incoming stream up through the pieces, from the
// network end to the app end; pieces without StreamAcceptor pass it through.
func (pl *Pipeline) AcceptStream(ctx context.Context, f *Flow, conn net.Conn) (net.Conn, error) {
	if !pl.Accepts(Stream) {
		return nil, pl.shapeErr(Stream)
	}
	if f.Profile == "" {
		f.Profile = pl.Name
	}
	f.Inbound = true
	for i := len(pl.pieces) - 1; i >= 0; i-- {
		a, ok := pl.pieces[i].(StreamAcceptor)
		if !ok {
			continue
		}
		c, err := a.AcceptStream(ctx, f, conn)
		if err != nil {
			return nil, fmt.Errorf("piece %s: %w", pl.Specs[i].Name, err)
		}
		conn = c
	}
	return conn, nil
}

// String is the compiled chain in chain syntax, implicit pieces included.
func (pl *Pipeline) String() string {
	parts := make([]string, len(pl.Specs))
	for i, s := range pl.Specs {
		parts[i] = s.String()
	}
	return strings.Join(parts, " | ")
}

// ProfileRef is a reference from one profile to another (route), resolved
// within the same compiled set so that a reload swaps both together.
type ProfileRef struct {
	Name string
	set  *Set
}

// Pipeline returns the referenced profile.
func (r *ProfileRef) Pipeline() *Pipeline { return r.set.profiles[r.Name] }

// Source is a profile's text and where it came from.
type Source struct {
	Name   string
	Origin string // file path or "built-in"
	Text   string
}

// Set is one generation of compiled profiles.
type Set struct {
	profiles map[string]*Pipeline
	sources  map[string]Source
	broken   map[string]error
	order    []string
	chains   sync.Map // inline chain text -> *Pipeline or error
	active   atomic.Int64
	retired  atomic.Bool

	mu     sync.Mutex // guards live, closed, and opening and closing pieces
	live   bool       // its pieces are open: it went live (Open)
	closed bool       // its pieces are closed: it is done
}

type builder struct {
	set     *Set
	sources map[string]Source
	pl      *Pipeline
}

func (b *builder) Ref(name string) (*ProfileRef, error) {
	if _, ok := b.sources[name]; !ok {
		return nil, fmt.Errorf("no profile named %q (see `funtun profiles`)", name)
	}
	r := &ProfileRef{Name: name, set: b.set}
	b.pl.refs = append(b.pl.refs, r)
	return r, nil
}

// CompileSet compiles every source. The set always holds the profiles that
// compiled; the error lists every one that did not (and every profile that
// refers to a broken one, or loops), one line each. Broken profiles are
// remembered so that asking for one by name repeats its error.
func CompileSet(sources []Source) (*Set, error) {
	s := &Set{profiles: map[string]*Pipeline{}, sources: map[string]Source{}, broken: map[string]error{}}
	for _, src := range sources {
		if _, dup := s.sources[src.Name]; !dup {
			s.order = append(s.order, src.Name)
		}
		s.sources[src.Name] = src
	}
	var errs []error
	for _, name := range s.order {
		src := s.sources[name]
		pl, err := compile(s, src.Name, src.Origin, src.Origin, src.Text)
		if err != nil {
			errs = append(errs, err)
			s.broken[name] = err
			continue
		}
		s.profiles[name] = pl
	}
	errs = append(errs, s.checkLoops()...)
	s.dropReferrers()
	return s, errors.Join(errs...)
}

// dropReferrers breaks every profile that routes to a broken one; it
// repeats until nothing changes, since breakage travels along chains of
// references.
func (s *Set) dropReferrers() {
	for changed := true; changed; {
		changed = false
		for _, name := range s.order {
			pl := s.profiles[name]
			if pl == nil {
				continue
			}
			for _, r := range pl.refs {
				if cause, bad := s.broken[r.Name]; bad {
					err := fmt.Errorf("%s: profile %s refers to profile %s, which is broken: %w", s.sources[name].Origin, name, r.Name, cause)
					s.broken[name] = err
					delete(s.profiles, name)
					pl.close()
					changed = true
					break
				}
			}
		}
	}
}

// Broken returns the compile error of a profile that failed, if it did.
func (s *Set) Broken(name string) error { return s.broken[name] }

func (s *Set) checkLoops() []error {
	const (
		unseen = iota
		visiting
		done
	)
	state := map[string]int{}
	var errs []error
	var visit func(name string, path []string)
	visit = func(name string, path []string) {
		switch state[name] {
		case visiting:
			err := fmt.Errorf("%s: profiles refer to each other in a loop: %s", s.sources[name].Origin, strings.Join(append(path, name), " -> "))
			errs = append(errs, err)
			for _, p := range path {
				s.broken[p] = err
			}
			return
		case done:
			return
		}
		state[name] = visiting
		if pl := s.profiles[name]; pl != nil {
			for _, r := range pl.refs {
				visit(r.Name, append(path, name))
			}
		}
		state[name] = done
	}
	for _, name := range s.order {
		visit(name, nil)
	}
	return errs
}

// Chain compiles an inline chain against this set (so route can name the
// set's profiles); the result is cached per set. On a live set the chain's
// pieces open here, when it is first resolved (Opener), and close with the
// set's other pieces; a chain that fails to open is not kept, so the next
// flow tries again. On a set that only compiles (profiles show) nothing
// opens.
func (s *Set) Chain(text string) (*Pipeline, error) {
	if v, ok := s.chains.Load(text); ok {
		return chainResult(v)
	}
	// No loop check needed: no profile can refer back to an inline chain.
	pl, err := compile(s, "chain", "chain", "chain", text)
	s.mu.Lock()
	defer s.mu.Unlock()
	if v, ok := s.chains.Load(text); ok {
		// Another flow compiled it meanwhile: keep one, opened once.
		if pl != nil {
			pl.close()
		}
		return chainResult(v)
	}
	if err != nil {
		s.chains.Store(text, err)
		return nil, err
	}
	switch {
	case s.closed:
		// The set has ended (a flow resolved it just before a reload):
		// nothing opens in it any more, as in its profiles.
		pl.close()
	case s.live:
		if err := pl.open(); err != nil {
			pl.close()
			return nil, err
		}
	}
	s.chains.Store(text, pl)
	return pl, nil
}

func chainResult(v any) (*Pipeline, error) {
	if err, isErr := v.(error); isErr {
		return nil, err
	}
	return v.(*Pipeline), nil
}

// Profile finds a compiled profile by name.
func (s *Set) Profile(name string) (*Pipeline, bool) {
	pl, ok := s.profiles[name]
	return pl, ok
}

// Names lists the profiles in the order their sources were given.
func (s *Set) Names() []string { return s.order }

// Source returns where a profile came from.
func (s *Set) Source(name string) Source { return s.sources[name] }

func compile(s *Set, name, origin, file, text string) (*Pipeline, error) {
	opts, chain, err := SplitOptions(file, text)
	if err != nil {
		return nil, err
	}
	if err := checkOptions(opts); err != nil {
		return nil, err
	}
	specs, err := ParseChain(file, chain)
	if err != nil {
		return nil, err
	}
	pl := &Pipeline{Name: name, Origin: origin, set: s, text: text, Options: opts}
	b := &builder{set: s, sources: s.sources, pl: pl}
	build := func(spec PieceSpec) (Piece, error) {
		info, ok := Lookup(spec.Name)
		if !ok {
			return nil, &PosError{spec.Pos, fmt.Sprintf("unknown piece %q (known: %s)", spec.Name, knownPieces())}
		}
		params := &Params{Piece: spec.Name, Pos: spec.Pos, list: spec.Params}
		p, err := info.New(params, b)
		if err != nil {
			var pe *PosError
			if errors.As(err, &pe) {
				return nil, err
			}
			return nil, &PosError{spec.Pos, fmt.Sprintf("piece %q: %v", spec.Name, err)}
		}
		if x := params.unused(); x != nil {
			closePiece(p)
			return nil, &PosError{x.Pos, fmt.Sprintf("piece %q has no parameter %q (see `funtun pieces %s`)", spec.Name, x.Key, spec.Name)}
		}
		if err := checkImplements(spec.Name, p); err != nil {
			closePiece(p)
			return nil, &PosError{spec.Pos, err.Error()}
		}
		if err := checkDeclared(info, p); err != nil {
			closePiece(p)
			return nil, &PosError{spec.Pos, err.Error()}
		}
		return p, nil
	}
	fail := func(err error) (*Pipeline, error) {
		for _, p := range pl.pieces {
			closePiece(p)
		}
		return nil, err
	}
	for _, spec := range specs {
		p, err := build(spec)
		if err != nil {
			return fail(err)
		}
		pl.pieces = append(pl.pieces, p)
		pl.Specs = append(pl.Specs, spec)
	}
	// A chain whose last piece needs a network below it ends in the
	// piece registered as the network's end (direct).
	last := pl.pieces[len(pl.pieces)-1]
	needsNet := false
	for _, c := range last.Curves() {
		if c.Net != Kernel {
			needsNet = true
		}
	}
	if needsNet {
		end := Pos{File: file, Line: specs[len(specs)-1].Pos.Line, Col: specs[len(specs)-1].Pos.Col}
		endName, ok := networkEnd()
		if !ok {
			return fail(&PosError{end, "the chain needs a network below its last piece, and no piece that ends chains is built in"})
		}
		spec := PieceSpec{Name: endName, Pos: end}
		p, err := build(spec)
		if err != nil {
			return fail(err)
		}
		pl.pieces = append(pl.pieces, p)
		pl.Specs = append(pl.Specs, spec)
	}
	var firstErr error
	for _, top := range []Shape{Stream, Dgram} {
		if err := pl.walk(top); err != nil {
			if firstErr == nil && AppShapes(pl.pieces[0].Curves()).Has(top) {
				firstErr = err
			}
			continue
		}
		pl.top = append(pl.top, top)
	}
	if len(pl.top) == 0 {
		if firstErr == nil {
			firstErr = &PosError{specs[0].Pos, fmt.Sprintf("piece %q carries neither streams nor datagrams", specs[0].Name)}
		}
		return fail(firstErr)
	}
	pl.links = make([]link, len(pl.pieces))
	for i := range pl.links {
		pl.links[i] = link{pl: pl, i: i}
	}
	return pl, nil
}

// walk follows one top shape down the chain, joint by joint; a curve with
// an Also shape is followed both ways.
func (pl *Pipeline) walk(top Shape) error { return pl.walkFrom(0, top) }

func (pl *Pipeline) walkFrom(i int, cur Shape) error {
	if i == len(pl.pieces) {
		return nil
	}
	p, spec := pl.pieces[i], pl.Specs[i]
	for _, c := range p.Curves() {
		if c.App != cur {
			continue
		}
		if c.Net == Kernel {
			if i < len(pl.pieces)-1 {
				after := pl.Specs[i+1]
				return &PosError{after.Pos, fmt.Sprintf("piece %q follows piece %q, which already ends the chain (its edge \"net\" is the network itself)", after.Name, spec.Name)}
			}
			return nil
		}
		if err := pl.walkFrom(i+1, c.Net); err != nil {
			return err
		}
		if c.Also != "" {
			return pl.walkFrom(i+1, c.Also)
		}
		return nil
	}
	if i == 0 {
		return &PosError{spec.Pos, fmt.Sprintf("piece %q: edge \"app\" needs %s, the hook offers %s", spec.Name, AppShapes(p.Curves()), cur)}
	}
	return &PosError{spec.Pos, fmt.Sprintf("piece %q: edge \"app\" needs %s, piece %q offers %s", spec.Name, AppShapes(p.Curves()), pl.Specs[i-1].Name, cur)}
}

func knownPieces() string {
	var names []string
	for _, i := range Pieces() {
		names = append(names, i.Name)
	}
	return strings.Join(names, ", ")
}

// closePiece gives back what a piece that never went live holds: a piece
// built and then dropped (a compile error, a set that never went live). An
// Opener holds nothing before Open, so only a piece with Close and no Open
// has anything to close then.
func closePiece(p Piece) {
	if _, ok := p.(Opener); ok {
		return
	}
	if c, ok := p.(Closer); ok {
		c.Close()
	}
}

// KernelDial reports whether every flow of the pipeline ends in one
// connect(2) of a kernel socket to exactly the address asked for, and how
// that socket is to be made: a hook may then make the connection itself on
// a fast path (the engine's event loops, the preload library's own
// connect) and still do what the profile says. It holds for a pipeline
// of one piece that declares so (KernelDialer); the engine learns the dial
// policy from that piece, never from a copy of its defaults.
func (pl *Pipeline) KernelDial() (DialPolicy, bool) {
	if len(pl.pieces) != 1 {
		return DialPolicy{}, false
	}
	kd, ok := pl.pieces[0].(KernelDialer)
	if !ok {
		return DialPolicy{}, false
	}
	return kd.KernelDial()
}

// Hold marks a flow as using this pipeline's set; call the returned func
// when the flow ends, so a retired set closes its pieces after its last flow.
func (pl *Pipeline) Hold() (release func()) {
	s := pl.set
	s.hold()
	return s.release
}

func (s *Set) hold() { s.active.Add(1) }

func (s *Set) release() {
	if s.active.Add(-1) == 0 && s.retired.Load() {
		s.closePieces()
	}
}

// tryHold holds pl's set, unless the set has closed (a reload retired it
// between the flow's Resolve and now): then it holds nothing and says so.
func (pl *Pipeline) tryHold() bool {
	s := pl.set
	s.hold()
	if !s.retired.Load() {
		return true
	}
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		s.release()
		return false
	}
	return true
}

// Open makes the set live: every profile's pieces open (Opener), app side
// first. Catalog.Load does this for each set it swaps in; a program or test
// that compiles a set itself (CompileSet) calls it before the set carries
// flows, and Retire when done. If a piece fails to open, the pieces
// already opened close again, the set stays not live, and the error (a
// *PosError) names the profile's file, line and the piece. Opening a live
// set again does nothing. Inline chains compiled before Open are dropped
// (building them held nothing) and compiled again, opened, when asked for.
func (s *Set) Open() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("this set of profiles is closed; compile it again")
	}
	if s.live {
		return nil
	}
	for _, name := range s.order {
		pl := s.profiles[name]
		if pl == nil {
			continue
		}
		if err := pl.open(); err != nil {
			for _, n := range s.order {
				if q := s.profiles[n]; q != nil {
					q.unopen()
				}
			}
			return err
		}
	}
	s.goLive()
	return nil
}

// openLenient is Open for a first load, which has no set to keep: a
// profile whose piece fails to open is left out like one that does not
// compile (asking for it by name repeats the error), with every profile
// that routes to it; the others go live. The error lists the failures.
func (s *Set) openLenient() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.live {
		return nil
	}
	var errs []error
	for _, name := range s.order {
		pl := s.profiles[name]
		if pl == nil {
			continue
		}
		if err := pl.open(); err != nil {
			errs = append(errs, err)
			s.broken[name] = err
			delete(s.profiles, name)
			pl.close()
		}
	}
	s.dropReferrers()
	s.goLive()
	return errors.Join(errs...)
}

// goLive marks the set live; chains compiled while it was not are dropped
// so that they open when next asked for. Called with s.mu held.
func (s *Set) goLive() {
	s.live = true
	s.chains.Range(func(k, v any) bool {
		if pl, ok := v.(*Pipeline); ok {
			pl.close()
		}
		s.chains.Delete(k)
		return true
	})
}

// Retire ends the set: its pieces close after its last flow (Hold), at
// once if no flow holds it. A Catalog retires the set a reload replaces.
func (s *Set) Retire() {
	s.retired.Store(true)
	if s.active.Load() == 0 {
		s.closePieces()
	}
}

// closePieces closes every piece of the set once: all that opened if the
// set went live, else only what building held (closePiece).
func (s *Set) closePieces() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.active.Load() != 0 {
		// Held again since the caller looked (tryHold): the last
		// release closes it.
		return
	}
	s.closed = true
	for _, name := range s.order {
		if pl := s.profiles[name]; pl != nil {
			pl.close()
		}
	}
	s.chains.Range(func(_, v any) bool {
		if pl, ok := v.(*Pipeline); ok {
			pl.close()
		}
		return true
	})
}

// open opens the pipeline's pieces, app side first. On failure it closes
// those it opened and returns a *PosError naming the piece and its place.
// Called with set.mu held (or on a pipeline no one else sees yet).
func (pl *Pipeline) open() error {
	if pl.live || pl.closed {
		return nil
	}
	for i, p := range pl.pieces {
		o, ok := p.(Opener)
		if !ok {
			continue
		}
		if err := o.Open(); err != nil {
			for _, q := range pl.pieces[:i] {
				if _, ok := q.(Opener); ok {
					closeOpened(q)
				}
			}
			var pe *PosError
			if errors.As(err, &pe) {
				return err
			}
			spec := pl.Specs[i]
			return &PosError{spec.Pos, fmt.Sprintf("piece %q: %v", spec.Name, err)}
		}
	}
	pl.live = true
	return nil
}

// unopen closes what open opened, leaving the pipeline as built: a set
// that failed to go live undoes the profiles it had opened.
func (pl *Pipeline) unopen() {
	if !pl.live {
		return
	}
	for _, p := range pl.pieces {
		if _, ok := p.(Opener); ok {
			closeOpened(p)
		}
	}
	pl.live = false
}

// close gives back everything the pipeline's pieces hold, once: every
// Closer if it went live, else what building held.
func (pl *Pipeline) close() {
	if pl.closed {
		return
	}
	pl.closed = true
	for _, p := range pl.pieces {
		if pl.live {
			closeOpened(p)
		} else {
			closePiece(p)
		}
	}
	pl.live = false
}

func closeOpened(p Piece) {
	if c, ok := p.(Closer); ok {
		c.Close()
	}
}
