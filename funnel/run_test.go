package funnel_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/funtun/funtun/funnel"
)

// A flow that resolved its profile just before a reload retired (and
// closed) that profile's set takes the same profile from the set in force.
func TestBeginAfterReloadTakesTheLiveSet(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "p"+funnel.ProfileExt), []byte("direct\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	eng, err := funnel.NewEngine(&funnel.Catalog{Dirs: []string{dir}}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	for _, sel := range []funnel.Selector{{Profile: "p"}, {Chain: "direct timeout=3s"}} {
		old, err := eng.Resolve(sel)
		if err != nil {
			t.Fatal(err)
		}
		if err := eng.Reload(); err != nil {
			t.Fatal(err)
		}
		r := eng.Begin(eng.NewFlow("t", funnel.TCP, funnel.MakeAddr("127.0.0.1", 9)), old)
		now, _ := eng.Resolve(sel)
		if r.Pipeline == old || r.Pipeline != now {
			t.Errorf("%v: the flow kept the pipeline of the retired set", sel)
		}
		r.End(context.Canceled)
	}
}
