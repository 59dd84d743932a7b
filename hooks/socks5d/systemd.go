package socks5d

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// listenFDsStart is the first descriptor systemd passes (SD_LISTEN_FDS_START).
const listenFDsStart = 3

// systemdListeners takes the listening sockets systemd passed (socket
// activation: LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES). It returns none
// when the variables are absent or meant for another process. The
// variables are removed so that programs started from a map's exec: do not
// think the sockets are theirs.
func systemdListeners() ([]net.Listener, error) {
	pidText, fdsText := os.Getenv("LISTEN_PID"), os.Getenv("LISTEN_FDS")
	if fdsText == "" {
		return nil, nil
	}
	defer func() {
		os.Unsetenv("LISTEN_PID")
		os.Unsetenv("LISTEN_FDS")
		os.Unsetenv("LISTEN_FDNAMES")
	}()
	if pid, err := strconv.Atoi(pidText); err != nil || pid != os.Getpid() {
		return nil, nil
	}
	n, err := strconv.Atoi(fdsText)
	if err != nil || n < 0 || n > 1024 {
		return nil, fmt.Errorf("LISTEN_FDS=%q is not a descriptor count", fdsText)
	}
	names := strings.Split(os.Getenv("LISTEN_FDNAMES"), ":")
	var ls []net.Listener
	for i := 0; i < n; i++ {
		fd := listenFDsStart + i
		syscall.CloseOnExec(fd)
		name := "LISTEN_FD_" + strconv.Itoa(fd)
		if i < len(names) && names[i] != "" {
			name = names[i]
		}
		f := os.NewFile(uintptr(fd), name)
		l, err := net.FileListener(f)
		f.Close()
		if err != nil {
			for _, l := range ls {
				l.Close()
			}
			return nil, fmt.Errorf("systemd socket %d (%s) is not a listening stream socket: %v (use ListenStream= in the .socket unit)", fd, name, err)
		}
		ls = append(ls, l)
	}
	return ls, nil
}
