//go:build !linux

package main

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/funtun/funtun/internal/cli"
)

// Without Linux the launcher says what it needs and what to use instead,
// with the shell's "cannot execute" status.
func TestLauncherNeedsLinux(t *testing.T) {
	var out bytes.Buffer
	env := &cli.Env{Stdout: &out, Stderr: &out, Log: slog.New(slog.NewTextHandler(&out, nil))}
	code := cli.Launcher(context.Background(), env, []string{"profile=direct", "curl", "https://example.org/"})
	if code != 126 {
		t.Errorf("exit %d, want 126", code)
	}
	for _, want := range []string{"cannot run curl", "needs Linux", "funtun socks5d"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("message %q lacks %q", out.String(), want)
		}
	}
}
