package pcap

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/testutil"
)

// openFDs counts the descriptors of this process open on path.
func openFDs(t *testing.T, path string) int {
	t.Helper()
	abs, err := filepath.Abs(path)
	if err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatalf("counting open files: %v", err)
	}
	n := 0
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name())); err == nil && l == abs {
			n++
		}
	}
	return n
}

// untouched fails unless path holds exactly want (nil: does not exist) and
// no descriptor of this process is open on it.
func untouched(t *testing.T, path string, want []byte, when string) {
	t.Helper()
	got, err := os.ReadFile(path)
	switch {
	case want == nil && err == nil:
		t.Fatalf("%s: %s was created (%d bytes)", when, path, len(got))
	case want != nil && err != nil:
		t.Fatalf("%s: %v", when, err)
	case want != nil && !bytes.Equal(got, want):
		t.Fatalf("%s: %s changed: %d bytes %q, want %q", when, path, len(got), got, want)
	}
	if n := openFDs(t, path); n != 0 {
		t.Fatalf("%s: %d descriptors open on %s", when, n, path)
	}
}

func writeProfile(t *testing.T, dir, name, text string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name+funnel.ProfileExt), []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// Compiling (profiles check, profiles show) and dropping a set neither
// creates, truncates nor opens a capture file.
func TestBuildingTouchesNothing(t *testing.T) {
	dir := t.TempDir()
	running := filepath.Join(dir, "running.pcap")
	precious := []byte("a running daemon's capture, not to be wiped\n")
	if err := os.WriteFile(running, precious, 0o600); err != nil {
		t.Fatal(err)
	}
	fresh := filepath.Join(dir, "new.pcap")
	set, err := funnel.CompileSet([]funnel.Source{
		{Name: "a", Origin: "a.profile", Text: "pcap file=" + running},
		{Name: "b", Origin: "b.profile", Text: "pcap file=" + fresh},
	})
	if err != nil {
		t.Fatal(err)
	}
	untouched(t, running, precious, "after compiling")
	untouched(t, fresh, nil, "after compiling")
	// An inline chain resolved against a set that only compiles opens
	// nothing either.
	if _, err := set.Chain("pcap file=" + running); err != nil {
		t.Fatal(err)
	}
	untouched(t, running, precious, "after compiling a chain")
	set.Retire()
	untouched(t, running, precious, "after dropping the set")
	untouched(t, fresh, nil, "after dropping the set")
}

// A reload that fails (one good pcap profile, one broken profile) keeps the
// old set and leaves the capture files alone.
func TestFailedReloadTouchesNothing(t *testing.T) {
	profiles, caps := t.TempDir(), t.TempDir()
	running := filepath.Join(caps, "running.pcap")
	precious := []byte("a running daemon's capture, not to be wiped\n")
	if err := os.WriteFile(running, precious, 0o600); err != nil {
		t.Fatal(err)
	}
	fresh := filepath.Join(caps, "new.pcap")
	writeProfile(t, profiles, "plain", "direct")
	cat := &funnel.Catalog{Dirs: []string{profiles}}
	if err := cat.Load(); err != nil {
		t.Fatal(err)
	}
	writeProfile(t, profiles, "cap", "pcap file="+running)
	writeProfile(t, profiles, "cap2", "pcap file="+fresh)
	writeProfile(t, profiles, "broken", "direct timeout=soon")
	err := cat.Load()
	if err == nil || !strings.Contains(err.Error(), filepath.Join(profiles, "broken.profile")+":1:") {
		t.Fatalf("reload with a broken profile: %v", err)
	}
	untouched(t, running, precious, "after a failed reload")
	untouched(t, fresh, nil, "after a failed reload")
	if _, err := cat.Resolve(funnel.Selector{Profile: "cap"}); err == nil {
		t.Fatal("a failed reload replaced the profiles in force")
	}
}

// A set opens its capture files when it goes live and closes them after
// its last flow once a reload has replaced it; a file both sets write to
// passes from one to the other without being opened again.
func TestGoLiveOpensRetireClosesAfterLastFlow(t *testing.T) {
	profiles, caps := t.TempDir(), t.TempDir()
	first, second := filepath.Join(caps, "first.pcap"), filepath.Join(caps, "second.pcap")
	shared := filepath.Join(caps, "shared.pcap")
	writeProfile(t, profiles, "p", "pcap file="+first)
	writeProfile(t, profiles, "s", "pcap file="+shared)
	cat := &funnel.Catalog{Dirs: []string{profiles}}
	if err := cat.Load(); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{first, shared} {
		if n := openFDs(t, f); n != 1 {
			t.Fatalf("%s: %d descriptors open after the set went live, want 1", f, n)
		}
		if st, err := os.Stat(f); err != nil || st.Size() != 24 {
			t.Fatalf("%s after going live: %v (want the 24-byte pcap header)", f, err)
		}
	}
	pl, err := cat.Resolve(funnel.Selector{Profile: "p"})
	if err != nil {
		t.Fatal(err)
	}
	release := pl.Hold()
	// A flow of the old set; it has ended, but the hook has not released
	// the set yet, as when a flow is still running across the reload.
	server := testutil.EchoServer(t).(*net.TCPAddr)
	tcpFlow(t, pl, funnel.AddrFromNet(server), []byte("before the reload"))

	writeProfile(t, profiles, "p", "pcap file="+second)
	if err := cat.Load(); err != nil {
		t.Fatal(err)
	}
	if n := openFDs(t, second); n != 1 {
		t.Fatalf("the new set's file: %d descriptors open, want 1", n)
	}
	if n := openFDs(t, first); n != 1 {
		t.Fatalf("the old set's file was closed while a flow held the set (%d descriptors open)", n)
	}
	if n := openFDs(t, shared); n != 1 {
		t.Fatalf("the shared file: %d descriptors open across the reload, want 1", n)
	}
	release()
	if n := openFDs(t, first); n != 0 {
		t.Fatalf("the old set's file is still open after its last flow (%d descriptors)", n)
	}
	if n := openFDs(t, shared); n != 1 {
		t.Fatalf("the shared file, still used by the new set: %d descriptors open, want 1", n)
	}
	// Closed means complete: the flow is in the old file.
	checkTCPCaptureBytes(t, first, []byte("before the reload"))
}

// checkTCPCaptureBytes is a tshark-free look: the capture holds the bytes
// the flow sent.
func checkTCPCaptureBytes(t *testing.T, file string, sent []byte) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(data, sent) {
		t.Fatalf("%s (%d bytes) does not hold %q", file, len(data), sent)
	}
}

// A forward with chain='pcap file=X' keeps appending to X across a reload
// even when no flow runs during it: the new set opens the chain (sharing
// the file) before the old one closes it.
func TestInlineChainKeepsItsFileAcrossReload(t *testing.T) {
	profiles := t.TempDir()
	file := filepath.Join(t.TempDir(), "chain.pcap")
	writeProfile(t, profiles, "plain", "direct")
	cat := &funnel.Catalog{Dirs: []string{profiles}}
	if err := cat.Load(); err != nil {
		t.Fatal(err)
	}
	sel := funnel.Selector{Chain: "pcap file=" + file}
	pl, err := cat.Resolve(sel)
	if err != nil {
		t.Fatal(err)
	}
	server := testutil.EchoServer(t).(*net.TCPAddr)
	release := pl.Hold()
	tcpFlow(t, pl, funnel.AddrFromNet(server), []byte("first flow"))
	release()
	if err := cat.Load(); err != nil {
		t.Fatal(err)
	}
	if n := openFDs(t, file); n != 1 {
		t.Fatalf("after the reload: %d descriptors open on the chain's file, want 1", n)
	}
	pl, err = cat.Resolve(sel)
	if err != nil {
		t.Fatal(err)
	}
	release = pl.Hold()
	tcpFlow(t, pl, funnel.AddrFromNet(server), []byte("second flow"))
	release()
	cat.Current().Retire()
	checkTCPCaptureBytes(t, file, []byte("first flow"))
	checkTCPCaptureBytes(t, file, []byte("second flow"))
}
