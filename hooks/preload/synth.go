//go:build linux

package preload

import (
	"net/netip"
	"strings"
	"sync"
)

// Synthetic addresses stand for names: a hooked program's lookup gets one,
// and its connect() to it becomes a flow to the name, which the profile
// resolves (a hosts piece, direct's resolver, a SOCKS5 server far away).
// 198.18.0.0/15 (RFC 2544, never routed) and fdff:f7::/96 (unicast ULA)
// share one index, the low 17 bits. Keep in step with funtun_wire.h.
var (
	synth4 = netip.MustParsePrefix("198.18.0.0/15")
	synth6 = netip.MustParsePrefix("fdff:f7::/96")
)

const synthSize = 1 << 17

// synthTable maps names to indexes and back. Index 0 and the last index
// are never given (they read as the range's network and broadcast
// addresses). When every index is taken the oldest name gives its index up.
type synthTable struct {
	mu     sync.Mutex
	byName map[string]uint32
	// names by index, "" when free; it grows as names come (a program
	// that looks up a handful of names should not carry, and have the
	// collector scan, a table for 131,072 of them).
	names []string
	next  uint32
}

func newSynthTable() *synthTable {
	return &synthTable{byName: map[string]uint32{}, names: make([]string, 1, 64), next: 1}
}

// normalizeName lowercases and drops the root dot; ok is false for what no
// resolver would take as a host name.
func normalizeName(name string) (string, bool) {
	name = strings.ToLower(strings.TrimSuffix(name, "."))
	if name == "" || len(name) > 253 {
		return "", false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c <= ' ' || c == 0x7f || c == '/' || c == '\\' {
			return "", false
		}
	}
	return name, true
}

func (t *synthTable) index(name string) uint32 {
	t.mu.Lock()
	defer t.mu.Unlock()
	if i, ok := t.byName[name]; ok {
		return i
	}
	i := t.next
	t.next++
	if t.next >= synthSize-1 {
		t.next = 1
	}
	if int(i) >= len(t.names) {
		t.names = append(t.names, name) // i == len: indices come in order until the wrap
	} else if old := t.names[i]; old != "" {
		delete(t.byName, old)
		t.names[i] = name
	} else {
		t.names[i] = name
	}
	t.byName[name] = i
	return i
}

// addr gives name's synthetic address of the family (4 or 6).
func (t *synthTable) addr(name string, six bool) netip.Addr {
	i := t.index(name)
	if six {
		b := synth6.Addr().As16()
		b[13], b[14], b[15] = byte(i>>16), byte(i>>8), byte(i)
		return netip.AddrFrom16(b)
	}
	b := synth4.Addr().As4()
	b[1] |= byte(i >> 16)
	b[2], b[3] = byte(i>>8), byte(i)
	return netip.AddrFrom4(b)
}

// isSynthetic reports whether a is in one of the ranges.
func isSynthetic(a netip.Addr) bool {
	a = a.Unmap()
	return synth4.Contains(a) || synth6.Contains(a)
}

// name finds the name a synthetic address stands for.
func (t *synthTable) name(a netip.Addr) (string, bool) {
	a = a.Unmap()
	var i uint32
	switch {
	case synth4.Contains(a):
		b := a.As4()
		i = uint32(b[1]&1)<<16 | uint32(b[2])<<8 | uint32(b[3])
	case synth6.Contains(a):
		b := a.As16()
		if b[12] != 0 || b[13] > 1 {
			return "", false
		}
		i = uint32(b[13])<<16 | uint32(b[14])<<8 | uint32(b[15])
	default:
		return "", false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if int(i) >= len(t.names) {
		return "", false
	}
	n := t.names[i]
	return n, n != ""
}
