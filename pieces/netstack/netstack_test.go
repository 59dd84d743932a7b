package netstack_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/testutil"
	_ "github.com/funtun/funtun/pieces/direct"
	_ "github.com/funtun/funtun/pieces/netstack"
	_ "github.com/funtun/funtun/pieces/sixbed4"
)

// Flows that are not for the stack (IPv4 addresses, names with an IPv4
// address) go to the ipv4= profile and never touch the tunnel: the router
// here does not exist, and they still work.
func TestIPv4FlowsGoToTheOtherProfile(t *testing.T) {
	set, err := funnel.CompileSet([]funnel.Source{
		{Name: "direct", Origin: "direct.profile", Text: "direct"},
		{Name: "p", Origin: "p.profile", Text: "netstack ipv4=direct | 6bed4 router=127.0.0.1:9 timeout=1s"},
		{Name: "v6only", Origin: "v6only.profile", Text: "netstack | 6bed4 router=127.0.0.1:9 timeout=1s"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := set.Open(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(set.Retire)
	p, _ := set.Profile("p")
	v6only, _ := set.Profile("v6only")
	echo := testutil.EchoServer(t).(*net.TCPAddr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, dest := range []funnel.Addr{funnel.MakeAddr("127.0.0.1", uint16(echo.Port)), funnel.MakeAddr("localhost", uint16(echo.Port))} {
		c, err := p.DialStream(ctx, funnel.NewFlow("test", funnel.TCP, dest))
		if err != nil {
			t.Fatalf("%s: %v", dest, err)
		}
		if _, ok := c.(*net.TCPConn); !ok {
			t.Errorf("%s: got a %T, want the kernel connection direct made", dest, c)
		}
		testutil.EchoOnce(t, c, "not through the stack\n")
		c.Close()
	}
	_, err = v6only.DialStream(ctx, funnel.NewFlow("test", funnel.TCP, funnel.MakeAddr("127.0.0.1", uint16(echo.Port))))
	testutil.WantKind(t, err, funnel.KindAddrNotSupported, "carries IPv6 only")
	// An IPv6 destination enters the stack, and the silent router fails
	// it as unreachable.
	_, err = p.DialStream(ctx, funnel.NewFlow("test", funnel.TCP, funnel.MakeAddr("2001:db8::1", 80)))
	testutil.WantKind(t, err, funnel.KindNetUnreachable, "did not answer")
}
