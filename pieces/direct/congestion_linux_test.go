package direct_test

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/testutil"
)

// congestion=NAME sets the TCP congestion control of the sockets direct
// dials: on the general path, read back with getsockopt, and on the
// engine's fast path (a forwarder), seen from outside with ss.
func TestDirectCongestion(t *testing.T) {
	echo := testutil.EchoServer(t)
	pl := testutil.Pipeline(t, "direct congestion=reno")
	if pol, ok := pl.KernelDial(); !ok || pol.Congestion != "reno" || pol.Plain {
		t.Fatalf("KernelDial = %+v, %v: the fast path must set it as the general path does", pol, ok)
	}
	c, err := pl.DialStream(context.Background(), funnel.NewFlow("t", funnel.TCP, funnel.AddrFromNet(echo)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rc, _ := c.(*net.TCPConn).SyscallConn()
	var cc string
	rc.Control(func(fd uintptr) { cc, err = unix.GetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION) })
	if err != nil || cc != "reno" {
		t.Fatalf("TCP_CONGESTION of the dialed socket: %q, %v; want reno", cc, err)
	}

	ss := testutil.NeedTool(t, "ss")
	port := testutil.FreePort(t)
	listen := fmt.Sprintf("127.0.0.1:%d", port)
	testutil.StartDaemon(t, testutil.Funtun(t), "forward", "--listen", listen, "--to", echo.String(), "chain=direct congestion=reno")
	testutil.WaitListen(t, listen)
	client, err := net.Dial("tcp", listen)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	testutil.EchoOnce(t, client, "paced or not")
	// The forwarder's upstream connection is the one toward the echo
	// server that is not the test's own (that one is our general-path c).
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, _ := exec.Command(ss, "-tinH", "state", "established", "dst", echo.String()).CombinedOutput()
		if n := strings.Count(string(out), " reno "); n >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ss shows no second reno socket toward %s:\n%s", echo, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestDirectCongestionUnknown(t *testing.T) {
	_, err := testutil.CompileChain("direct congestion=nosuchcc")
	if err == nil || !strings.Contains(err.Error(), "not available here") || !strings.Contains(err.Error(), "reno") {
		t.Fatalf("an unknown congestion control: %v, want an error listing the available ones", err)
	}
}
