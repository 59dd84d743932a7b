//go:build linux

package preload

import (
	"encoding/binary"
	"net/netip"
	"sync"

	"golang.org/x/sys/unix"
)

// A socket the funnel connected to one of its own addresses (a relay, the
// DNS responder, the relay hub), or whose datagrams it sent there, would
// show the program that address as its peer and as the source of what it
// receives. Resolvers check the source of an answer against the
// nameserver they asked (glibc's and musl's do) and drop anything else;
// the library puts the destination back in recvfrom, recvmsg and
// getpeername, and so does the supervisor for the sockets it knows.
// Sockets it does not know continue their call untouched: only the
// outputs of these calls are in the program's memory, so continuing them
// trusts nothing there.

// hiddenPeers maps a program socket (by inode) and an address of the
// funnel's to the address the program asked for, as it wrote it.
type hiddenPeers struct {
	mu    sync.Mutex
	socks map[uint64]map[netip.AddrPort][]byte
	// order is the sockets in the order they came, to forget the oldest:
	// a closed socket is not seen from here. A forgotten one that is
	// still used shows the funnel's address again, no worse.
	order []uint64
	next  int
}

const hiddenPeersMax = 16384

func (h *hiddenPeers) add(ino uint64, funnelAddr netip.AddrPort, asked []byte) {
	asked = naturalSockaddr(asked)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.socks == nil {
		h.socks = map[uint64]map[netip.AddrPort][]byte{}
		h.order = make([]uint64, hiddenPeersMax)
	}
	m := h.socks[ino]
	if m == nil {
		if old := h.order[h.next]; old != 0 {
			delete(h.socks, old)
		}
		h.order[h.next] = ino
		h.next = (h.next + 1) % hiddenPeersMax
		m = map[netip.AddrPort][]byte{}
		h.socks[ino] = m
	}
	m[unmapAP(funnelAddr)] = asked
}

func (h *hiddenPeers) known(ino uint64) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.socks[ino] != nil
}

// asked is what the program asked for in place of the funnel's address a.
func (h *hiddenPeers) asked(ino uint64, a netip.AddrPort) ([]byte, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	b, ok := h.socks[ino][unmapAP(a)]
	return b, ok
}

func unmapAP(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap().WithZone(""), a.Port())
}

// naturalSockaddr trims a sockaddr the program wrote with a generous
// length to the size the kernel gives back for its family.
func naturalSockaddr(b []byte) []byte {
	if len(b) < 2 {
		return b
	}
	n := len(b)
	switch binary.NativeEndian.Uint16(b) {
	case unix.AF_INET:
		n = unix.SizeofSockaddrInet4
	case unix.AF_INET6:
		n = unix.SizeofSockaddrInet6
	}
	if n < len(b) {
		b = b[:n]
	}
	return append([]byte(nil), b...)
}

func inode(fd int) (uint64, bool) {
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil {
		return 0, false
	}
	return st.Ino, true
}

// noteHidden remembers, after a connect of ours, the funnel's address the
// program's socket went to instead of the one it asked for. A TCP socket
// still connecting has no peer yet: it keeps showing the relay hub.
func (sv *supervisor) noteHidden(fd int, asked []byte) {
	want, _, ok := parseSockaddr(asked)
	if !ok {
		return
	}
	sa, err := unix.Getpeername(fd)
	if err != nil {
		return
	}
	got, ok := addrPortOf(sa)
	if !ok || unmapAP(got) == unmapAP(want) {
		return
	}
	if ino, ok := inode(fd); ok {
		sv.hidden.add(ino, got, asked)
	}
}

// shownAddr is the source or peer the program is to see for from.
func (sv *supervisor) shownAddr(ino uint64, family int, from unix.Sockaddr) []byte {
	ap, ok := addrPortOf(from)
	if !ok {
		return nil
	}
	if b, ok := sv.hidden.asked(ino, ap); ok {
		return b
	}
	return rawSockaddr(ap, family)
}

// putAddr writes a sockaddr to the program as the kernel does: as much as
// its buffer holds, and the full length in *lenPtr.
func (t *trapped) putAddr(ptr, lenPtr uint64, raw []byte) error {
	lb, err := t.read(lenPtr, 4)
	if err != nil {
		return err
	}
	room := int(int32(binary.NativeEndian.Uint32(lb)))
	if room < 0 {
		return unix.EINVAL
	}
	if n := min(room, len(raw)); n > 0 {
		if err := t.write(ptr, raw[:n]); err != nil {
			return err
		}
	}
	binary.NativeEndian.PutUint32(lb, uint32(len(raw)))
	return t.write(lenPtr, lb)
}

// getpeername for a socket whose peer is a relay: the destination.
func (sv *supervisor) getpeername(t *trapped, sock trappedSocket, addrPtr, lenPtr uint64) (answer, error) {
	ino, ok := inode(sock.fd)
	if !ok || !sv.hidden.known(ino) {
		return answerContinue(), nil
	}
	sa, err := unix.Getpeername(sock.fd)
	if err != nil {
		return answerErr(err), nil
	}
	if err := t.putAddr(addrPtr, lenPtr, sv.shownAddr(ino, sock.family, sa)); err != nil {
		return answerErr(err), err
	}
	return answerVal(0), nil
}

// recvfrom with an address, on a datagram socket the funnel redirected.
func (sv *supervisor) recvfrom(t *trapped, sock trappedSocket, args [6]uint64) (answer, error) {
	ino, ok := inode(sock.fd)
	if sock.sotype != unix.SOCK_DGRAM || !ok || !sv.hidden.known(ino) {
		return answerContinue(), nil
	}
	buf, size, flags, addrPtr, lenPtr := args[1], min(args[2], dgramMax+1), int(args[3]), args[4], args[5]
	if lenPtr == 0 {
		return answerErrno(unix.EFAULT), nil
	}
	data := make([]byte, size)
	var n int
	var from unix.Sockaddr
	var err error
	for {
		n, from, err = unix.Recvfrom(sock.fd, data, flags)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return answerErr(err), nil
	}
	if c := min(n, int(size)); c > 0 {
		if err := t.write(buf, data[:c]); err != nil {
			return answerErr(err), nil
		}
	}
	if raw := sv.shownAddr(ino, sock.family, from); raw != nil {
		if err := t.putAddr(addrPtr, lenPtr, raw); err != nil {
			return answerErr(err), nil
		}
	}
	return answerVal(int64(n)), nil
}

// recvmsg on a datagram socket the funnel redirected (64-bit layout: the
// receive calls are trapped on 64-bit ABIs only).
func (sv *supervisor) recvmsg(t *trapped, sock trappedSocket, msgPtr uint64, flags int) (int, error) {
	l := msghdr64
	hdr, err := t.read(msgPtr, l.size)
	if err != nil {
		return 0, err
	}
	namePtr, nameLen := l.word(hdr, l.name), int(binary.NativeEndian.Uint32(hdr[l.namelen:]))
	iovPtr, iovLen := l.word(hdr, l.iov), l.word(hdr, l.iovlen)
	ctlPtr, ctlLen := l.word(hdr, l.control), l.word(hdr, l.controllen)
	if iovLen > iovMax {
		return 0, unix.EMSGSIZE
	}
	ctlLen = min(ctlLen, controlMax)
	var remote []unix.RemoteIovec
	total := 0
	if iovLen > 0 {
		iovs, err := t.read(iovPtr, int(iovLen)*16)
		if err != nil {
			return 0, err
		}
		for i := 0; i < int(iovLen) && total <= dgramMax; i++ {
			base, n := l.word(iovs, 16*i), int(min(l.word(iovs, 16*i+8), dgramMax+1))
			if n == 0 {
				continue
			}
			n = min(n, dgramMax+1-total)
			remote = append(remote, unix.RemoteIovec{Base: uintptr(base), Len: n})
			total += n
		}
	}
	data := make([]byte, total)
	var oob []byte
	if ctlPtr != 0 && ctlLen > 0 {
		oob = make([]byte, ctlLen)
	}
	var n, oobn, rflags int
	var from unix.Sockaddr
	for {
		n, oobn, rflags, from, err = unix.RecvmsgBuffers(sock.fd, [][]byte{data}, oob, flags)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		return 0, err
	}
	// The data, scattered over the program's buffers as far as it goes.
	left := min(n, total)
	for _, r := range remote {
		if left == 0 {
			break
		}
		c := min(r.Len, left)
		off := min(n, total) - left
		if err := t.write(uint64(r.Base), data[off:off+c]); err != nil {
			return 0, err
		}
		left -= c
	}
	ino, _ := inode(sock.fd)
	var nameOut uint32
	if namePtr != 0 && from != nil {
		raw := sv.shownAddr(ino, sock.family, from)
		if c := min(nameLen, len(raw)); c > 0 {
			if err := t.write(namePtr, raw[:c]); err != nil {
				return 0, err
			}
		}
		nameOut = uint32(len(raw))
	}
	if oobn > 0 {
		if err := t.write(ctlPtr, oob[:oobn]); err != nil {
			return 0, err
		}
	}
	var b4 [4]byte
	var b8 [8]byte
	binary.NativeEndian.PutUint32(b4[:], nameOut)
	if err := t.write(msgPtr+uint64(l.namelen), b4[:]); err != nil {
		return 0, err
	}
	binary.NativeEndian.PutUint64(b8[:], uint64(oobn))
	if err := t.write(msgPtr+uint64(l.controllen), b8[:]); err != nil {
		return 0, err
	}
	binary.NativeEndian.PutUint32(b4[:], uint32(rflags))
	if err := t.write(msgPtr+48, b4[:]); err != nil { // msg_flags
		return 0, err
	}
	return n, nil
}

// recvmmsg: one message per call, which the call allows.
func (sv *supervisor) recvmmsg(t *trapped, sock trappedSocket, vec, vlen uint64, flags int) (answer, error) {
	if vlen == 0 {
		return answerContinue(), nil
	}
	n, err := sv.recvmsg(t, sock, vec, flags&^unix.MSG_WAITFORONE)
	if err != nil {
		return answerErr(err), err
	}
	var b4 [4]byte
	binary.NativeEndian.PutUint32(b4[:], uint32(n))
	if err := t.write(vec+uint64(msghdr64.size), b4[:]); err != nil {
		return answerErr(err), nil
	}
	return answerVal(1), nil
}

// recvKnown says whether a receive call on sock is the supervisor's to
// carry out.
func (sv *supervisor) recvKnown(sock trappedSocket) bool {
	if sock.sotype != unix.SOCK_DGRAM {
		return false
	}
	ino, ok := inode(sock.fd)
	return ok && sv.hidden.known(ino)
}
