package pcap

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"
)

const (
	// maxSnaplen is what tcpdump keeps by default; the file header always
	// says it, so pieces with different snaplen can share one file.
	maxSnaplen = 262144
	// minSnaplen keeps at least the made-up headers of every packet.
	minSnaplen = 128
	// maxSegment keeps a TCP segment and its headers under IPv4's 64 KiB.
	maxSegment = 65000
	// flushAfter bounds how long a record waits in the buffer, so that a
	// capture can be watched while flows run.
	flushAfter = time.Second

	linkEthernet  = 1
	recordHdrLen  = 16
	ethHdrLen     = 14
	ip4HdrLen     = 20
	ip6HdrLen     = 40
	tcpHdrLen     = 20
	udpHdrLen     = 8
	maxUDPPayload = 65535 - udpHdrLen // IPv6; IPv4 loses another 20

	protoTCP = 6
	protoUDP = 17

	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpPSH = 0x08
	tcpACK = 0x10
)

var (
	clientMAC = [6]byte{0x02, 0, 0, 0, 0, 0x01}
	serverMAC = [6]byte{0x02, 0, 0, 0, 0, 0x02}
)

// writer is one open capture file. Every record is built in scratch and
// written through buf under mu, so that recording allocates nothing.
type writer struct {
	path    string
	key     string // set for a file shared through the registry
	refs    int    // guarded by files
	mu      sync.Mutex
	file    *os.File
	buf     *bufio.Writer
	scratch [recordHdrLen + ethHdrLen + ip6HdrLen + tcpHdrLen]byte
	timer   *time.Timer
	armed   bool
	err     error
	closed  bool
}

// files shares one writer per path, so that two profiles, or the old and
// the new generation across a reload, append records to the same file in
// turn instead of truncating it under each other.
var files = struct {
	sync.Mutex
	m map[string]*writer
}{m: map[string]*writer{}}

func acquire(path string) (*writer, error) {
	key, err := filepath.Abs(path)
	if err != nil {
		key = path
	}
	files.Lock()
	defer files.Unlock()
	if w := files.m[key]; w != nil {
		w.refs++
		return w, nil
	}
	w, err := create(path)
	if err != nil {
		return nil, err
	}
	w.key = key
	files.m[key] = w
	return w, nil
}

// create starts a fresh capture file. Captures hold whatever the flows
// carried (passwords too), so only the owner may read them.
func create(path string) (*writer, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	w := &writer{path: path, file: f, buf: bufio.NewWriterSize(f, 64<<10), refs: 1}
	var hdr [24]byte
	le := binary.LittleEndian
	le.PutUint32(hdr[0:], 0xa1b2c3d4)
	le.PutUint16(hdr[4:], 2)
	le.PutUint16(hdr[6:], 4)
	le.PutUint32(hdr[16:], maxSnaplen)
	le.PutUint32(hdr[20:], linkEthernet)
	if _, err := w.buf.Write(hdr[:]); err == nil {
		err = w.buf.Flush()
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	w.timer = time.AfterFunc(time.Hour, w.timedFlush)
	w.timer.Stop()
	return w, nil
}

func (w *writer) timedFlush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.armed = false
	w.flushLocked()
}

// armLocked makes sure buffered records reach the file within flushAfter.
func (w *writer) armLocked() {
	if !w.armed {
		w.armed = true
		w.timer.Reset(flushAfter)
	}
}

func (w *writer) flushLocked() {
	if w.closed || w.err != nil {
		return
	}
	if err := w.buf.Flush(); err != nil {
		w.failLocked(err)
	}
}

func (w *writer) failLocked(err error) {
	if w.err == nil {
		w.err = err
		logWriteError(w.path, err)
	}
}

// release drops one user; the last one flushes and closes the file.
func (w *writer) release() error {
	if w.key != "" {
		files.Lock()
		w.refs--
		last := w.refs == 0
		if last {
			delete(files.m, w.key)
		}
		files.Unlock()
		if !last {
			w.mu.Lock()
			w.flushLocked()
			w.mu.Unlock()
			return nil
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	w.flushLocked()
	w.closed = true
	w.timer.Stop()
	err := w.file.Close()
	if w.err != nil {
		return w.err
	}
	return err
}

// flowRec is one flow's view of the file: its made-up endpoints and, for
// TCP, the sequence numbers each side is at. All of it is guarded by the
// writer's mutex, which every record takes anyway.
type flowRec struct {
	w          *writer
	ownsWriter bool
	snaplen    int
	proto      byte
	v6         bool
	client     netip.AddrPort
	server     netip.AddrPort
	seqClient  uint32 // next sequence number the client sends
	seqServer  uint32
	ipID       uint16
	finClient  bool
	finServer  bool
	finished   bool
}

func newFlowRec(w *writer, owns bool, snaplen int, proto byte, id uint64, client, server netip.AddrPort) *flowRec {
	r := &flowRec{w: w, ownsWriter: owns, snaplen: snaplen, proto: proto, client: client, server: server}
	// Both ends of a packet must be of one family; a client of the other
	// family is shown as the nearest thing in the server's.
	r.v6 = server.Addr().Is6()
	switch {
	case r.v6 && client.Addr().Is4():
		r.client = netip.AddrPortFrom(netip.AddrFrom16(client.Addr().As16()), client.Port())
	case !r.v6 && client.Addr().Is6():
		r.client = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), client.Port())
	}
	// Initial sequence numbers differ per flow so that tools never confuse
	// two flows that reuse a port pair.
	r.seqClient = uint32(id * 2654435761)
	r.seqServer = r.seqClient ^ 0x5bd1e995
	r.ipID = uint16(id * 40503)
	return r
}

// handshake writes the SYN, SYN-ACK, ACK that tools need to see a
// connection start.
func (r *flowRec) handshake() {
	r.w.mu.Lock()
	defer r.w.mu.Unlock()
	r.packetLocked(true, tcpSYN, nil)
	r.seqClient++
	r.packetLocked(false, tcpSYN|tcpACK, nil)
	r.seqServer++
	r.packetLocked(true, tcpACK, nil)
	r.w.armLocked()
}

// data records bytes that passed one way: TCP segments that advance the
// sender's sequence number, or one UDP datagram.
func (r *flowRec) data(fromClient bool, p []byte) {
	r.w.mu.Lock()
	defer r.w.mu.Unlock()
	if r.finished {
		return
	}
	if r.proto == protoUDP {
		limit := maxUDPPayload
		if !r.v6 {
			limit -= ip4HdrLen
		}
		r.packetLocked(fromClient, 0, p[:min(len(p), limit)])
		r.w.armLocked()
		return
	}
	for len(p) > 0 {
		n := min(len(p), maxSegment)
		r.packetLocked(fromClient, tcpPSH|tcpACK, p[:n])
		if fromClient {
			r.seqClient += uint32(n)
		} else {
			r.seqServer += uint32(n)
		}
		p = p[n:]
	}
	r.w.armLocked()
}

// fin records one side closing.
func (r *flowRec) fin(fromClient bool) {
	r.w.mu.Lock()
	defer r.w.mu.Unlock()
	if !r.finished {
		r.finLocked(fromClient)
		r.w.armLocked()
	}
}

func (r *flowRec) finLocked(fromClient bool) {
	if r.proto != protoTCP || (fromClient && r.finClient) || (!fromClient && r.finServer) {
		return
	}
	r.packetLocked(fromClient, tcpFIN|tcpACK, nil)
	if fromClient {
		r.seqClient++
		r.finClient = true
	} else {
		r.seqServer++
		r.finServer = true
	}
	if r.finClient && r.finServer {
		// The side that closed first acknowledges the last FIN.
		r.packetLocked(!fromClient, tcpACK, nil)
	}
}

// finish closes whatever side is still open, and flushes, so a flow that
// ended is complete in the file.
func (r *flowRec) finish() {
	r.w.mu.Lock()
	if !r.finished {
		r.finLocked(true)
		r.finLocked(false)
		r.finished = true
		r.w.flushLocked()
	}
	r.w.mu.Unlock()
	if r.ownsWriter {
		r.w.release()
	}
}

// packetLocked writes one record: pcap header, Ethernet, IP and TCP or UDP
// headers with correct lengths and checksums, then the payload, cut at
// snaplen.
func (r *flowRec) packetLocked(fromClient bool, flags byte, payload []byte) {
	w := r.w
	if w.closed || w.err != nil {
		return
	}
	src, dst := r.client, r.server
	srcMAC, dstMAC := clientMAC, serverMAC
	if !fromClient {
		src, dst = dst, src
		srcMAC, dstMAC = dstMAC, srcMAC
	}
	b := w.scratch[:]
	be := binary.BigEndian

	eth := b[recordHdrLen:]
	copy(eth[0:6], dstMAC[:])
	copy(eth[6:12], srcMAC[:])

	l4Len := udpHdrLen
	if r.proto == protoTCP {
		l4Len = tcpHdrLen
	}
	l4Total := l4Len + len(payload)

	ip := eth[ethHdrLen:]
	var ipLen int
	var pseudo uint64
	if r.v6 {
		ipLen = ip6HdrLen
		be.PutUint16(eth[12:], 0x86dd)
		be.PutUint32(ip[0:], 0x60000000)
		be.PutUint16(ip[4:], uint16(l4Total))
		ip[6] = r.proto
		ip[7] = 64
		s, d := src.Addr().As16(), dst.Addr().As16()
		copy(ip[8:24], s[:])
		copy(ip[24:40], d[:])
		pseudo = sum(ip[8:40], 0) + uint64(l4Total) + uint64(r.proto)
	} else {
		ipLen = ip4HdrLen
		be.PutUint16(eth[12:], 0x0800)
		ip[0] = 0x45
		ip[1] = 0
		be.PutUint16(ip[2:], uint16(ip4HdrLen+l4Total))
		be.PutUint16(ip[4:], r.ipID)
		r.ipID++
		be.PutUint16(ip[6:], 0x4000) // don't fragment
		ip[8] = 64
		ip[9] = r.proto
		be.PutUint16(ip[10:], 0)
		s, d := src.Addr().As4(), dst.Addr().As4()
		copy(ip[12:16], s[:])
		copy(ip[16:20], d[:])
		be.PutUint16(ip[10:], fold(sum(ip[:ip4HdrLen], 0)))
		pseudo = sum(ip[12:20], 0) + uint64(l4Total) + uint64(r.proto)
	}

	l4 := ip[ipLen:]
	be.PutUint16(l4[0:], src.Port())
	be.PutUint16(l4[2:], dst.Port())
	var csum []byte
	if r.proto == protoTCP {
		seq, ack := r.seqClient, r.seqServer
		if !fromClient {
			seq, ack = ack, seq
		}
		if flags&tcpACK == 0 {
			ack = 0
		}
		be.PutUint32(l4[4:], seq)
		be.PutUint32(l4[8:], ack)
		l4[12] = tcpHdrLen / 4 << 4
		l4[13] = flags
		be.PutUint16(l4[14:], 65535)
		be.PutUint16(l4[16:], 0)
		be.PutUint16(l4[18:], 0)
		csum = l4[16:18]
	} else {
		be.PutUint16(l4[4:], uint16(l4Total))
		be.PutUint16(l4[6:], 0)
		csum = l4[6:8]
	}
	c := fold(sum(payload, sum(l4[:l4Len], pseudo)))
	if c == 0 && r.proto == protoUDP {
		c = 0xffff // 0 means "no checksum" in UDP
	}
	be.PutUint16(csum, c)

	hdrLen := recordHdrLen + ethHdrLen + ipLen + l4Len
	orig := hdrLen - recordHdrLen + len(payload)
	incl := min(orig, r.snaplen)
	now := time.Now()
	le := binary.LittleEndian
	le.PutUint32(b[0:], uint32(now.Unix()))
	le.PutUint32(b[4:], uint32(now.Nanosecond()/1000))
	le.PutUint32(b[8:], uint32(incl))
	le.PutUint32(b[12:], uint32(orig))

	keepHdr := min(hdrLen, recordHdrLen+incl)
	if _, err := w.buf.Write(b[:keepHdr]); err != nil {
		w.failLocked(err)
		return
	}
	if keep := recordHdrLen + incl - hdrLen; keep > 0 {
		if _, err := w.buf.Write(payload[:keep]); err != nil {
			w.failLocked(err)
		}
	}
}

// sum adds b to the one's-complement checksum s as 16-bit big-endian words.
// Callers give even-length pieces first, so only the last may be odd.
func sum(b []byte, s uint64) uint64 {
	n := len(b)
	for i := 0; i+1 < n; i += 2 {
		s += uint64(b[i])<<8 | uint64(b[i+1])
	}
	if n%2 == 1 {
		s += uint64(b[n-1]) << 8
	}
	return s
}

func fold(s uint64) uint16 {
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}
