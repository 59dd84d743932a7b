// Package pcap is a tap: it writes every flow that passes it to a classic
// pcap file that Wireshark and tshark open, with Ethernet, IP and TCP or UDP
// headers made up around the real bytes so that the tools follow each flow
// as if it had been captured on a wire.
package pcap

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/netx"
)

func init() {
	funnel.Register(funnel.PieceInfo{
		Name:    "pcap",
		Summary: "write every flow to a pcap file for Wireshark/tshark",
		Params: `file=PATH        the capture file; {id} in the name makes one file per flow
snaplen=SIZE     bytes kept of each packet, headers included, default 262144`,
		Example: `file=/tmp/flows.pcap`,
		Curves:  curves,
		New:     New,
	})
}

// curves: a tap changes nothing, so it keeps the shape it is given.
var curves = []funnel.Curve{{App: funnel.Stream, Net: funnel.Stream}, {App: funnel.Dgram, Net: funnel.Dgram}}

// Pcap is a configured pcap piece.
type Pcap struct {
	path    string
	perFlow bool
	snaplen int
	// shared is the one file every flow writes to, unless perFlow: set by
	// Open when the profile goes live, given up by Close after its last flow.
	shared atomic.Pointer[writer]
}

var (
	_ funnel.StreamDialer   = (*Pcap)(nil)
	_ funnel.StreamAcceptor = (*Pcap)(nil)
	_ funnel.DgramDialer    = (*Pcap)(nil)
	_ funnel.Opener         = (*Pcap)(nil)
	_ funnel.Closer         = (*Pcap)(nil)
)

// New checks the path, so that one that cannot be written is a profile
// error with its place rather than a surprise on the first flow, but
// creates, truncates and opens nothing: `funtun profiles check` and a
// reload that fails leave the file alone. Open opens it.
func New(p *funnel.Params, _ funnel.Builder) (funnel.Piece, error) {
	path, err := p.Required("file", "/tmp/flows.pcap")
	if err != nil {
		return nil, err
	}
	snaplen, err := p.Size("snaplen", maxSnaplen)
	if err != nil {
		return nil, err
	}
	if snaplen < minSnaplen || snaplen > maxSnaplen {
		return nil, p.Errorf("snaplen", "%d is not from %d to %d", snaplen, minSnaplen, maxSnaplen)
	}
	pc := &Pcap{path: path, snaplen: int(snaplen)}
	if strings.Contains(path, "{id}") {
		pc.perFlow = true
		if strings.Contains(filepath.Dir(path), "{id}") {
			return nil, p.Errorf("file", "{id} may only appear in the file's name, not in its directory")
		}
	}
	if err := checkWritable(path, pc.perFlow); err != nil {
		return nil, p.Errorf("file", "%v", err)
	}
	return pc, nil
}

// checkWritable says whether path could be created or written, with
// stat(2) and access(2) only: it creates and changes nothing.
func checkWritable(path string, perFlow bool) error {
	if !perFlow {
		if st, err := os.Stat(path); err == nil {
			if st.IsDir() {
				return fmt.Errorf("%s is a directory", path)
			}
			if err := unix.Access(path, unix.W_OK); err != nil {
				return fmt.Errorf("%s is not writable: %v", path, err)
			}
			return nil
		}
	}
	dir := filepath.Dir(path)
	st, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("directory %s: %v", dir, errors.Unwrap(err))
	}
	if !st.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	if err := unix.Access(dir, unix.W_OK); err != nil {
		return fmt.Errorf("directory %s is not writable: %v", dir, err)
	}
	return nil
}

// Curves: see curves.
func (*Pcap) Curves() []funnel.Curve { return curves }

// Open creates (truncates) the capture file, when the profile goes live;
// a file that other live profiles, or the set a reload replaces, already
// write to is shared, not truncated. With {id} each flow opens its own.
func (pc *Pcap) Open() error {
	if pc.perFlow || pc.shared.Load() != nil {
		return nil
	}
	w, err := acquire(pc.path)
	if err != nil {
		return fmt.Errorf("file: %v", err)
	}
	pc.shared.Store(w)
	return nil
}

// Close gives up the shared file; the last piece using it (a reload keeps
// one open across generations) flushes and closes it.
func (pc *Pcap) Close() error {
	w := pc.shared.Swap(nil)
	if w == nil {
		return nil
	}
	return w.release()
}

// writerFor is the file a new flow writes to.
func (pc *Pcap) writerFor(f *funnel.Flow) (*writer, error) {
	if !pc.perFlow {
		w := pc.shared.Load()
		if w == nil {
			return nil, funnel.Errorf(funnel.KindGeneral, "pcap: %s: the capture is not open (its profile is not live, or was replaced)", pc.path)
		}
		return w, nil
	}
	name := strings.ReplaceAll(pc.path, "{id}", strconv.FormatUint(f.ID, 10))
	w, err := create(name)
	if err != nil {
		return nil, funnel.Errorf(funnel.KindGeneral, "pcap: %v", err)
	}
	return w, nil
}

// DialStream records an outgoing stream: the application is the client.
func (pc *Pcap) DialStream(ctx context.Context, f *funnel.Flow, next funnel.Next) (net.Conn, error) {
	w, err := pc.writerFor(f)
	if err != nil {
		return nil, err
	}
	c, err := next.DialStream(ctx, f)
	if err != nil {
		if pc.perFlow {
			w.release()
		}
		return nil, err
	}
	client := clientAddr(f, f.Source)
	server := serverAddr(f, c.RemoteAddr())
	rec := newFlowRec(w, pc.perFlow, pc.snaplen, protoTCP, f.ID, client, server)
	rec.handshake()
	return &streamConn{Conn: c, rec: rec, outgoing: true}, nil
}

// AcceptStream records an incoming stream: the network peer is the client.
func (pc *Pcap) AcceptStream(ctx context.Context, f *funnel.Flow, c net.Conn) (net.Conn, error) {
	w, err := pc.writerFor(f)
	if err != nil {
		return nil, err
	}
	client := clientAddr(f, c.RemoteAddr())
	server := serverAddr(f, c.LocalAddr())
	rec := newFlowRec(w, pc.perFlow, pc.snaplen, protoTCP, f.ID, client, server)
	rec.handshake()
	return &streamConn{Conn: c, rec: rec, outgoing: false}, nil
}

// DialDgram records a datagram flow, each frame as one UDP packet.
func (pc *Pcap) DialDgram(ctx context.Context, f *funnel.Flow, next funnel.Next) (funnel.DgramConn, error) {
	w, err := pc.writerFor(f)
	if err != nil {
		return nil, err
	}
	dc, err := next.DialDgram(ctx, f)
	if err != nil {
		if pc.perFlow {
			w.release()
		}
		return nil, err
	}
	var remote net.Addr
	if a, ok := dc.(interface{ RemoteAddr() net.Addr }); ok {
		remote = a.RemoteAddr()
	}
	client := clientAddr(f, f.Source)
	server := serverAddr(f, remote)
	rec := newFlowRec(w, pc.perFlow, pc.snaplen, protoUDP, f.ID, client, server)
	return &dgramConn{DgramConn: dc, rec: rec}, nil
}

// clientAddr is the real client when the hook knows it, else a made-up
// loopback address whose port tells flows apart.
func clientAddr(f *funnel.Flow, a net.Addr) netip.AddrPort {
	if ap := netx.AddrPortOf(a); ap.IsValid() {
		return ap
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(49152+f.ID%16384))
}

// madeUpServer stands for a destination known only by a name that the
// pieces below did not reveal (RFC 5737 documentation range).
var madeUpServer = netip.AddrFrom4([4]byte{192, 0, 2, 1})

// serverAddr is the destination as the flow names it, or, for a name, the
// address the connection below actually reached.
func serverAddr(f *funnel.Flow, reached net.Addr) netip.AddrPort {
	if !f.Dest.IsName() && f.Dest.IP.IsValid() {
		return netip.AddrPortFrom(f.Dest.IP, f.Dest.Port)
	}
	if ap := netx.AddrPortOf(reached); ap.IsValid() {
		return ap
	}
	return netip.AddrPortFrom(madeUpServer, f.Dest.Port)
}

// streamConn records what passes. Outgoing, Write is the client speaking;
// accepted from the network, Read is.
type streamConn struct {
	net.Conn
	rec      *flowRec
	outgoing bool
	once     sync.Once
}

func (c *streamConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.rec.data(!c.outgoing, p[:n])
	}
	if err == io.EOF {
		c.rec.fin(!c.outgoing)
	}
	return n, err
}

func (c *streamConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if n > 0 {
		c.rec.data(c.outgoing, p[:n])
	}
	return n, err
}

// CloseWrite passes the half-close on, or closes when the connection below
// cannot half-close (what the relay would have done without the tap).
func (c *streamConn) CloseWrite() error {
	ok, err := netx.HalfClose(c.Conn)
	if !ok {
		return c.Close()
	}
	c.rec.fin(c.outgoing)
	return err
}

func (c *streamConn) Close() error {
	c.once.Do(c.rec.finish)
	return c.Conn.Close()
}

// dgramConn records each frame as a UDP packet; the frame itself goes on
// untouched, so the tap neither copies nor allocates.
type dgramConn struct {
	funnel.DgramConn
	rec  *flowRec
	once sync.Once
}

func (d *dgramConn) WriteFrame(fr *funnel.Frame) error {
	d.rec.data(true, fr.Bytes())
	return d.DgramConn.WriteFrame(fr)
}

func (d *dgramConn) ReadFrame() (*funnel.Frame, error) {
	fr, err := d.DgramConn.ReadFrame()
	if err == nil {
		d.rec.data(false, fr.Bytes())
	}
	return fr, err
}

func (d *dgramConn) Close() error {
	d.once.Do(d.rec.finish)
	return d.DgramConn.Close()
}

// Addresses pass through for pieces above that look for them.
func (d *dgramConn) RemoteAddr() net.Addr {
	if a, ok := d.DgramConn.(interface{ RemoteAddr() net.Addr }); ok {
		return a.RemoteAddr()
	}
	return nil
}

func (d *dgramConn) LocalAddr() net.Addr {
	if a, ok := d.DgramConn.(interface{ LocalAddr() net.Addr }); ok {
		return a.LocalAddr()
	}
	return nil
}

// logWriteError reports a capture that stopped; the flows themselves go on.
func logWriteError(path string, err error) {
	slog.Warn("pcap: writing the capture failed; this file records nothing more", "file", path, "err", fmt.Sprint(err))
}
