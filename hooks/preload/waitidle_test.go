//go:build linux

package preload

import (
	"net"
	"testing"
	"time"
)

// TestWaitIdleWakesWhenTheLastConnectionEnds: the launcher's exit wait
// ends when the program's last control connection does (well before its
// bound: nothing but that end wakes it), and not while a connection is
// still open.
func TestWaitIdleWakesWhenTheLastConnectionEnds(t *testing.T) {
	s := &Server{conns: map[*net.UnixConn]bool{}}
	first, last := &net.UnixConn{}, &net.UnixConn{}
	s.conns[first], s.conns[last] = true, true
	done := make(chan struct{})
	go func() {
		s.waitIdle(time.Hour)
		close(done)
	}()
	s.dropConn(first)
	select {
	case <-done:
		t.Fatal("waitIdle returned while a control connection was still open")
	case <-time.After(100 * time.Millisecond):
	}
	s.dropConn(last)
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("waitIdle still waits after the last control connection ended")
	}
}

// TestWaitIdleKeepsItsBound: a connection left open (a daemon the program
// started) holds the exit wait up to its bound only.
func TestWaitIdleKeepsItsBound(t *testing.T) {
	s := &Server{conns: map[*net.UnixConn]bool{{}: true}}
	done := make(chan struct{})
	go func() {
		s.waitIdle(10 * time.Millisecond)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("waitIdle did not end at its bound")
	}
	// Nothing waits any more: the connection's end must not block.
	for c := range s.conns {
		s.dropConn(c)
	}
	s.waitIdle(time.Hour) // no connection: returns at once
}
