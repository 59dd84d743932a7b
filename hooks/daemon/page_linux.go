//go:build linux

package daemon

import (
	"fmt"
	"os"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/funtun/funtun/hooks/preload"
)

// genPage is the page whose first 8 bytes count the daemon's reloads
// (struct ft_gen_page). Every library the daemon serves maps it read-only
// and checks it before it uses the plain-direct fast path, so a reload
// withdraws that standing permission at once, with no message to send to
// each program.
type genPage struct {
	mem []byte   // our writable mapping
	ro  *os.File // a read-only descriptor of it, handed to the libraries
}

func newGenPage() (*genPage, error) {
	fd, err := unix.MemfdCreate("funtun-reloads", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %v", err)
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, preload.GenPageSize); err != nil {
		return nil, fmt.Errorf("ftruncate: %v", err)
	}
	// A page that shrank under them would kill the programs that map it.
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		return nil, fmt.Errorf("sealing: %v", err)
	}
	mem, err := unix.Mmap(fd, 0, preload.GenPageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap: %v", err)
	}
	// Reopened read-only: a library may map it but never write to it.
	ro, err := os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", fd), os.O_RDONLY, 0)
	if err != nil {
		unix.Munmap(mem)
		return nil, err
	}
	g := &genPage{mem: mem, ro: ro}
	// From 1: a library that knew an earlier daemon has 0 as the count its
	// permission was given under, and that must never match.
	g.bump()
	return g, nil
}

func (g *genPage) counter() *uint64 { return (*uint64)(unsafe.Pointer(&g.mem[0])) }

func (g *genPage) bump() { atomic.AddUint64(g.counter(), 1) }

func (g *genPage) generation() uint64 { return atomic.LoadUint64(g.counter()) }
