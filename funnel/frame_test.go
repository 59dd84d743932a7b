package funnel

import (
	"bytes"
	"testing"
)

func TestFrameHeadroom(t *testing.T) {
	f := NewFrame()
	defer f.Release()
	n := copy(f.Room(), "payload")
	f.SetLen(n)
	copy(f.Push(4), "HDR:")
	if got := string(f.Bytes()); got != "HDR:payload" {
		t.Fatalf("after Push: %q", got)
	}
	if h := f.Pull(4); string(h) != "HDR:" || string(f.Bytes()) != "payload" {
		t.Fatalf("after Pull: %q / %q", h, f.Bytes())
	}
}

func TestFrameRefcount(t *testing.T) {
	f := NewFrame()
	f.Retain()
	f.Release()
	if f.refs.Load() != 1 {
		t.Fatalf("refs = %d after retain+release", f.refs.Load())
	}
	f.Release()
	defer func() {
		if recover() == nil {
			t.Error("releasing a released frame did not panic")
		}
	}()
	f.Release()
}

func TestFramePathAllocatesNothing(t *testing.T) {
	payload := bytes.Repeat([]byte{7}, 1200)
	allocs := testing.AllocsPerRun(1000, func() {
		f := NewFrame()
		f.SetLen(copy(f.Room(), payload))
		f.Push(8)
		f.Retain()
		f.Release()
		f.Pull(8)
		f.Release()
	})
	if allocs != 0 {
		t.Errorf("%.1f allocations per frame, want 0", allocs)
	}
}
