//go:build linux

package preload

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// The per-user daemon (hooks/daemon) serves many programs on one socket,
// each with the Server of its own profile. Every connection of the library
// to it begins with HELLO (FT_OP_HELLO), which the daemon answers itself
// before it hands the connection to a Server's ServeConn.

// Hello is a HELLO request.
type Hello struct {
	// Template is the template the program asked for (the C API,
	// FUNTUN_TEMPLATE) when HasTemplate; otherwise the daemon chooses by
	// the program.
	Template    string
	HasTemplate bool
}

// ErrNotHello: the connection's first request is another one (a library
// that takes the daemon for a launcher); it is left unread for ServeConn.
var ErrNotHello = errors.New("the first request is not HELLO")

// WireVersionError is a HELLO of another protocol version.
type WireVersionError struct{ Library uint32 }

func (e WireVersionError) Error() string {
	return fmt.Sprintf("the library speaks control protocol version %d and this funtun %d: install libfuntun and funtun from the same build", e.Library, wireVersion)
}

// ReadHello reads the connection's first request if it is a HELLO, waiting
// up to timeout for it. A request of another kind stays unread
// (ErrNotHello). Descriptors sent with a HELLO are closed.
func ReadHello(c *net.UnixConn, timeout time.Duration) (Hello, error) {
	if err := c.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return Hello{}, err
	}
	defer c.SetReadDeadline(time.Time{})
	rc, err := c.SyscallConn()
	if err != nil {
		return Hello{}, err
	}
	buf := make([]byte, reqSize+1)
	var n int
	var rerr error
	err = rc.Read(func(fd uintptr) bool {
		n, _, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_PEEK|unix.MSG_DONTWAIT|unix.MSG_TRUNC)
		return rerr != unix.EAGAIN
	})
	if err == nil {
		err = rerr
	}
	if err != nil {
		return Hello{}, err
	}
	if n == 0 {
		return Hello{}, io.EOF
	}
	if n < reqOp+4 || native.Uint32(buf[reqOp:]) != opHello {
		return Hello{}, ErrNotHello
	}
	// Ours: take it off the socket, with whatever came along.
	oob := make([]byte, unix.CmsgSpace(4*4))
	m, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return Hello{}, err
	}
	if oobn > 0 {
		if fd := takeFD(oob[:oobn]); fd >= 0 {
			unix.Close(fd)
		}
	}
	req, ok := decodeRequest(buf[:m])
	if !ok || n != m {
		return Hello{}, fmt.Errorf("a malformed HELLO (%d bytes; one is %d)", n, reqSize)
	}
	if req.Version != wireVersion {
		return Hello{}, WireVersionError{Library: req.Version}
	}
	return Hello{Template: req.Name, HasTemplate: req.Arg&helloTemplate != 0}, nil
}

// HelloAnswer is the daemon's answer to a HELLO.
type HelloAnswer struct {
	Errno     unix.Errno // 0: served
	Untouched bool       // no entry for the program: it is left alone
	Message   string     // why, on an error; the C API shows it
	Page      *os.File   // the reload-count page (read-only), when served
	// Chosen is the template the daemon chose by the program; the library
	// names it in its later HELLOs. Left out when it is longer than a
	// name may be.
	Chosen string
}

// AnswerHello sends the answer.
func AnswerHello(c *net.UnixConn, a HelloAnswer) error {
	var resp response
	resp.setErr(int32(a.Errno))
	if a.Untouched {
		resp.setFlags(helloUntouched)
	}
	msg := a.Message
	if a.Errno == 0 && !a.Untouched && len(a.Chosen) < nameMax {
		msg = a.Chosen
	}
	resp.setName(msg)
	var oob []byte
	if a.Page != nil && a.Errno == 0 && !a.Untouched {
		oob = unix.UnixRights(int(a.Page.Fd()))
	}
	_, _, err := c.WriteMsgUnix(resp[:], oob, nil)
	return err
}

// GenPageSize is the size of the reload-count page (struct ft_gen_page,
// FT_GEN_PAGE_SIZE); its first 8 bytes, in host order, count reloads.
const GenPageSize = genPageSize
