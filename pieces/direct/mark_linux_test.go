package direct_test

import (
	"context"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/testutil"
)

// soMark reads the SO_MARK the kernel holds for c's socket.
func soMark(t *testing.T, c syscall.Conn) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var mark int
	var gerr error
	rc.Control(func(fd uintptr) { mark, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK) })
	if gerr != nil {
		t.Fatal(gerr)
	}
	return mark
}

func needNetAdmin(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("SO_MARK needs root (CAP_NET_ADMIN); the CI runs the tests as root")
		}
		t.Skip("SO_MARK needs root (CAP_NET_ADMIN)")
	}
}

func TestDirectMarkStreamAndDgram(t *testing.T) {
	needNetAdmin(t)
	t.Setenv("FUNTUN_MARK", "")
	echo := testutil.EchoServer(t)
	pl := testutil.Pipeline(t, "direct mark=0x66756e")
	pol, ok := pl.KernelDial()
	if !ok || pol.Mark != 0x66756e || pol.Plain {
		t.Fatalf("KernelDial = %+v, %v: the fast path must mark as the general path does", pol, ok)
	}
	c, err := pl.DialStream(context.Background(), funnel.NewFlow("t", funnel.TCP, funnel.AddrFromNet(echo)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if m := soMark(t, c.(*net.TCPConn)); m != 0x66756e {
		t.Errorf("TCP socket mark %#x, want 0x66756e", m)
	}
	uecho := testutil.UDPEchoServer(t)
	dc, err := pl.DialDgram(context.Background(), funnel.NewFlow("t", funnel.UDP, funnel.AddrFromNet(uecho)))
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	if m := soMark(t, dc.(*funnel.UDPConn).UDPConn); m != 0x66756e {
		t.Errorf("UDP socket mark %#x, want 0x66756e", m)
	}
	// An unmarked socket reads 0: the check can tell the difference.
	raw, err := net.Dial("udp", uecho.String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if m := soMark(t, raw.(*net.UDPConn)); m != 0 {
		t.Errorf("an unmarked socket reads mark %#x", m)
	}
}

func TestDirectMarkFromEnvironment(t *testing.T) {
	needNetAdmin(t)
	echo := testutil.EchoServer(t)
	t.Setenv("FUNTUN_MARK", "4242")
	pl := testutil.Pipeline(t, "direct")
	if pol, _ := pl.KernelDial(); pol.Mark != 4242 || pol.Plain {
		t.Fatalf("FUNTUN_MARK=4242: policy %+v", pol)
	}
	c, err := pl.DialStream(context.Background(), funnel.NewFlow("t", funnel.TCP, funnel.AddrFromNet(echo)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if m := soMark(t, c.(*net.TCPConn)); m != 4242 {
		t.Errorf("mark %d, want 4242 from FUNTUN_MARK", m)
	}
	// mark=0 in the profile wins over the environment.
	pl0 := testutil.Pipeline(t, "direct mark=0")
	if pol, _ := pl0.KernelDial(); pol.Mark != 0 {
		t.Errorf("mark=0 with FUNTUN_MARK=4242: policy mark %d", pol.Mark)
	}
	c0, err := pl0.DialStream(context.Background(), funnel.NewFlow("t", funnel.TCP, funnel.AddrFromNet(echo)))
	if err != nil {
		t.Fatal(err)
	}
	defer c0.Close()
	if m := soMark(t, c0.(*net.TCPConn)); m != 0 {
		t.Errorf("mark=0: socket mark %d", m)
	}
}

func TestDirectMarkErrors(t *testing.T) {
	t.Setenv("FUNTUN_MARK", "")
	for text, want := range map[string]string{
		"direct mark=fun":         `p.profile:1:13: piece "direct": mark: "fun" is not a mark`,
		"direct mark=0x100000000": `p.profile:1:13: piece "direct": mark: "0x100000000" is not a mark`,
	} {
		_, err := funnel.CompileSet([]funnel.Source{{Name: "p", Origin: "p.profile", Text: text}})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %s", text, err, want)
		}
	}
	t.Setenv("FUNTUN_MARK", "lots")
	_, err := funnel.CompileSet([]funnel.Source{{Name: "p", Origin: "p.profile", Text: "direct"}})
	if err == nil || !strings.Contains(err.Error(), `FUNTUN_MARK="lots" in the environment is not a mark`) {
		t.Errorf("bad FUNTUN_MARK: %v", err)
	}
}
