//go:build linux

package daemon

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/hooks/preload"
	"github.com/funtun/funtun/internal/cli"
)

// The launcher front-end's requests (preload/launch/funtun.c): `funtun
// profile=NAME PROGRAM` as a small C program that asks this daemon to
// prepare the launch and then execs the program itself. The protocol is
// text, one packet each way, on the same socket as the library's HELLO;
// docs/hooks/launcher.md describes it.

const launchMagic = "FUNTUN-LAUNCH 1\n"

// launchWait bounds each step of a launch conversation: the front-end
// sends at once, and it waits for the answer before it runs anything.
const launchWait = 5 * time.Second

// isLaunch peeks at the first packet: a front-end's, or the library's.
func isLaunch(c *net.UnixConn, timeout time.Duration) (bool, error) {
	lc, err := newLaunchConn(c, timeout)
	if err != nil {
		return false, err
	}
	buf := make([]byte, len(launchMagic))
	n, err := lc.recv(buf, unix.MSG_PEEK)
	if err != nil {
		return false, err
	}
	return n == len(launchMagic) && string(buf) == launchMagic, nil
}

type launchRequest struct {
	preload.LaunchRequest
	profile string
	chain   string
	ino     string // DEV:INO of the program, as the front-end saw it
	env     map[string]string
}

func parseLaunchRequest(b []byte) (launchRequest, error) {
	r := launchRequest{env: map[string]string{}}
	text, ok := strings.CutPrefix(string(b), launchMagic)
	if !ok {
		return r, errors.New("not a launch request")
	}
	for _, line := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			return r, fmt.Errorf("a malformed line %q", line)
		}
		switch {
		case key == "program":
			r.Program = value
		case key == "ino":
			r.ino = value
		case key == "profile":
			r.profile = value
		case key == "chain":
			r.chain = value
		case key == "mode":
			r.Mode = value
		case key == "io_uring":
			r.IOUring = value
		case strings.HasPrefix(key, "env."):
			r.env[strings.TrimPrefix(key, "env.")] = value
		}
		// Other keys are a newer front-end's; it works without them.
	}
	if !filepath.IsAbs(r.Program) {
		return r, fmt.Errorf("program %q is not an absolute path", r.Program)
	}
	r.Library = r.env["FUNTUN_PRELOAD"]
	return r, nil
}

// serveLaunch answers one front-end. Whatever goes wrong on the daemon's
// side is a fallback: the front-end then runs the Go launcher, which
// does the same launch in-process, so a daemon problem costs time only.
func (d *daemon) serveLaunch(ctx context.Context, c *net.UnixConn, cred *unix.Ucred) {
	start := time.Now()
	bc, err := newLaunchConn(c, launchWait)
	if err != nil {
		d.log.Warn("daemon: cannot take a launcher's connection", "pid", cred.Pid, "err", err)
		return
	}
	defer bc.Close()
	buf := make([]byte, 16<<10)
	n, err := bc.recv(buf, 0)
	if err != nil {
		return
	}
	req, err := parseLaunchRequest(buf[:n])
	if err != nil {
		d.answerLaunch(bc, preload.LaunchPlan{Action: preload.LaunchFallback, Why: err.Error()}, cred, start)
		return
	}
	req.Daemon = d.where
	plan := d.planLaunch(req)
	if err := d.answerLaunch(bc, plan, cred, start); err != nil || plan.Action != preload.LaunchExec || !plan.Listener {
		return
	}
	// The front-end installed the filter; it now names the listener's
	// descriptor, which the daemon takes from it (it may make no socket
	// call that the filter stops, and so cannot pass it itself).
	n, err = bc.recv(buf, 0)
	if err != nil {
		d.log.Warn("daemon: a launcher installed its filter but named no listener", "pid", cred.Pid, "program", req.Program, "err", err)
		return
	}
	fdText, ok := strings.CutPrefix(strings.TrimSpace(string(buf[:n])), "listener=")
	fd, err := strconv.Atoi(fdText)
	if !ok || err != nil {
		bc.Write([]byte("funtun: the daemon did not understand " + strconv.Quote(string(buf[:n])) + "\n"))
		return
	}
	l, err := preload.TakeListener(int(cred.Pid), fd)
	if err != nil {
		d.log.Error("daemon: cannot take a launched program's seccomp listener", "pid", cred.Pid, "program", req.Program, "err", err)
		bc.Write([]byte(err.Error() + "\n"))
		return
	}
	// The front-end may go on once the listener is ours: the program's
	// first trapped call waits in the kernel until the supervisor reads it.
	bc.Write([]byte("ok\n"))
	if err := plan.Supervise(ctx, l); err != nil {
		// Closed, the listener fails the program's trapped calls (ENOSYS):
		// nothing passes the funnel unseen.
		unix.Close(l)
		d.log.Error("daemon: cannot supervise a launched program: its socket calls fail", "pid", cred.Pid, "program", req.Program, "err", err)
		return
	}
	d.log.Debug("daemon: launch supervised", "pid", cred.Pid, "took", time.Since(start))
}

// launchConn is a launcher's connection, read on the daemon's own thread
// (recv) with one deadline for the whole conversation.
type launchConn struct {
	c        *net.UnixConn
	rc       syscall.RawConn
	deadline time.Time
}

func newLaunchConn(c *net.UnixConn, timeout time.Duration) (*launchConn, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	return &launchConn{c: c, rc: rc, deadline: time.Now().Add(timeout)}, nil
}

// recv reads one packet (flags: MSG_PEEK to leave it there). It waits
// in poll(2) on this thread rather than in Go's poller: the kernel then
// wakes this thread itself when the packet arrives, which saves a
// hand-over between threads at each step of a launch. Descriptors a peer
// sends along are not taken: without room for them the kernel drops them.
func (l *launchConn) recv(buf []byte, flags int) (n int, err error) {
	cerr := l.rc.Control(func(fd uintptr) {
		for {
			n, _, err = unix.Recvfrom(int(fd), buf, flags|unix.MSG_DONTWAIT)
			if err != unix.EAGAIN {
				return
			}
			left := time.Until(l.deadline)
			if left <= 0 {
				err = os.ErrDeadlineExceeded
				return
			}
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			if _, err = unix.Poll(pfd, int(left.Milliseconds())+1); err != nil && err != unix.EINTR {
				return
			}
		}
	})
	if cerr != nil {
		return 0, cerr
	}
	if err == nil && n == 0 {
		err = io.EOF
	}
	return n, err
}

// Write sends one packet; the front-end reads each answer before it
// writes again, so there is always room.
func (l *launchConn) Write(p []byte) (n int, err error) {
	cerr := l.rc.Control(func(fd uintptr) { n, err = unix.SendmsgN(int(fd), p, nil, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL) })
	if cerr != nil {
		return 0, cerr
	}
	return n, err
}

func (l *launchConn) Close() error { return l.c.Close() }

func (d *daemon) planLaunch(req launchRequest) preload.LaunchPlan {
	fallback := func(why string) preload.LaunchPlan {
		return preload.LaunchPlan{Action: preload.LaunchFallback, Why: why}
	}
	// The profiles the launcher would read must be the daemon's.
	getenv := func(k string) string { return req.env[k] }
	if want := funnel.DirsFor(getenv); !slices.Equal(want, d.eng.Catalog.Dirs) {
		return fallback(fmt.Sprintf("the launcher reads profiles from %s, the daemon from %s", strings.Join(want, ":"), strings.Join(d.eng.Catalog.Dirs, ":")))
	}
	var st unix.Stat_t
	if err := unix.Stat(req.Program, &st); err != nil || fmt.Sprintf("%d:%d", st.Dev, st.Ino) != req.ino {
		return fallback("the daemon sees another file at " + req.Program)
	}
	if req.profile != "" && !funnel.IsProfileName(req.profile) {
		return fallback("profile=" + req.profile + " is no profile name")
	}
	if err := d.freshProfiles(); err != nil {
		return fallback("the edited profiles do not load: " + err.Error())
	}
	sel := funnel.Selector{Profile: req.profile}
	if req.chain != "" {
		if req.profile != "" {
			return fallback("both profile= and chain=")
		}
		var err error
		if sel, _, err = funnel.TakeSelector([]string{"chain=" + req.chain}); err != nil {
			return fallback(err.Error())
		}
	}
	if _, err := d.eng.Resolve(sel); err != nil {
		return preload.LaunchPlan{Action: preload.LaunchExit, Code: 1, Say: []string{"funtun: " + err.Error()}}
	}
	srv, err := d.server(sel)
	if err != nil {
		return fallback(err.Error())
	}
	return srv.PlanLaunch(req.LaunchRequest)
}

func (d *daemon) answerLaunch(c io.Writer, p preload.LaunchPlan, cred *unix.Ucred, start time.Time) error {
	var b bytes.Buffer
	b.WriteString(launchMagic)
	fmt.Fprintf(&b, "action=%s\n", p.Action)
	if p.Action == preload.LaunchExit {
		fmt.Fprintf(&b, "code=%d\n", p.Code)
	}
	for _, s := range p.Say {
		for _, line := range strings.Split(s, "\n") {
			fmt.Fprintf(&b, "say=%s\n", line)
		}
	}
	if p.Preload != "" {
		fmt.Fprintf(&b, "preload=%s\n", p.Preload)
	}
	for _, k := range p.Unset {
		fmt.Fprintf(&b, "unset=%s\n", k)
	}
	for _, kv := range p.Set {
		fmt.Fprintf(&b, "set=%s\n", kv)
	}
	if len(p.Filter) > 0 {
		listener := 0
		if p.Listener {
			listener = 1
		}
		fmt.Fprintf(&b, "filter=%d\nlistener=%d\n\n", len(p.Filter), listener)
		for _, f := range p.Filter {
			var ins [8]byte
			binary.NativeEndian.PutUint16(ins[0:], f.Code)
			ins[2], ins[3] = f.Jt, f.Jf
			binary.NativeEndian.PutUint32(ins[4:], f.K)
			b.Write(ins[:])
		}
	}
	switch p.Action {
	case preload.LaunchFallback:
		d.log.Debug("daemon: a launch goes to the Go launcher", "pid", cred.Pid, "why", p.Why)
	case preload.LaunchExec:
		d.log.Debug("daemon: launch prepared", "pid", cred.Pid, "library", p.Preload != "", "filter", len(p.Filter), "listener", p.Listener, "took", time.Since(start))
	}
	_, err := c.Write(b.Bytes())
	return err
}

// freshProfiles reloads the profiles, as SIGHUP would, when their files
// changed since the last load: a launch runs the profile as it is on
// disk, as the Go launcher (which compiles them at every start) does.
// The check is a directory read and a stat per profile.
func (d *daemon) freshProfiles() error {
	d.stampMu.Lock()
	defer d.stampMu.Unlock()
	stamp := profilesStamp(d.eng.Catalog.Dirs)
	if stamp == d.stamp {
		return nil
	}
	if err := cli.Reload(d.eng, d.reloadStep(d.progFile, d.progMissingOK)); err != nil {
		return err
	}
	d.stamp = stamp
	return nil
}

// profilesStamp sums up what a reload would read: each directory's
// profiles by name, inode, size and modification time.
func profilesStamp(dirs []string) string {
	var b strings.Builder
	for _, dir := range dirs {
		b.WriteString(dir)
		b.WriteByte(0)
		entries, err := os.ReadDir(dir)
		if err != nil {
			fmt.Fprintf(&b, "!%v\x00", errors.Unwrap(err))
			continue
		}
		for _, e := range entries {
			if !strings.HasSuffix(e.Name(), funnel.ProfileExt) {
				continue
			}
			var st unix.Stat_t
			if err := unix.Stat(filepath.Join(dir, e.Name()), &st); err != nil {
				fmt.Fprintf(&b, "%s!\x00", e.Name())
				continue
			}
			fmt.Fprintf(&b, "%s %d %d %d %d\x00", e.Name(), st.Ino, st.Size, st.Mtim.Nano(), st.Ctim.Nano())
		}
	}
	return b.String()
}
