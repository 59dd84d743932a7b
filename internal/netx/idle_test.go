package netx

import (
	"io"
	"sync/atomic"
	"testing"
	"time"
)

func TestIdleWatchClosesQuietConn(t *testing.T) {
	client, server := tcpPair(t)
	var moved atomic.Int64
	idled := make(chan struct{})
	stop := IdleWatch(50*time.Millisecond, moved.Load, func() {
		close(idled)
		server.Close()
	})
	defer stop()
	// Busy for several periods: the watch must leave the flow alone.
	go func() {
		for range 10 {
			client.Write([]byte("x"))
			time.Sleep(20 * time.Millisecond)
		}
	}()
	buf := make([]byte, 1)
	for range 10 {
		if _, err := io.ReadFull(server, buf); err != nil {
			t.Fatalf("the watch closed a busy connection: %v", err)
		}
		moved.Add(1)
	}
	// Then quiet: the watch closes it.
	select {
	case <-idled:
	case <-time.After(5 * time.Second):
		t.Fatal("the idle connection was not closed")
	}
	if _, err := server.Read(buf); err == nil {
		t.Error("read on the closed connection succeeded")
	}
}

func TestIdleWatchStop(t *testing.T) {
	var fired atomic.Bool
	stop := IdleWatch(10*time.Millisecond, func() int64 { return 0 }, func() { fired.Store(true) })
	stop()
	time.Sleep(50 * time.Millisecond)
	if fired.Load() {
		t.Error("onIdle ran after stop")
	}
	stop() // twice is harmless

	// No period, no watch.
	stop = IdleWatch(0, func() int64 { return 0 }, func() { fired.Store(true) })
	time.Sleep(20 * time.Millisecond)
	stop()
	if fired.Load() {
		t.Error("onIdle ran with period 0")
	}
}

func TestIdleWatchFiresOnce(t *testing.T) {
	var n atomic.Int32
	stop := IdleWatch(5*time.Millisecond, func() int64 { return 7 }, func() { n.Add(1) })
	defer stop()
	time.Sleep(100 * time.Millisecond)
	if got := n.Load(); got != 1 {
		t.Errorf("onIdle ran %d times, want once", got)
	}
}
