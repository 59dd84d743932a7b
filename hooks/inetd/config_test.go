package inetd

import (
	"errors"
	"net/netip"
	"os/user"
	"strings"
	"testing"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/testutil"
	_ "github.com/funtun/funtun/pieces/direct"
	_ "github.com/funtun/funtun/pieces/tls"
)

// rootOptions parses as root would, with profiles compiled from chains
// (profile=direct is the built-in default).
func rootOptions(t *testing.T) ParseOptions {
	t.Helper()
	self, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	return ParseOptions{Root: true, Self: self, Resolve: func(sel funnel.Selector) (*funnel.Pipeline, error) {
		chain := sel.Chain
		if chain == "" {
			if sel.Profile != "" && sel.Profile != "direct" {
				return nil, errors.New("no profile named " + sel.Profile)
			}
			chain = "direct"
		}
		return testutil.CompileChain(chain)
	}}
}

func TestParseClassicLines(t *testing.T) {
	text := `# comment
echo   stream tcp  nowait   nobody        /bin/cat  cat
daytime stream tcp6 nowait.40 nobody.nogroup /bin/date date -u
127.0.0.1:7000 dgram udp wait root /bin/cat cat
[::1]:7001 stream tcp6 wait nobody:nogroup /bin/cat
127.0.0.2:
7002 stream tcp nowait root /bin/cat cat
*:
7003 stream tcp46 nowait root chain='tls cert=x key=y' /bin/cat cat
`
	opt := rootOptions(t)
	opt.Resolve = nil // the chain's files do not exist; profiles are checked below
	lines, errs := Parse("f.conf", text, opt)
	if len(errs) > 0 {
		t.Fatalf("unexpected errors: %v", errs)
	}
	if len(lines) != 6 {
		t.Fatalf("got %d lines, want 6", len(lines))
	}
	want := []struct {
		pos, network, addr, path string
		wait, stream             bool
		rate                     int
		args                     string
	}{
		{"f.conf:2", "tcp4", "0.0.0.0:7", "/bin/cat", false, true, 0, "cat"},
		{"f.conf:3", "tcp6", "[::]:13", "/bin/date", false, true, 40, "date -u"},
		{"f.conf:4", "udp4", "127.0.0.1:7000", "/bin/cat", true, false, 0, "cat"},
		{"f.conf:5", "tcp6", "[::1]:7001", "/bin/cat", true, true, 0, "cat"},
		{"f.conf:7", "tcp4", "127.0.0.2:7002", "/bin/cat", false, true, 0, "cat"},
		{"f.conf:9", "tcp", "[::]:7003", "/bin/cat", false, true, 0, "cat"},
	}
	for i, w := range want {
		l := lines[i]
		if l.Pos() != w.pos || l.Network != w.network || l.Addr.String() != w.addr || l.Path != w.path ||
			l.Wait != w.wait || l.Stream != w.stream || l.Rate != w.rate || strings.Join(l.Args, " ") != w.args {
			t.Errorf("line %d: got %s %s %s %s wait=%v stream=%v rate=%d args=%q, want %+v",
				i, l.Pos(), l.Network, l.Addr, l.Path, l.Wait, l.Stream, l.Rate, l.Args, w)
		}
	}
	if c := lines[1].Cred; c == nil || c.UID != 65534 || c.GID != 65534 {
		t.Errorf("nobody.nogroup: cred %+v", c)
	}
	if sel := lines[5].Selector; sel.Chain != "tls cert=x key=y" || !lines[5].HasSelector {
		t.Errorf("chain word: got %+v", sel)
	}
	if lines[0].HasSelector {
		t.Errorf("a classic line has no selector of its own")
	}
}

func TestParseBadLines(t *testing.T) {
	text := `7100 stream tcp nowait nobody /bin/cat cat
garbage
7101 stream tcp nowait nosuchuser-xyz /bin/cat cat
7102 stream tcp nowait nobody.nosuchgroup-xyz /bin/cat cat
7103 stream tcp nowait nobody /no/such/program
7104 stream tcp nowait nobody /etc/passwd passwd
7105 stream tcp nowait nobody bin/cat cat
7100 stream tcp nowait nobody /bin/date date
nosuchservice-xyz stream tcp nowait nobody /bin/cat cat
7106 stream tcp nowait nobody internal
7107 raw tcp nowait nobody /bin/cat
7108 stream udp nowait nobody /bin/cat
7109 dgram udp nowait nobody /bin/cat
7110 stream tcp maybe nobody /bin/cat
7111 stream tcp nowait/10/5 nobody /bin/cat
7112 stream rpc/tcp nowait nobody /bin/cat
7113 stream tcp nowait nobody profile=nosuchprofile /bin/cat cat
7114 dgram udp wait nobody chain='tls' /bin/cat cat
7115 stream tcp nowait nobody chain='tls /bin/cat cat
70000 stream tcp nowait nobody /bin/cat cat
7116 stream tcp nowait.0 nobody /bin/cat cat
10.0.0.1:7117 stream tcp6 nowait nobody /bin/cat cat
`
	lines, errs := Parse("bad.conf", text, rootOptions(t))
	if len(lines) != 1 || lines[0].Num != 1 {
		t.Fatalf("want only line 1 usable, got %d lines", len(lines))
	}
	want := map[int]string{
		2:  "fields, need at least 6",
		3:  `unknown user "nosuchuser-xyz"`,
		4:  `unknown group "nosuchgroup-xyz"`,
		5:  "/no/such/program does not exist",
		6:  "/etc/passwd is not executable",
		7:  "must be an absolute path",
		8:  "already served by line 1",
		9:  `unknown service name "nosuchservice-xyz"`,
		10: "internal services are not supported",
		11: `socket type "raw" is not supported`,
		12: "does not go with socket type stream",
		13: "dgram nowait",
		14: `fourth field "maybe"`,
		15: "FreeBSD form",
		16: "RPC services",
		17: `no profile named nosuchprofile`,
		18: "not plain direct",
		19: "no closing '",
		20: "out of range",
		21: ".N must be",
		22: "is not IPv6",
	}
	got := map[int]string{}
	for _, e := range errs {
		var le *LineError
		if !errors.As(e, &le) {
			t.Fatalf("error without a line: %v", e)
		}
		if le.File != "bad.conf" || !strings.HasPrefix(e.Error(), "bad.conf:") {
			t.Errorf("error does not start with FILE:LINE: %v", e)
		}
		got[le.Num] = le.Msg
	}
	for num, frag := range want {
		if !strings.Contains(got[num], frag) {
			t.Errorf("line %d: got %q, want it to say %q", num, got[num], frag)
		}
	}
	if len(got) != len(want) {
		t.Errorf("got %d errors, want %d: %v", len(got), len(want), errs)
	}
}

func TestParseOtherUserWithoutRoot(t *testing.T) {
	self := &user.User{Uid: "65534", Gid: "65534", Username: "nobody"}
	opt := ParseOptions{Root: false, Self: self}
	lines, errs := Parse("u.conf", "7200 stream tcp nowait root /bin/cat cat\n7201 stream tcp nowait nobody /bin/cat cat\n7202 stream tcp nowait nobody.root /bin/cat cat\n", opt)
	if len(lines) != 1 || lines[0].Num != 2 || lines[0].Cred != nil {
		t.Fatalf("want line 2 alone, run without switching; got %d lines", len(lines))
	}
	if len(errs) != 2 || !strings.Contains(errs[0].Error(), "u.conf:1: runs as root, but funtun runs as nobody, not root") ||
		!strings.Contains(errs[1].Error(), "u.conf:3: group root is not nobody's primary group") {
		t.Fatalf("errors: %v", errs)
	}
}

func TestSplitFieldsKeepsClassicQuotes(t *testing.T) {
	got, err := splitFields(`x stream tcp nowait root chain="a b=c" /bin/sh sh -c 'echo hi'`)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"x", "stream", "tcp", "nowait", "root", "chain=a b=c", "/bin/sh", "sh", "-c", "'echo", "hi'"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func TestGateLimits(t *testing.T) {
	var g gate
	lim := Limits{MaxChildren: 3, MaxPerSource: 2}
	a := testAddr("192.0.2.1")
	b := testAddr("192.0.2.2")
	now := testNow()
	for i, want := range []refusal{"", "", "max-per-source"} {
		if got := g.admit(a, lim, 0, now); got != want {
			t.Fatalf("admit %d from a: %q, want %q", i, got, want)
		}
	}
	if got := g.admit(b, lim, 0, now); got != "" {
		t.Fatalf("b: %q", got)
	}
	if got := g.admit(b, lim, 0, now); got != "max-children" {
		t.Fatalf("fourth child: %q, want max-children", got)
	}
	g.release(a)
	if got := g.admit(b, lim, 0, now); got != "" {
		t.Fatalf("after a release: %q", got)
	}
	// The rate: 2 a minute, a burst of 2, then one more each 30s.
	var r gate
	for i, want := range []refusal{"", "", "rate"} {
		if got := r.admit(a, Limits{}, 2, now); got != want {
			t.Fatalf("rate admit %d: %q, want %q", i, got, want)
		}
	}
	if got := r.admit(a, Limits{}, 2, now.Add(30e9)); got != "" {
		t.Fatalf("after 30s: %q", got)
	}
	if got := r.admit(a, Limits{}, 2, now.Add(31e9)); got != "rate" {
		t.Fatalf("at 31s: %q", got)
	}
	if r.Running() != 3 {
		t.Fatalf("running %d, want 3", r.Running())
	}
}

func testAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

func testNow() time.Time { return time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC) }
