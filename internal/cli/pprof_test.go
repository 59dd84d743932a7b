package cli

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestCheckLoopback(t *testing.T) {
	for addr, ok := range map[string]bool{
		"127.0.0.1:6060": true, "127.0.0.2:0": true, "[::1]:6060": true, "localhost:6060": true,
		"[::ffff:127.0.0.1]:6060": true,
		"0.0.0.0:6060":            false, ":6060": false, "[::]:6060": false, "192.168.1.2:6060": false,
		"example.org:6060": false, "127.0.0.1": false, "[fe80::1%lo]:6060": false,
	} {
		err := checkLoopback(addr)
		if (err == nil) != ok {
			t.Errorf("checkLoopback(%q) = %v, want ok=%v", addr, err, ok)
		}
		if err != nil && !strings.Contains(err.Error(), "--pprof "+addr) {
			t.Errorf("checkLoopback(%q): %q does not name the flag and value", addr, err)
		}
	}
}

// A daemon command gets --pprof: refused off loopback before Run goes on,
// served while Run runs, gone when it returns.
func TestDaemonPprof(t *testing.T) {
	var logs, stdout bytes.Buffer
	env := &Env{Stdout: &stdout, Stderr: io.Discard, Log: slog.New(slog.NewTextHandler(&logs, nil))}
	served := make(chan string, 1)
	var refusal error
	c := &Command{Name: "test-daemon", Usage: "funtun test-daemon", Daemon: true,
		Run: func(ctx context.Context, env *Env, args []string) int {
			c, _ := Lookup("test-daemon")
			fs := env.FlagSet(c)
			_, _, done, err := env.ParseFlags(fs, args)
			if done {
				return 0
			}
			if err != nil {
				refusal = err
				return 2
			}
			m := regexp.MustCompile(`addr=(\S+)`).FindStringSubmatch(logs.String())
			if m == nil {
				t.Errorf("no pprof address logged: %s", logs.String())
				return 1
			}
			served <- m[1]
			get(t, "http://"+m[1]+"/debug/pprof/", "goroutine")
			get(t, "http://"+m[1]+"/debug/pprof/goroutine?debug=1", "goroutine profile")
			return 0
		}}
	Register(c)
	t.Cleanup(func() { delete(commands, c.Name) })

	if code := c.Run(context.Background(), env, []string{"--help"}); code != 0 || !strings.Contains(stdout.String(), "-pprof ADDR") {
		t.Errorf("--help: exit %d, no --pprof in:\n%s", code, stdout.String())
	}
	if code := c.Run(context.Background(), env, []string{"--pprof", "0.0.0.0:6060"}); code != 2 ||
		refusal == nil || !strings.Contains(refusal.Error(), "--pprof 0.0.0.0:6060: serves on loopback addresses only") {
		t.Fatalf("--pprof 0.0.0.0:6060: exit %d, %v", code, refusal)
	}
	if strings.Contains(logs.String(), "pprof serving") {
		t.Fatalf("refused address was served: %s", logs.String())
	}
	if code := c.Run(context.Background(), env, []string{"--pprof", "127.0.0.1:0"}); code != 0 {
		t.Fatalf("--pprof 127.0.0.1:0: exit %d", code)
	}
	addr := <-served
	hc := &http.Client{Timeout: 2 * time.Second}
	if resp, err := hc.Get("http://" + addr + "/debug/pprof/"); err == nil {
		resp.Body.Close()
		t.Fatalf("pprof still served on %s after the command returned", addr)
	}
}

func get(t *testing.T, url, want string) {
	t.Helper()
	hc := &http.Client{Timeout: 5 * time.Second}
	resp, err := hc.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.Contains(string(body), want) {
		t.Fatalf("GET %s: %s, want %q in:\n%.500s", url, resp.Status, want, body)
	}
}

// A command that is no daemon has no --pprof.
func TestNoPprofOnOtherCommands(t *testing.T) {
	env := &Env{Stdout: io.Discard, Stderr: io.Discard}
	fs := env.FlagSet(&Command{Name: "x"})
	if fs.Lookup("pprof") != nil {
		t.Fatal("a command without Daemon has --pprof")
	}
}
