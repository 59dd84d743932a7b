package netx

import (
	"os"
	"path/filepath"
	"testing"
)

func TestScanSocketTable(t *testing.T) {
	path := filepath.Join(t.TempDir(), "udp")
	table := "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n" +
		"  1: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 0000000000000000 0\n" +
		"  2: broken\n" +
		"  3: 00000000:13C4 00000000:0000 07 00000000:00000000 00:00000000 00000000  1000        0 77 2 0000000000000000 0\n"
	if err := os.WriteFile(path, []byte(table), 0o644); err != nil {
		t.Fatal(err)
	}
	var ports []uint16
	var inodes []uint64
	if !ScanSocketTable(path, func(port uint16, ino uint64) bool {
		ports, inodes = append(ports, port), append(inodes, ino)
		return true
	}) {
		t.Fatal("the table could not be read")
	}
	if len(ports) != 2 || ports[0] != 53 || inodes[0] != 4242 || ports[1] != 5060 || inodes[1] != 77 {
		t.Fatalf("ports %v inodes %v, want [53 5060] [4242 77]", ports, inodes)
	}
	n := 0
	ScanSocketTable(path, func(uint16, uint64) bool { n++; return false })
	if n != 1 {
		t.Fatalf("the scan went on after each said stop: %d calls", n)
	}
	if ScanSocketTable(filepath.Join(t.TempDir(), "none"), func(uint16, uint64) bool { return true }) {
		t.Fatal("a missing table was reported readable")
	}
}
