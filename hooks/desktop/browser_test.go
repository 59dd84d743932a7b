package desktop

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/funtun/funtun/internal/testutil"
)

// artifactDir is where screenshots are kept: $FUNTUN_TEST_ARTIFACTS, else
// test-artifacts/ at the top of the source tree (ignored by git).
func artifactDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("FUNTUN_TEST_ARTIFACTS")
	if dir == "" {
		_, file, _, _ := runtime.Caller(0)
		dir = filepath.Join(filepath.Dir(file), "..", "..", "test-artifacts")
	}
	dir, _ = filepath.Abs(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// flashSays waits until the page's result line contains text: a click
// on a form button navigates, so the new page's line is polled for.
func flashSays(text string) chromedp.Action[chromedp.Void] {
	return chromedp.Poll[chromedp.Void](
		fmt.Sprintf(`(document.querySelector('#flash')||{}).textContent?.includes(%q)`, text),
		chromedp.WithPollingInterval(100*time.Millisecond), chromedp.WithPollingTimeout(60*time.Second))
}

// TestBrowserAppliesAndRemoves drives `funtun desktop ui` in Debian's
// chromium, headless: choose a profile for an application, apply, check
// the file on disk (desktop-file-validate), remove, check the user's own
// file is back byte for byte; and keep a screenshot of the page.
func TestBrowserAppliesAndRemoves(t *testing.T) {
	chromium := testutil.NeedTool(t, "chromium")
	tr := newTree(t)
	// The user has an entry of their own for one application.
	own := "[Desktop Entry]\nType=Application\nName=Terminal Tool (mine)\nTerminal=true\nExec=htop --tree\n"
	userPath := filepath.Join(tr.home, "applications", "org.funtun.Terminal.desktop")
	writeFile(t, userPath, own)
	_, page := startUI(t, tr.m)

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.Headless,
		chromedp.DisableGPU,
		chromedp.WindowSize(1200, 900),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
	)
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox) // chromium refuses to run as root with its sandbox
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(allocCtx, chromedp.WithLogf(t.Logf))
	defer cancel()
	// The first Do starts the browser and must not carry a deadline (it
	// would end the browser); later steps each get a generous bound so
	// that a hung browser fails the test instead of stalling the run.
	if err := chromedp.Do(ctx, chromedp.Navigate(page)); err != nil {
		t.Fatalf("chromium (%s) could not load the page: %v", chromium, err)
	}
	step := func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		sctx, scancel := context.WithTimeout(ctx, 90*time.Second)
		defer scancel()
		if err := chromedp.Do(sctx, actions...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	text := func(sel string) string {
		t.Helper()
		sctx, scancel := context.WithTimeout(ctx, 90*time.Second)
		defer scancel()
		s, err := chromedp.Run(sctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("reading %s: %v", sel, err)
		}
		return s
	}
	row := func(id string) string { return fmt.Sprintf(`tr[data-id=%q]`, id) }
	// submit clicks a form's button and waits for the page the POST
	// leads to, then for its result line.
	submit := func(what, button, result string) {
		t.Helper()
		sctx, scancel := context.WithTimeout(ctx, 90*time.Second)
		defer scancel()
		if _, err := chromedp.RunResponse(sctx, chromedp.Click(chromedp.CSS(button))); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if err := chromedp.Do(sctx, flashSays(result)); err != nil {
			dctx, dcancel := context.WithTimeout(ctx, 20*time.Second)
			body, _ := chromedp.Run(dctx, chromedp.Evaluate[string](`document.location.href + "\n" + document.body.innerText`))
			dcancel()
			t.Fatalf("%s: the page never said %q (%v); it shows:\n%s", what, result, err, body)
		}
	}

	// Every application is listed with its state.
	step("page lists the applications", chromedp.WaitVisible(chromedp.CSS(row("org.funtun.Quoted.desktop"))))
	if got := text(row("org.funtun.DBus.desktop")); !strings.Contains(got, "DBusActivatable") {
		t.Errorf("the D-Bus entry's row says %q", got)
	}
	if got := text(row("org.funtun.Provisioned.desktop")); !strings.Contains(got, "direct") {
		t.Errorf("the provisioned entry's row says %q", got)
	}

	// Choose "work" for the Quoted Demo and apply; the page comes back
	// with the result.
	id := "org.funtun.Quoted.desktop"
	step("choose a profile", chromedp.SetValue(chromedp.CSS(`select[data-id="`+id+`"]`), "work"))
	submit("apply", `button.apply[data-id="`+id+`"]`, "org.funtun.Quoted.desktop: profile work")
	override := filepath.Join(tr.home, "applications", id)
	checkApplied(t, override, "work", []byte(handMade[id]))
	if got := text(row(id) + " .profile"); got != "work" {
		t.Errorf("the row shows profile %q after apply", got)
	}

	// The user's own entry: apply keeps it aside.
	id2 := "org.funtun.Terminal.desktop"
	step("choose a profile for the user's entry", chromedp.SetValue(chromedp.CSS(`select[data-id="`+id2+`"]`), "direct"))
	submit("apply to the user's entry", `button.apply[data-id="`+id2+`"]`, "your own file kept")
	checkApplied(t, userPath, "direct", []byte(own))

	shot := filepath.Join(artifactDir(t), "desktop-ui.png")
	sctx, scancel := context.WithTimeout(ctx, 90*time.Second)
	png, err := chromedp.Run(sctx, chromedp.FullScreenshot(100))
	scancel()
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if err := os.WriteFile(shot, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot of the page after apply: %s", shot)

	// Remove both through the page.
	submit("remove", `button.remove[data-id="`+id+`"]`, "org.funtun.Quoted.desktop: profile removed")
	if _, err := os.Stat(override); !os.IsNotExist(err) {
		t.Errorf("the override is still there after remove: %v", err)
	}
	submit("remove the user's", `button.remove[data-id="`+id2+`"]`, "restored")
	if got := readFile(t, userPath); got != own {
		t.Errorf("the user's entry came back as\n%q\nwant\n%q", got, own)
	}
	if left := tr.userApps(t); len(left) != 1 {
		t.Errorf("after removing both: %q", left)
	}
	if got := text(row(id) + " td:nth-child(2)"); got != "none" {
		t.Errorf("the row shows profile %q after remove", got)
	}

	// Without the token the browser gets nothing but the refusal.
	base := page[:strings.Index(page[len("http://"):], "/")+len("http://")]
	step("page without the token", chromedp.Navigate(base+"/"))
	if got := text("body"); !strings.Contains(got, "forbidden") {
		t.Errorf("without the token the page says %q", got)
	}
}
