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

	"golang.org/x/sys/unix"

	"github.com/funtun/funtun/funnel"
)

func init() {
	funnel.Register(funnel.PieceInfo{
		Name:    "pcap",
		Summary: "write every flow to a pcap file for Wireshark/tshark",
		Params: `file=PATH        the capture file; {id} in the name makes one file per flow
snaplen=SIZE     bytes kept of each packet, headers included, default 262144`,
		New: New,
	})
}

// Pcap is a configured pcap piece.
type Pcap struct {
	path    string
	perFlow bool
	snaplen int
	shared  *writer // the one file every flow writes to, unless perFlow
}

// New opens the capture file now, so that a path that cannot be written is
// a profile error with its place rather than a surprise on the first flow.
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
		dir := filepath.Dir(path)
		if st, err := os.Stat(dir); err != nil {
			return nil, p.Errorf("file", "directory %s: %v", dir, errors.Unwrap(err))
		} else if !st.IsDir() {
			return nil, p.Errorf("file", "%s is not a directory", dir)
		}
		if err := unix.Access(dir, unix.W_OK); err != nil {
			return nil, p.Errorf("file", "directory %s is not writable: %v", dir, err)
		}
		return pc, nil
	}
	w, err := acquire(path)
	if err != nil {
		return nil, p.Errorf("file", "%v", err)
	}
	pc.shared = w
	return pc, nil
}

// Curves: a tap changes nothing, so it keeps the shape it is given.
func (*Pcap) Curves() []funnel.Curve {
	return []funnel.Curve{{App: funnel.Stream, Net: funnel.Stream}, {App: funnel.Dgram, Net: funnel.Dgram}}
}

// Close gives up the shared file; the last piece using it (a reload keeps
// one open across generations) flushes and closes it.
func (pc *Pcap) Close() error {
	if pc.shared == nil {
		return nil
	}
	w := pc.shared
	pc.shared = nil
	return w.release()
}

// writerFor is the file a new flow writes to.
func (pc *Pcap) writerFor(f *funnel.Flow) (*writer, error) {
	if !pc.perFlow {
		if pc.shared == nil {
			return nil, funnel.Errorf(funnel.KindGeneral, "pcap: %s: the capture is closed", pc.path)
		}
		return pc.shared, nil
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

func netAddrPort(a net.Addr) (netip.AddrPort, bool) {
	switch a := a.(type) {
	case *net.TCPAddr:
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), ap.Addr().IsValid()
	case *net.UDPAddr:
		ap := a.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), ap.Addr().IsValid()
	}
	return netip.AddrPort{}, false
}

// clientAddr is the real client when the hook knows it, else a made-up
// loopback address whose port tells flows apart.
func clientAddr(f *funnel.Flow, a net.Addr) netip.AddrPort {
	if ap, ok := netAddrPort(a); ok {
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
	if ap, ok := netAddrPort(reached); ok {
		return ap
	}
	return netip.AddrPortFrom(madeUpServer, f.Dest.Port)
}

type closeWriter interface{ CloseWrite() error }

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
	cw, ok := c.Conn.(closeWriter)
	if !ok {
		return c.Close()
	}
	err := cw.CloseWrite()
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
