//go:build linux

package sixbed4router

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// openTUN attaches to the TUN device name (made with `ip tuntap add`, or
// created here when running as root), without the packet-info header:
// each read and write is one IP packet.
func openTUN(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("opening /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("attaching to TUN device %s (root, or a device made with `ip tuntap add dev %s mode tun user $USER`): %w", name, name, err)
	}
	// Non-blocking, so that the file reads through Go's poller and Close
	// ends a pending Read.
	return os.NewFile(uintptr(fd), "/dev/net/tun:"+name), nil
}
