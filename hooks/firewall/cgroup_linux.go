//go:build linux

package firewall

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// nftCgroupRoot is where nft itself looks cgroup v2 paths up; a path the
// dry-run script names must be relative to it.
const nftCgroupRoot = "/sys/fs/cgroup"

// resolveCgroup turns a cgroup v2 path into what the kernel compares: the
// directory's inode number is the cgroup's id, and its depth the level.
func resolveCgroup(p string) (cgroupSel, error) {
	clean, level, err := cgroupLevel(p)
	if err != nil {
		return cgroupSel{}, err
	}
	mount, rootDepth, err := cgroup2Mount()
	if err != nil {
		return cgroupSel{}, err
	}
	dir := filepath.Join(mount, clean)
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return cgroupSel{}, fmt.Errorf("no such cgroup (%s: %v)", dir, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return cgroupSel{}, fmt.Errorf("%s is not a cgroup directory", dir)
	}
	sel := cgroupSel{path: clean, level: level + rootDepth, id: st.Ino}
	switch {
	case mount == nftCgroupRoot:
		sel.nftPath = clean
	case strings.HasPrefix(mount, nftCgroupRoot+"/"):
		// A hybrid layout mounts cgroup2 at /sys/fs/cgroup/unified: nft
		// finds the same directory by the longer path.
		sel.nftPath = strings.TrimPrefix(mount, nftCgroupRoot+"/") + "/" + clean
	}
	return sel, nil
}

// cgroup2Mount finds where cgroup2 is mounted, and how deep in the
// hierarchy that mount's root is (a bind of a subtree starts below level
// 0, and the kernel counts levels from the real root).
func cgroup2Mount() (string, uint32, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL…] - FSTYPE SOURCE SUPER
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if sep < 5 || sep+1 >= len(fields) || fields[sep+1] != "cgroup2" {
			continue
		}
		root := strings.Trim(unescapeMountinfo(fields[3]), "/")
		depth := uint32(0)
		if root != "" {
			depth = uint32(strings.Count(root, "/") + 1)
		}
		return unescapeMountinfo(fields[4]), depth, nil
	}
	if err := sc.Err(); err != nil {
		return "", 0, err
	}
	return "", 0, errors.New("no cgroup2 filesystem is mounted here (under `ip netns exec`, which remounts /sys, enter the namespace with `nsenter --net=/run/netns/NAME` instead)")
}

// unescapeMountinfo undoes the kernel's octal escapes (\040 for a space).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var c byte
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &c); err == nil {
				b.WriteByte(c)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
