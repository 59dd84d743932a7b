//go:build linux

package sixbed4router

import (
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/funtun/funtun/internal/testutil"
)

// A router that never answers: the hooked program's connect() fails with
// ENETUNREACH once the tunnel gives up soliciting, and does not hang.
func TestLauncherSilentRouterIsNetworkUnreachable(t *testing.T) {
	testutil.NeedTool(t, "cc")
	py := testutil.NeedTool(t, "python3")
	bin := launcherDir(t)
	silent, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	env := profileDir(t, fmt.Sprintf("netstack ipv4=direct | 6bed4 router=%s timeout=1500ms", silent.LocalAddr()))
	probe := `
import errno, socket
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.settimeout(30)
try:
    s.connect(("2001:db8:80::1", 80))
    print("connected")
except OSError as e:
    print("errno", errno.errorcode.get(e.errno, e.errno))
`
	cmd := exec.Command(filepath.Join(bin, "funtun"), "profile=6bed4", py, "-c", probe)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !strings.Contains(string(out), "errno ENETUNREACH") {
		t.Fatalf("connect through a silent router: want ENETUNREACH, got:\n%s", out)
	}
	if !strings.Contains(string(out), "did not answer") {
		t.Errorf("the funnel's log does not say why:\n%s", out)
	}
}
