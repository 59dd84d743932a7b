//go:build linux

package preload

import (
	"encoding/binary"
	"fmt"
	"maps"
	"slices"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// sockCall is a trapped system call, whatever its number on an ABI.
type sockCall int

const (
	callConnect sockCall = iota + 1
	callSendto
	callSendmsg
	callSendmmsg
	callSocketcall // i386's multiplexer: the call is its first argument
	callGetpeername
	callRecvfrom
	callRecvmsg
	callRecvmmsg
	callListen
)

// addressed: calls trapped only when their fifth argument, an address,
// is not NULL (sendto to a connected socket, recvfrom that does not ask
// who sent).
func addressed(c sockCall) bool { return c == callSendto || c == callRecvfrom }

// socketcall(2)'s call numbers (linux/net.h) that are trapped; the others
// (socket, accept, recv…) carry nothing past the funnel and are not.
var socketcallCalls = map[uint64]sockCall{3: callConnect, 4: callListen, 7: callGetpeername, 11: callSendto, 16: callSendmsg, 20: callSendmmsg}

// sockABI is how a program enters the kernel on one ABI: the numbers of
// the calls that are trapped, and whether its pointers and sizes are 32
// bits wide (struct msghdr, iovec and cmsghdr in their compat layout).
type sockABI struct {
	audit uint32
	x32   bool // x86-64's x32: the x32 bit set in the number
	ptr32 bool
	calls map[int32]sockCall
	// listen is trapped only under a profile with a piece for incoming
	// flows (seccomp_supervisor_listen.go); it costs nothing otherwise.
	listen int32
}

// Numbers from each architecture's syscall table (asm/unistd*.h). The
// generic table (arm64, riscv64, loong64) has no socketcall. The receive
// calls are trapped on 64-bit ABIs only, where the supervisor puts back
// the source a relay hides (see seccomp_supervisor_recv.go).
var (
	amd64Calls   = map[int32]sockCall{42: callConnect, 44: callSendto, 46: callSendmsg, 307: callSendmmsg, 52: callGetpeername, 45: callRecvfrom, 47: callRecvmsg, 299: callRecvmmsg}
	x32Calls     = map[int32]sockCall{42: callConnect, 44: callSendto, 518: callSendmsg, 538: callSendmmsg, 52: callGetpeername}
	i386Calls    = map[int32]sockCall{362: callConnect, 369: callSendto, 370: callSendmsg, 345: callSendmmsg, 368: callGetpeername, 102: callSocketcall}
	genericCalls = map[int32]sockCall{203: callConnect, 206: callSendto, 211: callSendmsg, 269: callSendmmsg, 205: callGetpeername, 207: callRecvfrom, 212: callRecvmsg, 243: callRecvmmsg}
	armCalls     = map[int32]sockCall{283: callConnect, 290: callSendto, 296: callSendmsg, 374: callSendmmsg, 287: callGetpeername}
)

// sockABIs are the ABIs a program of this build's machine can call the
// kernel through, as seccompArches (the io_uring filter) lists them: a
// 64-bit program can switch to the 32-bit entry (int 0x80) and connect
// from there just the same.
func sockABIs(goarch string) ([]sockABI, error) {
	arches, err := seccompArches(goarch)
	if err != nil {
		return nil, fmt.Errorf("mode=seccomp is not available on %s", goarch)
	}
	var out []sockABI
	for _, a := range arches {
		switch a.audit {
		case unix.AUDIT_ARCH_X86_64:
			out = append(out, sockABI{audit: a.audit, calls: amd64Calls, listen: 50}, sockABI{audit: a.audit, x32: true, ptr32: true, calls: x32Calls, listen: 50})
		case unix.AUDIT_ARCH_I386:
			out = append(out, sockABI{audit: a.audit, ptr32: true, calls: i386Calls, listen: 363})
		case unix.AUDIT_ARCH_AARCH64, unix.AUDIT_ARCH_RISCV64, unix.AUDIT_ARCH_LOONGARCH64:
			out = append(out, sockABI{audit: a.audit, calls: genericCalls, listen: 201})
		case unix.AUDIT_ARCH_ARM:
			out = append(out, sockABI{audit: a.audit, ptr32: true, calls: armCalls, listen: 284})
		default:
			return nil, fmt.Errorf("mode=seccomp does not know the system calls of %s", goarch)
		}
	}
	return out, nil
}

// lookup finds the ABI and the call a notification is about.
func lookupCall(abis []sockABI, arch uint32, nr int32) (sockABI, sockCall, bool) {
	for _, a := range abis {
		if a.audit != arch || a.x32 != (nr&x32SyscallBit != 0) {
			continue
		}
		if nr&^x32SyscallBit == a.listen {
			return a, callListen, true
		}
		c, ok := a.calls[nr&^x32SyscallBit]
		return a, c, ok
	}
	return sockABI{}, 0, false
}

// seccomp_data.args[i] is 64 bits wide on every ABI; a 32-bit ABI's
// arguments are zero-extended, so its upper half needs no test.
func argOffset(i int) (lo, hi uint32) {
	base := uint32(16 + 8*i)
	if nativeIsBigEndian() {
		return base + 4, base
	}
	return base, base + 4
}

func nativeIsBigEndian() bool {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], 1)
	return b[0] == 0
}

// supervisorFilter is the classic BPF program of mode=seccomp: connect,
// sendmsg, sendmmsg, and sendto with an address (a NULL dest_addr sends on
// a connected socket, which a connect the supervisor saw has already
// decided) go to the supervisor, and so do getpeername, recvmsg, recvmmsg
// and recvfrom asking the source, and listen when trapListen; io_uring's
// calls fail with ENOSYS as in the io_uring filter, unless allowIOUring;
// everything else is allowed.
//
// Under the library (the guard of mode=auto, light), only connect and
// sendto with an address stop: they are how a call the library did not
// see reaches somewhere new. The rest is there to make sockets the
// supervisor redirected look right to a program without the library, and
// stopping them would cost every sendmsg and recvmsg of the program's
// Unix sockets (its D-Bus, X11 and Wayland traffic) a round trip through
// funtun — about 13 times the call's own cost. What the light filter lets
// pass unseen is a raw sendmsg/sendmmsg with a destination address in the
// message, and correct source addresses on datagram sockets the
// supervisor relayed (a static child's resolver then fails rather than
// leaks); mode=seccomp stops both.
//
// pass (light only, 0 for none): the library connects literal addresses
// itself when the profile is plain direct (its fast path), a connect the
// supervisor would only let go on. It calls connect with pass in the
// otherwise unused fourth and fifth arguments (32 bits each), and the
// filter lets those through without the round trip — 60 µs a connect
// here. A program could forge them, having read the environment; the
// guard catches mistakes and blind spots, it is not a sandbox against the
// program itself (docs/hooks/seccomp.md).
func supervisorFilter(abis []sockABI, allowIOUring, trapListen, light bool, pass uint64) []bpf.Instruction {
	trapped := func(c sockCall) bool { return !light || c == callConnect || c == callSendto }
	notify := bpf.RetConstant{Val: unix.SECCOMP_RET_USER_NOTIF}
	allow := bpf.RetConstant{Val: unix.SECCOMP_RET_ALLOW}
	deny := bpf.RetConstant{Val: unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS)}

	// body is the part for one ABI, with the number in the accumulator;
	// every path through it returns.
	body := func(a sockABI) []bpf.Instruction {
		var p []bpf.Instruction
		if a.x32 {
			p = append(p, bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: ^uint32(x32SyscallBit)})
		}
		var socketcall int32 = -1
		if trapListen {
			p = append(p, bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: uint32(a.listen), SkipTrue: 1}, notify)
		}
		for _, nr := range slices.Sorted(maps.Keys(a.calls)) {
			switch c := a.calls[nr]; {
			case c != callSocketcall && !trapped(c):
				continue
			case c == callConnect && light && pass != 0 && !a.ptr32:
				sub := passTest(pass, notify, allow)
				p = append(p, bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: uint32(nr), SkipTrue: uint8(len(sub))})
				p = append(p, sub...)
			case addressed(c):
				// A block of its own that returns on every path, entered
				// only for its number: the accumulator is the number again
				// for the next test.
				sub := addressTest(a.ptr32, notify, allow)
				p = append(p, bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: uint32(nr), SkipTrue: uint8(len(sub))})
				p = append(p, sub...)
			case c == callSocketcall:
				socketcall = nr
			default:
				p = append(p, bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: uint32(nr), SkipTrue: 1}, notify)
			}
		}
		if !allowIOUring {
			p = append(p,
				bpf.JumpIf{Cond: bpf.JumpLessThan, Val: sysIOUringSetup, SkipTrue: 2},
				bpf.JumpIf{Cond: bpf.JumpGreaterThan, Val: sysIOUringRegister, SkipTrue: 1},
				deny)
		}
		if socketcall >= 0 {
			var sub []bpf.Instruction
			lo, _ := argOffset(0)
			sub = append(sub, bpf.LoadAbsolute{Off: lo, Size: 4})
			var calls []uint64
			for _, c := range slices.Sorted(maps.Keys(socketcallCalls)) {
				if k := socketcallCalls[c]; (k != callListen || trapListen) && trapped(k) {
					calls = append(calls, c)
				}
			}
			for i, c := range calls {
				sub = append(sub, bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(c), SkipTrue: uint8(len(calls) - i)})
			}
			sub = append(sub, allow, notify)
			p = append(p, bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: uint32(socketcall), SkipTrue: uint8(len(sub))})
			p = append(p, sub...)
		}
		return append(p, allow)
	}

	var prog []bpf.Instruction
	for i := 0; i < len(abis); i++ {
		a := abis[i]
		var b []bpf.Instruction
		b = append(b, bpf.LoadAbsolute{Off: seccompDataNr, Size: 4})
		if i+1 < len(abis) && abis[i+1].audit == a.audit && abis[i+1].x32 {
			// x86-64 and x32 share the audit arch: the x32 bit tells.
			native, x32 := body(a), body(abis[i+1])
			b = append(b, bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: x32SyscallBit, SkipTrue: uint8(len(native))})
			b = append(append(b, native...), x32...)
			i++
		} else {
			b = append(b, body(a)...)
		}
		prog = append(prog,
			bpf.LoadAbsolute{Off: seccompDataArch, Size: 4},
			bpf.JumpIf{Cond: bpf.JumpEqual, Val: a.audit, SkipFalse: uint8(len(b))})
		prog = append(prog, b...)
	}
	// An ABI this build does not know (none on the machines above): its
	// calls cannot be read, so none of them may pass unseen.
	return append(prog, bpf.RetConstant{Val: unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS)})
}

// passTest allows a connect whose fourth and fifth arguments carry pass,
// the library's, and notifies every other.
func passTest(pass uint64, notify, allow bpf.Instruction) []bpf.Instruction {
	lo3, _ := argOffset(3)
	lo4, _ := argOffset(4)
	return []bpf.Instruction{
		bpf.LoadAbsolute{Off: lo3, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: uint32(pass), SkipTrue: 3},
		bpf.LoadAbsolute{Off: lo4, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: uint32(pass >> 32), SkipTrue: 1},
		allow,
		notify,
	}
}

// addressTest notifies when the fifth argument is not NULL.
func addressTest(ptr32 bool, notify, allow bpf.Instruction) []bpf.Instruction {
	lo, hi := argOffset(4)
	if ptr32 {
		return []bpf.Instruction{
			bpf.LoadAbsolute{Off: lo, Size: 4},
			bpf.JumpIf{Cond: bpf.JumpEqual, Val: 0, SkipTrue: 1},
			notify,
			allow,
		}
	}
	return []bpf.Instruction{
		bpf.LoadAbsolute{Off: lo, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: 0, SkipTrue: 2},
		bpf.LoadAbsolute{Off: hi, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: 0, SkipTrue: 1},
		notify,
		allow,
	}
}
