package funnel

import (
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// splicePipe is a kernel pipe used as the splice buffer between two sockets,
// taken from a shared bounded free list (getPipe) by every relay, the
// engine's and a hook's own (socks5d's event loops).
// Its descriptors are int32, as the kernel's are: an idle flow of the
// event loops holds two of these (empty) in its record.
type splicePipe struct{ R, W int32 }

// pipeSize is what a pooled pipe holds.
const pipeSize = 256 << 10

// pipes is a bounded free list. Pipes are taken only while bytes are in
// flight and given back once drained, so an idle flow holds no pipe: a relay
// parked inside splice would hold two descriptors per direction per flow and
// run out of files at a few thousand sessions.
var pipes = struct {
	sync.Mutex
	free []splicePipe
}{}

const maxFreePipes = 64

// getPipe takes an empty pipe from the free list, or makes one.
func getPipe() (splicePipe, error) {
	pipes.Lock()
	if n := len(pipes.free); n > 0 {
		p := pipes.free[n-1]
		pipes.free = pipes.free[:n-1]
		pipes.Unlock()
		return p, nil
	}
	pipes.Unlock()
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return splicePipe{}, os.NewSyscallError("pipe2", err)
	}
	// A larger pipe moves more per splice; failure just keeps the default.
	unix.FcntlInt(uintptr(fds[1]), unix.F_SETPIPE_SZ, pipeSize)
	return splicePipe{R: int32(fds[0]), W: int32(fds[1])}, nil
}

// Put gives an empty pipe back.
func (p splicePipe) Put() {
	pipes.Lock()
	if len(pipes.free) < maxFreePipes {
		pipes.free = append(pipes.free, p)
		pipes.Unlock()
		return
	}
	pipes.Unlock()
	p.Close()
}

// Close is for a pipe that may still hold bytes after an error.
func (p splicePipe) Close() {
	unix.Close(int(p.R))
	unix.Close(int(p.W))
}

// spliceCopy moves bytes from src to dst through a pooled pipe with
// splice(2): the bytes stay in the kernel. It waits for src to be readable
// before it takes a pipe, and gives the pipe back when it is drained.
func spliceCopy(dst, src *net.TCPConn, count *atomic.Int64) error {
	srcRaw, err := src.SyscallConn()
	if err != nil {
		return bufferCopy(dst, src, count)
	}
	dstRaw, err := dst.SyscallConn()
	if err != nil {
		return bufferCopy(dst, src, count)
	}
	for {
		var p splicePipe
		var havePipe bool
		var moved int
		var serr error
		// The callback runs when the poller says src is readable; EAGAIN
		// returns false, which parks us in the poller holding no pipe.
		rerr := srcRaw.Read(func(fd uintptr) bool {
			if !havePipe {
				p, serr = getPipe()
				if serr != nil {
					return true
				}
				havePipe = true
			}
			n, e := unix.Splice(int(fd), nil, int(p.W), nil, pipeSize, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			if e == unix.EINTR {
				return false
			}
			if e == unix.EAGAIN {
				p.Put()
				havePipe = false
				return false
			}
			moved, serr = int(n), e
			return true
		})
		if rerr == nil && serr != nil {
			rerr = os.NewSyscallError("splice", serr)
		}
		if rerr != nil {
			if havePipe {
				p.Put()
			}
			return rerr
		}
		if moved == 0 { // end of stream
			p.Put()
			return nil
		}
		left := moved
		werr := dstRaw.Write(func(fd uintptr) bool {
			for left > 0 {
				n, e := unix.Splice(int(p.R), nil, int(fd), nil, left, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
				if e == unix.EINTR {
					continue
				}
				if e == unix.EAGAIN {
					return false
				}
				if e != nil {
					serr = e
					return true
				}
				left -= int(n)
			}
			return true
		})
		if werr == nil && serr != nil {
			werr = os.NewSyscallError("splice", serr)
		}
		if count != nil {
			count.Add(int64(moved - left))
		}
		if werr != nil {
			p.Close()
			return werr
		}
		p.Put()
	}
}

// unpaceLoopback moves a loopback socket off a pacing congestion control.
// bbr (the default on some systems) paces each segment with a kernel timer
// when no fq qdisc does it, and on loopback there is no path to probe: a
// spliced relay through two bbr sockets runs at about 0.6x of a direct
// connection, through reno sockets at about 0.9x (bench/forward.sh). Reno is
// built into every kernel and allowed to unprivileged users, unlike cubic.
// Sockets to other hosts keep the administrator's choice.
func unpaceLoopback(c *net.TCPConn) {
	ra, ok := c.RemoteAddr().(*net.TCPAddr)
	if !ok || !ra.IP.IsLoopback() || !systemPaces() {
		return
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) { unpaceFD(int(fd), ra.AddrPort().Addr()) })
}

// unpaceFD is unpaceLoopback for a raw socket of a hook that manages its
// own descriptors (socks5d's event loop): peer is the address at the other
// end.
func unpaceFD(fd int, peer netip.Addr) {
	if peer.Unmap().IsLoopback() && systemPaces() {
		unix.SetsockoptString(fd, unix.IPPROTO_TCP, unix.TCP_CONGESTION, "reno")
	}
}

// systemPaces reports whether new sockets get bbr, read once: our sockets
// keep the system default, so a short flow need not ask each one.
var systemPaces = sync.OnceValue(func() bool {
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_congestion_control")
	return err == nil && strings.HasPrefix(string(b), "bbr")
})
