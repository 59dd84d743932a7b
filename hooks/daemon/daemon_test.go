//go:build linux

package daemon

import (
	"bufio"
	"encoding/binary"
	"io"
	"math/rand"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/funtun/funtun/internal/testutil"
)

// shout names demo.test and rewrites what comes back: a profile whose work
// shows in every answer.
const shout = "hosts demo.test=127.0.0.1 | rewrite dir=down from=hello to=HELLO"

func TestDaemonSocketIsPrivate(t *testing.T) {
	d := startDaemon(t, map[string]string{"shout": shout}, "")
	fi, err := os.Stat(filepath.Dir(d.sock))
	if err != nil || fi.Mode().Perm() != 0o700 || !fi.IsDir() {
		t.Fatalf("socket directory: %v %v, want a 0700 directory", fi.Mode(), err)
	}
	fi, err = os.Stat(d.sock)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket: %v %v, want a 0600 socket", fi.Mode(), err)
	}

	// A second daemon on the same socket says so, and leaves it be.
	_, stderr, err := runProgram(t, append(cleanEnv(), "XDG_RUNTIME_DIR="+d.run, "XDG_CONFIG_HOME="+d.cfg), "", built.funtun, "daemon")
	if err == nil || !strings.Contains(stderr, "another funtun daemon already serves "+d.sock) {
		t.Fatalf("a second daemon: %v, %q", err, stderr)
	}
	if _, err := os.Stat(d.sock); err != nil {
		t.Fatalf("the second daemon took the socket away: %v", err)
	}

	// No runtime directory: a clear error, no guess.
	_, stderr, err = runProgram(t, cleanEnv(), "", built.funtun, "daemon")
	if err == nil || !strings.Contains(stderr, "XDG_RUNTIME_DIR is not set") || !strings.Contains(stderr, "--socket PATH") {
		t.Fatalf("without XDG_RUNTIME_DIR: %v, %q", err, stderr)
	}
}

// --check and --help read, and bind or write nothing; a broken programs
// file is reported FILE:LINE.
func TestDaemonCheck(t *testing.T) {
	needBuild(t)
	dir := t.TempDir()
	run := filepath.Join(dir, "run")
	os.Mkdir(run, 0o700)
	cfg := filepath.Join(dir, "cfg")
	os.MkdirAll(filepath.Join(cfg, "funtun", "profiles"), 0o755)
	os.WriteFile(filepath.Join(cfg, "funtun", "profiles", "shout.profile"), []byte(shout), 0o644)
	progs := filepath.Join(cfg, "funtun", "programs")
	os.WriteFile(progs, []byte("curl profile=shout\nwget profile=nosuch\nssh chain='tls\n"), 0o644)
	env := append(cleanEnv(), "XDG_RUNTIME_DIR="+run, "XDG_CONFIG_HOME="+cfg)

	_, stderr, err := runProgram(t, env, "", built.funtun, "daemon", "--check")
	if err == nil || !strings.Contains(stderr, progs+":3: a ' is not closed") {
		t.Fatalf("--check of a broken file: %v, %q", err, stderr)
	}
	os.WriteFile(progs, []byte("curl profile=shout\nwget profile=nosuch\n"), 0o644)
	_, stderr, err = runProgram(t, env, "", built.funtun, "daemon", "--check")
	if err == nil || !strings.Contains(stderr, progs+":2: wget profile=nosuch") {
		t.Fatalf("--check with an unknown profile: %v, %q", err, stderr)
	}
	os.WriteFile(progs, []byte("curl profile=shout\n"), 0o644)
	stdout, stderr, err := runProgram(t, env, "", built.funtun, "daemon", "--check")
	if err != nil || !strings.Contains(stdout, "1 programs") || !strings.Contains(stdout, "shout") {
		t.Fatalf("--check: %v, %q %q", err, stdout, stderr)
	}
	stdout, _, err = runProgram(t, env, "", built.funtun, "daemon", "--help")
	if err != nil || !strings.Contains(stdout, "funtun daemon [--socket PATH]") || !strings.Contains(stdout, "LEFT ALONE") {
		t.Fatalf("--help: %v, %q", err, stdout)
	}
	if entries, _ := os.ReadDir(run); len(entries) != 0 {
		t.Fatalf("--check and --help made %v in the runtime directory", entries)
	}
}

// A global preload: curl, named in the programs file, goes through its
// profile; wget, not named, is left alone — and so is everything when no
// daemon runs.
func TestGlobalPreloadByProgram(t *testing.T) {
	curl := testutil.NeedTool(t, "curl")
	wget := testutil.NeedTool(t, "wget")
	d := startDaemon(t, map[string]string{"shout": shout}, "curl profile=shout\n")
	port, peers := webServer(t, "hello world\n")
	url := "http://demo.test:" + strconv.Itoa(port) + "/"
	plain := "http://127.0.0.1:" + strconv.Itoa(port) + "/"
	preload := "LD_PRELOAD=" + built.lib

	out, stderr, err := runProgram(t, d.clientEnv(preload), "", curl, "-sS", "--max-time", "30", url)
	if err != nil || out != "HELLO world\n" {
		t.Fatalf("curl through the daemon: %v, %q %q", err, out, stderr)
	}
	d.waitLog(t, "profile=shout net=tcp", 1, nil)
	if !strings.Contains(d.log.String(), "daemon: funnelling a program") || !strings.Contains(d.log.String(), "/curl") {
		t.Errorf("the daemon's log does not say it funnels curl")
	}

	out, stderr, err = runProgram(t, d.clientEnv(preload), "", wget, "-qO-", "--timeout=30", plain)
	if err != nil || out != "hello world\n" {
		t.Fatalf("wget, not in the programs file: %v, %q %q", err, out, stderr)
	}
	if !strings.Contains(d.log.String(), "leaving a program alone") {
		t.Errorf("the daemon's log does not say it left wget alone")
	}
	if strings.Count(d.log.String(), "hook=preload") != 1 {
		t.Errorf("wget's request became a flow of the funnel")
	}

	// No daemon at all: the program works as without funtun.
	env := append(cleanEnv(), preload, "XDG_RUNTIME_DIR="+t.TempDir())
	for len(peers) > 0 {
		<-peers
	}
	out, stderr, err = runProgram(t, env, "", curl, "-sS", "--max-time", "30", plain)
	if err != nil || out != "hello world\n" {
		t.Fatalf("curl with no daemon: %v, %q %q (a global preload must leave programs alone)", err, out, stderr)
	}
}

// A reload that adds deny to a plain-direct profile takes effect at once:
// the library's standing permission to connect literal addresses itself
// goes with the reload, it does not run out a second later.
func TestReloadWithdrawsFastPath(t *testing.T) {
	python := "/usr/bin/python3"
	if _, err := os.Stat(python); err != nil {
		python = testutil.NeedTool(t, "python3")
	}
	d := startDaemon(t, map[string]string{"p": "direct"}, "python3* profile=p\n")
	target := lineEcho(t)

	script := `import socket, sys
for line in sys.stdin:
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", int(line)))
        print("ok", flush=True)
    except OSError as e:
        print("err", e.errno, flush=True)
    s.close()
`
	cmd := exec.Command(python, "-c", script)
	cmd.Env = d.clientEnv("LD_PRELOAD=" + built.lib)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	var stderr testutil.LogBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	answers := bufio.NewReader(stdout)
	connect := func() string {
		t.Helper()
		io.WriteString(stdin, strconv.Itoa(target)+"\n")
		line, err := answers.ReadString('\n')
		if err != nil {
			t.Fatalf("the program: %v; stderr %s", err, stderr.String())
		}
		return strings.TrimSpace(line)
	}

	if got := connect(); got != "ok" {
		t.Fatalf("first connect: %s", got)
	}
	// The funnel said "plain direct": the library connects the next
	// literal address itself, and reports it (the daemon logs at debug).
	if got := connect(); got != "ok" {
		t.Fatalf("second connect: %s", got)
	}
	d.waitLog(t, "flow connected by the library", 1, nil)

	d.writeProfile(t, "p", "deny to=port:"+strconv.Itoa(target)+" reason='closed by the reload'")
	d.reload(t)
	if got := connect(); got != "err "+strconv.Itoa(int(syscall.EACCES)) {
		t.Fatalf("connect right after the reload that denies it: %q, want err %d (EACCES)", got, syscall.EACCES)
	}
	d.waitLog(t, "closed by the reload", 1, nil)

	// A daemon that restarts hands the running program a reload page of
	// its own, and its reloads withdraw the permission in turn.
	d.writeProfile(t, "p", "direct")
	d.stop()
	d.start(t)
	// The first connect meets the new daemon in the middle of its
	// request, so its answer grants nothing; the second grants, the third
	// goes the fast way.
	for i := 0; i < 3; i++ {
		if got := connect(); got != "ok" {
			t.Fatalf("connect %d after the daemon restarted: %s", i+1, got)
		}
	}
	d.waitLog(t, "flow connected by the library", 2, nil)
	d.writeProfile(t, "p", "deny to=port:"+strconv.Itoa(target)+" reason='closed by the new daemon'")
	d.reload(t)
	if got := connect(); got != "err "+strconv.Itoa(int(syscall.EACCES)) {
		t.Fatalf("connect right after the restarted daemon's reload: %q, want err %d (EACCES)", got, syscall.EACCES)
	}
	d.waitLog(t, "closed by the new daemon", 1, nil)
}

// The C examples: fetch and serve use the API, httpget is an unchanged
// program built in link-in mode. Each reaches a local server through a
// profile that visibly acts.
func TestCExamples(t *testing.T) {
	d := startDaemon(t, map[string]string{
		"shout": shout,
		"in":    "rewrite from=hello to=HELLO",
	}, "httpget profile=shout\n")

	t.Run("fetch", func(t *testing.T) {
		port := lineEcho(t)
		out, stderr, err := runProgram(t, d.clientEnv(), "", built.fetch, "shout", "demo.test", strconv.Itoa(port), "hello from C")
		if err != nil || out != "echo: HELLO from C\n" {
			t.Fatalf("fetch: %v, %q %q", err, out, stderr)
		}
		// A chain works as a template too.
		out, stderr, err = runProgram(t, d.clientEnv(), "", built.fetch, "chain=rewrite dir=down from=echo to=ECHO", "127.0.0.1", strconv.Itoa(port))
		if err != nil || out != "ECHO: hello\n" {
			t.Fatalf("fetch with a chain: %v, %q %q", err, out, stderr)
		}
	})

	t.Run("httpget-linkin", func(t *testing.T) {
		port, _ := webServer(t, "hello world\n")
		out, stderr, err := runProgram(t, d.clientEnv(), "", built.httpget, "demo.test", strconv.Itoa(port), "/")
		if err != nil || out != "HELLO world\n" {
			t.Fatalf("httpget (link-in): %v, %q %q", err, out, stderr)
		}
		// No daemon: the link-in program is left alone, like a preloaded one.
		out, stderr, err = runProgram(t, append(cleanEnv(), "XDG_RUNTIME_DIR="+t.TempDir()), "", built.httpget, "127.0.0.1", strconv.Itoa(port), "/")
		if err != nil || out != "hello world\n" {
			t.Fatalf("httpget without a daemon: %v, %q %q", err, out, stderr)
		}
	})

	t.Run("serve", func(t *testing.T) {
		port := testutil.FreePort(t)
		cmd := exec.Command(built.serve, "in", strconv.Itoa(port))
		cmd.Env = d.clientEnv()
		stdout, _ := cmd.StdoutPipe()
		var stderr testutil.LogBuffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer cmd.Wait()
		defer cmd.Process.Kill()
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err != nil || line != "listening\n" {
			t.Fatalf("serve: %q %v; stderr %s", line, err, stderr.String())
		}
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		io.WriteString(c, "hello\n")
		got, _ := io.ReadAll(c)
		if string(got) != "you said: HELLO\n" {
			t.Fatalf("serve through the template: %q; stderr %s", got, stderr.String())
		}
	})
}

// Bad input: an unknown template, no daemon, another user's daemon. Each
// fails with a sentence that names the cause.
func TestCAPIErrors(t *testing.T) {
	d := startDaemon(t, map[string]string{"shout": shout}, "")
	port := lineEcho(t)

	_, stderr, err := runProgram(t, d.clientEnv(), "", built.fetch, "nosuch", "demo.test", strconv.Itoa(port))
	if err == nil || !strings.Contains(stderr, `unknown template "nosuch"`) {
		t.Errorf("unknown template: %v, %q", err, stderr)
	}
	_, stderr, err = runProgram(t, d.clientEnv(), "", built.fetch, "chain=nosuchpiece x=1", "demo.test", strconv.Itoa(port))
	if err == nil || !strings.Contains(stderr, "unknown template") || !strings.Contains(stderr, "nosuchpiece") {
		t.Errorf("a chain that does not compile: %v, %q", err, stderr)
	}
	empty := t.TempDir()
	_, stderr, err = runProgram(t, append(cleanEnv(), "XDG_RUNTIME_DIR="+empty), "", built.fetch, "shout", "demo.test", strconv.Itoa(port))
	if err == nil || !strings.Contains(stderr, "the daemon is not running: nothing listens on "+empty+"/funtun/daemon.sock") {
		t.Errorf("no daemon: %v, %q", err, stderr)
	}
	// A profile that refuses says so, in connect's own terms.
	d.writeProfile(t, "closed", "deny to=port:"+strconv.Itoa(port)+" reason='not this one'")
	d.reload(t)
	_, stderr, err = runProgram(t, d.clientEnv(), "", built.fetch, "closed", "127.0.0.1", strconv.Itoa(port))
	if err == nil || !strings.Contains(stderr, "Permission denied (the profile refused it") {
		t.Errorf("a denied connect: %v, %q", err, stderr)
	}

	if os.Geteuid() != 0 {
		t.Skip("the other-user cases need root, to run the client as nobody")
	}
	nobody := &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	asNobody := func() (string, error) {
		cmd := exec.Command(built.fetch, "shout", "127.0.0.1", strconv.Itoa(port))
		cmd.Env = d.clientEnv()
		cmd.SysProcAttr = nobody
		var errb strings.Builder
		cmd.Stderr = &errb
		err := cmd.Run()
		return errb.String(), err
	}
	// The socket is root's, in root's private directory.
	stderr, err = asNobody()
	if err == nil || !strings.Contains(stderr, "permission denied") || !strings.Contains(stderr, "belongs to uid 0 and you are uid 65534") {
		t.Errorf("nobody against root's daemon: %v, %q", err, stderr)
	}
	// Opened up by mistake: each side still refuses the other — the
	// library will not talk to another user's daemon, and the daemon
	// logs and drops a stranger's connection.
	os.Chmod(d.dir, 0o755)
	os.Chmod(d.run, 0o755)
	os.Chmod(filepath.Dir(d.sock), 0o755)
	os.Chmod(d.sock, 0o666)
	stderr, err = asNobody()
	if err == nil || !strings.Contains(stderr, "runs as uid 0, not as you (uid 65534)") {
		t.Errorf("nobody through an open socket: %v, %q", err, stderr)
	}
	d.waitLog(t, "refused a connection from another user's process", 1, nil)
	if !strings.Contains(d.log.String(), "uid=65534") {
		t.Errorf("the refusal does not name the uid")
	}
}

// hello is a HELLO request as the library sends it (funtun_wire.h).
func hello(version uint32, template string, withTemplate bool) []byte {
	b := make([]byte, 304)
	binary.NativeEndian.PutUint32(b[0:], version)
	binary.NativeEndian.PutUint32(b[4:], 14)
	if withTemplate {
		binary.NativeEndian.PutUint32(b[8:], 1)
	}
	copy(b[48:48+255], template)
	return b
}

// sendPacket sends one packet on a fresh connection, with a descriptor
// along when fd >= 0, and reads whatever comes back for a moment.
func sendPacket(sock string, pkt []byte, fd int) {
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: sock, Net: "unixpacket"})
	if err != nil {
		return
	}
	defer c.Close()
	var oob []byte
	if fd >= 0 {
		oob = unix.UnixRights(fd)
	}
	c.WriteMsgUnix(pkt, oob, nil)
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	buf := make([]byte, 512)
	c.Read(buf)
}

// daemonAnswers: a well-formed HELLO still gets its answer.
func daemonAnswers(t testing.TB, sock string) {
	t.Helper()
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: sock, Net: "unixpacket"})
	if err != nil {
		t.Fatalf("the daemon no longer accepts: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(hello(4, "shout", true)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 512)
	n, err := c.Read(buf)
	if err != nil || n != 328 || binary.NativeEndian.Uint32(buf) != 0 {
		t.Fatalf("the daemon's answer to a good HELLO: %d bytes, %v, err field %d", n, err, binary.NativeEndian.Uint32(buf))
	}
}

// Malformed control messages — random bytes, truncated and oversized
// packets, other versions, descriptors of every kind attached — never
// bring the daemon down, and it keeps serving.
func TestMalformedControlPackets(t *testing.T) {
	d := startDaemon(t, map[string]string{"shout": shout}, "*.test profile=shout\n")
	rng := rand.New(rand.NewSource(13))
	devnull, _ := os.Open(os.DevNull)
	defer devnull.Close()
	good := hello(4, "shout", true)
	for i := 0; i < 300; i++ {
		var pkt []byte
		switch i % 6 {
		case 0: // noise
			pkt = make([]byte, rng.Intn(700))
			rng.Read(pkt)
		case 1: // a HELLO cut short, or with bytes after it
			pkt = append([]byte(nil), good...)
			if rng.Intn(2) == 0 {
				pkt = pkt[:rng.Intn(len(pkt))]
			} else {
				pkt = append(pkt, make([]byte, 1+rng.Intn(64))...)
			}
		case 2: // a HELLO of another version, or a template of noise
			pkt = hello(uint32(rng.Intn(8)), string(randomBytes(rng, 300)), rng.Intn(2) == 0)
		case 3: // a request that is no HELLO, as a launcher's library sends
			pkt = append([]byte(nil), good...)
			binary.NativeEndian.PutUint32(pkt[4:], uint32(rng.Intn(20)))
			binary.NativeEndian.PutUint32(pkt[16:], uint32(rng.Intn(64)))
			rng.Read(pkt[20:48])
		case 4: // HELLO with garbage in every field but op
			pkt = make([]byte, 304)
			rng.Read(pkt)
			binary.NativeEndian.PutUint32(pkt[4:], 14)
		case 5: // nothing at all
			pkt = []byte{}
		}
		fd := -1
		if rng.Intn(3) == 0 {
			fd = int(devnull.Fd())
		}
		sendPacket(d.sock, pkt, fd)
	}
	daemonAnswers(t, d.sock)
	select {
	case <-d.exited:
		t.Fatalf("the daemon exited: %v", d.cmd.ProcessState)
	default:
	}
	if strings.Contains(d.log.String(), "panic") {
		t.Fatalf("the daemon panicked:\n%s", d.log.String())
	}
}

func randomBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, rng.Intn(n))
	rng.Read(b)
	return b
}

// FuzzControlPackets: `go test -fuzz FuzzControlPackets ./hooks/daemon/`
// sends the fuzzer's packets to one daemon and checks after each that it
// still answers; plain `go test` runs the seeds.
func FuzzControlPackets(f *testing.F) {
	d := startDaemon(f, map[string]string{"shout": shout}, "* profile=shout\n")
	f.Add(hello(4, "shout", true))
	f.Add(hello(4, "", false))
	f.Add(hello(3, "shout", true))
	f.Add(hello(4, "chain=rewrite from=a to=b", true))
	f.Add(hello(4, "chain=|||", true))
	f.Add(hello(4, "shout", true)[:100])
	f.Add([]byte{})
	f.Add(make([]byte, 304))
	f.Fuzz(func(t *testing.T, pkt []byte) {
		sendPacket(d.sock, pkt, -1)
		daemonAnswers(t, d.sock)
	})
}

// Started on demand: systemd-socket-activate stands in for the user's
// systemd and funtun-daemon.socket (a sequenced-packet socket, passed as
// fd 3); the daemon serves it and says READY=1 on NOTIFY_SOCKET.
func TestSocketActivation(t *testing.T) {
	needBuild(t)
	dir, err := os.MkdirTemp("", "ftsa")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	run := filepath.Join(dir, "run")
	os.MkdirAll(filepath.Join(run, "funtun"), 0o700)
	cfg := filepath.Join(dir, "cfg")
	os.MkdirAll(filepath.Join(cfg, "funtun", "profiles"), 0o755)
	os.WriteFile(filepath.Join(cfg, "funtun", "profiles", "shout.profile"), []byte(shout), 0o644)
	sock := filepath.Join(run, "funtun", "daemon.sock")
	notifyPath := filepath.Join(dir, "notify")
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()

	log := activatedDaemon(t, sock, "XDG_CONFIG_HOME="+cfg, "XDG_RUNTIME_DIR="+run, "NOTIFY_SOCKET="+notifyPath)
	// The first connection starts the daemon.
	port := lineEcho(t)
	out, stderr, err := runProgram(t, append(cleanEnv(), "XDG_RUNTIME_DIR="+run), "", built.fetch, "shout", "demo.test", strconv.Itoa(port))
	if err != nil || out != "echo: HELLO\n" {
		t.Fatalf("fetch through the activated daemon: %v, %q %q\n%s", err, out, stderr, log.String())
	}
	if !strings.Contains(log.String(), "(from systemd)") {
		t.Errorf("the daemon did not say it serves systemd's socket:\n%s", log.String())
	}
	notify.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 4096)
	n, err := notify.Read(buf)
	if err != nil || !strings.Contains(string(buf[:n]), "READY=1") {
		t.Fatalf("no READY=1 on NOTIFY_SOCKET: %q %v", buf[:n], err)
	}
}

// A funnelled program keeps its profile for life: an edit of the programs
// file that drops it applies to programs started later, not to this one
// (its later control connections — here a forked child's — name the
// profile the daemon chose at first), and a name it looked up before the
// edit still means the same.
func TestProgramKeepsItsProfile(t *testing.T) {
	python := "/usr/bin/python3"
	if _, err := os.Stat(python); err != nil {
		python = testutil.NeedTool(t, "python3")
	}
	d := startDaemon(t, map[string]string{"a": shout}, "python3* profile=a\n")
	port := lineEcho(t)
	script := `import os, socket, sys
addr = None
for line in sys.stdin:
    cmd = line.strip()
    if cmd == "resolve":
        addr = socket.getaddrinfo("demo.test", ` + strconv.Itoa(port) + `, socket.AF_INET, socket.SOCK_STREAM)[0][4]
        print("resolved", addr[0], flush=True)
    elif cmd == "fork":
        pid = os.fork()
        if pid == 0:
            try:
                s = socket.create_connection(addr, timeout=20)
                s.sendall(b"hello\n")
                print("child", s.recv(100).decode().strip(), flush=True)
            except OSError as e:
                print("child err", e.errno, flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
`
	cmd := exec.Command(python, "-c", script)
	cmd.Env = d.clientEnv("LD_PRELOAD=" + built.lib)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	var stderr testutil.LogBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
	})
	answers := bufio.NewReader(stdout)
	say := func(what string) string {
		t.Helper()
		io.WriteString(stdin, what+"\n")
		line, err := answers.ReadString('\n')
		if err != nil {
			t.Fatalf("the program: %v; stderr %s", err, stderr.String())
		}
		return strings.TrimSpace(line)
	}
	if got := say("resolve"); !strings.HasPrefix(got, "resolved 198.18.") {
		t.Fatalf("demo.test resolved to %q, want a synthetic address of the funnel", got)
	}
	d.writePrograms(t, "python3* untouched\n")
	d.reload(t)
	if got := say("fork"); got != "child echo: HELLO" {
		t.Fatalf("the forked child, after the programs file dropped the program: %q", got)
	}
}
