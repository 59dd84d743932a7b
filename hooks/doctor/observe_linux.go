//go:build linux

package doctor

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/funtun/funtun/internal/netx"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/sys/unix"
)

// observer holds what arrived outside, and runs everything there that
// makes it arrive: the responders, the resolver and the capture.
type observer struct {
	mu  sync.Mutex
	obs []observation
	// datagrams already seen (by source and destination): one
	// observation each, however many datagrams.
	datagrams map[string]bool
	// current is the probe running now; funnelPID the launcher's
	// process, whose sockets are the funnel's.
	current   string
	funnelPID int
	barriers  map[string]chan struct{}

	closers []io.Closer
	wg      sync.WaitGroup
}

// barrierPort: the capture's end-of-run marker goes to this port, where
// nothing listens (discard).
const barrierPort = 9

// startObserver starts the outside's services in the lab.
func startObserver(l *lab) (*observer, error) {
	o := &observer{datagrams: map[string]bool{}, barriers: map[string]chan struct{}{}}
	err := l.in(l.outside, func() error {
		if err := o.capture(); err != nil {
			return fmt.Errorf("cannot capture on the lab's link: %v", err)
		}
		for _, ip := range []netip.Addr{outside4, outside6} {
			if err := o.resolver(ip); err != nil {
				return fmt.Errorf("the lab's resolver: %v", err)
			}
			for _, port := range probePorts() {
				if err := o.responders(netip.AddrPortFrom(ip, uint16(port))); err != nil {
					return fmt.Errorf("the lab's responders: %v", err)
				}
			}
		}
		return nil
	})
	if err != nil {
		o.close()
		return nil, err
	}
	return o, nil
}

func (o *observer) close() {
	o.mu.Lock()
	closers := o.closers
	o.closers = nil
	o.mu.Unlock()
	for _, c := range closers {
		c.Close()
	}
	o.wg.Wait()
}

func (o *observer) keep(c io.Closer) {
	o.mu.Lock()
	o.closers = append(o.closers, c)
	o.mu.Unlock()
}

func (o *observer) goServe(f func()) {
	o.wg.Add(1)
	go func() {
		defer o.wg.Done()
		f()
	}()
}

// startRun says which probe runs now and which process is the funnel.
func (o *observer) startRun(probe string, funnelPID int) {
	o.mu.Lock()
	o.current, o.funnelPID = probe, funnelPID
	o.mu.Unlock()
}

// record adds an observation, noting whether it came from one of the
// funnel process's own sockets: that must be asked while the socket still
// exists, that is now.
func (o *observer) record(ob observation) {
	o.mu.Lock()
	pid := o.funnelPID
	ob.probe = o.current
	o.mu.Unlock()
	if a := ob.src.Addr().Unmap(); pid > 0 && a != funnel4 && a != funnel6 {
		ob.ownedByFunnel = ownsSocket(pid, ob.transport, ob.src)
	}
	ob.Src, ob.Dst = ob.src.String(), ob.dst.String()
	o.mu.Lock()
	o.obs = append(o.obs, ob)
	o.mu.Unlock()
}

// take returns everything observed so far.
func (o *observer) take() []observation {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := o.obs
	o.obs = nil
	return out
}

// ---- responders -----------------------------------------------------------

// responders answer on ap: TCP with "ok" (or an HTTP response to an HTTP
// request, for programs such as curl), UDP by echoing.
func (o *observer) responders(ap netip.AddrPort) error {
	l, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(ap))
	if err != nil {
		return err
	}
	o.keep(l)
	o.goServe(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go answerStream(c)
		}
	})
	u, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap))
	if err != nil {
		return err
	}
	o.serveUDP(u, func(b []byte, _ netip.AddrPort) []byte { return b })
	return nil
}

// serveUDP answers each datagram on u with what reply makes of it (nil:
// no answer) until u closes.
func (o *observer) serveUDP(u *net.UDPConn, reply func(b []byte, from netip.AddrPort) []byte) {
	o.keep(u)
	o.goServe(func() {
		buf := make([]byte, 64<<10)
		for {
			n, from, err := u.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if r := reply(buf[:n], from); r != nil {
				u.WriteToUDPAddrPort(r, from)
			}
		}
	})
}

var httpMethods = []string{"GET ", "HEAD ", "POST ", "PUT ", "OPTIONS ", "DELETE ", "CONNECT "}

const httpBody = "funtun doctor: you reached the lab's responder\n"

func answerStream(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil && line == "" {
		return
	}
	for _, m := range httpMethods {
		if strings.HasPrefix(line, m) {
			// Read the request's head, then answer and close.
			for {
				h, err := r.ReadString('\n')
				if err != nil || strings.TrimSpace(h) == "" {
					break
				}
			}
			body := httpBody
			if strings.HasPrefix(line, "HEAD ") {
				body = ""
			}
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(httpBody), body)
			return
		}
	}
	io.WriteString(c, "ok\n")
}

// ---- resolver -------------------------------------------------------------

// resolver is the lab's DNS server on ip:53 (UDP and TCP): names under
// labDomain get the outside's addresses, others NXDOMAIN. Every query is
// recorded with its source.
func (o *observer) resolver(ip netip.Addr) error {
	ap := netip.AddrPortFrom(ip, 53)
	u, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(ap))
	if err != nil {
		return err
	}
	o.serveUDP(u, func(b []byte, from netip.AddrPort) []byte { return o.answer(b, "udp", from, ap) })
	l, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(ap))
	if err != nil {
		return err
	}
	o.keep(l)
	o.goServe(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go o.serveDNSStream(c, ap)
		}
	})
	return nil
}

func (o *observer) serveDNSStream(c net.Conn, ap netip.AddrPort) {
	defer c.Close()
	from := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	for {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		var pre [2]byte
		if _, err := io.ReadFull(c, pre[:]); err != nil {
			return
		}
		msg := make([]byte, binary.BigEndian.Uint16(pre[:]))
		if _, err := io.ReadFull(c, msg); err != nil {
			return
		}
		reply := o.answer(msg, "tcp", from, ap)
		if reply == nil {
			return
		}
		if _, err := c.Write(binary.BigEndian.AppendUint16(nil, uint16(len(reply)))); err != nil {
			return
		}
		if _, err := c.Write(reply); err != nil {
			return
		}
	}
}

// answer records a query and builds its answer (nil: not a query).
func (o *observer) answer(msg []byte, network string, from, to netip.AddrPort) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(msg)
	if err != nil || h.Response {
		return nil
	}
	q, err := p.Question()
	if err != nil {
		return nil
	}
	o.record(observation{Kind: "dns", Query: queryText(q), src: from, dst: to, transport: network})
	name := strings.ToLower(strings.TrimSuffix(q.Name.String(), "."))
	inLab := name == labDomain || strings.HasSuffix(name, "."+labDomain)
	rh := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: inLab, RecursionDesired: h.RecursionDesired, RecursionAvailable: true}
	if !inLab {
		rh.RCode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, rh)
	b.EnableCompression()
	b.StartQuestions()
	b.Question(q)
	b.StartAnswers()
	rr := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 5}
	switch {
	case inLab && q.Type == dnsmessage.TypeA:
		b.AResource(rr, dnsmessage.AResource{A: outside4.As4()})
	case inLab && q.Type == dnsmessage.TypeAAAA:
		b.AAAAResource(rr, dnsmessage.AAAAResource{AAAA: outside6.As16()})
	}
	out, err := b.Finish()
	if err != nil {
		return nil
	}
	return out
}

func queryText(q dnsmessage.Question) string {
	t := strings.TrimPrefix(q.Type.String(), "Type")
	return t + " " + strings.TrimSuffix(q.Name.String(), ".")
}

// ---- capture --------------------------------------------------------------

// capture reads every packet that comes in on the outside's end of the
// link: the SYN of each TCP connection, each UDP datagram (DNS to any
// server but the lab's own resolver, which logs its queries itself, is
// decoded as a query).
func (o *observer) capture() error {
	link, err := net.InterfaceByName(outsideLink)
	if err != nil {
		return err
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
	if err != nil {
		return err
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: link.Index}); err != nil {
		unix.Close(fd)
		return err
	}
	f := os.NewFile(uintptr(fd), "capture")
	o.keep(f)
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	o.goServe(func() {
		buf := make([]byte, 64<<10)
		for {
			var n int
			var from unix.Sockaddr
			var rerr error
			err := rc.Read(func(fd uintptr) bool {
				n, from, rerr = unix.Recvfrom(int(fd), buf, 0)
				return rerr != unix.EAGAIN
			})
			if err != nil {
				return
			}
			if rerr != nil {
				continue
			}
			if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
				continue
			}
			o.packet(buf[:n])
		}
	})
	return nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// packet records one IP packet from the inside.
func (o *observer) packet(b []byte) {
	var src, dst netip.Addr
	var proto byte
	var l4 []byte
	switch {
	case len(b) >= 20 && b[0]>>4 == 4:
		ihl := int(b[0]&0x0f) * 4
		if ihl < 20 || len(b) < ihl {
			return
		}
		src, dst = netip.AddrFrom4([4]byte(b[12:16])), netip.AddrFrom4([4]byte(b[16:20]))
		proto, l4 = b[9], b[ihl:]
	case len(b) >= 40 && b[0]>>4 == 6:
		src, dst = netip.AddrFrom16([16]byte(b[8:24])), netip.AddrFrom16([16]byte(b[24:40]))
		proto, l4 = b[6], b[40:]
	default:
		return
	}
	if len(l4) < 8 {
		return
	}
	sp, dp := binary.BigEndian.Uint16(l4[0:2]), binary.BigEndian.Uint16(l4[2:4])
	s, d := netip.AddrPortFrom(src, sp), netip.AddrPortFrom(dst, dp)
	toResolver := dp == 53 && (dst == outside4 || dst == outside6)
	switch proto {
	case unix.IPPROTO_TCP:
		if len(l4) < 14 {
			return
		}
		const syn, ack = 0x02, 0x10
		if flags := l4[13]; flags&syn == 0 || flags&ack != 0 || toResolver {
			// The resolver logs its own TCP queries; a TCP connection to
			// it is only their carrier.
			return
		}
		o.record(observation{Kind: "tcp", src: s, dst: d, transport: "tcp"})
	case unix.IPPROTO_UDP:
		payload := l4[8:]
		if dp == barrierPort && (dst == outside4 || dst == outside6) {
			o.passBarrier(string(payload))
			return
		}
		if toResolver {
			return
		}
		if dp == 53 {
			var p dnsmessage.Parser
			if h, err := p.Start(payload); err == nil && !h.Response {
				if q, err := p.Question(); err == nil {
					o.record(observation{Kind: "dns", Query: queryText(q), src: s, dst: d, transport: "udp"})
					return
				}
			}
		}
		key := s.String() + ">" + d.String()
		o.mu.Lock()
		dup := o.datagrams[key]
		o.datagrams[key] = true
		o.mu.Unlock()
		if !dup {
			o.record(observation{Kind: "udp", src: s, dst: d, transport: "udp"})
		}
	}
}

// barrier waits until the capture has seen a datagram sent from the
// inside now, so that what the inside sent before it has been read (the
// link keeps order). It gives up after a while: the report is then only
// as complete as the capture got.
func (o *observer) barrier(l *lab) error {
	token := "funtun-doctor barrier " + strconv.FormatInt(time.Now().UnixNano(), 10)
	seen := make(chan struct{})
	o.mu.Lock()
	o.barriers[token] = seen
	o.mu.Unlock()
	err := l.in(l.inside, func() error {
		c, err := net.Dial("udp", netip.AddrPortFrom(outside4, barrierPort).String())
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte(token))
		return err
	})
	if err != nil {
		return err
	}
	select {
	case <-seen:
		return nil
	case <-time.After(5 * time.Second):
		return errors.New("the capture fell behind: some packets may be missing from the report")
	}
}

func (o *observer) passBarrier(token string) {
	o.mu.Lock()
	ch, ok := o.barriers[token]
	delete(o.barriers, token)
	o.mu.Unlock()
	if ok {
		close(ch)
	}
}

// ---- socket ownership -----------------------------------------------------

// ownsSocket reports whether process pid has, among its descriptors, the
// socket of network (tcp, udp) bound to local: the funnel's own lookups
// (the direct piece's resolver) carry no mark, but they come from its
// process.
func ownsSocket(pid int, network string, local netip.AddrPort) bool {
	inodes := map[string]bool{}
	for _, table := range []string{network, network + "6"} {
		netx.ScanSocketTable(fmt.Sprintf("/proc/%d/net/%s", pid, table), func(port uint16, inode uint64) bool {
			if port == local.Port() {
				inodes[strconv.FormatUint(inode, 10)] = true
			}
			return true
		})
	}
	if len(inodes) == 0 {
		return false
	}
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, e := range entries {
		target, err := os.Readlink(dir + "/" + e.Name())
		if err != nil {
			continue
		}
		if inode, ok := strings.CutPrefix(target, "socket:["); ok && inodes[strings.TrimSuffix(inode, "]")] {
			return true
		}
	}
	return false
}
