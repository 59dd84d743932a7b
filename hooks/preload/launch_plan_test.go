//go:build linux

package preload

import (
	"math/rand/v2"
	"runtime"
	"slices"
	"testing"
)

// The filters the daemon hands out are copies of one assembled per kind,
// with the launch's pass put in: each must be exactly the filter
// assembled for that pass.
func TestLaunchFilterIsTheAssembledOne(t *testing.T) {
	abis, err := sockABIs(runtime.GOARCH)
	if err != nil {
		t.Skip(err)
	}
	for _, allowIOUring := range []bool{false, true} {
		for _, trapListen := range []bool{false, true} {
			for _, light := range []bool{false, true} {
				for i := 0; i < 20; i++ {
					var pass uint64
					if light {
						pass = rand.Uint64() | 1<<40 | 1
					}
					got, err := launchFilter(abis, allowIOUring, trapListen, light, pass)
					if err != nil {
						t.Fatal(err)
					}
					want, err := sockFilter(supervisorFilter(abis, allowIOUring, trapListen, light, pass))
					if err != nil {
						t.Fatal(err)
					}
					if !slices.Equal(got, want) {
						t.Fatalf("io_uring allowed %v, listen %v, light %v, pass %#x: the copied filter differs from the assembled one", allowIOUring, trapListen, light, pass)
					}
				}
			}
		}
	}
}
