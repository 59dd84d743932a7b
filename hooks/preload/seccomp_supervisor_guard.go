//go:build linux

package preload

import (
	"crypto/rand"
	"encoding/binary"
	"os"
	"strconv"
	"strings"
)

// The seccomp guard under the library (mode=auto for a dynamic program):
// the filter of mode=seccomp, so that what the library cannot see — a raw
// connect/sendto/sendmsg system call, a child that dropped LD_PRELOAD or
// is static — stops in the kernel and goes through the same handoff. The
// library's own calls stop too, and must come out as the library meant
// them:
//
//   - its control socket is AF_UNIX: continued (dispatch);
//   - the sockets it hands to the funnel are connected by funtun, which
//     the filter does not cover;
//   - its plain-direct fast-path connect continues in the kernel, as the
//     supervisor's own fast path decides (plainDirect), and it reports the
//     connect itself (libraryReports);
//   - its datagrams to the relay or DNS responder the funnel gave it are
//     sent there unchanged (relayPark.serves), not routed a second time;
//   - its listen() on the hidden listener is not trapped at all
//     (startSupervised), nor is bind() ever.
//
// Receive calls and getpeername on its sockets continue: the supervisor
// rewrites those of sockets it routed itself only.

// libraryReports says whether the library in the calling thread's process
// reports its fast-path connects to the funnel itself (it has a control
// connection of its own): then the supervisor does not log them a second
// time. Asked under --debug only.
func (sv *supervisor) libraryReports(tid int) bool {
	if !sv.guarded {
		return false
	}
	tgid, ok := threadGroup(tid)
	if !ok {
		return false
	}
	s := sv.srv
	s.connsMu.Lock()
	defer s.connsMu.Unlock()
	for c := range s.conns {
		if cred, err := peerCred(c); err == nil && int(cred.Pid) == tgid {
			return true
		}
	}
	return false
}

// threadGroup is the process a thread belongs to.
func threadGroup(tid int) (int, bool) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(tid) + "/status")
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, found := strings.CutPrefix(line, "Tgid:"); found {
			tgid, err := strconv.Atoi(strings.TrimSpace(v))
			return tgid, err == nil
		}
	}
	return 0, false
}

// guardPassEnv names the library's pass (see supervisorFilter) in the
// program's environment.
const guardPassEnv = "FUNTUN_GUARD_PASS"

// libraryPass is a fresh pass for one launch, with neither half zero: a
// connect made through the C library leaves whatever its registers held
// in the unused arguments, and zero is the likeliest of those.
func libraryPass() uint64 {
	for {
		var b [8]byte
		rand.Read(b[:])
		p := binary.NativeEndian.Uint64(b[:])
		if uint32(p) != 0 && p>>32 != 0 {
			return p
		}
	}
}
