package bench

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"runtime/debug"
	"testing"
	"time"

	"github.com/funtun/funtun/funnel"
	_ "github.com/funtun/funtun/pieces/frame"
	_ "github.com/funtun/funtun/pieces/pcap"
	_ "github.com/funtun/funtun/pieces/shape"
)

// The datagram chain under test: a capture, a limiter that never bites and
// the framing onto a stream, ending in an in-memory sink so that only the
// pieces' own cost is measured.
const dgramChain = "pcap file=/dev/null | shape rate=10G | frame | bench-sink"

// frameSize is an RTP-like voice or video datagram.
const frameSize = 1200

func init() {
	funnel.Register(funnel.PieceInfo{
		Name:    "bench-sink",
		Summary: "benchmarks only: a network that swallows writes and replays framed datagrams",
		New:     func(*funnel.Params, funnel.Builder) (funnel.Piece, error) { return benchSink{}, nil },
	})
}

type benchSink struct{}

func (benchSink) Curves() []funnel.Curve {
	return []funnel.Curve{{App: funnel.Stream, Net: funnel.Kernel}, {App: funnel.Dgram, Net: funnel.Kernel}}
}

func (benchSink) DialStream(context.Context, *funnel.Flow, funnel.Next) (net.Conn, error) {
	return newSinkConn(), nil
}

func (benchSink) DialDgram(context.Context, *funnel.Flow, funnel.Next) (funnel.DgramConn, error) {
	return sinkDgram{}, nil
}

// sinkConn discards what is written and reads back an endless stream of
// length-prefixed datagrams, so that both directions of frame have work.
type sinkConn struct {
	replay []byte
	pos    int
}

func newSinkConn() *sinkConn {
	msg := make([]byte, 4+frameSize)
	binary.BigEndian.PutUint32(msg, frameSize)
	var replay []byte
	for range 16 {
		replay = append(replay, msg...)
	}
	return &sinkConn{replay: replay}
}

var (
	sinkLocal  = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
	sinkRemote = &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9}
)

func (c *sinkConn) Read(p []byte) (int, error) {
	n := copy(p, c.replay[c.pos:])
	c.pos = (c.pos + n) % len(c.replay)
	return n, nil
}
func (c *sinkConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *sinkConn) Close() error                     { return nil }
func (c *sinkConn) LocalAddr() net.Addr              { return sinkLocal }
func (c *sinkConn) RemoteAddr() net.Addr             { return sinkRemote }
func (c *sinkConn) SetDeadline(time.Time) error      { return nil }
func (c *sinkConn) SetReadDeadline(time.Time) error  { return nil }
func (c *sinkConn) SetWriteDeadline(time.Time) error { return nil }

type sinkDgram struct{}

func (sinkDgram) WriteFrame(fr *funnel.Frame) error { fr.Release(); return nil }
func (sinkDgram) ReadFrame() (*funnel.Frame, error) { return nil, io.EOF }
func (sinkDgram) SetReadDeadline(time.Time) error   { return nil }
func (sinkDgram) Close() error                      { return nil }

func dialChain(tb testing.TB) funnel.DgramConn {
	tb.Helper()
	set, err := funnel.CompileSet([]funnel.Source{{Name: "bench", Origin: "bench", Text: dgramChain}})
	if err != nil {
		tb.Fatal(err)
	}
	if err := set.Open(); err != nil {
		tb.Fatal(err)
	}
	pl, _ := set.Profile("bench")
	f := funnel.NewFlow("bench", funnel.UDP, funnel.MakeAddr("127.0.0.1", 9))
	f.Source = &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000}
	dc, err := pl.DialDgram(context.Background(), f)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		dc.Close()
		set.Retire()
	})
	return dc
}

func writeOne(dc funnel.DgramConn) error {
	fr := funnel.NewFrame()
	fr.SetLen(frameSize)
	return dc.WriteFrame(fr)
}

func readOne(dc funnel.DgramConn) error {
	fr, err := dc.ReadFrame()
	if err != nil {
		return err
	}
	fr.Release()
	return nil
}

// BenchmarkDgramChain is the cost of one datagram through three pieces,
// each way; it must show 0 allocs/op.
func BenchmarkDgramChain(b *testing.B) {
	for _, way := range []struct {
		name string
		op   func(funnel.DgramConn) error
	}{{"up", writeOne}, {"down", readOne}} {
		b.Run(way.name, func(b *testing.B) {
			dc := dialChain(b)
			b.ReportAllocs()
			b.SetBytes(frameSize)
			for b.Loop() {
				if err := way.op(dc); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/frame")
		})
	}
}

func raceEnabled() bool {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "-race" {
				return s.Value == "true"
			}
		}
	}
	return false
}

// TestDgramChainAllocatesNothing holds the chain to the real-time rule:
// steady-state datagram forwarding allocates nothing per frame.
func TestDgramChainAllocatesNothing(t *testing.T) {
	if raceEnabled() {
		t.Skip("the race detector makes sync.Pool drop frames at random; run without -race")
	}
	dc := dialChain(t)
	for _, err := range []error{writeOne(dc), readOne(dc)} {
		if err != nil {
			t.Fatal(err)
		}
	}
	allocs := testing.AllocsPerRun(1000, func() {
		if err := writeOne(dc); err != nil {
			t.Fatal(err)
		}
		if err := readOne(dc); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per datagram up and down through %q; want 0", allocs, dgramChain)
	}
}
