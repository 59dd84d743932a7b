//go:build linux

package preload

import (
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/funtun/funtun/internal/testutil"
)

// TestWireLayout compiles the C header and compares its sizes and offsets
// with the Go side's: the two halves of the protocol must agree.
func TestWireLayout(t *testing.T) {
	cc := testutil.NeedTool(t, "cc")
	src := `#include <stddef.h>
#include <stdio.h>
#include "funtun_wire.h"
int main(void) {
	printf("%zu %zu\n", sizeof(struct ft_req), sizeof(struct ft_resp));
	printf("%zu %zu %zu %zu %zu %zu %zu\n", offsetof(struct ft_req, version), offsetof(struct ft_req, op),
	       offsetof(struct ft_req, arg), offsetof(struct ft_req, flags), offsetof(struct ft_req, addrlen),
	       offsetof(struct ft_req, addr), offsetof(struct ft_req, name));
	printf("%zu %zu %zu %zu %zu %zu %zu\n", offsetof(struct ft_resp, err), offsetof(struct ft_resp, flags),
	       offsetof(struct ft_resp, addrlen), offsetof(struct ft_resp, addr), offsetof(struct ft_resp, addr2len),
	       offsetof(struct ft_resp, addr2), offsetof(struct ft_resp, name));
	printf("%d %d %d %d %d %d %d %d\n", FT_WIRE_VERSION, FT_OP_CONNECT, FT_OP_RESOLVE, FT_OP_REVERSE,
	       FT_OP_LISTEN, FT_OP_ACCEPTED, FT_OP_UDP_ASSOC, FT_OP_UNLISTEN);
	printf("%d %d %d %d %d\n", FT_OP_CONNECT_FAILED, FT_OP_CONNECTED_FAST, FT_OP_REFUSED, FT_CONNECT_PLAIN_DIRECT,
	       FT_CONNECT_LOG_FAST);
	printf("%d %d %d %d %d %d\n", FT_LISTEN_NATIVE, FT_LISTEN_TAKEN, FT_NAME_MAX, FT_ADDR_MAX, FT_REQ_SIZE, FT_RESP_SIZE);
	printf("%d %d %d %d %zu\n", FT_OP_HELLO, FT_HELLO_TEMPLATE, FT_HELLO_UNTOUCHED, FT_GEN_PAGE_SIZE,
	       sizeof(struct ft_gen_page));
	return 0;
}
`
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "layout.c"), []byte(src), 0o644)
	bin := filepath.Join(dir, "layout")
	if out, err := exec.Command(cc, "-I", filepath.Join(moduleRoot(), "preload"), "-o", bin, filepath.Join(dir, "layout.c")).CombinedOutput(); err != nil {
		t.Fatalf("cc: %v\n%s", err, out)
	}
	out, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	want := strings.Join([]string{
		itoa(reqSize, respSize),
		itoa(reqVersion, reqOp, reqArg, reqFlags, reqAddrLen, reqAddr, reqName),
		itoa(respErr, respFlags, respAddrLen, respAddr, respAddr2Len, respAddr2, respName),
		itoa(wireVersion, opConnect, opResolve, opReverse, opListen, opAccepted, opUDPAssoc, opUnlisten),
		itoa(opConnectFailed, opConnectedFast, opRefusedUncarried, connectPlainDirect, connectLogFast),
		itoa(listenNative, listenTaken, nameMax, addrMax, reqSize, respSize),
		itoa(opHello, helloTemplate, helloUntouched, genPageSize, 8),
	}, "\n") + "\n"
	if string(out) != want {
		t.Fatalf("C layout:\n%s\nGo layout:\n%s", out, want)
	}
}

func itoa(xs ...int) string {
	var b strings.Builder
	for i, x := range xs {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(strconv.Itoa(x))
	}
	return b.String()
}

func TestSynthTable(t *testing.T) {
	tab := newSynthTable()
	a := tab.addr("demo.test", false)
	if a != netip.MustParseAddr("198.18.0.1") {
		t.Fatalf("first address %s", a)
	}
	if b := tab.addr("demo.test", true); b != netip.MustParseAddr("fdff:f7::1") {
		t.Fatalf("first IPv6 address %s", b)
	}
	if n, ok := tab.name(netip.MustParseAddr("::ffff:198.18.0.1")); !ok || n != "demo.test" {
		t.Fatalf("name of the v4-mapped form: %q %v", n, ok)
	}
	if _, ok := tab.name(netip.MustParseAddr("198.18.0.2")); ok {
		t.Fatal("an address never given has a name")
	}
	// The upper half of the /15 and every index up to the end.
	for i := 2; i < synthSize-1; i++ {
		tab.addr("n"+strconv.Itoa(i)+".test", false)
	}
	// Every index is taken: the oldest name (demo.test, index 1) gives
	// its address up.
	last := tab.addr("last-one.test", false)
	if last != a {
		t.Fatalf("address after wrapping: %s, want the oldest one, %s", last, a)
	}
	if n, _ := tab.name(last); n != "last-one.test" {
		t.Fatalf("the recycled address names %q", n)
	}
	if _, ok := tab.byName["demo.test"]; ok {
		t.Fatal("the evicted name still has an index")
	}
	for _, bad := range []string{"", "a b", "x/y", strings.Repeat("a", 254)} {
		if _, ok := normalizeName(bad); ok {
			t.Errorf("%q taken as a host name", bad)
		}
	}
	if n, _ := normalizeName("Demo.Test."); n != "demo.test" {
		t.Errorf("normalizeName: %q", n)
	}
}

func TestParseLaunch(t *testing.T) {
	la, help, err := parseLaunch([]string{"profile=p", "--allow-unhooked", "curl", "profile=x", "--", "-v"})
	if err != nil || help || la.sel.Profile != "p" || !la.allowUnhooked || la.program != "curl" || strings.Join(la.args, " ") != "profile=x -- -v" {
		t.Fatalf("%+v %v %v", la, help, err)
	}
	la, _, err = parseLaunch([]string{"chain=hosts a.test=127.0.0.1", "--", "status", "x"})
	if err != nil || la.sel.Chain != "hosts a.test=127.0.0.1" || la.program != "status" || la.args[0] != "x" {
		t.Fatalf("%+v %v", la, err)
	}
	for _, bad := range [][]string{{}, {"profile=p"}, {"--nope", "curl"}, {"profile=a", "chain=direct", "curl"}, {"--"}} {
		if _, _, err := parseLaunch(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if _, help, _ := parseLaunch([]string{"--help"}); !help {
		t.Error("--help not seen")
	}
}
