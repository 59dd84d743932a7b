package testutil

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/funtun/funtun/funnel"
)

// CompileChain compiles chain text as a profile named "p" and makes the
// set live (its pieces open), as a catalog would.
func CompileChain(chain string) (*funnel.Pipeline, error) {
	set, err := funnel.CompileSet([]funnel.Source{{Name: "p", Origin: "test", Text: chain}})
	if err != nil {
		return nil, err
	}
	if err := set.Open(); err != nil {
		return nil, err
	}
	pl, _ := set.Profile("p")
	return pl, nil
}

// Pipeline compiles chain text or fails the test.
func Pipeline(t testing.TB, chain string) *funnel.Pipeline {
	t.Helper()
	pl, err := CompileChain(chain)
	if err != nil {
		t.Fatalf("compile %q: %v", chain, err)
	}
	return pl
}

// WantKind fails the test unless err is of kind and its text holds inMsg.
func WantKind(t testing.TB, err error, kind funnel.Kind, inMsg string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error; want %s", kind)
	}
	t.Logf("error as expected: %v", err)
	if got := funnel.Classify(err); got != kind {
		t.Fatalf("error %q is %s, want %s", err, got, kind)
	}
	if !strings.Contains(err.Error(), inMsg) {
		t.Fatalf("error %q does not say %q", err, inMsg)
	}
}

// StartMicrosocks runs microsocks on a free loopback port with extra
// arguments (-u USER -P PASS) and returns its address.
func StartMicrosocks(t testing.TB, args ...string) string {
	t.Helper()
	bin := NeedTool(t, "microsocks")
	port := FreePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	StartDaemon(t, bin, append([]string{"-i", "127.0.0.1", "-p", strconv.Itoa(port)}, args...)...)
	WaitListen(t, addr)
	return addr
}

// EchoOnce writes msg on c and fails the test unless the same bytes come
// back within 5 seconds.
func EchoOnce(t testing.TB, c net.Conn, msg string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, []byte(msg)) {
		t.Fatalf("echo gave %q, want %q", got, msg)
	}
}

// FlowPath names the engine function on the caller's stack that is ending
// a flow, for a log handler to record which path served it: "listened"
// (an event loop ended a flow it accepted), "adopted" (a relay loop ended
// a relay it took over), "goroutines" (the goroutine relay), or "".
func FlowPath() string {
	pcs := make([]uintptr, 128)
	frames := runtime.CallersFrames(pcs[:runtime.Callers(2, pcs)])
	for {
		f, more := frames.Next()
		switch {
		case strings.HasSuffix(f.Function, "funnel.(*eventLoop).finishListened"):
			return "listened"
		case strings.HasSuffix(f.Function, "funnel.(*eventLoop).finishAdopted"):
			return "adopted"
		case strings.Contains(f.Function, "funnel.(*asyncRelay)."):
			return "goroutines"
		}
		if !more {
			return ""
		}
	}
}
