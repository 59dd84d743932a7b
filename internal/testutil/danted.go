package testutil

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// StartDanted runs dante's server in the foreground on a free loopback
// port, with CONNECT and UDP ASSOCIATE allowed, accepting clients from
// clientNet only (e.g. "127.0.0.1/32") and reaching out from external (an
// interface or address, e.g. "lo"), and returns its address. danted forks
// helper processes that outlive a killed parent, so it gets its own
// process group and the whole group is stopped at cleanup.
func StartDanted(t testing.TB, clientNet, external string) string {
	t.Helper()
	bin := NeedTool(t, "danted")
	port := FreePort(t)
	conf := filepath.Join(t.TempDir(), "danted.conf")
	text := fmt.Sprintf(`logoutput: stderr
internal: 127.0.0.1 port = %d
external: %s
socksmethod: none
clientmethod: none
user.privileged: root
user.unprivileged: nobody
client pass {
	from: %s to: 0.0.0.0/0
}
socks pass {
	from: 0.0.0.0/0 to: 0.0.0.0/0
	command: connect udpassociate
}
socks pass {
	from: 0.0.0.0/0 to: 0.0.0.0/0
	command: udpreply
}
`, port, external, clientNet)
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-f", conf)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		// Helpers may still be on their way out; make sure none is left.
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		if t.Failed() {
			t.Logf("danted output:\n%s", out.String())
		}
	})
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	WaitListen(t, addr)
	return addr
}
