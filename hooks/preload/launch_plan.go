//go:build linux

package preload

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/funtun/funtun/funnel"
)

// A launch prepared for the launcher's front-end (preload/launch/funtun.c,
// through the per-user daemon): the front-end is a small C program that
// execs the program itself, so a hooked program starts without a Go
// process starting first. The decisions are the Go launcher's own (Launch):
// the same check of the program, the same mode=auto, the same filters and
// refusals; only where the front-end could not do what the Go launcher
// would (guard=netns, a library path LD_PRELOAD cannot hold, a kernel
// without the supervisor's calls) does the plan say "fall back", and the
// front-end runs the Go launcher, which does it.

// LaunchRequest is what the front-end asks for.
type LaunchRequest struct {
	Program string // absolute path
	Mode    string // mode=…, "" for the default
	IOUring string // io_uring=… on the command line, "" to leave it to the profile
	Library string // FUNTUN_PRELOAD in the front-end's environment, "" when unset
	Daemon  string // the daemon's socket, which the library in the program asks
}

// LaunchAction is what the front-end does with a plan.
type LaunchAction string

const (
	LaunchExec     LaunchAction = "exec"     // set the environment, install the filter, exec
	LaunchFallback LaunchAction = "fallback" // run the Go launcher instead
	LaunchExit     LaunchAction = "exit"     // print Say and exit with Code
)

// LaunchPlan is the answer.
type LaunchPlan struct {
	Action  LaunchAction
	Code    int
	Why     string   // for a fallback: the daemon's log line
	Say     []string // lines for the front-end's stderr
	Preload string   // appended to LD_PRELOAD
	Unset   []string
	Set     []string // KEY=VALUE
	Filter  []unix.SockFilter
	// Listener: the filter is installed with a listener, which the
	// front-end hands over (Supervise) before it execs the program.
	Listener bool

	srv     *Server
	guarded bool
}

// Variables the Go launcher never passes on from its own environment
// (childEnv, supervisedEnv): an outer launcher's socket, raw permission,
// fed listeners and guard pass.
var launchUnset = []string{"FUNTUN_SOCKET", "FUNTUN_ALLOW_RAW", "FUNTUN_LISTEN_FED", guardPassEnv}

// PlanLaunch decides how the program of req starts under this Server's
// profile.
func (s *Server) PlanLaunch(req LaunchRequest) LaunchPlan {
	fallback := func(why string) LaunchPlan { return LaunchPlan{Action: LaunchFallback, Why: why} }
	exit := func(code int, say ...string) LaunchPlan { return LaunchPlan{Action: LaunchExit, Code: code, Say: say} }
	if req.Mode != "" {
		if err := checkMode(req.Mode); err != nil {
			return exit(2, "funtun: "+err.Error(), "(see `funtun --help`)")
		}
	}
	if req.IOUring != "" {
		if err := checkOptionValue(optionIOUring)(req.IOUring); err != nil {
			return exit(2, fmt.Sprintf("funtun: %s: %v", optionIOUring, err), "(see `funtun --help`)")
		}
	}
	path := req.Program
	hookErr := cachedHookable(path)
	mode, guarded := launchMode(req.Mode, hookErr)
	var say []string
	if mode == modeSeccomp {
		if w := sayString(func(w *strings.Builder) { warnSupervised(w, path, hookErr) }); w != "" {
			say = append(say, w)
		}
	} else if hookErr != nil {
		return exit(126, fmt.Sprintf("funtun: %v", hookErr),
			"funtun: refusing to run it, since its traffic would bypass the funnel (--allow-unhooked runs it anyway)")
	}
	pl, err := s.Engine.Resolve(s.Selector)
	if err != nil {
		return exit(1, fmt.Sprintf("funtun: %v", err))
	}
	if g, _ := pl.Option(optionGuard); g == "netns" {
		return fallback("the profile asks for guard=netns")
	}
	ioUring := req.IOUring
	if ioUring == "" {
		ioUring, _ = pl.Option(optionIOUring)
	}
	allowIOUring := ioUring == "allow"
	if allowIOUring {
		say = append(say, "funtun: warning: io_uring allowed (io_uring=allow): connections the program makes through io_uring bypass the funnel and its profile")
	}
	plan := LaunchPlan{Action: LaunchExec, Say: say, Unset: launchUnset, srv: s, guarded: guarded}

	if mode == modeSeccomp || guarded {
		abis, err := sockABIs(runtime.GOARCH)
		if err == nil {
			err = supervisorUsable()
		}
		if err != nil {
			// The Go launcher says what this means for this program: a
			// refusal, or the library alone with a warning.
			return fallback("no seccomp supervisor here: " + err.Error())
		}
		trapListen := !guarded && takesListen(pl)
		var pass uint64
		if guarded {
			pass = libraryPass()
			plan.Set = append(plan.Set, fmt.Sprintf("%s=%016x", guardPassEnv, pass))
		}
		if plan.Filter, err = launchFilter(abis, allowIOUring, trapListen, guarded, pass); err != nil {
			return fallback(err.Error())
		}
		plan.Listener = true
	} else if !allowIOUring {
		arches, err := seccompArches(runtime.GOARCH)
		if err == nil {
			plan.Filter, err = sockFilter(ioUringFilter(arches))
		}
		if err != nil {
			return fallback(err.Error())
		}
	}
	if mode == modePreload {
		lib, err := launchLibrary(req.Library)
		if err != nil {
			return exit(1, "funtun: "+err.Error())
		}
		if strings.ContainsAny(lib, " :\t") {
			return fallback("the library's path cannot stand in LD_PRELOAD: " + lib)
		}
		// The library asks the daemon, as for a global preload, naming
		// the profile as its template; the daemon serves it from this
		// same Server. A template the library cannot hold (it keeps
		// FT_NAME_MAX bytes) it would ignore, and the program would be
		// left alone: a long chain='…' goes to the in-process launcher.
		template := Template(s.Selector)
		if len(template) >= nameMax {
			return fallback("the profile's template is longer than the library holds")
		}
		plan.Preload = lib
		plan.Set = append(plan.Set, "FUNTUN_DAEMON="+req.Daemon, "FUNTUN_TEMPLATE="+template)
	}
	return plan
}

// launchFilter is sockFilter(supervisorFilter(…)), assembled once per
// kind and copied for each launch with this launch's pass put in: the
// daemon prepares every launch, and assembling took a tenth of a
// millisecond of each.
func launchFilter(abis []sockABI, allowIOUring, trapListen, light bool, pass uint64) ([]unix.SockFilter, error) {
	key := filterKey{allowIOUring, trapListen, light && pass != 0}
	v, ok := filterCache.Load(key)
	if !ok {
		f, err := newCachedFilter(abis, key)
		if err != nil {
			return nil, err
		}
		v, _ = filterCache.LoadOrStore(key, f)
	}
	f := v.(*cachedFilter)
	out := slices.Clone(f.prog)
	for _, i := range f.lo {
		out[i].K = uint32(pass)
	}
	for _, i := range f.hi {
		out[i].K = uint32(pass >> 32)
	}
	return out, nil
}

type filterKey struct{ allowIOUring, trapListen, passed bool }

// cachedFilter is an assembled filter and, for the guard's, where the
// pass's halves go: found by assembling it with two different passes.
type cachedFilter struct {
	prog   []unix.SockFilter
	lo, hi []int
}

var filterCache sync.Map // filterKey → *cachedFilter

func newCachedFilter(abis []sockABI, key filterKey) (*cachedFilter, error) {
	var passA, passB uint64 = 0x5a5a0001a5a50002, 0x3c3c00045c5c0008
	if !key.passed {
		prog, err := sockFilter(supervisorFilter(abis, key.allowIOUring, key.trapListen, false, 0))
		return &cachedFilter{prog: prog}, err
	}
	a, err := sockFilter(supervisorFilter(abis, key.allowIOUring, key.trapListen, true, passA))
	if err != nil {
		return nil, err
	}
	b, err := sockFilter(supervisorFilter(abis, key.allowIOUring, key.trapListen, true, passB))
	if err != nil {
		return nil, err
	}
	if len(a) != len(b) {
		return nil, errors.New("the guard's filter changes shape with its pass")
	}
	f := &cachedFilter{prog: a}
	for i := range a {
		switch {
		case a[i] == b[i]:
		case a[i].K == uint32(passA) && b[i].K == uint32(passB):
			f.lo = append(f.lo, i)
		case a[i].K == uint32(passA>>32) && b[i].K == uint32(passB>>32):
			f.hi = append(f.hi, i)
		default:
			return nil, fmt.Errorf("the guard's filter differs at instruction %d other than by its pass", i)
		}
	}
	if len(f.lo) == 0 || len(f.hi) == 0 {
		return nil, errors.New("the guard's filter does not carry its pass")
	}
	return f, nil
}

// Template writes sel as the template the library names in its HELLO
// (FUNTUN_TEMPLATE), which the daemon reads back as the same selector.
func Template(sel funnel.Selector) string {
	if sel.Chain != "" {
		return "chain=" + sel.Chain
	}
	if sel.Profile == "" {
		return "profile=direct"
	}
	return "profile=" + sel.Profile
}

func sayString(f func(w *strings.Builder)) string {
	var b strings.Builder
	f(&b)
	return strings.TrimRight(b.String(), "\n")
}

// launchLibrary is FindLibrary, but with the front-end's FUNTUN_PRELOAD
// rather than the daemon's.
func launchLibrary(fromLauncher string) (string, error) {
	if fromLauncher == "" {
		return findLibrary(cachedLibrary)
	}
	if !filepath.IsAbs(fromLauncher) {
		return "", fmt.Errorf("FUNTUN_PRELOAD=%s: give an absolute path", fromLauncher)
	}
	if err := cachedLibrary(fromLauncher); err != nil {
		return "", fmt.Errorf("FUNTUN_PRELOAD=%s: %v", fromLauncher, err)
	}
	return fromLauncher, nil
}

// Supervise serves the listener of the filter the front-end installed,
// taken from its process, until no filtered process is left or ctx ends.
func (p *LaunchPlan) Supervise(ctx context.Context, listener int) error {
	if !p.Listener || p.srv == nil {
		return errors.New("this launch has no seccomp listener")
	}
	abis, err := sockABIs(runtime.GOARCH)
	if err != nil {
		return err
	}
	sv := &supervisor{srv: p.srv, listener: listener, abis: abis, guarded: p.guarded, routes: map[dgramRouteKey]dgramRoute{}}
	if err := sv.serve(ctx); err != nil {
		return err
	}
	go func() {
		<-sv.readerDone
		// Ended by a hangup: close here. Ended by ctx: the AfterFunc
		// closes, and stopClose says so.
		if sv.stopClose() {
			sv.closeListener()
		}
	}()
	return nil
}

// supervisorUsable is canTakeSockets, asked once: the answer is the
// kernel's and does not change while the daemon runs.
var supervisorUsable = sync.OnceValue(canTakeSockets)

// cachedHookable is checkHookable for a daemon that is asked about the
// same few programs over and over: the answer is kept while the file (its
// inode, size, modification and change times) stays the same. Its
// interpreter (a script's) is not part of the key: replacing an
// interpreter by a set-ID one under a running daemon is out of scope, and
// the TTL bounds it.
func cachedHookable(path string) error { return cachedCheck("program", path, checkHookable) }

// cachedLibrary is checkLibrary (an ELF symbol table read, the dearest
// step of a launch) kept the same way.
func cachedLibrary(path string) error { return cachedCheck("library", path, checkLibrary) }

func cachedCheck(kind, path string, check func(string) error) error {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return check(path)
	}
	key := checkKey{kind, path, st.Dev, st.Ino, st.Size, st.Mtim.Nano(), st.Ctim.Nano()}
	checkCache.Lock()
	e, ok := checkCache.m[key]
	checkCache.Unlock()
	if ok && time.Since(e.at) < checkCacheTTL {
		return e.err
	}
	err := check(path)
	checkCache.Lock()
	if len(checkCache.m) >= checkCacheMax {
		clear(checkCache.m)
	}
	checkCache.m[key] = checkEntry{err, time.Now()}
	checkCache.Unlock()
	return err
}

type checkKey struct {
	kind, path   string
	dev, ino     uint64
	size         int64
	mtime, ctime int64
}

type checkEntry struct {
	err error
	at  time.Time
}

const (
	checkCacheMax = 512
	checkCacheTTL = time.Minute
)

var checkCache = struct {
	sync.Mutex
	m map[checkKey]checkEntry
}{m: map[checkKey]checkEntry{}}

// TakeListener takes descriptor fd from process pid (the front-end, which
// just installed the filter and may make no socket call to pass it).
func TakeListener(pid, fd int) (int, error) {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return -1, fmt.Errorf("pidfd_open(%d): %w", pid, err)
	}
	defer unix.Close(pidfd)
	l, err := unix.PidfdGetfd(pidfd, fd, 0)
	if err != nil {
		return -1, fmt.Errorf("pidfd_getfd(%d, %d): %w", pid, fd, err)
	}
	// It must be a seccomp listener, not whatever the process put there.
	if link, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", l)); err != nil || link != "anon_inode:seccomp notify" {
		unix.Close(l)
		return -1, fmt.Errorf("descriptor %d of process %d is not a seccomp listener (%s)", fd, pid, link)
	}
	return l, nil // close-on-exec: pidfd_getfd sets it
}
