package pcap

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/testutil"
	_ "github.com/funtun/funtun/pieces/direct"
)

// compile compiles text as profile p and makes it live, as a Catalog
// would. closeAll retires the set: with no flow holding it, its pieces
// close at once, so the file is complete before tshark reads it.
func compile(t *testing.T, text string) (*funnel.Pipeline, func()) {
	t.Helper()
	set, err := funnel.CompileSet([]funnel.Source{{Name: "p", Origin: "test.profile", Text: text}})
	if err != nil {
		t.Fatal(err)
	}
	if err := set.Open(); err != nil {
		t.Fatal(err)
	}
	pl, _ := set.Profile("p")
	return pl, set.Retire
}

// pattern is recognisable bytes, different for each seed.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*13) + byte(i>>8)
	}
	return b
}

// tcpFlow plays a TCP hook with one real client connection: it relays the
// client through the pipeline to dest, sends out, reads the echo, and
// returns the client's address once the flow has ended completely.
func tcpFlow(t *testing.T, pl *funnel.Pipeline, dest funnel.Addr, out []byte) net.Addr {
	t.Helper()
	network, loop := "tcp4", "127.0.0.1:0"
	if dest.IP.Is6() {
		network, loop = "tcp6", "[::1]:0"
	}
	l, err := net.Listen(network, loop)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	relayDone := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			relayDone <- err
			return
		}
		f := funnel.NewFlow("test", funnel.TCP, dest)
		f.Source = c.RemoteAddr()
		up, err := pl.DialStream(context.Background(), f)
		if err != nil {
			c.Close()
			relayDone <- err
			return
		}
		relayDone <- funnel.Relay(c, up, f.Up, f.Down)
	}()
	c, err := net.Dial(network, l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	go func() {
		c.Write(out)
		c.(*net.TCPConn).CloseWrite()
	}()
	back, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("reading the echo: %v", err)
	}
	if !bytes.Equal(back, out) {
		t.Fatalf("echo: got %d bytes, want %d", len(back), len(out))
	}
	select {
	case err := <-relayDone:
		if err != nil {
			t.Fatalf("relay: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the relay did not end")
	}
	return c.LocalAddr()
}

func tshark(t *testing.T, args ...string) string {
	t.Helper()
	bin := testutil.NeedTool(t, "tshark")
	cmd := exec.Command(bin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("tshark %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}

// packet is one line of tshark's field output.
type packet struct {
	src, sport, dst, dport string
	payload                []byte
}

func readPackets(t *testing.T, file, proto string) []packet {
	t.Helper()
	ipField := "ip"
	out := tshark(t, "-r", file, "-T", "fields", "-E", "separator=;",
		"-e", ipField+".src", "-e", "ipv6.src", "-e", proto+".srcport",
		"-e", ipField+".dst", "-e", "ipv6.dst", "-e", proto+".dstport", "-e", proto+".payload")
	var pkts []packet
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		f := strings.Split(line, ";")
		if len(f) != 7 {
			t.Fatalf("tshark line %q: want 7 fields", line)
		}
		p, err := hex.DecodeString(f[6])
		if err != nil {
			t.Fatalf("payload %q: %v", f[6], err)
		}
		pkts = append(pkts, packet{src: f[0] + f[1], sport: f[2], dst: f[3] + f[4], dport: f[5], payload: p})
	}
	return pkts
}

// checkClean fails on anything tshark finds wrong in the file: malformed
// packets or bad checksums, with checksum validation switched on.
func checkClean(t *testing.T, file string) {
	t.Helper()
	out := tshark(t, "-r", file, "-q", "-z", "expert",
		"-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE")
	for _, bad := range []string{"Bad", "bad", "Malformed", "malformed", "Error"} {
		if strings.Contains(out, bad) {
			t.Fatalf("tshark finds problems (%q) in the capture:\n%s", bad, out)
		}
	}
	// The same with per-packet expert fields, in case the summary hides any.
	out = tshark(t, "-r", file, "-T", "fields", "-e", "_ws.expert.severity", "-e", "_ws.malformed",
		"-o", "ip.check_checksum:TRUE", "-o", "tcp.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE",
		"-Y", "_ws.malformed || _ws.expert.severity >= 0x00800000 || ip.checksum.status == 0 || tcp.checksum.status == 0 || udp.checksum.status == 0")
	if strings.TrimSpace(out) != "" {
		t.Fatalf("tshark finds packets with errors or bad checksums:\n%s", out)
	}
}

func TestTCPCaptureFollowsInTshark(t *testing.T) {
	testutil.NeedTool(t, "tshark")
	server := testutil.EchoServer(t).(*net.TCPAddr)
	file := filepath.Join(t.TempDir(), "flows.pcap")
	pl, closeAll := compile(t, "pcap file="+file)
	// Bigger than a segment, so the capture must split it.
	out := append([]byte("hello, pcap\n"), pattern(150000, 7)...)
	client := tcpFlow(t, pl, funnel.AddrFromNet(server), out).(*net.TCPAddr)
	closeAll()

	checkTCPCapture(t, file, client, server, out)
	checkClean(t, file)

	// tshark's own stream reassembly must give back both directions.
	follow := tshark(t, "-r", file, "-q", "-z", "follow,tcp,raw,0")
	var up, down []byte
	for _, line := range strings.Split(follow, "\n") {
		if line == "" || strings.HasPrefix(line, "=") || strings.Contains(line, ":") {
			continue
		}
		data, err := hex.DecodeString(strings.TrimSpace(line))
		if err != nil {
			continue
		}
		if strings.HasPrefix(line, "\t") {
			down = append(down, data...)
		} else {
			up = append(up, data...)
		}
	}
	if !bytes.Equal(up, out) || !bytes.Equal(down, out) {
		t.Fatalf("follow,tcp: client sent %d bytes and server %d; want %d each", len(up), len(down), len(out))
	}

	conv := tshark(t, "-r", file, "-q", "-z", "conv,tcp")
	if want := client.String() + " "; !strings.Contains(conv, want) || !strings.Contains(conv, server.String()) {
		t.Fatalf("conv,tcp lacks %s <-> %s:\n%s", client, server, conv)
	}
}

func checkTCPCapture(t *testing.T, file string, client *net.TCPAddr, server net.Addr, out []byte) {
	t.Helper()
	srv := server.(*net.TCPAddr)
	pkts := readPackets(t, file, "tcp")
	var up, down []byte
	cip, sip := client.IP.String(), srv.IP.String()
	cport, sport := fmt.Sprint(client.Port), fmt.Sprint(srv.Port)
	for _, p := range pkts {
		switch {
		case p.src == cip && p.sport == cport && p.dst == sip && p.dport == sport:
			up = append(up, p.payload...)
		case p.src == sip && p.sport == sport && p.dst == cip && p.dport == cport:
			down = append(down, p.payload...)
		default:
			t.Fatalf("packet %s:%s -> %s:%s is not between the client %s and the server %s", p.src, p.sport, p.dst, p.dport, client, server)
		}
	}
	if !bytes.Equal(up, out) {
		t.Fatalf("the capture holds %d bytes from the client, want the %d it sent", len(up), len(out))
	}
	if !bytes.Equal(down, out) {
		t.Fatalf("the capture holds %d bytes from the server, want the %d it echoed", len(down), len(out))
	}
}

func TestTCPOverIPv6(t *testing.T) {
	testutil.NeedTool(t, "tshark")
	l, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	file := filepath.Join(t.TempDir(), "v6.pcap")
	pl, closeAll := compile(t, "pcap file="+file)
	out := pattern(5000, 3)
	client := tcpFlow(t, pl, funnel.AddrFromNet(l.Addr()), out).(*net.TCPAddr)
	closeAll()
	checkTCPCapture(t, file, client, l.Addr(), out)
	checkClean(t, file)
}

func TestNamedDestinationShowsTheAddressReached(t *testing.T) {
	testutil.NeedTool(t, "tshark")
	server := testutil.EchoServer(t).(*net.TCPAddr)
	file := filepath.Join(t.TempDir(), "named.pcap")
	pl, closeAll := compile(t, "pcap file="+file)
	out := []byte("by name")
	client := tcpFlow(t, pl, funnel.MakeAddr("localhost", uint16(server.Port)), out).(*net.TCPAddr)
	closeAll()
	checkTCPCapture(t, file, client, server, out)
}

func TestUDPCaptureInTshark(t *testing.T) {
	testutil.NeedTool(t, "tshark")
	server := testutil.UDPEchoServer(t)
	file := filepath.Join(t.TempDir(), "udp.pcap")
	pl, closeAll := compile(t, "pcap file="+file)
	f := funnel.NewFlow("test", funnel.UDP, funnel.AddrFromNet(server))
	client := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40123}
	f.Source = client
	dc, err := pl.DialDgram(context.Background(), f)
	if err != nil {
		t.Fatal(err)
	}
	var sent [][]byte
	for i, n := range []int{1, 0, 17, 1400, 60000} {
		msg := pattern(n, byte(i))
		fr := funnel.NewFrame()
		fr.SetLen(copy(fr.Room(), msg))
		if err := dc.WriteFrame(fr); err != nil {
			t.Fatal(err)
		}
		dc.SetReadDeadline(time.Now().Add(10 * time.Second))
		back, err := dc.ReadFrame()
		if err != nil {
			t.Fatalf("echo of datagram %d: %v", i, err)
		}
		if !bytes.Equal(back.Bytes(), msg) {
			t.Fatalf("echo of datagram %d differs", i)
		}
		back.Release()
		sent = append(sent, msg)
	}
	dc.Close()
	closeAll()

	pkts := readPackets(t, file, "udp")
	if len(pkts) != 2*len(sent) {
		t.Fatalf("the capture holds %d datagrams, want %d", len(pkts), 2*len(sent))
	}
	cip, sip := "127.0.0.1", server.IP.String()
	cport, sport := "40123", fmt.Sprint(server.Port)
	for i, p := range pkts {
		want := sent[i/2]
		src, sp, dst, dp := cip, cport, sip, sport
		if i%2 == 1 {
			src, sp, dst, dp = sip, sport, cip, cport
		}
		if p.src != src || p.sport != sp || p.dst != dst || p.dport != dp {
			t.Fatalf("datagram %d: %s:%s -> %s:%s, want %s:%s -> %s:%s", i, p.src, p.sport, p.dst, p.dport, src, sp, dst, dp)
		}
		if !bytes.Equal(p.payload, want) {
			t.Fatalf("datagram %d: %d payload bytes, want %d", i, len(p.payload), len(want))
		}
	}
	checkClean(t, file)
}

func TestOneFilePerFlow(t *testing.T) {
	testutil.NeedTool(t, "tshark")
	server := testutil.EchoServer(t).(*net.TCPAddr)
	dir := t.TempDir()
	pl, closeAll := compile(t, "pcap file="+filepath.Join(dir, "flow-{id}.pcap"))
	var clients []*net.TCPAddr
	for i := range 2 {
		clients = append(clients, tcpFlow(t, pl, funnel.AddrFromNet(server), []byte(fmt.Sprintf("flow %d", i))).(*net.TCPAddr))
	}
	closeAll()
	files, _ := filepath.Glob(filepath.Join(dir, "flow-*.pcap"))
	if len(files) != 2 {
		t.Fatalf("files %v; want one per flow", files)
	}
	for _, file := range files {
		conv := tshark(t, "-r", file, "-q", "-z", "conv,tcp")
		n := 0
		for _, c := range clients {
			if strings.Contains(conv, c.String()+" ") {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("%s holds %d of the two flows, want 1:\n%s", file, n, conv)
		}
		checkClean(t, file)
	}
}

func TestSharedFileAcrossProfiles(t *testing.T) {
	testutil.NeedTool(t, "tshark")
	server := testutil.EchoServer(t).(*net.TCPAddr)
	file := filepath.Join(t.TempDir(), "shared.pcap")
	set, err := funnel.CompileSet([]funnel.Source{
		{Name: "a", Origin: "a.profile", Text: "pcap file=" + file},
		{Name: "b", Origin: "b.profile", Text: "pcap file=" + file},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := set.Open(); err != nil {
		t.Fatal(err)
	}
	a, _ := set.Profile("a")
	b, _ := set.Profile("b")
	var wg sync.WaitGroup
	var ca, cb net.Addr
	wg.Add(2)
	go func() { defer wg.Done(); ca = tcpFlow(t, a, funnel.AddrFromNet(server), pattern(70000, 1)) }()
	go func() { defer wg.Done(); cb = tcpFlow(t, b, funnel.AddrFromNet(server), pattern(70000, 2)) }()
	wg.Wait()
	set.Retire()
	conv := tshark(t, "-r", file, "-q", "-z", "conv,tcp")
	if ca == nil || cb == nil || !strings.Contains(conv, ca.String()+" ") || !strings.Contains(conv, cb.String()+" ") {
		t.Fatalf("the shared file lacks a flow (%v, %v):\n%s", ca, cb, conv)
	}
	checkClean(t, file)
}

func TestBadPathIsAProfileError(t *testing.T) {
	for _, text := range []string{
		"pcap file=/nonexistent-funtun-dir/x.pcap",
		"pcap file=/nonexistent-funtun-dir/x-{id}.pcap",
		"pcap file=/tmp/{id}/x.pcap",
		"pcap file=/tmp",
		"pcap file=/dev/null snaplen=10",
		"pcap",
	} {
		_, err := funnel.CompileSet([]funnel.Source{{Name: "p", Origin: "test.profile", Text: text}})
		if err == nil || !strings.Contains(err.Error(), "test.profile:1:") {
			t.Errorf("%s: got %v; want an error naming test.profile:1:COL", text, err)
		}
	}
	if _, err := os.Stat("/nonexistent-funtun-dir"); err == nil {
		t.Fatal("compiling created a directory")
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

func TestDgramRecordingAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under the race detector; run without -race")
	}
	w, err := create(filepath.Join(t.TempDir(), "alloc.pcap"))
	if err != nil {
		t.Fatal(err)
	}
	defer w.release()
	rec := newFlowRec(w, false, maxSnaplen, protoUDP, 1,
		clientAddr(&funnel.Flow{ID: 1}, nil), serverAddr(&funnel.Flow{Dest: funnel.MakeAddr("127.0.0.1", 53)}, nil))
	dc := &dgramConn{DgramConn: sinkDgram{}, rec: rec}
	allocs := testing.AllocsPerRun(2000, func() {
		fr := funnel.NewFrame()
		fr.SetLen(160)
		dc.WriteFrame(fr)
		in, _ := dc.ReadFrame()
		in.Release()
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per datagram recorded; want 0", allocs)
	}
}
