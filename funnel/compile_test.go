package funnel_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
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
		c, err := pl.DialStream(context.Background(), f)
		_, handed := c.(*funnel.Handoff)
		if handed != want {
			t.Errorf("%s: handed off %v (err %v), want %v", chain, handed, err, want)
		}
		if c != nil && !handed {
			c.Close()
		}
	}
}
