package funnel_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/fstest"

	"github.com/funtun/funtun/funnel"
	_ "github.com/funtun/funtun/pieces/direct"
)

// Test pieces with the shapes of real ones, so the compiler's joint checks
// can be tested without depending on the real pieces' packages.
type fakePiece struct {
	curves []funnel.Curve
	closed *atomic.Int32
}

func (p *fakePiece) Curves() []funnel.Curve { return p.curves }
func (p *fakePiece) DialStream(ctx context.Context, f *funnel.Flow, next funnel.Next) (net.Conn, error) {
	return next.DialStream(ctx, f)
}
func (p *fakePiece) DialDgram(ctx context.Context, f *funnel.Flow, next funnel.Next) (funnel.DgramConn, error) {
	return next.DialDgram(ctx, f)
}
func (p *fakePiece) Close() error {
	if p.closed != nil {
		p.closed.Add(1)
	}
	return nil
}

var fakeCloses atomic.Int32

var testEngine = &funnel.Engine{Log: slog.New(slog.NewTextHandler(io.Discard, nil))}

func init() {
	reg := func(name string, curves ...funnel.Curve) {
		funnel.Register(funnel.PieceInfo{Name: name, New: func(p *funnel.Params, b funnel.Builder) (funnel.Piece, error) {
			if _, err := p.Int("n", 0, 0, 10); err != nil {
				return nil, err
			}
			if to := p.String("ref", ""); to != "" {
				if _, err := b.Ref(to); err != nil {
					return nil, p.Errorf("ref", "%v", err)
				}
			}
			return &fakePiece{curves: curves, closed: &fakeCloses}, nil
		}})
	}
	S, D, K := funnel.Stream, funnel.Dgram, funnel.Kernel
	reg("t-stream", funnel.Curve{App: S, Net: S})                             // like tls
	reg("t-both", funnel.Curve{App: S, Net: S}, funnel.Curve{App: D, Net: D}) // like pcap
	reg("t-frame", funnel.Curve{App: D, Net: S})                              // like frame
	reg("t-end", funnel.Curve{App: S, Net: K}, funnel.Curve{App: D, Net: K})  // like route
}

func compileOne(t *testing.T, text string) (*funnel.Pipeline, error) {
	t.Helper()
	set, err := funnel.CompileSet([]funnel.Source{{Name: "p", Origin: "p.profile", Text: text}})
	if err != nil {
		return nil, err
	}
	pl, _ := set.Profile("p")
	return pl, nil
}

func TestCompileShapes(t *testing.T) {
	cases := []struct {
		text   string
		shapes string
		chain  string
	}{
		{"t-stream", "stream", "t-stream | direct"},
		{"t-both", "stream or dgram", "t-both | direct"},
		{"t-frame | t-stream", "dgram", "t-frame | t-stream | direct"},
		{"t-both | t-frame", "dgram", "t-both | t-frame | direct"},
		{"t-stream | t-end", "stream", "t-stream | t-end"},
		{"direct", "stream or dgram", "direct"},
	}
	for _, c := range cases {
		pl, err := compileOne(t, c.text)
		if err != nil {
			t.Errorf("%q: %v", c.text, err)
			continue
		}
		if pl.Shapes().String() != c.shapes || pl.String() != c.chain {
			t.Errorf("%q: carries %s as %q, want %s as %q", c.text, pl.Shapes(), pl.String(), c.shapes, c.chain)
		}
	}
}

func TestCompileErrors(t *testing.T) {
	cases := []struct{ text, want string }{
		{"t-stream | t-frame", `p.profile:1:12: piece "t-frame": edge "app" needs dgram, piece "t-stream" offers stream`},
		{"t-end | t-stream", `p.profile:1:9: piece "t-stream" follows piece "t-end", which already ends the chain`},
		{"nosuch", `p.profile:1:1: unknown piece "nosuch" (known: `},
		{"t-stream bogus=1", `p.profile:1:10: piece "t-stream" has no parameter "bogus"`},
		{"t-stream n=eleven", `p.profile:1:12: piece "t-stream": n: "eleven" is not a whole number from 0 to 10`},
		{"t-stream\n  | t-end ref=missing", `p.profile:2:15: piece "t-end": ref: no profile named "missing"`},
	}
	for _, c := range cases {
		_, err := compileOne(t, c.text)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q:\n got %v\nwant %s", c.text, err, c.want)
		}
	}
}

func TestCompileLoops(t *testing.T) {
	_, err := funnel.CompileSet([]funnel.Source{
		{Name: "a", Origin: "a.profile", Text: "t-end ref=b"},
		{Name: "b", Origin: "b.profile", Text: "t-stream | t-end ref=a"},
		{Name: "c", Origin: "c.profile", Text: "t-end ref=c"},
	})
	if err == nil {
		t.Fatal("loops accepted")
	}
	for _, want := range []string{"a -> b -> a", "c -> c"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name the loop %s", err, want)
		}
	}
}

func TestCompileErrorClosesPieces(t *testing.T) {
	before := fakeCloses.Load()
	if _, err := compileOne(t, "t-stream | t-stream | nosuch"); err == nil {
		t.Fatal("unknown piece accepted")
	}
	if got := fakeCloses.Load() - before; got != 2 {
		t.Errorf("%d of the 2 pieces built before the error were closed", got)
	}
}

func writeProfile(t *testing.T, dir, name, text string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name+funnel.ProfileExt), []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestCatalogPrecedenceAndReload(t *testing.T) {
	user, system := t.TempDir(), t.TempDir()
	writeProfile(t, system, "work", "t-stream")
	writeProfile(t, system, "shared", "t-both")
	writeProfile(t, user, "work", "t-both | t-stream")
	c := &funnel.Catalog{Dirs: []string{user, system}, Builtins: fstest.MapFS{
		"direct.profile": {Data: []byte("direct")},
		"shared.profile": {Data: []byte("t-stream")},
	}}
	if err := c.Load(); err != nil {
		t.Fatal(err)
	}
	origin := func(name string) string { return c.Current().Source(name).Origin }
	if got := origin("work"); got != filepath.Join(user, "work.profile") {
		t.Errorf("work comes from %s, want the user's directory", got)
	}
	if got := origin("shared"); got != filepath.Join(system, "shared.profile") {
		t.Errorf("shared comes from %s, want the system directory over the built-in", got)
	}
	if got := origin("direct"); got != "built-in" {
		t.Errorf("direct comes from %s", got)
	}

	// A running flow holds its pipeline across reloads.
	old, err := c.Resolve(funnel.Selector{Profile: "work"})
	if err != nil {
		t.Fatal(err)
	}
	release := old.Hold()

	// A broken profile leaves the old set in force.
	writeProfile(t, user, "work", "t-stream | t-frame")
	err = c.Load()
	if err == nil || !strings.Contains(err.Error(), filepath.Join(user, "work.profile")+":1:12:") {
		t.Fatalf("broken reload: %v", err)
	}
	if pl, _ := c.Resolve(funnel.Selector{Profile: "work"}); pl != old {
		t.Error("a failed reload replaced the profiles in force")
	}

	// A good reload swaps every profile at once; the old set's pieces are
	// closed only when its last flow ends.
	writeProfile(t, user, "work", "t-stream")
	before := fakeCloses.Load()
	if err := c.Load(); err != nil {
		t.Fatal(err)
	}
	if pl, _ := c.Resolve(funnel.Selector{Profile: "work"}); pl == old || pl.String() != "t-stream | direct" {
		t.Errorf("after reload work is %q", pl.String())
	}
	if fakeCloses.Load() != before {
		t.Error("the old set was closed while a flow still used it")
	}
	release()
	if fakeCloses.Load() == before {
		t.Error("the old set was not closed after its last flow")
	}
}

func TestResolveErrors(t *testing.T) {
	c := &funnel.Catalog{Dirs: []string{t.TempDir()}, Builtins: fstest.MapFS{"direct.profile": {Data: []byte("direct")}}}
	if err := c.Load(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Resolve(funnel.Selector{Profile: "nope"}); err == nil || !strings.Contains(err.Error(), `no profile named "nope"`) {
		t.Errorf("missing profile: %v", err)
	}
	if _, err := c.Resolve(funnel.Selector{Chain: "t-stream | t-frame"}); err == nil || !strings.Contains(err.Error(), "chain:1:12:") {
		t.Errorf("bad chain: %v", err)
	}
	pl, err := c.Resolve(funnel.Selector{})
	if err != nil || pl.Name != "direct" {
		t.Errorf("default selector: %v %v", pl, err)
	}
	if _, err := pl.DialDgram(context.Background(), funnel.NewFlow("t", funnel.UDP, funnel.MakeAddr("127.0.0.1", 9))); err != nil {
		t.Errorf("direct udp: %v", err)
	}
	st, _ := c.Resolve(funnel.Selector{Chain: "t-stream"})
	_, err = st.DialDgram(context.Background(), funnel.NewFlow("t", funnel.UDP, funnel.MakeAddr("127.0.0.1", 9)))
	if funnel.Classify(err) != funnel.KindNotSupported {
		t.Errorf("dgram flow into a stream profile: %v", err)
	}
}

func TestTakeSelector(t *testing.T) {
	sel, rest, err := funnel.TakeSelector([]string{"profile=6bed4", "twinkle", "--x"})
	if err != nil || sel.Profile != "6bed4" || len(rest) != 2 {
		t.Errorf("got %+v %v %v", sel, rest, err)
	}
	if _, _, err := funnel.TakeSelector([]string{"profile=a", "chain=direct"}); err == nil {
		t.Error("both profile and chain accepted")
	}
	if _, _, err := funnel.TakeSelector([]string{"profile="}); err == nil {
		t.Error("empty profile accepted")
	}
}

func TestClassify(t *testing.T) {
	_, err := net.Dial("tcp", "127.0.0.1:1") // nothing listens on port 1 here
	if k := funnel.Classify(err); k != funnel.KindRefused || k.SOCKSReply() != 5 {
		t.Errorf("refused dial classified %v", k)
	}
	if k := funnel.Classify(funnel.Errorf(funnel.KindDenied, "no")); k.SOCKSReply() != 2 {
		t.Errorf("denied -> %d", k.SOCKSReply())
	}
	if k := funnel.Classify(errors.New("x")); k != funnel.KindGeneral {
		t.Errorf("plain error -> %v", k)
	}
}

func init() {
	funnel.Register(funnel.PieceInfo{Name: "t-assoc", New: func(p *funnel.Params, b funnel.Builder) (funnel.Piece, error) {
		return &fakePiece{curves: []funnel.Curve{{App: funnel.Stream, Net: funnel.Stream}, {App: funnel.Dgram, Net: funnel.Stream, Also: funnel.Dgram}}}, nil
	}})
}

// A curve that needs two shapes below (SOCKS5 UDP: a control stream and a
// datagram relay) is checked both ways.
func TestCompileAlsoShape(t *testing.T) {
	pl, err := compileOne(t, "t-assoc | t-stream")
	if err != nil {
		t.Fatal(err)
	}
	if pl.Shapes().String() != "stream" {
		t.Errorf("t-assoc | t-stream carries %s; dgram needs datagrams below t-assoc, which t-stream cannot carry", pl.Shapes())
	}
	pl, err = compileOne(t, "t-assoc | t-both")
	if err != nil || pl.Shapes().String() != "stream or dgram" {
		t.Errorf("t-assoc | t-both: %v %v", pl, err)
	}
}

func TestSecretsRedacted(t *testing.T) {
	pl, err := compileOne(t, "t-stream | direct")
	if err != nil {
		t.Fatal(err)
	}
	_ = pl
	if got := funnel.RedactChain("socks5 server=a:1 user=me pass='s3cret word'"); strings.Contains(got, "s3cret") || !strings.Contains(got, "user=me pass=***") {
		t.Errorf("redacted: %q", got)
	}
	if got := (funnel.Selector{Chain: "x pass=hunter2"}).String(); strings.Contains(got, "hunter2") {
		t.Errorf("selector shows the password: %q", got)
	}
}

type handoffProbe struct{ transparent bool }

func (p *handoffProbe) Curves() []funnel.Curve {
	return []funnel.Curve{{App: funnel.Stream, Net: funnel.Stream}}
}
func (p *handoffProbe) Transparent() bool { return p.transparent }
func (p *handoffProbe) DialStream(ctx context.Context, f *funnel.Flow, next funnel.Next) (net.Conn, error) {
	return next.DialStream(ctx, f)
}

func init() {
	for _, tr := range []bool{true, false} {
		tr := tr
		name := "t-opaque"
		if tr {
			name = "t-clear"
		}
		funnel.Register(funnel.PieceInfo{Name: name, New: func(*funnel.Params, funnel.Builder) (funnel.Piece, error) {
			return &handoffProbe{transparent: tr}, nil
		}})
	}
}

// A handoff passes only through pieces that leave the bytes alone.
func TestHandoffOnlyThroughTransparentPieces(t *testing.T) {
	for chain, want := range map[string]bool{"t-clear | t-clear": true, "t-clear | t-opaque": false, "t-opaque": false, "direct": true} {
		pl, err := compileOne(t, chain)
		if err != nil {
			t.Fatal(err)
		}
		f := funnel.NewFlow("t", funnel.TCP, funnel.MakeAddr("127.0.0.1", 9))
		f.Handoff = true
		r := testEngine.Begin(f, pl)
		up, err := r.DialStream(context.Background())
		handed := up.HandedOff()
		if handed != want {
			t.Errorf("%s: handed off %v (err %v), want %v", chain, handed, err, want)
		}
		if handed && up.Handoff.String() != "127.0.0.1:9" {
			t.Errorf("%s: handed off to %v, want 127.0.0.1:9", chain, up.Handoff)
		}
		if up.Conn != nil {
			up.Conn.Close()
		}
		r.End(err)
	}
}

// resProbe is a piece with a resource, as pcap is: it counts opens and
// closes per tag, refuses flows while it is not open, and fails to open
// when built with fail=true.
type resProbe struct {
	tag  string
	fail bool
	open bool
}

var probes = struct {
	sync.Mutex
	open, opens, badCloses map[string]int
}{open: map[string]int{}, opens: map[string]int{}, badCloses: map[string]int{}}

func probeCount(m map[string]int, tag string) int {
	probes.Lock()
	defer probes.Unlock()
	return m[tag]
}

var resCurves = []funnel.Curve{{App: funnel.Stream, Net: funnel.Stream}, {App: funnel.Dgram, Net: funnel.Dgram}}

func (p *resProbe) Curves() []funnel.Curve { return resCurves }
func (p *resProbe) Open() error {
	if p.fail {
		return errors.New("cannot open the probe's file")
	}
	probes.Lock()
	defer probes.Unlock()
	p.open = true
	probes.open[p.tag]++
	probes.opens[p.tag]++
	return nil
}
func (p *resProbe) Close() error {
	probes.Lock()
	defer probes.Unlock()
	if !p.open {
		probes.badCloses[p.tag]++
		return nil
	}
	p.open = false
	probes.open[p.tag]--
	return nil
}
func (p *resProbe) DialStream(ctx context.Context, f *funnel.Flow, next funnel.Next) (net.Conn, error) {
	return next.DialStream(ctx, f)
}
func (p *resProbe) DialDgram(ctx context.Context, f *funnel.Flow, next funnel.Next) (funnel.DgramConn, error) {
	return next.DialDgram(ctx, f)
}

var (
	_ funnel.Opener = (*resProbe)(nil)
	_ funnel.Closer = (*resProbe)(nil)
)

func init() {
	funnel.Register(funnel.PieceInfo{Name: "t-res", Curves: resCurves, New: func(p *funnel.Params, b funnel.Builder) (funnel.Piece, error) {
		fail, err := p.Bool("fail", false)
		if err != nil {
			return nil, err
		}
		return &resProbe{tag: p.String("tag", ""), fail: fail}, nil
	}})
	// t-liar declares fewer curves than it carries.
	funnel.Register(funnel.PieceInfo{Name: "t-liar", Curves: resCurves[:1], New: func(*funnel.Params, funnel.Builder) (funnel.Piece, error) {
		return &resProbe{}, nil
	}})
}

// Compiling a set, resolving a chain in it and dropping it open nothing.
func TestCompilingOpensNothing(t *testing.T) {
	set, err := funnel.CompileSet([]funnel.Source{{Name: "p", Origin: "p.profile", Text: "t-res tag=c1"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := set.Chain("t-res tag=c1-chain"); err != nil {
		t.Fatal(err)
	}
	c := &funnel.Catalog{Builtins: fstest.MapFS{"q.profile": {Data: []byte("t-res tag=c1-cat")}}}
	cset, err := c.Compile()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.ResolveIn(cset, funnel.Selector{Chain: "t-res tag=c1-cat-chain"}); err != nil {
		t.Fatal(err)
	}
	if c.Current() != nil {
		t.Error("Catalog.Compile made its set current")
	}
	set.Retire()
	cset.Retire()
	for _, tag := range []string{"c1", "c1-chain", "c1-cat", "c1-cat-chain"} {
		if n := probeCount(probes.opens, tag); n != 0 {
			t.Errorf("%s: opened %d times by compiling", tag, n)
		}
		if n := probeCount(probes.badCloses, tag); n != 0 {
			t.Errorf("%s: closed %d times without being opened", tag, n)
		}
	}
}

// A set's pieces open when it goes live, and a set whose piece fails to
// open does not go live: the old one stays, and the error names the place.
// A retired set closes its pieces, inline chains included, after its last
// flow.
func TestGoLiveOpensAndReloadKeepsOldOnOpenError(t *testing.T) {
	dir := t.TempDir()
	writeProfile(t, dir, "a", "t-res tag=A1")
	c := &funnel.Catalog{Dirs: []string{dir}, Builtins: fstest.MapFS{"direct.profile": {Data: []byte("direct")}}}
	if err := c.Load(); err != nil {
		t.Fatal(err)
	}
	if n := probeCount(probes.open, "A1"); n != 1 {
		t.Fatalf("A1 is open %d times after the first load, want 1", n)
	}
	old, err := c.Resolve(funnel.Selector{Profile: "a"})
	if err != nil {
		t.Fatal(err)
	}
	release := old.Hold()
	for range 3 {
		if _, err := c.Resolve(funnel.Selector{Chain: "t-res tag=CH1"}); err != nil {
			t.Fatal(err)
		}
	}
	if n, all := probeCount(probes.open, "CH1"), probeCount(probes.opens, "CH1"); n != 1 || all != 1 {
		t.Fatalf("an inline chain on a live set: open %d, opened %d times; want 1 and 1", n, all)
	}
	if _, err := c.Resolve(funnel.Selector{Chain: "t-res tag=CH2 fail=true"}); err == nil || !strings.Contains(err.Error(), `chain:1:1: piece "t-res": cannot open`) {
		t.Errorf("a chain that fails to open: %v", err)
	}

	writeProfile(t, dir, "a", "t-res tag=A2")
	writeProfile(t, dir, "b", "t-res tag=B2 fail=true")
	err = c.Load()
	var pe *funnel.PosError
	if !errors.As(err, &pe) || !strings.Contains(err.Error(), filepath.Join(dir, "b.profile")+`:1:1: piece "t-res": cannot open the probe's file`) {
		t.Fatalf("reload whose piece fails to open: %v (want a *PosError naming b.profile:1:1)", err)
	}
	if pl, _ := c.Resolve(funnel.Selector{Profile: "a"}); pl != old {
		t.Fatal("a reload whose piece failed to open replaced the profiles in force")
	}
	if n := probeCount(probes.open, "A2"); n != 0 {
		t.Errorf("the failed set left A2 open (%d)", n)
	}
	if n := probeCount(probes.open, "A1"); n != 1 {
		t.Errorf("the set in force lost A1 (open %d)", n)
	}

	writeProfile(t, dir, "b", "t-res tag=B3")
	writeProfile(t, dir, "a", "t-res tag=A3")
	if err := c.Load(); err != nil {
		t.Fatal(err)
	}
	if probeCount(probes.open, "A3") != 1 || probeCount(probes.open, "B3") != 1 {
		t.Fatal("the new set's pieces are not open")
	}
	// The inline chain is carried over: the new set opened its own
	// before the old one was retired.
	if probeCount(probes.open, "A1") != 1 || probeCount(probes.open, "CH1") != 2 {
		t.Fatalf("after the reload: A1 open %d, CH1 open %d; want the old set's still open (1, and 2 with the new set's)",
			probeCount(probes.open, "A1"), probeCount(probes.open, "CH1"))
	}
	release()
	if n, m := probeCount(probes.open, "A1"), probeCount(probes.open, "CH1"); n != 0 || m != 1 {
		t.Fatalf("after the old set's last flow: A1 open %d, CH1 open %d; want 0 and the new set's 1", n, m)
	}
	if _, err := c.Resolve(funnel.Selector{Chain: "t-res tag=CH1"}); err != nil || probeCount(probes.opens, "CH1") != 2 {
		t.Fatalf("the carried chain: %v, opened %d times in all, want 2", err, probeCount(probes.opens, "CH1"))
	}
	for _, tag := range []string{"A1", "A2", "A3", "B3", "CH1", "CH2"} {
		if n := probeCount(probes.badCloses, tag); n != 0 {
			t.Errorf("%s: closed %d times without being open", tag, n)
		}
	}
}

// At startup a profile whose piece fails to open is left out like a broken
// one, with the profiles that route to it; the others go live.
func TestFirstLoadLeavesOutProfilesThatFailToOpen(t *testing.T) {
	dir := t.TempDir()
	writeProfile(t, dir, "good", "t-res tag=G")
	writeProfile(t, dir, "bad", "t-res tag=X fail=true")
	writeProfile(t, dir, "via", "t-res tag=V | t-end ref=bad")
	c := &funnel.Catalog{Dirs: []string{dir}}
	err := c.Load()
	if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, "bad.profile")+`:1:1: piece "t-res": cannot open`) {
		t.Fatalf("first load: %v", err)
	}
	if c.Current() == nil {
		t.Fatal("nothing went live")
	}
	if _, err := c.Resolve(funnel.Selector{Profile: "good"}); err != nil || probeCount(probes.open, "G") != 1 {
		t.Fatalf("good profile: %v, open %d", err, probeCount(probes.open, "G"))
	}
	if _, err := c.Resolve(funnel.Selector{Profile: "bad"}); err == nil || !strings.Contains(err.Error(), "cannot open the probe's file") {
		t.Errorf("asking for the profile that failed to open: %v", err)
	}
	if _, err := c.Resolve(funnel.Selector{Profile: "via"}); err == nil || !strings.Contains(err.Error(), "refers to profile bad") {
		t.Errorf("asking for a profile that routes to it: %v", err)
	}
	if n := probeCount(probes.open, "V"); n != 0 {
		t.Errorf("the profile left out keeps its piece open (%d)", n)
	}
}

// The compiler holds a piece to the curves its registration declares.
func TestUndeclaredCurveRefused(t *testing.T) {
	_, err := compileOne(t, "t-liar")
	if err == nil || !strings.Contains(err.Error(), `p.profile:1:1: piece "t-liar" carries dgram→dgram, which its registration (PieceInfo.Curves) does not declare`) {
		t.Errorf("got %v", err)
	}
}
