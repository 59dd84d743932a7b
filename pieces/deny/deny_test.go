package deny_test

import (
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/testutil"
	_ "github.com/funtun/funtun/pieces/deny"
	_ "github.com/funtun/funtun/pieces/direct"
)

func chain(t *testing.T, text string) (*funnel.Pipeline, error) {
	t.Helper()
	set, err := funnel.CompileSet([]funnel.Source{{Name: "p", Origin: "p.profile", Text: text}})
	if err != nil {
		return nil, err
	}
	pl, _ := set.Profile("p")
	return pl, nil
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

func tcpPort(a net.Addr) string { return strconv.Itoa(a.(*net.TCPAddr).Port) }

func dial(t *testing.T, pl *funnel.Pipeline, host string, port int) (net.Conn, error) {
	t.Helper()
	return pl.DialStream(ctx(t), funnel.NewFlow("test", funnel.TCP, funnel.MakeAddr(host, uint16(port))))
}

func wantDenied(t *testing.T, err error, reason string) {
	t.Helper()
	if err == nil {
		t.Fatal("flow went through, want it denied")
	}
	if k := funnel.Classify(err); k != funnel.KindDenied {
		t.Fatalf("error %q is %v, want denied", err, k)
	}
	if k := funnel.Classify(err); k.SOCKSReply() != 2 || k.Errno().Error() != "permission denied" {
		t.Errorf("denied maps to SOCKS %d / %v, want 2 / EACCES", k.SOCKSReply(), k.Errno())
	}
	if !strings.Contains(err.Error(), reason) {
		t.Errorf("error %q does not say %q", err, reason)
	}
}

func TestDeniesByPortPassesTheRest(t *testing.T) {
	open, closed := testutil.EchoServer(t), testutil.EchoServer(t)
	pl, err := chain(t, "deny to=port:"+tcpPort(closed)+" reason='no such service here'")
	if err != nil {
		t.Fatal(err)
	}
	c, err := dial(t, pl, "127.0.0.1", open.(*net.TCPAddr).Port)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, ok := c.(*net.TCPConn); !ok {
		t.Errorf("deny handed back a %T, want the *net.TCPConn direct made (splice fast path)", c)
	}
	testutil.EchoOnce(t, c, "allowed\n")

	_, err = dial(t, pl, "127.0.0.1", closed.(*net.TCPAddr).Port)
	wantDenied(t, err, "denied by profile p: tcp 127.0.0.1:"+tcpPort(closed)+": no such service here (deny at p.profile:1:1)")
}

func TestRepeatedAndListedRules(t *testing.T) {
	echo := testutil.EchoServer(t)
	port := echo.(*net.TCPAddr).Port
	pl, err := chain(t, "deny to=::1 to=127.0.0.0/8,.blocked.test to=name except=127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	_, err = dial(t, pl, "::1", port)
	wantDenied(t, err, "destination matches ::1")
	_, err = dial(t, pl, "www.blocked.test", port)
	wantDenied(t, err, "destination matches .blocked.test")
	_, err = dial(t, pl, "localhost", port)
	wantDenied(t, err, "destination matches name")
	_, err = dial(t, pl, "127.0.0.2", port)
	wantDenied(t, err, "destination matches 127.0.0.0/8")

	c, err := dial(t, pl, "127.0.0.1", port)
	if err != nil {
		t.Fatal(err)
	}
	testutil.EchoOnce(t, c, "allowed\n")
	c.Close()
}

func TestAllWithExcept(t *testing.T) {
	echo := testutil.EchoServer(t)
	uecho := testutil.UDPEchoServer(t)
	pl, err := chain(t, "deny all=true except=port:"+tcpPort(echo)+" except=port:"+strconv.Itoa(uecho.Port))
	if err != nil {
		t.Fatal(err)
	}
	c, err := dial(t, pl, "127.0.0.1", echo.(*net.TCPAddr).Port)
	if err != nil {
		t.Fatal(err)
	}
	testutil.EchoOnce(t, c, "allowed\n")
	c.Close()
	_, err = dial(t, pl, "127.0.0.1", 9)
	wantDenied(t, err, "all flows are refused")

	dc, err := pl.DialDgram(ctx(t), funnel.NewFlow("test", funnel.UDP, funnel.MakeAddr("127.0.0.1", uint16(uecho.Port))))
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	if _, ok := dc.(*funnel.UDPConn); !ok {
		t.Errorf("deny handed back a %T, want direct's *funnel.UDPConn", dc)
	}
	fr := funnel.NewFrame()
	fr.SetLen(copy(fr.Room(), "ping"))
	if err := dc.WriteFrame(fr); err != nil {
		t.Fatal(err)
	}
	dc.SetReadDeadline(time.Now().Add(5 * time.Second))
	back, err := dc.ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	if string(back.Bytes()) != "ping" {
		t.Errorf("datagram came back as %q", back.Bytes())
	}
	back.Release()

	_, err = pl.DialDgram(ctx(t), funnel.NewFlow("test", funnel.UDP, funnel.MakeAddr("127.0.0.1", 53)))
	wantDenied(t, err, "udp 127.0.0.1:53")
}

func TestCompileErrors(t *testing.T) {
	tests := []struct{ text, want string }{
		{"deny", `p.profile:1:1: piece "deny": refuses nothing`},
		{"deny all=false", `p.profile:1:1: piece "deny": refuses nothing`},
		{"deny to=10.0.0.0/40", `p.profile:1:9: piece "deny": to: "10.0.0.0/40" is not a CIDR`},
		{"deny to=port:25,port:30-20", `p.profile:1:17: piece "deny": to: "port:30-20": port range 30-20 runs backwards`},
		{"deny to=ipv4 except=port:x", `p.profile:1:21: piece "deny": except: "port:x"`},
		{"deny all=maybe", `p.profile:1:10: piece "deny": all: "maybe" is not true or false`},
		{"deny all=true reasn=typo", `p.profile:1:15: piece "deny" has no parameter "reasn"`},
	}
	for _, tc := range tests {
		_, err := chain(t, tc.text)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("compiling %q: got %v, want an error containing %q", tc.text, err, tc.want)
		}
	}
}
