//go:build unix

package cli

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// A daemon lifts its soft file limit to the hard limit.
func TestRaiseFileLimit(t *testing.T) {
	var orig syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &orig); err != nil {
		t.Fatal(err)
	}
	if orig.Max < 64 {
		t.Skipf("hard file limit %d", orig.Max)
	}
	low := orig
	low.Cur = 64
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low); err != nil {
		t.Fatal(err)
	}
	defer syscall.Setrlimit(syscall.RLIMIT_NOFILE, &orig)
	raiseOnce = sync.Once{}
	var logs bytes.Buffer
	raiseFileLimit(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	var now syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &now)
	if now.Cur != orig.Max {
		t.Fatalf("soft limit %d after raising, want the hard limit %d", now.Cur, orig.Max)
	}
	if !strings.Contains(logs.String(), "file limit") {
		t.Errorf("the limit is not logged: %s", logs.String())
	}
}
