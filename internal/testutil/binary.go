package testutil

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
)

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// Funtun returns the path of the funtun users run: $FUNTUN_BIN/funtun (the
// C front-end, which hands all but fast launches to funtun-core beside it)
// when the test command built one, else a Go core built once for this test
// binary, which is a complete funtun on its own.
func Funtun(t testing.TB) string {
	t.Helper()
	return fromBin(t, "funtun")
}

// FuntunCore returns the path of the Go program itself, the front-end's
// funtun-core: $FUNTUN_BIN/funtun-core, else the one built for this test
// binary.
func FuntunCore(t testing.TB) string {
	t.Helper()
	return fromBin(t, "funtun-core")
}

func fromBin(t testing.TB, name string) string {
	t.Helper()
	if dir := os.Getenv("FUNTUN_BIN"); dir != "" {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "funtun-test-bin")
		if err != nil {
			buildErr = err
			return
		}
		buildPath = filepath.Join(dir, "funtun")
		cmd := exec.Command("go", "build", "-o", buildPath, "./cmd/funtun")
		cmd.Dir = repoRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = &buildError{out: string(out), err: err}
		}
	})
	if buildErr != nil {
		t.Fatalf("building funtun: %v", buildErr)
	}
	return buildPath
}

type buildError struct {
	out string
	err error
}

func (e *buildError) Error() string { return e.err.Error() + "\n" + e.out }

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// ProfileDir makes an empty profile directory and points FUNTUN_PROFILE_PATH
// of the returned environment at it, so tests never read the user's own.
func ProfileDir(t testing.TB) (dir string, env []string) {
	t.Helper()
	dir = t.TempDir()
	return dir, append(os.Environ(), "FUNTUN_PROFILE_PATH="+dir)
}
