package funnel_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/funtun/funtun/funnel"
)

// A check that refuses the new set keeps the old one in force, opens
// nothing of the refused set, and lets the next reload through once the
// cause is fixed.
func TestLoadCheckedRefusesAndKeepsTheOldSet(t *testing.T) {
	dir := t.TempDir()
	writeProfile(t, dir, "mine", "t-res tag=LC1")
	c := &funnel.Catalog{Dirs: []string{dir}, Builtins: fstest.MapFS{"direct.profile": {Data: []byte("direct")}}}
	needMine := func(set *funnel.Set) error {
		_, err := c.ResolveIn(set, funnel.Selector{Profile: "mine"})
		return err
	}
	if err := c.LoadChecked(needMine); err != nil {
		t.Fatal(err)
	}
	old := c.Current()
	if probeCount(probes.open, "LC1") != 1 {
		t.Fatal("the first set's pieces are not open")
	}

	// The profile goes: the set compiles, the check refuses it.
	if err := os.Remove(filepath.Join(dir, "mine"+funnel.ProfileExt)); err != nil {
		t.Fatal(err)
	}
	writeProfile(t, dir, "other", "t-res tag=LC2")
	err := c.LoadChecked(needMine)
	if err == nil || !strings.Contains(err.Error(), `no profile named "mine"`) {
		t.Fatalf("reload without the checked profile: %v, want the check's error", err)
	}
	if c.Current() != old {
		t.Fatal("a refused set replaced the one in force")
	}
	if _, err := c.Resolve(funnel.Selector{Profile: "mine"}); err != nil {
		t.Fatalf("the old set lost its profile: %v", err)
	}
	if n := probeCount(probes.opens, "LC2"); n != 0 {
		t.Errorf("the refused set opened its pieces (%d)", n)
	}

	// The check's own error, not only a resolve error, refuses too.
	boom := errors.New("users file F:3: user alice takes profile \"gone\", which does not exist")
	if err := c.LoadChecked(func(*funnel.Set) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("check error: got %v", err)
	}
	if c.Current() != old {
		t.Fatal("a refused set replaced the one in force")
	}

	// Fixed: the next reload takes it.
	writeProfile(t, dir, "mine", "t-res tag=LC3")
	if err := c.LoadChecked(needMine); err != nil {
		t.Fatal(err)
	}
	if c.Current() == old || probeCount(probes.open, "LC3") != 1 || probeCount(probes.open, "LC2") != 1 {
		t.Fatal("the fixed set is not in force with its pieces open")
	}
	if probeCount(probes.open, "LC1") != 0 {
		t.Error("the retired set kept its pieces open")
	}
	for _, tag := range []string{"LC1", "LC2", "LC3"} {
		if n := probeCount(probes.badCloses, tag); n != 0 {
			t.Errorf("%s: closed %d times without being open", tag, n)
		}
	}
}

// On the first load a refusing check makes nothing current.
func TestLoadCheckedFirstLoad(t *testing.T) {
	c := &funnel.Catalog{Dirs: []string{t.TempDir()}, Builtins: fstest.MapFS{"direct.profile": {Data: []byte("direct")}}}
	err := c.LoadChecked(func(set *funnel.Set) error {
		_, err := c.ResolveIn(set, funnel.Selector{Profile: "absent"})
		return err
	})
	if err == nil || c.Current() != nil {
		t.Fatalf("first load with a failing check: err %v, current %v; want an error and no set", err, c.Current())
	}
}
