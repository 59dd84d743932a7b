//go:build linux

package preload

import (
	"strconv"
	"strings"
	"testing"
)

// TestLauncherDebugLog: with --debug, profile=direct logs each flow as
// what it is — the first connect handed off by the funnel, the next ones
// connected by the library itself (the fast path) — and none with byte
// counts the funnel never saw (up=0 down=0). Without --debug the launcher
// says nothing.
func TestLauncherDebugLog(t *testing.T) {
	echo := echoWithLog(t)
	port := strconv.Itoa(echo.port())
	out, stderr, err := run(t, launcher(t, "--debug", "profile=direct", built.client, "echo", "127.0.0.1", port, "3"), "")
	if err != nil || !strings.HasPrefix(out, "ok 3 ") {
		t.Fatalf("ftclient: %v\n%s%s", err, out, stderr)
	}
	handed := strings.Count(stderr, `msg="flow handed off"`)
	fast := strings.Count(stderr, `msg="flow connected by the library"`)
	if handed != 1 || fast != 2 {
		t.Errorf("%d flows handed off and %d connected by the library, want 1 and 2:\n%s", handed, fast, stderr)
	}
	if strings.Contains(stderr, "up=0 down=0") || strings.Contains(stderr, "msg=flow ") {
		t.Errorf("a flow logged with byte counts the funnel never saw:\n%s", stderr)
	}
	for _, line := range strings.Split(strings.TrimSpace(stderr), "\n") {
		if strings.Contains(line, "msg=\"flow ") && !strings.Contains(line, "dst=127.0.0.1:"+port) {
			t.Errorf("line without the destination: %s", line)
		}
	}

	out, stderr, err = run(t, launcher(t, "profile=direct", built.client, "echo", "127.0.0.1", port, "3"), "")
	if err != nil || !strings.HasPrefix(out, "ok 3 ") || stderr != "" {
		t.Fatalf("without --debug: %v\n%s%q", err, out, stderr)
	}
}
