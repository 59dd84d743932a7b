//go:build linux

package preload

import (
	"encoding/binary"
	"net/netip"

	"golang.org/x/sys/unix"
)

// The control protocol between libfuntun.so and the funnel (the launcher's
// or the per-user daemon's); the C side is
// preload/funtun_wire.h, which documents each operation. Change both
// together and bump wireVersion. One SOCK_SEQPACKET packet is one message:
// the library sends a request (with the program's socket as SCM_RIGHTS
// when the operation acts on it) and waits for one response. Integers are
// in host byte order; addresses are raw sockaddr_in / sockaddr_in6 bytes.
const (
	wireVersion = 4
	nameMax     = 256
	addrMax     = 28

	reqSize  = 304
	respSize = 328

	// request offsets
	reqVersion = 0
	reqOp      = 4
	reqArg     = 8
	reqFlags   = 12
	reqAddrLen = 16
	reqAddr    = 20
	reqName    = 48

	// response offsets
	respErr      = 0
	respFlags    = 4
	respAddrLen  = 8
	respAddr     = 12
	respAddr2Len = 40
	respAddr2    = 44
	respName     = 72
)

const (
	opConnect  = 1
	opResolve  = 2
	opReverse  = 3
	opListen   = 5
	opAccepted = 6
	opUDPAssoc = 7
	opUnlisten = 9
	// One-way: the library expects no answer (see funtun_wire.h).
	opConnectFailed    = 10
	opConnectedFast    = 11
	opRefusedUncarried = 12
	// The first request on a connection to the per-user daemon, which
	// answers it itself (see Hello) before the connection reaches a Server.
	opHello = 14
)

// HELLO's request arg and response flags.
const (
	helloTemplate  = 1
	helloUntouched = 1
	// genPageSize is the size of the page HELLO hands over; its first 8
	// bytes count the daemon's reloads (struct ft_gen_page).
	genPageSize = 4096
)

// oneWay: operations the funnel never answers.
func oneWay(op uint32) bool {
	return op == opConnectFailed || op == opConnectedFast || op == opRefusedUncarried
}

// Response flags of CONNECT.
const (
	connectPlainDirect = 1
	connectLogFast     = 2
)

const (
	listenNative = 1
	listenTaken  = 2
)

// EAI_* codes of glibc, for RESOLVE and REVERSE answers.
const (
	eaiFail   = -4
	eaiNoName = -2
)

var native = binary.NativeEndian

type request struct {
	Version uint32
	Op      uint32
	Arg     int32
	Flags   uint32
	Addr    []byte // raw sockaddr, at most addrMax bytes
	Name    string
}

func decodeRequest(b []byte) (request, bool) {
	if len(b) != reqSize {
		return request{}, false
	}
	r := request{
		Version: native.Uint32(b[reqVersion:]),
		Op:      native.Uint32(b[reqOp:]),
		Arg:     int32(native.Uint32(b[reqArg:])),
		Flags:   native.Uint32(b[reqFlags:]),
	}
	n := native.Uint32(b[reqAddrLen:])
	if n > addrMax {
		return request{}, false
	}
	r.Addr = b[reqAddr : reqAddr+int(n)]
	name := b[reqName : reqName+nameMax]
	for i, c := range name {
		if c == 0 {
			name = name[:i]
			break
		}
	}
	r.Name = string(name)
	return r, true
}

// response is built in place in a reqSize-independent buffer; the zero
// value answers "ok".
type response [respSize]byte

func (r *response) setErr(e int32)     { native.PutUint32(r[respErr:], uint32(e)) }
func (r *response) setFlags(f uint32)  { native.PutUint32(r[respFlags:], f) }
func (r *response) setAddr(sa []byte)  { r.put(respAddrLen, respAddr, sa) }
func (r *response) setAddr2(sa []byte) { r.put(respAddr2Len, respAddr2, sa) }
func (r *response) setName(s string) {
	if len(s) >= nameMax {
		s = s[:nameMax-1]
	}
	copy(r[respName:respName+nameMax], s)
}

func (r *response) put(lenOff, off int, sa []byte) {
	n := copy(r[off:off+addrMax], sa)
	native.PutUint32(r[lenOff:], uint32(n))
}

// Raw sockaddrs, as the C library reads and writes them.

// parseSockaddr reads a raw sockaddr_in or sockaddr_in6.
func parseSockaddr(b []byte) (netip.AddrPort, uint32, bool) {
	if len(b) < 2 {
		return netip.AddrPort{}, 0, false
	}
	switch native.Uint16(b) {
	case unix.AF_INET:
		if len(b) < 8 {
			return netip.AddrPort{}, 0, false
		}
		port := binary.BigEndian.Uint16(b[2:])
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), port), 0, true
	case unix.AF_INET6:
		if len(b) < 24 {
			return netip.AddrPort{}, 0, false
		}
		port := binary.BigEndian.Uint16(b[2:])
		var scope uint32
		if len(b) >= 28 {
			scope = native.Uint32(b[24:])
		}
		return netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[8:24])), port), scope, true
	}
	return netip.AddrPort{}, 0, false
}

// rawSockaddr writes ap as a sockaddr of the given family (AF_INET6 with
// an IPv4 address gives the v4-mapped form).
func rawSockaddr(ap netip.AddrPort, family int) []byte {
	if family == unix.AF_INET {
		b := make([]byte, 16)
		native.PutUint16(b, unix.AF_INET)
		binary.BigEndian.PutUint16(b[2:], ap.Port())
		a4 := ap.Addr().Unmap().As4()
		copy(b[4:], a4[:])
		return b
	}
	b := make([]byte, 28)
	native.PutUint16(b, unix.AF_INET6)
	binary.BigEndian.PutUint16(b[2:], ap.Port())
	a16 := ap.Addr().As16()
	copy(b[8:], a16[:])
	return b
}

// unixSockaddr is ap for unix.Connect/Bind on a socket of the given family.
func unixSockaddr(ap netip.AddrPort, family int) unix.Sockaddr {
	if family == unix.AF_INET {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().Unmap().As4()}
	}
	return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
}

// addrPortOf converts what unix.Getsockname/Getpeername return.
func addrPortOf(sa unix.Sockaddr) (netip.AddrPort, bool) {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)), true
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port)), true
	}
	return netip.AddrPort{}, false
}
