package netx

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func listen(t *testing.T) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// greet is a serve function that says hello on a goroutine of its own.
func greet(c net.Conn) {
	go func() {
		defer c.Close()
		io.WriteString(c, "hello")
	}()
}

func expectHello(t *testing.T, addr net.Addr) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr.String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil || string(b) != "hello" {
		t.Fatalf("read %q, %v; want hello", b, err)
	}
}

func run(ctx context.Context, l net.Listener, log *slog.Logger) <-chan error {
	done := make(chan error, 1)
	go func() { done <- AcceptLoop(ctx, l, greet, log) }()
	return done
}

func waitDone(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("AcceptLoop did not return")
		return nil
	}
}

func TestAcceptLoopServesUntilCancelled(t *testing.T) {
	l := listen(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := run(ctx, l, nil)
	for range 3 {
		expectHello(t, l.Addr())
	}
	cancel()
	if err := waitDone(t, done); err != nil {
		t.Fatalf("AcceptLoop after cancel: %v, want nil", err)
	}
	// The loop closed the listener: nobody accepts there any more.
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after the loop ended: %v, want net.ErrClosed", err)
	}
}

// flakyListener fails its first fails Accepts with err.
type flakyListener struct {
	net.Listener
	fails atomic.Int32
	err   error
	calls atomic.Int32
}

func (f *flakyListener) Accept() (net.Conn, error) {
	f.calls.Add(1)
	if f.fails.Add(-1) >= 0 {
		return nil, f.err
	}
	return f.Listener.Accept()
}

func emfile() error {
	return &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
}

// countingHandler counts the warnings logged.
type countingHandler struct {
	mu    sync.Mutex
	warns int
}

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Level == slog.LevelWarn {
		h.mu.Lock()
		h.warns++
		h.mu.Unlock()
	}
	return nil
}
func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countingHandler) WithGroup(string) slog.Handler      { return h }

func TestAcceptLoopBacksOffOnEMFILE(t *testing.T) {
	fl := &flakyListener{Listener: listen(t), err: emfile()}
	fl.fails.Store(4)
	h := &countingHandler{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := run(ctx, fl, slog.New(h))
	// Four failures pause 5+10+20+40 ms; then the connection is served.
	expectHello(t, fl.Addr())
	if n := fl.calls.Load(); n < 5 {
		t.Errorf("%d Accept calls, want the 4 failures and the success", n)
	}
	cancel()
	if err := waitDone(t, done); err != nil {
		t.Fatalf("AcceptLoop: %v", err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	// 75 ms of pauses: one warning, not one per failure (a very slow
	// machine may cross into a second second).
	if h.warns < 1 || h.warns > 2 {
		t.Errorf("%d warnings for 4 failures within a fraction of a second, want 1", h.warns)
	}
}

func TestBackoffDoublesAndResets(t *testing.T) {
	var b backoff
	want := []time.Duration{5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000}
	for i, w := range want {
		if d := b.next(); d != w*time.Millisecond {
			t.Fatalf("pause %d: %v, want %v", i, d, w*time.Millisecond)
		}
	}
	b.reset()
	if d := b.next(); d != minBackoff {
		t.Errorf("after reset: %v, want %v", d, minBackoff)
	}
}

func TestAcceptLoopCancelEndsBackoff(t *testing.T) {
	fl := &flakyListener{Listener: listen(t), err: emfile()}
	fl.fails.Store(1 << 30)
	ctx, cancel := context.WithCancel(context.Background())
	done := run(ctx, fl, slog.New(&countingHandler{}))
	// Let it reach the long pauses.
	for fl.calls.Load() < 9 {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := waitDone(t, done); err != nil {
		t.Fatalf("AcceptLoop: %v", err)
	}
}

func TestAcceptLoopReturnsOtherErrors(t *testing.T) {
	bad := errors.New("listener broke")
	fl := &flakyListener{Listener: listen(t), err: bad}
	fl.fails.Store(1)
	err := waitDone(t, run(context.Background(), fl, nil))
	if !errors.Is(err, bad) {
		t.Errorf("AcceptLoop: %v, want %v", err, bad)
	}

	// Closed by someone else than the context: an error that says so.
	l := listen(t)
	done := run(context.Background(), l, nil)
	l.Close()
	if err := waitDone(t, done); !errors.Is(err, net.ErrClosed) {
		t.Errorf("AcceptLoop on a listener closed under it: %v, want net.ErrClosed", err)
	}
}

func TestTemporary(t *testing.T) {
	timeout := &net.OpError{Op: "accept", Err: os.ErrDeadlineExceeded}
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{emfile(), true},
		{os.NewSyscallError("accept4", syscall.ENFILE), true},
		{syscall.ECONNABORTED, true},
		{timeout, true},
		{net.ErrClosed, false},
		{errors.New("other"), false},
		{syscall.EBADF, false},
	} {
		if got := Temporary(tc.err); got != tc.want {
			t.Errorf("Temporary(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
	// A listener deadline is a timeout the loop rides out.
	l := listen(t).(*net.TCPListener)
	l.SetDeadline(time.Now().Add(-time.Second))
	if _, err := l.Accept(); !Temporary(err) {
		t.Errorf("Accept past the deadline: %v is not temporary", err)
	}
}
