package direct_test

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/testutil"
	_ "github.com/funtun/funtun/pieces/direct"
)

func TestDirectStreamIsKernelSocket(t *testing.T) {
	echo := testutil.EchoServer(t)
	pl := testutil.Pipeline(t, "direct source=127.0.0.1 timeout=2s")
	c, err := pl.DialStream(context.Background(), funnel.NewFlow("t", funnel.TCP, funnel.AddrFromNet(echo)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, ok := c.(*net.TCPConn); !ok {
		t.Fatalf("direct returned %T; the relay's splice path needs *net.TCPConn", c)
	}
	c.Write([]byte("ping"))
	buf := make([]byte, 4)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo: %q %v", buf, err)
	}
}

func TestDirectErrors(t *testing.T) {
	pl := testutil.Pipeline(t, "direct")
	dead := testutil.FreePort(t)
	_, err := pl.DialStream(context.Background(), funnel.NewFlow("t", funnel.TCP, funnel.MakeAddr("127.0.0.1", uint16(dead))))
	if k := funnel.Classify(err); k != funnel.KindRefused {
		t.Errorf("refused port: %v (%v)", k, err)
	}
	_, err = pl.DialStream(context.Background(), funnel.NewFlow("t", funnel.TCP, funnel.MakeAddr("no-such-host.invalid", 80)))
	if k := funnel.Classify(err); k != funnel.KindHostUnreachable {
		t.Errorf("unknown name: %v (%v)", k, err)
	}
	for text, want := range map[string]string{
		"direct source=nowhere": `p.profile:1:15: piece "direct": source: "nowhere" is not an IP address`,
		"direct timeout=-1s":    `p.profile:1:16: piece "direct": timeout: "-1s" is not a duration`,
	} {
		_, err := funnel.CompileSet([]funnel.Source{{Name: "p", Origin: "p.profile", Text: text}})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %s", text, err, want)
		}
	}
}

func TestDirectUDP(t *testing.T) {
	echo := testutil.UDPEchoServer(t)
	pl := testutil.Pipeline(t, "direct")
	dc, err := pl.DialDgram(context.Background(), funnel.NewFlow("t", funnel.UDP, funnel.AddrFromNet(echo)))
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	fr := funnel.NewFrame()
	fr.SetLen(copy(fr.Room(), "datagram"))
	if err := dc.WriteFrame(fr); err != nil {
		t.Fatal(err)
	}
	dc.SetReadDeadline(time.Now().Add(5 * time.Second))
	back, err := dc.ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	defer back.Release()
	if string(back.Bytes()) != "datagram" || back.Src.Port() != uint16(echo.Port) {
		t.Errorf("got %q from %v", back.Bytes(), back.Src)
	}
}

func TestDirectHandoffResolves(t *testing.T) {
	pl := testutil.Pipeline(t, "direct")
	f := funnel.NewFlow("t", funnel.TCP, funnel.MakeAddr("localhost", 8080))
	f.Handoff = true
	c, err := pl.DialStream(context.Background(), f)
	var h *funnel.HandoffAnswer
	if c != nil || !errors.As(err, &h) || !h.Addr.Addr().IsLoopback() || h.Addr.Port() != 8080 {
		t.Fatalf("handoff: %#v %v", c, err)
	}
}
