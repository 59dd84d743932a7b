//go:build !linux

package funnel

import (
	"net"
	"sync/atomic"
)

// spliceCopy copies through user space where the system has no splice(2).
func spliceCopy(dst, src *net.TCPConn, count *atomic.Int64) error {
	return bufferCopy(dst, src, count)
}

// unpaceLoopback: pacing of loopback sockets is a Linux matter (bbr without
// fq); other systems keep their defaults.
func unpaceLoopback(*net.TCPConn) {}
