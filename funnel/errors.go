package funnel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
)

// Kind classifies why a flow failed, so that each hook can say it in its own
// language: a SOCKS5 reply code, an errno for a hooked program, a close.
type Kind int

const (
	KindGeneral          Kind = iota + 1 // SOCKS 1, EIO
	KindDenied                           // SOCKS 2, EACCES
	KindNetUnreachable                   // SOCKS 3, ENETUNREACH
	KindHostUnreachable                  // SOCKS 4, EHOSTUNREACH (also: name not found)
	KindRefused                          // SOCKS 5, ECONNREFUSED
	KindTimeout                          // SOCKS 6, ETIMEDOUT
	KindNotSupported                     // SOCKS 7, EOPNOTSUPP
	KindAddrNotSupported                 // SOCKS 8, EAFNOSUPPORT
)

var kindNames = map[Kind]string{
	KindGeneral: "failure", KindDenied: "denied", KindNetUnreachable: "network unreachable",
	KindHostUnreachable: "host unreachable", KindRefused: "connection refused", KindTimeout: "timed out",
	KindNotSupported: "not supported", KindAddrNotSupported: "address type not supported",
}

func (k Kind) String() string { return kindNames[k] }

// SOCKSReply is the RFC 1928 reply code for this kind.
func (k Kind) SOCKSReply() byte {
	if k < KindGeneral || k > KindAddrNotSupported {
		return 1
	}
	return byte(k)
}

// Errno is what a hooked program's connect() sees.
func (k Kind) Errno() syscall.Errno {
	switch k {
	case KindDenied:
		return syscall.EACCES
	case KindNetUnreachable:
		return syscall.ENETUNREACH
	case KindHostUnreachable:
		return syscall.EHOSTUNREACH
	case KindRefused:
		return syscall.ECONNREFUSED
	case KindTimeout:
		return syscall.ETIMEDOUT
	case KindNotSupported:
		return syscall.EOPNOTSUPP
	case KindAddrNotSupported:
		return syscall.EAFNOSUPPORT
	}
	return syscall.EIO
}

// FlowError is an error with a Kind, made by pieces that know the reason
// better than an errno would say it (deny, an upstream's reply code).
type FlowError struct {
	Kind Kind
	Err  error
}

func (e *FlowError) Error() string { return e.Err.Error() }
func (e *FlowError) Unwrap() error { return e.Err }

// Errorf makes a FlowError of the given kind.
func Errorf(k Kind, format string, args ...any) error {
	return &FlowError{Kind: k, Err: fmt.Errorf(format, args...)}
}

// Classify finds the kind of err: a FlowError's own kind, else from the
// errno or the resolver's answer underneath.
func Classify(err error) Kind {
	if err == nil {
		return 0
	}
	var fe *FlowError
	if errors.As(err, &fe) {
		return fe.Kind
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		if dnsErr.IsTimeout {
			return KindTimeout
		}
		return KindHostUnreachable
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		switch errno {
		case syscall.ECONNREFUSED:
			return KindRefused
		case syscall.ENETUNREACH, syscall.ENETDOWN:
			return KindNetUnreachable
		case syscall.EHOSTUNREACH, syscall.EHOSTDOWN:
			return KindHostUnreachable
		case syscall.ETIMEDOUT:
			return KindTimeout
		case syscall.EACCES, syscall.EPERM:
			return KindDenied
		case syscall.EAFNOSUPPORT, syscall.EADDRNOTAVAIL:
			return KindAddrNotSupported
		}
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		return KindTimeout
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return KindTimeout
	}
	return KindGeneral
}
