package netx

import (
	"bufio"
	"os"
	"strconv"
	"strings"
)

// ScanSocketTable reads one of Linux's socket tables (/proc/net/udp,
// /proc/PID/net/tcp6, …) and calls each with every socket's local port
// and inode, while it returns true. It reports whether the table could be
// read.
func ScanSocketTable(path string, each func(localPort uint16, inode uint64) bool) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan() // the heading
	for sc.Scan() {
		// sl local rem st tx:rx tr:when retrnsmt uid timeout inode …
		fields := strings.Fields(sc.Text())
		if len(fields) <= 9 {
			continue
		}
		_, hexPort, ok := strings.Cut(fields[1], ":")
		port, perr := strconv.ParseUint(hexPort, 16, 16)
		ino, err := strconv.ParseUint(fields[9], 10, 64)
		if !ok || perr != nil || err != nil {
			continue
		}
		if !each(uint16(port), ino) {
			break
		}
	}
	return sc.Err() == nil
}
