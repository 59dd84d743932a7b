//go:build linux

package preload

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ourMachine is the ELF machine of this build: the library is built for
// it, and a program of another machine would run without it.
func ourMachine() elf.Machine {
	switch runtime.GOARCH {
	case "amd64":
		return elf.EM_X86_64
	case "arm64":
		return elf.EM_AARCH64
	case "386":
		return elf.EM_386
	case "arm":
		return elf.EM_ARM
	case "riscv64":
		return elf.EM_RISCV
	case "ppc64le", "ppc64":
		return elf.EM_PPC64
	case "s390x":
		return elf.EM_S390
	case "loong64":
		return elf.EM_LOONGARCH
	}
	return elf.EM_NONE
}

// checkHookable says why LD_PRELOAD would not take hold in the program at
// path: the dynamic loader ignores it for static programs (no PT_INTERP),
// in secure-execution mode (set-user-ID or set-group-ID to someone else,
// file capabilities), and cannot load our library into a program of
// another machine or word size. Scripts are judged by their interpreter.
func checkHookable(path string) error {
	return checkHookableDepth(path, 0)
}

func checkHookableDepth(path string, depth int) error {
	if depth > 4 {
		return nil // let the kernel judge an interpreter loop
	}
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		if fi.Mode()&os.ModeSetuid != 0 && int(st.Uid) != os.Geteuid() {
			return fmt.Errorf("%s is set-user-ID (owner uid %d): the system ignores LD_PRELOAD for it", path, st.Uid)
		}
		if fi.Mode()&os.ModeSetgid != 0 && int(st.Gid) != os.Getegid() {
			return fmt.Errorf("%s is set-group-ID (group gid %d): the system ignores LD_PRELOAD for it", path, st.Gid)
		}
	}
	if n, err := unix.Getxattr(path, "security.capability", nil); err == nil && n > 0 && os.Geteuid() != 0 {
		return fmt.Errorf("%s has file capabilities: the system ignores LD_PRELOAD for it", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil // exec will say what is wrong
	}
	defer f.Close()
	head := make([]byte, 4)
	if _, err := f.ReadAt(head, 0); err != nil {
		return nil
	}
	if bytes.HasPrefix(head, []byte("#!")) {
		interp, arg := shebang(f)
		if interp == "" {
			return nil
		}
		if err := checkHookableDepth(interp, depth+1); err != nil {
			return err
		}
		// `#!/usr/bin/env NAME`: NAME is the real interpreter.
		if filepath.Base(interp) == "env" && arg != "" && !strings.HasPrefix(arg, "-") {
			if p, err := exec.LookPath(arg); err == nil {
				return checkHookableDepth(p, depth+1)
			}
		}
		return nil
	}
	ef, err := elf.NewFile(f)
	if err != nil {
		return nil // not ELF: exec will say what is wrong
	}
	defer ef.Close()
	if ef.Machine != ourMachine() || ef.Class != ourClass() {
		return fmt.Errorf("%s is a %s %s program and the library is built for %s %s: the loader cannot put it in", path, ef.Class, ef.Machine, ourClass(), ourMachine())
	}
	dynamic := false
	for _, p := range ef.Progs {
		if p.Type == elf.PT_INTERP {
			dynamic = true
		}
	}
	if !dynamic {
		return errSelfCalling{fmt.Errorf("%s is statically linked: LD_PRELOAD cannot hook it", path)}
	}
	// Go programs make their socket system calls themselves, not through
	// the C library, even when they are linked dynamically.
	if ef.Section(".go.buildinfo") != nil || ef.Section(".note.go.buildid") != nil {
		return errSelfCalling{fmt.Errorf("%s is a Go program: it makes its system calls itself, so LD_PRELOAD cannot hook it", path)}
	}
	return nil
}

func ourClass() elf.Class {
	if strconv.IntSize == 64 {
		return elf.ELFCLASS64
	}
	return elf.ELFCLASS32
}

// shebang reads "#!INTERP [ARG]" from a script.
func shebang(f *os.File) (interp, arg string) {
	r := bufio.NewReader(&sectionReader{f: f})
	line, _ := r.ReadString('\n')
	line = strings.TrimSpace(strings.TrimPrefix(line, "#!"))
	fields := strings.Fields(line)
	if len(fields) == 0 {
		return "", ""
	}
	interp = fields[0]
	if len(fields) > 1 {
		arg = fields[1]
	}
	return interp, arg
}

type sectionReader struct {
	f   *os.File
	off int64
}

func (s *sectionReader) Read(p []byte) (int, error) {
	if len(p) > 512 {
		p = p[:512]
	}
	n, err := s.f.ReadAt(p, s.off)
	s.off += int64(n)
	return n, err
}

// FindLibrary locates libfuntun.so: $FUNTUN_PRELOAD, else next to the
// funtun binary (the build tree's bin/), else ../lib/funtun/ from it
// (make install PREFIX=P puts the binary in P/bin and the library in
// P/lib/funtun). The library is checked to be one the loader will load:
// an empty or foreign file would let the program run unhooked.
func FindLibrary() (string, error) { return findLibrary(checkLibrary) }

func findLibrary(checkLibrary func(string) error) (string, error) {
	if p := os.Getenv("FUNTUN_PRELOAD"); p != "" {
		abs, err := filepath.Abs(p)
		if err != nil {
			return "", err
		}
		if err := checkLibrary(abs); err != nil {
			return "", fmt.Errorf("FUNTUN_PRELOAD=%s: %v", p, err)
		}
		return abs, nil
	}
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("cannot find libfuntun.so: %v (set FUNTUN_PRELOAD=/path/to/libfuntun.so)", err)
	}
	if real, err := filepath.EvalSymlinks(exe); err == nil {
		exe = real
	}
	dir := filepath.Dir(exe)
	candidates := []string{
		filepath.Join(dir, "libfuntun.so"),
		filepath.Join(dir, "..", "lib", "funtun", "libfuntun.so"),
	}
	var problems []string
	for _, c := range candidates {
		if _, err := os.Stat(c); err != nil {
			continue
		}
		if err := checkLibrary(c); err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", c, err))
			continue
		}
		return filepath.Clean(c), nil
	}
	if len(problems) > 0 {
		return "", fmt.Errorf("libfuntun.so is unusable: %s (rebuild it with `make`)", strings.Join(problems, "; "))
	}
	return "", fmt.Errorf("cannot find libfuntun.so (looked in %s): build it with `make`, or set FUNTUN_PRELOAD=/path/to/libfuntun.so", strings.Join(candidates, " and "))
}

// checkLibrary makes sure path is a shared object of our machine that
// defines the symbols the hook stands on.
func checkLibrary(path string) error {
	ef, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("not a shared library: %v", err)
	}
	defer ef.Close()
	if ef.Type != elf.ET_DYN || ef.Machine != ourMachine() || ef.Class != ourClass() {
		return fmt.Errorf("not a %s %s shared library", ourClass(), ourMachine())
	}
	syms, err := ef.DynamicSymbols()
	if err != nil {
		return errors.New("has no dynamic symbols")
	}
	want := map[string]bool{"connect": false, "getaddrinfo": false}
	for _, s := range syms {
		if _, ok := want[s.Name]; ok && s.Section != elf.SHN_UNDEF {
			want[s.Name] = true
		}
	}
	for name, found := range want {
		if !found {
			return fmt.Errorf("does not define %s(): not a funtun library", name)
		}
	}
	return nil
}
