package shape

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/testutil"
	_ "github.com/funtun/funtun/pieces/direct"
)

// The limiter checks below are lower bounds on time only: a slow machine
// makes transfers slower, never faster, so they hold under any load. With
// rate=100k (102400 B/s) and the default burst of 64k, 200 KiB needs at
// least (200k-64k)/100k = 1.33 s; the tests ask for 1.2 s.
const (
	testRate     = "100k"
	testTransfer = 200 << 10
	minDuration  = 1200 * time.Millisecond
)

func compile(t *testing.T, text string) *funnel.Pipeline {
	t.Helper()
	set, err := funnel.CompileSet([]funnel.Source{{Name: "p", Origin: "test.profile", Text: text}})
	if err != nil {
		t.Fatal(err)
	}
	pl, _ := set.Profile("p")
	return pl
}

func dialStream(t *testing.T, pl *funnel.Pipeline, addr net.Addr) net.Conn {
	t.Helper()
	c, err := pl.DialStream(context.Background(), funnel.NewFlow("test", funnel.TCP, funnel.AddrFromNet(addr)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// countingSink accepts TCP connections, reads each to its end and reports
// how many bytes it got.
func countingSink(t *testing.T) (net.Addr, chan int64) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	got := make(chan int64, 10)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetReadDeadline(time.Now().Add(60 * time.Second))
				n, _ := io.Copy(io.Discard, c)
				got <- n
			}()
		}
	}()
	return l.Addr(), got
}

func upload(t *testing.T, c net.Conn, n int) {
	t.Helper()
	buf := make([]byte, 16<<10)
	for sent := 0; sent < n; sent += len(buf) {
		if _, err := c.Write(buf[:min(len(buf), n-sent)]); err != nil {
			t.Errorf("write: %v", err)
			return
		}
	}
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Errorf("close write: %v", err)
	}
}

func waitCount(t *testing.T, got chan int64, want int64) {
	t.Helper()
	select {
	case n := <-got:
		if n != want {
			t.Fatalf("the server got %d bytes, want %d", n, want)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the transfer did not end within a minute")
	}
}

func TestRateLimitsUpload(t *testing.T) {
	sink, got := countingSink(t)
	pl := compile(t, "shape rate="+testRate)
	start := time.Now()
	c := dialStream(t, pl, sink)
	upload(t, c, testTransfer)
	waitCount(t, got, testTransfer)
	if took := time.Since(start); took < minDuration {
		t.Fatalf("%d bytes at rate=%s arrived in %v; the limiter lets more through than rate+burst", testTransfer, testRate, took)
	}
}

func TestRateLimitsDownload(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.Write(make([]byte, testTransfer))
	}()
	pl := compile(t, "shape rate="+testRate)
	start := time.Now()
	c := dialStream(t, pl, l.Addr())
	c.SetReadDeadline(time.Now().Add(60 * time.Second))
	n, err := io.Copy(io.Discard, c)
	if err != nil || n != testTransfer {
		t.Fatalf("read %d bytes, %v; want %d", n, err, testTransfer)
	}
	if took := time.Since(start); took < minDuration {
		t.Fatalf("%d bytes at rate=%s came in %v; the limiter lets more through than rate+burst", testTransfer, testRate, took)
	}
}

func TestOneBucketPerProfile(t *testing.T) {
	sink, got := countingSink(t)
	pl := compile(t, "shape rate="+testRate+" per=profile")
	start := time.Now()
	var wg sync.WaitGroup
	for range 2 {
		c := dialStream(t, pl, sink)
		wg.Add(1)
		go func() { defer wg.Done(); upload(t, c, testTransfer/2) }()
	}
	wg.Wait()
	waitCount(t, got, testTransfer/2)
	waitCount(t, got, testTransfer/2)
	if took := time.Since(start); took < minDuration {
		t.Fatalf("two flows of %d bytes sharing rate=%s ended in %v; the profile's bucket is not shared", testTransfer/2, testRate, took)
	}
}

func TestDgramRate(t *testing.T) {
	echo := testutil.UDPEchoServer(t)
	pl := compile(t, "shape rate="+testRate)
	dc, err := pl.DialDgram(context.Background(), funnel.NewFlow("test", funnel.UDP, funnel.AddrFromNet(echo)))
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	var echoed int
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		for {
			dc.SetReadDeadline(time.Now().Add(5 * time.Second))
			fr, err := dc.ReadFrame()
			if err != nil {
				return
			}
			echoed += fr.Len()
			fr.Release()
		}
	}()
	const size = 1024
	start := time.Now()
	for range testTransfer / size {
		fr := funnel.NewFrame()
		fr.SetLen(size)
		if err := dc.WriteFrame(fr); err != nil {
			t.Fatal(err)
		}
	}
	if took := time.Since(start); took < minDuration {
		t.Fatalf("%d bytes of datagrams at rate=%s went out in %v; the limiter lets more through than rate+burst", testTransfer, testRate, took)
	}
	dc.Close()
	<-readDone
	if echoed == 0 {
		t.Fatal("no datagram came back from the echo server")
	}
}

func TestStreamDelay(t *testing.T) {
	echo := testutil.EchoServer(t)
	pl := compile(t, "shape delay=200ms")
	c := dialStream(t, pl, echo)
	c.SetDeadline(time.Now().Add(30 * time.Second))
	start := time.Now()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	var b [4]byte
	if _, err := io.ReadFull(c, b[:]); err != nil || string(b[:]) != "ping" {
		t.Fatalf("echo %q, %v", b, err)
	}
	if rtt := time.Since(start); rtt < 400*time.Millisecond {
		t.Fatalf("round trip %v with delay=200ms each way; want at least 400ms", rtt)
	}
	// Order and content survive the queues, and the half-close comes
	// after the bytes before it.
	payload := make([]byte, 300<<10)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	go func() {
		c.Write(payload)
		c.(interface{ CloseWrite() error }).CloseWrite()
	}()
	back, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(back, payload) {
		t.Fatalf("echo of %d bytes: got %d, %v", len(payload), len(back), err)
	}
}

func TestDgramDelayKeepsOrder(t *testing.T) {
	echo := testutil.UDPEchoServer(t)
	pl := compile(t, "shape delay=100ms")
	dc, err := pl.DialDgram(context.Background(), funnel.NewFlow("test", funnel.UDP, funnel.AddrFromNet(echo)))
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	const count = 50
	start := time.Now()
	for i := range count {
		fr := funnel.NewFrame()
		binary.BigEndian.PutUint32(fr.Room(), uint32(i))
		fr.SetLen(100)
		if err := dc.WriteFrame(fr); err != nil {
			t.Fatal(err)
		}
	}
	for i := range count {
		dc.SetReadDeadline(time.Now().Add(10 * time.Second))
		fr, err := dc.ReadFrame()
		if err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
		if i == 0 {
			if rtt := time.Since(start); rtt < 200*time.Millisecond {
				t.Fatalf("first echo after %v with delay=100ms each way; want at least 200ms", rtt)
			}
		}
		if got := binary.BigEndian.Uint32(fr.Bytes()); got != uint32(i) {
			t.Fatalf("datagram %d came back as number %d: the delay queue reorders", i, got)
		}
		fr.Release()
	}
}

func TestDelayedReadHonoursDeadline(t *testing.T) {
	echo := testutil.UDPEchoServer(t)
	pl := compile(t, "shape delay=50ms")
	dc, err := pl.DialDgram(context.Background(), funnel.NewFlow("test", funnel.UDP, funnel.AddrFromNet(echo)))
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	dc.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	done := make(chan error, 1)
	go func() {
		fr, err := dc.ReadFrame()
		if fr != nil {
			fr.Release()
		}
		done <- err
	}()
	select {
	case err := <-done:
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("ReadFrame with nothing to read: %v; want a timeout", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ReadFrame ignored its deadline")
	}
}

func TestCloseInterruptsAWait(t *testing.T) {
	sink, _ := countingSink(t)
	pl := compile(t, "shape rate=1k burst=1k")
	c := dialStream(t, pl, sink)
	done := make(chan error, 1)
	go func() {
		_, err := c.Write(make([]byte, 1<<20)) // 1024 s at 1 KiB/s
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	c.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("a write cut short by Close reported no error")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not end a write waiting for tokens")
	}
}

func TestIdleShapeStaysOutOfTheWay(t *testing.T) {
	echo := testutil.EchoServer(t)
	pl := compile(t, "shape")
	c := dialStream(t, pl, echo)
	if _, ok := c.(*net.TCPConn); !ok {
		t.Fatalf("shape without rate or delay gave %T; want the *net.TCPConn itself so the relay can splice", c)
	}
}

func TestBadParameters(t *testing.T) {
	for text, want := range map[string]string{
		"shape rate=fast":                   "test.profile:1:12",
		"shape per=host rate=1M":            "test.profile:1:11",
		"shape burst=64k":                   "test.profile:1:13",
		"shape rate=1M burst=10":            "test.profile:1:21",
		"shape delay=-5ms":                  "test.profile:1:13",
		"shape delay=1s queue=0":            "test.profile:1:22",
		"shape rate=1M speed=2M":            `no parameter "speed"`,
		"shape rate=1M per=flow delay=soon": "test.profile:1:30",
	} {
		_, err := funnel.CompileSet([]funnel.Source{{Name: "p", Origin: "test.profile", Text: text}})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v; want an error with %q", text, err, want)
		}
	}
}

// sinkDgram swallows frames and answers reads with one fixed datagram.
type sinkDgram struct{}

func (sinkDgram) WriteFrame(fr *funnel.Frame) error { fr.Release(); return nil }
func (sinkDgram) ReadFrame() (*funnel.Frame, error) {
	fr := funnel.NewFrame()
	fr.SetLen(200)
	return fr, nil
}
func (sinkDgram) SetReadDeadline(time.Time) error { return nil }
func (sinkDgram) Close() error                    { return nil }

func TestRateLimitedFramesAllocateNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under the race detector; run without -race")
	}
	// A rate the test never reaches keeps the bucket busy without sleeping;
	// the second case waits on the reused timer for every frame.
	for _, rate := range []int64{10 << 30, 2 << 20} {
		d := newDgramConn(sinkDgram{}, newBucket(rate, 64<<10), newBucket(rate, 64<<10), 0, 1024, nil)
		allocs := testing.AllocsPerRun(500, func() {
			fr := funnel.NewFrame()
			fr.SetLen(1000)
			d.WriteFrame(fr)
			in, _ := d.ReadFrame()
			in.Release()
		})
		d.Close()
		if allocs != 0 {
			t.Fatalf("rate=%d: %v allocations per datagram; want 0", rate, allocs)
		}
	}
}
