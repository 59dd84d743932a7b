//go:build linux

package preload

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// io_uring's calls. Since Linux 5.1 a new system call has the same number
// on every architecture the filter knows (alpha and mips aside), so one
// range serves the native and the compat ABI alike.
const (
	sysIOUringSetup    = 425 // io_uring_setup
	sysIOUringRegister = 427 // io_uring_register; io_uring_enter is 426
)

// seccompArch is one ABI a program of this build can call the kernel
// through: a 64-bit program can also enter through the 32-bit ABI (int
// 0x80, or x32's flagged numbers on x86-64), and an io_uring opened that
// way bypasses the library just the same.
type seccompArch struct {
	audit  uint32
	nrMask uint32 // clears the x32 flag so that x32 numbers match too
}

const x32SyscallBit = 0x40000000

func seccompArches(goarch string) ([]seccompArch, error) {
	all := ^uint32(0)
	switch goarch {
	case "amd64":
		return []seccompArch{{unix.AUDIT_ARCH_X86_64, ^uint32(x32SyscallBit)}, {unix.AUDIT_ARCH_I386, all}}, nil
	case "386":
		return []seccompArch{{unix.AUDIT_ARCH_I386, all}}, nil
	case "arm64":
		return []seccompArch{{unix.AUDIT_ARCH_AARCH64, all}, {unix.AUDIT_ARCH_ARM, all}}, nil
	case "arm":
		return []seccompArch{{unix.AUDIT_ARCH_ARM, all}}, nil
	case "riscv64":
		return []seccompArch{{unix.AUDIT_ARCH_RISCV64, all}}, nil
	case "ppc64le":
		return []seccompArch{{unix.AUDIT_ARCH_PPC64LE, all}}, nil
	case "s390x":
		return []seccompArch{{unix.AUDIT_ARCH_S390X, all}}, nil
	case "loong64":
		return []seccompArch{{unix.AUDIT_ARCH_LOONGARCH64, all}}, nil
	}
	return nil, fmt.Errorf("no io_uring filter for %s", goarch)
}

// Offsets in struct seccomp_data.
const (
	seccompDataNr   = 0
	seccompDataArch = 4
)

// ioUringFilter is a classic BPF program for seccomp: the io_uring calls
// fail with ENOSYS, as on a kernel without io_uring, which is what makes
// liburing users and runtimes fall back to ordinary calls (EPERM would
// read as "io_uring disabled by policy" to some and as a hard error to
// others). Everything else, on every ABI, is allowed.
func ioUringFilter(arches []seccompArch) []bpf.Instruction {
	deny := bpf.RetConstant{Val: unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS)}
	allow := bpf.RetConstant{Val: unix.SECCOMP_RET_ALLOW}
	var prog []bpf.Instruction
	for _, a := range arches {
		check := []bpf.Instruction{bpf.LoadAbsolute{Off: seccompDataNr, Size: 4}}
		if a.nrMask != ^uint32(0) {
			check = append(check, bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: a.nrMask})
		}
		check = append(check,
			bpf.JumpIf{Cond: bpf.JumpLessThan, Val: sysIOUringSetup, SkipTrue: 2},
			bpf.JumpIf{Cond: bpf.JumpGreaterThan, Val: sysIOUringRegister, SkipTrue: 1},
			deny,
			allow,
		)
		prog = append(prog,
			bpf.LoadAbsolute{Off: seccompDataArch, Size: 4},
			bpf.JumpIf{Cond: bpf.JumpEqual, Val: a.audit, SkipFalse: uint8(len(check))})
		prog = append(prog, check...)
	}
	return append(prog, allow)
}

func sockFilter(prog []bpf.Instruction) ([]unix.SockFilter, error) {
	raw, err := bpf.Assemble(prog)
	if err != nil {
		return nil, err
	}
	out := make([]unix.SockFilter, len(raw))
	for i, r := range raw {
		out[i] = unix.SockFilter{Code: r.Op, Jt: r.Jt, Jf: r.Jf, K: r.K}
	}
	return out, nil
}

// errNoFilter is why the program cannot be started with io_uring closed.
type errNoFilter struct{ err error }

func (e errNoFilter) Error() string {
	return "cannot install the seccomp filter that keeps the program off io_uring: " + e.err.Error()
}
func (e errNoFilter) Unwrap() error { return e.err }

// denyIOUringHere installs the filter on the calling thread, and with it
// no_new_privs, which the kernel demands of an unprivileged filter: a
// program executed from this thread (and all it starts) keeps both.
func denyIOUringHere() error {
	arches, err := seccompArches(runtime.GOARCH)
	if err != nil {
		return err
	}
	filter, err := sockFilter(ioUringFilter(arches))
	if err != nil {
		return err
	}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("prctl(PR_SET_NO_NEW_PRIVS): %w", err)
	}
	// Without TSYNC: the filter is for this thread only, never the funnel's.
	_, _, errno := unix.RawSyscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, 0, uintptr(unsafe.Pointer(&prog)))
	if errno == unix.ENOSYS {
		// Linux before 3.17 has the filter mode through prctl only.
		errno = 0
		if err := unix.Prctl(unix.PR_SET_SECCOMP, unix.SECCOMP_MODE_FILTER, uintptr(unsafe.Pointer(&prog)), 0, 0); err != nil {
			errno = err.(unix.Errno)
		}
	}
	runtime.KeepAlive(filter)
	if errno != 0 {
		if errno == unix.EINVAL {
			return errors.New("seccomp filters are not available in this kernel (EINVAL)")
		}
		return fmt.Errorf("seccomp(SECCOMP_SET_MODE_FILTER): %w", errno)
	}
	return nil
}

// startWithoutIOUring starts the program from a thread of its own that
// carries the filter: the child inherits it across fork and exec, the
// funnel's threads never have it. The thread is never unlocked, so Go
// ends it with the goroutine rather than reuse it; while locked, the
// runtime starts new threads from its template thread, not from this one.
func startWithoutIOUring(start func() (*os.Process, error)) (*os.Process, error) {
	type result struct {
		proc *os.Process
		err  error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		if err := denyIOUringHere(); err != nil {
			done <- result{err: errNoFilter{err}}
			return
		}
		proc, err := start()
		done <- result{proc, err}
	}()
	r := <-done
	return r.proc, r.err
}
