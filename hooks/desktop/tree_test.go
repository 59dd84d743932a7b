package desktop

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/funtun/funtun/funnel"
	"github.com/funtun/funtun/internal/testutil"
	// The pieces the funtun binary has, so that profiles compile here as
	// they do for `funtun profiles`.
	_ "github.com/funtun/funtun/pieces/all"
	"github.com/funtun/funtun/profiles"
)

// Hand-made entries for the cases real packages rarely show together:
// quoting and escapes, field codes, actions, localized keys, a file
// without a final newline, and the kinds apply must refuse.
var handMade = map[string]string{
	"org.funtun.Quoted.desktop": `# A comment at the top stays.
[Desktop Entry]
Version=1.4
Type=Application
Name=Quoted Demo
Name[de]=Zitat-Demo
GenericName=Demo
GenericName[fr_FR@euro]=Démo
Comment=Arguments with spaces, quotes, dollars and backslashes
# The TryExec names the program, not funtun: it stays as it is.
TryExec=/usr/bin/env
Exec="/opt/My Apps/demo" --title "A \"quoted\" title" --home "\\$HOME" --path "C:\\\\dir" --pct 100%% %U
Icon=demo
Actions=new-window;private;
MimeType=text/plain;
X-Vendor-Setting = keep me exactly

[Desktop Action new-window]
Name=New Window
Name[de]=Neues Fenster
Exec="/opt/My Apps/demo" --new-window %u

[Desktop Action private]
Name=Private
Exec=/opt/demo/demo --private %f %i %c %k
`,
	"org.funtun.Terminal.desktop":  "[Desktop Entry]\nType=Application\nName=Terminal Tool\nTerminal=true\nExec=htop\n",
	"org.funtun.NoNewline.desktop": "[Desktop Entry]\nType=Application\nName=No Newline\nExec=demo --last-line",
	"org.funtun.DBus.desktop":      "[Desktop Entry]\nType=Application\nName=DBus App\nDBusActivatable=true\nExec=dbus-app --gapplication-service\n",
	"org.funtun.Flat.desktop": "[Desktop Entry]\nType=Application\nName=Flat App\n" +
		"Exec=/usr/bin/flatpak run --branch=stable --arch=x86_64 --command=flat --file-forwarding org.funtun.Flat @@u %U @@\nX-Flatpak=org.funtun.Flat\n",
	"snap-demo_snap-demo.desktop": "[Desktop Entry]\nType=Application\nName=Snap Demo\n" +
		"Exec=env BAMF_DESKTOP_FILE_HINT=/var/lib/snapd/desktop/applications/snap-demo_snap-demo.desktop /snap/bin/snap-demo %U\n",
	"org.funtun.Deleted.desktop":     "[Desktop Entry]\nType=Application\nName=Deleted\nHidden=true\nExec=gone\n",
	"org.funtun.NoDisplay.desktop":   "[Desktop Entry]\nType=Application\nName=Helper\nNoDisplay=true\nExec=helper %f\n",
	"org.funtun.NoExec.desktop":      "[Desktop Entry]\nType=Application\nName=No Exec\n",
	"org.funtun.Provisioned.desktop": "[Desktop Entry]\nType=Application\nName=Twinkle\nExec=funtun profile=direct twinkle %u\n",
	"org.funtun.Link.desktop":        "[Desktop Entry]\nType=Link\nName=A Link\nURL=https://example.org/\n",
	"broken.desktop":                 "[Desktop Entry]\nType=Application\nName=Broken\nthis line is not an entry\n",
	"vendor/sub.desktop":             "[Desktop Entry]\nType=Application\nName=Vendor Sub\nExec=vendor-sub\n",
}

// applicable are the hand-made entries apply must accept.
var applicable = []string{
	"org.funtun.Quoted.desktop", "org.funtun.Terminal.desktop", "org.funtun.NoNewline.desktop",
	"org.funtun.NoDisplay.desktop", "org.funtun.Provisioned.desktop", "vendor-sub.desktop",
}

// refused are the entries apply must refuse, with a word of the reason.
var refused = map[string]string{
	"org.funtun.DBus.desktop":     "DBusActivatable",
	"org.funtun.Flat.desktop":     "Flatpak",
	"snap-demo_snap-demo.desktop": "Snap",
	"org.funtun.Deleted.desktop":  "Hidden=true",
	"org.funtun.NoExec.desktop":   "no Exec",
	"org.funtun.Link.desktop":     "not an application",
	"broken.desktop":              "broken.desktop:4:",
}

const testFuntun = "/opt/fun tun/bin/funtun"

type tree struct {
	home, sys, profiles string
	m                   *Manager
	real                []string // IDs of the copied Debian entries
}

// newTree lays out a temporary XDG tree: $XDG_DATA_HOME (empty) and one
// $XDG_DATA_DIRS entry with copies of the machine's real desktop files
// and the hand-made ones; and a profile directory with profile "work"
// beside the built-in ones, read by the registry the rest of funtun uses.
func newTree(t *testing.T) *tree {
	t.Helper()
	root := t.TempDir()
	tr := &tree{home: filepath.Join(root, "home", ".local", "share"), sys: filepath.Join(root, "usr", "share"), profiles: filepath.Join(root, "profiles")}
	apps := filepath.Join(tr.sys, "applications")
	for _, src := range realEntries(t) {
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(apps, filepath.Base(src)), string(data))
		tr.real = append(tr.real, filepath.Base(src))
	}
	for name, text := range handMade {
		writeFile(t, filepath.Join(apps, name), text)
	}
	writeFile(t, filepath.Join(tr.profiles, "work.profile"), "# a profile of the user's\ndirect\n")
	cat := &funnel.Catalog{Dirs: []string{tr.profiles}, Builtins: profiles.Builtin}
	tr.m = &Manager{
		Dirs:     Dirs{DataHome: tr.home, DataDirs: []string{tr.sys}},
		Launcher: Launcher{Funtun: testFuntun},
		Profiles: func() ([]Profile, error) { return CatalogProfiles(cat) },
	}
	return tr
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// validate runs desktop-file-validate (desktop-file-utils) on a file
// funtun wrote; any error it reports fails the test.
func validate(t *testing.T, path string) {
	t.Helper()
	tool := testutil.NeedTool(t, "desktop-file-validate")
	out, err := exec.Command(tool, path).CombinedOutput()
	if err != nil {
		t.Errorf("desktop-file-validate %s: %v\n%s\n--- file:\n%s", path, err, out, readFile(t, path))
	}
}

// userApps lists what is in $XDG_DATA_HOME/applications.
func (tr *tree) userApps(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir(tr.m.Dirs.UserApps())
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}
